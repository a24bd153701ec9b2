"""
GSM8K (Cobbe et al. 2021): grade-school math word problems with worked solutions.

    from tasks.gsm8k import GSM8K
    task = GSM8K("main", "test")   # subset: main | socratic (hub only); split: train | test

Generative. The reference solutions carry calculator annotations, "48/2 = <<48/2=24>>24": each one
becomes a python tool call inside the assistant's message (text up to the annotation, a "python"
part "48/2", a "python_output" part "24", then the text that follows), so the model learns to call
the calculator. The final answer follows "####" (the taught format; a reply without it in its own
text scores 0, also as chat_rl's reward: a "####" printed by the calculator is no answer); `evaluate` compares it exactly (commas stripped, 18 == 18.0, but
1450000 != 1450001; "1/2" and "5e3" are read whole, "2^3" is no answer). Data: the mirror's gsm8k/<subset>/<split>.parquet, or openai/gsm8k.
"""

import re

from tasks.common import Task, check_choice, extract_final_number, load_rows, numbers_equal

_ANNOTATION = re.compile(r"<<(.*?)>>")


def answer_to_parts(answer):
    """A GSM8K solution string -> the assistant's list of parts, calculator annotations turned into
    python tool calls. Joining the "text" and "python_output" parts gives back the solution without
    the annotations."""
    parts, position = [], 0
    for match in _ANNOTATION.finditer(answer):
        if match.start() > position:
            parts.append({"type": "text", "text": answer[position:match.start()]})
        expression, equals, result = match.group(1).rpartition("=")
        if not equals:  # no "=": not a calculator call, keep it as text
            parts.append({"type": "text", "text": match.group(1)})
        else:
            parts.append({"type": "python", "text": expression})
            parts.append({"type": "python_output", "text": result})
        position = match.end()
    if position < len(answer):
        parts.append({"type": "text", "text": answer[position:]})
    return parts


def extract_answer(text):
    """The final answer after "####" as a str without commas, or None."""
    return extract_final_number(text)


class GSM8K(Task):
    eval_type = "generative"
    baseline = 0.0  # a guessed number is (almost) never right

    def __init__(self, subset, split, **kwargs):
        super().__init__(**kwargs)
        check_choice("subset", subset, ("main", "socratic"))
        check_choice("split", split, ("train", "test"))
        self.subset, self.split = subset, split
        self.rows = load_rows(("gsm8k", subset, f"{split}.parquet"), "openai/gsm8k", subset, split)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": answer_to_parts(row["answer"])},
            ],
        }

    def evaluate(self, conversation, completion):
        """1 if the completion's "#### <number>" equals the reference number, else 0."""
        reference = extract_answer("".join(part["text"] for part in conversation["messages"][-1]["content"]))
        assert reference is not None, "the reference solution has no '#### <number>' answer"
        return int(numbers_equal(extract_answer(completion), reference))
