"""
MMLU (Hendrycks et al. 2021): four-way multiple choice over 57 subjects.

    from tasks.mmlu import MMLU
    task = MMLU("all", "test")                 # evaluation: split dev | validation | test
    task = MMLU("auxiliary_train", "train")    # training data (hub only: absent from the mirror)
    task = MMLU("college_physics", "test")     # one subject (any value of the `subject` column)

Categorical: the user sees the question and choices A-D; the assistant answers with the letter.
The subjects are whatever the data holds. Data: the mirror's mmlu/all/<split>.parquet, or cais/mmlu.
"""

from tasks.common import Task, check_choice, evaluate_letter, load_rows, render_mc

LETTERS = ("A", "B", "C", "D")


class MMLU(Task):
    eval_type = "categorical"
    baseline = 1 / len(LETTERS)  # four choices

    def __init__(self, subset, split, **kwargs):
        super().__init__(**kwargs)
        self.subset, self.split = subset, split
        if subset == "auxiliary_train":
            check_choice("split", split, ("train",))
            self.rows = self._load_auxiliary_train()
        else:
            check_choice("split", split, ("dev", "validation", "test"))
            rows = load_rows(("mmlu", "all", f"{split}.parquet"), "cais/mmlu", "all", split)
            if subset != "all":
                subjects = sorted({row["subject"] for row in rows})
                if subset not in subjects:
                    raise ValueError(f"MMLU subset {subset!r} is not 'all', 'auxiliary_train' or one of the "
                                     f"{len(subjects)} subjects: {', '.join(subjects)}")
                rows = [row for row in rows if row["subject"] == subset]
            self.rows = rows

    @staticmethod
    def _load_auxiliary_train():
        from nanochat.common import get_data_dir

        data_dir = get_data_dir()
        if data_dir is not None:
            raise FileNotFoundError(
                f"MMLU auxiliary_train is not in the data mirror NANOCHAT_DATA_DIR={data_dir!r} (it could not be "
                f"found offline; see the mirror's MANIFEST.md). Unset NANOCHAT_DATA_DIR (with `datasets` installed) "
                f"to load cais/mmlu auxiliary_train from the hub, or train without it."
            )
        rows = load_rows(("mmlu", "auxiliary_train", "train.parquet"), "cais/mmlu", "auxiliary_train", "train")
        # on the hub each auxiliary_train row nests its fields under "train"
        return [row["train"] if "train" in row else row for row in rows]

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        row = self.rows[index]
        choices = list(row["choices"])
        assert len(choices) == len(LETTERS), f"MMLU item {index}: expected 4 choices, got {len(choices)}"
        answer = int(row["answer"])
        subject = row["subject"].replace("_", " ") if row.get("subject") else None
        question = f"({subject}) {row['question']}" if subject else row["question"]
        return {
            "messages": [
                {"role": "user", "content": render_mc(question, LETTERS, choices)},
                {"role": "assistant", "content": LETTERS[answer]},
            ],
            "letters": list(LETTERS),
            "subject": row.get("subject"),
        }

    def evaluate(self, conversation, completion):
        return evaluate_letter(conversation, completion)
