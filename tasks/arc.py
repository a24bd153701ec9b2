"""
ARC (AI2 Reasoning Challenge): grade-school science questions with 3-5 lettered choices.

    from tasks.arc import ARC
    task = ARC("ARC-Challenge", "test")   # subset: ARC-Easy | ARC-Challenge; split: train | validation | test

Categorical: the user sees the question and the lettered choices (the item's own labels, usually
A-E, sometimes 1-4); the assistant answers with the label alone. Data: the mirror's
arc/<subset>/<split>.parquet, or allenai/ai2_arc on the hub.
"""

from tasks.common import Task, check_choice, evaluate_letter, load_rows, render_mc


class ARC(Task):
    eval_type = "categorical"
    baseline = 0.25  # most items have 4 choices (some 3 or 5); the ChatCORE convention rounds to 1/4

    def __init__(self, subset, split, **kwargs):
        super().__init__(**kwargs)
        check_choice("subset", subset, ("ARC-Easy", "ARC-Challenge"))
        check_choice("split", split, ("train", "validation", "test"))
        self.subset, self.split = subset, split
        self.rows = load_rows(("arc", subset, f"{split}.parquet"), "allenai/ai2_arc", subset, split)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        letters, choices = list(row["choices"]["label"]), list(row["choices"]["text"])
        assert row["answerKey"] in letters, f"ARC item {row.get('id')}: answer {row['answerKey']!r} not in {letters}"
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, choices)},
                {"role": "assistant", "content": row["answerKey"]},
            ],
            "letters": letters,
        }

    def evaluate(self, conversation, completion):
        return evaluate_letter(conversation, completion)
