"""
General chat conversations for SFT/midtraining: SmolTalk's schema, from the offline mirror's chat/
folder (ShareGPT, GPTeacher, Dolly, self-instruct; see its MANIFEST.md) or HuggingFaceTB/smol-smoltalk.

    from tasks.smoltalk import SmolTalk
    task = SmolTalk("train")   # split: train | test

Messages are passed through as given (roles system/user/assistant, a leading system message kept);
the tokenizer decides how to render a system message. Generative, without an automatic evaluation.
"""

from tasks.common import Task, check_choice, load_rows


class SmolTalk(Task):
    eval_type = "generative"

    def __init__(self, split, **kwargs):
        super().__init__(**kwargs)
        check_choice("split", split, ("train", "test"))
        self.split = split
        self.rows = load_rows(("chat", f"{split}.parquet"), "HuggingFaceTB/smol-smoltalk", None, split)

    def num_examples(self):
        return len(self.rows)

    def get_example(self, index):
        messages = [{"role": m["role"], "content": m["content"]} for m in self.rows[index]["messages"]]
        assert len(messages) >= 2, f"SmolTalk {self.split} item {index}: a conversation needs at least 2 messages"
        return {"messages": messages}
