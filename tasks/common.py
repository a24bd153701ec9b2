"""
The `Task` base that every dataset in tasks/ builds on, plus mixing, prompts and data loading.

A task is a list of conversations, each a dict {"messages": [{"role": ..., "content": ...}, ...]}
ready for `nanochat.tokenizer.Tokenizer.render_conversation` (an optional system message first,
then user/assistant turns; an assistant content is a str or a list of parts {"type": "text" |
"python" | "python_output", "text": str}). Multiple-choice (categorical) tasks also carry
"letters", the answer letters in order, so an evaluator can compare the logits of those tokens.

    from tasks.arc import ARC
    task = ARC("ARC-Easy", "validation")
    len(task), task[0]["messages"], task[10:20], task.evaluate(task[0], "A")

Data comes from the offline mirror $NANOCHAT_DATA_DIR/<dataset>/... (layout: the mirror's
MANIFEST.md) when that is set, else from the Hugging Face hub through the optional `datasets`
package (imported only then).
"""

import bisect
import operator
import os
import random
import re
from fractions import Fraction

# -----------------------------------------------------------------------------
# Tasks, views and combinations


class Task:
    """An indexable, sliceable list of conversations. Subclasses set `eval_type` ("categorical"
    or "generative") and `baseline`, and implement num_examples() and get_example(i); evaluating ones
    implement evaluate(conversation, completion). Slicing (task[a:b:c]) gives a view that shares the data."""

    eval_type = "generative"
    baseline = 0.0  # accuracy of random guessing, a fraction: ChatCORE centres each task's accuracy on it

    def __init__(self, start=0, stop=None, step=1):
        self._slice = slice(start, stop, step)  # applied lazily: num_examples() is known only after loading
        self._range = None  # a view's indices into the underlying dataset (set by slicing)

    def num_examples(self):
        """How many items the underlying dataset has (ignoring any slice)."""
        raise NotImplementedError

    def get_example(self, index):
        """The conversation for item `index` of the underlying dataset (0 <= index < num_examples())."""
        raise NotImplementedError

    def evaluate(self, conversation, completion):
        """1/True if `completion` answers `conversation` correctly. completion: the assistant's own text
        of the reply, a str without its tool calls and tool outputs (nanochat.task_eval.reply_text), so a
        task never reads an answer that the calculator printed."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation")

    def reward(self, conversation, completion):
        """The RL reward of a completion: by default 1.0 if it is correct, else 0.0."""
        return float(bool(self.evaluate(conversation, completion)))

    def _indices(self):
        return self._range if self._range is not None else range(self.num_examples())[self._slice]

    def __len__(self):
        return len(self._indices())

    def __getitem__(self, key):
        indices = self._indices()
        if isinstance(key, slice):
            view = object.__new__(type(self))
            view.__dict__.update(self.__dict__)  # a shallow copy: the loaded rows are shared
            view._range = indices[key]  # slicing a range composes start/stop/step exactly
            return view
        try:
            position = operator.index(key)  # int, numpy integer, ...
        except TypeError:
            kind = type(key).__name__
            raise TypeError(f"{type(self).__name__} indices must be integers or slices, not {kind}") from None
        return self.get_example(indices[position])  # range indexing handles negatives and raises IndexError

    def __iter__(self):
        for index in self._indices():
            yield self.get_example(index)

    def __repr__(self):
        return f"{type(self).__name__}(len={len(self)})"


class TaskSequence(Task):
    """Several tasks one after another, in order (e.g. for curriculum-ordered training)."""

    def __init__(self, tasks, **kwargs):
        super().__init__(**kwargs)
        assert tasks, "TaskSequence needs at least one task"
        self.tasks = list(tasks)
        self._offsets = [0]
        for task in self.tasks:
            self._offsets.append(self._offsets[-1] + len(task))

    def num_examples(self):
        return self._offsets[-1]

    def locate(self, index):
        """(task, index within that task) of item `index`."""
        assert 0 <= index < self.num_examples(), f"index {index} out of range 0..{self.num_examples() - 1}"
        t = bisect.bisect_right(self._offsets, index) - 1
        return self.tasks[t], index - self._offsets[t]

    def get_example(self, index):
        task, local = self.locate(index)
        return task[local]

    def evaluate(self, conversation, completion):
        raise NotImplementedError("evaluate each task on its own: a mixed item does not say where it came from")


class TaskMixture(TaskSequence):
    """Several tasks concatenated, then shuffled with a fixed seed: every item appears exactly once
    and the order is the same on every run and every rank. Repeat a task in the list to upweight it."""

    def __init__(self, tasks, seed=42, **kwargs):
        super().__init__(tasks, **kwargs)
        self.seed = seed
        self._order = list(range(self._offsets[-1]))
        random.Random(seed).shuffle(self._order)

    def get_example(self, index):
        return super().get_example(self._order[index])


# -----------------------------------------------------------------------------
# Prompts and answers


def render_mc(question, letters, choices):
    """A multiple-choice prompt: the question, one "A. choice" line per choice, and the instruction.
    The answer is a bare letter, the same token that starts each choice line."""
    assert len(letters) == len(choices), f"{len(letters)} letters for {len(choices)} choices"
    lines = [question.strip(), ""]
    lines += [f"{letter}. {choice}" for letter, choice in zip(letters, choices)]
    lines += ["", "Answer with the letter."]
    return "\n".join(lines)


def evaluate_letter(conversation, completion):
    """Categorical evaluation: the completion (a letter, possibly with spaces or a trailing dot)
    equals the reference answer letter."""
    reference = conversation["messages"][-1]["content"]
    return int(completion.strip().rstrip(".").strip() == reference)


_FINAL_ANSWER = re.compile(r"####[ \t]*\$?[ \t]*(\S*)")


def extract_final_number(text):
    """The number after the last "####" marker, as a str without commas (and without a $ sign
    or trailing punctuation), or None if there is none or it is no plain number. An integer, a
    decimal, a fraction "1/2" or an exponent "5e3" is taken whole (never a prefix of it, as
    "1" of "1/2"); anything else there ("2^3", "5x") is refused."""
    matches = _FINAL_ANSWER.findall(text)
    if not matches:
        return None
    answer = matches[-1].split("<|")[0]  # a special token's text may follow with no space
    answer = answer.replace(",", "").rstrip(".;:!?)")
    return answer if parse_number(answer) is not None else None


def parse_number(text):
    """A number string -> an exact fractions.Fraction ("18", "-3.50", "1/2", "5e3", "1.5E-3"),
    or None when it is not one (a float would make 1450000 == 1450001 within 1e-6)."""
    if not isinstance(text, str) or not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d{1,4}|/\d+)?", text):
        return None  # the pattern also keeps Fraction from parsing " 1 ", "1_000" or "nan"
    try:
        return Fraction(text)
    except ZeroDivisionError:  # "1/0"
        return None


def numbers_equal(a, b):
    """Exact numeric equality of two number strings: "18" == "18.0" == "36/2" == "1.8e1", but
    "1450000" != "1450001"; None or a non-number never matches."""
    a, b = parse_number(a), parse_number(b)
    return a is not None and b is not None and a == b


# -----------------------------------------------------------------------------
# Data loading


def data_path(*parts):
    """$NANOCHAT_DATA_DIR/<parts...> when a mirror is set (checked to exist), else None."""
    from nanochat.common import get_data_dir

    data_dir = get_data_dir()
    if data_dir is None:
        return None
    path = os.path.join(data_dir, *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing from the data mirror NANOCHAT_DATA_DIR={data_dir!r} (see its MANIFEST.md "
            f"for the layout). Add the file, or unset NANOCHAT_DATA_DIR to load from the Hugging Face hub."
        )
    return path


def load_rows(mirror_parts, hub_path, hub_name=None, hub_split="train"):
    """The rows of a dataset split, a sequence of dicts (len, [i], iteration): from the mirror's parquet file
    $NANOCHAT_DATA_DIR/<mirror_parts...> when a mirror is set, else `datasets.load_dataset(hub_path,
    hub_name, split=hub_split)`. Both give the same columns (the mirror keeps the hub's schema)."""
    path = data_path(*mirror_parts)
    if path is not None:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            f"cannot load {hub_path} ({hub_name or 'default'}, {hub_split}): NANOCHAT_DATA_DIR is not set and the "
            f"`datasets` package is not installed. Set NANOCHAT_DATA_DIR to an offline data mirror (e.g. "
            f"../shared/data, expected file {os.path.join(*mirror_parts)}) or `pip install datasets`."
        ) from None
    return datasets.load_dataset(hub_path, hub_name, split=hub_split)  # indexable like a list, kept on disk


def check_choice(name, value, allowed):
    """A clear error for a bad subset/split argument."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
