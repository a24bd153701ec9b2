"""
HumanEval (Chen et al. 2021): 164 Python functions to complete, checked by their unit tests.

    from tasks.humaneval import HumanEval
    task = HumanEval()          # the test split, the only one
    task.evaluate(task[0], completion)   # runs the tests in nanochat.execution's sandbox

Generative. The user message is the prompt (signature + docstring); the reference reply is the
complete function. `evaluate` takes the code from the completion (the first ```python block if
there is one, else the completion as is), runs prompt + code + the tests + check(entry_point) in
the sandbox and returns 1 if they all pass. The prompt goes first so that its imports are there
and so that a completion that only continues the body works too. Data: the mirror's
humaneval/test.parquet, or openai/openai_humaneval.
"""

import re

from nanochat.execution import execute
from tasks.common import Task, load_rows

_CODE_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(completion):
    """The code of a completion: its first fenced code block, else the whole text."""
    match = _CODE_BLOCK.search(completion)
    return match.group(1) if match else completion


class HumanEval(Task):
    eval_type = "generative"
    baseline = 0.0

    def __init__(self, timeout=10.0, **kwargs):
        super().__init__(**kwargs)
        self.timeout = timeout
        self.rows = load_rows(("humaneval", "test.parquet"), "openai/openai_humaneval", None, "test")

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]},
            ],
            "task_id": row["task_id"],
            "prompt": row["prompt"],
            "test": row["test"],
            "entry_point": row["entry_point"],
        }

    def evaluate(self, conversation, completion):
        program = "\n".join([
            conversation["prompt"],
            extract_program(completion),
            "",
            conversation["test"],
            "",
            f"check({conversation['entry_point']})",
            "",
        ])
        return int(execute(program, timeout=self.timeout).success)
