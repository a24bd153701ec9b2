"""
Tests of tasks/: every task loads from a tiny fixture written here in the data mirror's layout
($NANOCHAT_DATA_DIR/<dataset>/..., parquet via pyarrow) and renders through the real tokenizer;
GSM8K's tool-call conversion, HumanEval's sandboxed evaluation, CustomJSON's error report,
TaskMixture and slicing. Run: uv run pytest tests/test_tasks.py -q
"""

import ast
import json
import operator
import re
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.engine import Engine
from nanochat.task_eval import evaluate_generative, reply_text
from tasks.arc import ARC
from tasks.common import Task, TaskMixture, TaskSequence, extract_final_number, numbers_equal, render_mc
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K, answer_to_parts, extract_answer
from tasks.humaneval import HumanEval, extract_program
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee
from conftest import MARKER_CALL
from test_engine import scripted_model

# -----------------------------------------------------------------------------
# fixtures in the mirror's layout

ARC_ROWS = [
    {"id": "Mercury_1", "question": "Which gas do plants take in for photosynthesis?",
     "choices": {"text": ["oxygen", "carbon dioxide", "nitrogen", "helium"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
    {"id": "NYSEDREGENTS_2", "question": "What is the boiling point of water at sea level?",
     "choices": {"text": ["0 C", "50 C", "100 C", "150 C"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
    {"id": "MCAS_3", "question": "Which of these is a mammal?",
     "choices": {"text": ["shark", "whale", "trout", "eel", "squid"], "label": ["A", "B", "C", "D", "E"]},
     "answerKey": "B"},
]
MMLU_ROWS = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Who wrote Hamlet?", "subject": "world_literature",
     "choices": ["Marlowe", "Shakespeare", "Jonson", "Kyd"], "answer": 1},
    {"question": "What is 3 * 3?", "subject": "elementary_mathematics", "choices": ["9", "6", "12", "3"], "answer": 0},
]
GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "A shop sells 1,250 pens a week at $2 each. How much money does it make in 4 weeks?",
     "answer": "Each week it makes 1250*2 = $<<1250*2=2500>>2,500.\n"
               "In 4 weeks it makes 2500*4 = $<<2500*4=10000>>10,000.\n#### 10,000"},
    {"question": "Half of 7 apples are eaten. How many are left?",
     "answer": "7/2 = <<7/2=3.5>>3.5 apples are left.\n#### 3.5"},
]
HUMANEVAL_ROWS = [
    {"task_id": "HumanEval/0",
     "prompt": "from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n"
               "    \"\"\" Return True if the running balance ever falls below zero.\n"
               "    >>> below_zero([1, 2, -4, 5])\n    True\n    \"\"\"\n",
     "canonical_solution": "    balance = 0\n    for op in operations:\n        balance += op\n"
                           "        if balance < 0:\n            return True\n    return False\n",
     "test": "\n\ndef check(candidate):\n    assert candidate([]) == False\n"
             "    assert candidate([1, 2, -3, 1]) == False\n    assert candidate([1, 2, -4, 5]) == True\n",
     "entry_point": "below_zero"},
]
CHAT_ROWS = [
    {"messages": [{"content": "You are a terse assistant.", "role": "system"},
                  {"content": "Name a prime number.", "role": "user"},
                  {"content": "7", "role": "assistant"},
                  {"content": "Another?", "role": "user"},
                  {"content": "11", "role": "assistant"}], "source": "handmade"},
    {"messages": [{"content": "Say hi.", "role": "user"}, {"content": "Hi!", "role": "assistant"}],
     "source": "handmade"},
]
WORDS = ["strawberry", "banana", "mississippi", "cat", "letter", "bookkeeper", "rhythm", "aardvark"]


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A tiny data mirror, in the layout of the real one, set as NANOCHAT_DATA_DIR."""
    root = tmp_path / "data"
    for subset in ("ARC-Easy", "ARC-Challenge"):
        for split in ("train", "validation", "test"):
            write_parquet(root / "arc" / subset / f"{split}.parquet", ARC_ROWS)
    for split in ("dev", "validation", "test"):
        write_parquet(root / "mmlu" / "all" / f"{split}.parquet", MMLU_ROWS)
    for split in ("train", "test"):
        write_parquet(root / "gsm8k" / "main" / f"{split}.parquet", GSM8K_ROWS)
        write_parquet(root / "chat" / f"{split}.parquet", CHAT_ROWS)
    write_parquet(root / "humaneval" / "test.parquet", HUMANEVAL_ROWS)
    (root / "words").mkdir()
    (root / "words" / "words_alpha.txt").write_bytes("".join(w + "\r\n" for w in WORDS).encode())
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(root))
    return root


def expected_assistant_tokens_text(conversation):
    """What the tokenizer must mark as trainable, as text: the assistant's text and python calls
    (with their special tokens) and <|assistant_end|>, never tool outputs or user text."""
    out = []
    for message in conversation["messages"]:
        if message["role"] != "assistant":
            continue
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                out.append(part["text"])
            elif part["type"] == "python":
                out.append("<|python_start|>" + part["text"] + "<|python_end|>")
        out.append("<|assistant_end|>")
    return "".join(out)


def check_renders(tokenizer, conversation):
    """The conversation is valid for render_conversation and its training mask is right."""
    assert set(conversation) >= {"messages"}
    ids, mask = tokenizer.render_conversation(conversation, max_tokens=None)
    assert len(ids) == len(mask) and sum(mask) > 0
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == expected_assistant_tokens_text(conversation)
    for message in conversation["messages"]:
        if message["role"] == "user":
            assert message["content"] in tokenizer.decode(ids)
    assert tokenizer.render_for_completion(conversation)[-1] == tokenizer.encode_special("<|assistant_start|>")


# -----------------------------------------------------------------------------
# each task


def test_render_mc():
    prompt = render_mc("Pick one.", ["A", "B"], ["red", "blue"])
    assert prompt == "Pick one.\n\nA. red\nB. blue\n\nAnswer with the letter."


def test_arc(mirror, tiny_tokenizer):
    task = ARC("ARC-Challenge", "validation")
    assert task.eval_type == "categorical" and len(task) == len(ARC_ROWS)
    assert task.baseline == 0.25  # ChatCORE's random baseline, a fraction
    for row, conversation in zip(ARC_ROWS, task):
        check_renders(tiny_tokenizer, conversation)
        user, assistant = conversation["messages"]
        assert conversation["letters"] == row["choices"]["label"]  # the item's own labels, 1-4 included
        for label, text in zip(row["choices"]["label"], row["choices"]["text"]):
            assert f"\n{label}. {text}\n" in user["content"]
        assert assistant["content"] == row["answerKey"]
        assert task.evaluate(conversation, row["answerKey"]) == 1
        wrong = next(label for label in row["choices"]["label"] if label != row["answerKey"])
        assert task.evaluate(conversation, wrong) == 0 and task.reward(conversation, wrong) == 0.0
    with pytest.raises(ValueError, match="ARC-Medium"):
        ARC("ARC-Medium", "test")


def test_mmlu(mirror, tiny_tokenizer):
    task = MMLU("all", "test")
    assert task.eval_type == "categorical" and len(task) == 3 and task.baseline == 0.25
    for row, conversation in zip(MMLU_ROWS, task):
        check_renders(tiny_tokenizer, conversation)
        assert conversation["letters"] == ["A", "B", "C", "D"]
        assert conversation["messages"][1]["content"] == "ABCD"[row["answer"]]
        assert f"\n{'ABCD'[row['answer']]}. {row['choices'][row['answer']]}\n" in conversation["messages"][0]["content"]
    math = MMLU("elementary_mathematics", "dev")
    assert [c["messages"][1]["content"] for c in math] == ["B", "A"]
    with pytest.raises(ValueError, match="world_literature"):  # the error lists the subjects there are
        MMLU("astrology", "test")
    with pytest.raises(FileNotFoundError, match="auxiliary_train"):
        MMLU("auxiliary_train", "train")


def safe_eval(expression):
    """A small arithmetic evaluator (the reference calculator for GSM8K annotations)."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def walk(node):
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant)
        return node.value
    return walk(ast.parse(expression, mode="eval").body)


def test_gsm8k_tool_calls(mirror, tiny_tokenizer):
    task = GSM8K("main", "train")
    assert task.eval_type == "generative" and len(task) == 3 and task.baseline == 0.0
    for row, conversation in zip(GSM8K_ROWS, task):
        check_renders(tiny_tokenizer, conversation)
        parts = conversation["messages"][1]["content"]
        annotations = re.findall(r"<<(.*?)=(.*?)>>", row["answer"])
        calls = [(p["text"], nxt) for p, nxt in zip(parts, parts[1:] + [None]) if p["type"] == "python"]
        assert [(expression, nxt["text"]) for expression, nxt in calls] == annotations
        for expression, nxt in calls:
            assert nxt["type"] == "python_output"  # each call is followed by its result
            assert safe_eval(expression) == pytest.approx(float(nxt["text"]))
        # text + outputs give back the solution with each annotation replaced by its result
        without_annotations = re.sub(r"<<[^>]*=([^>]*)>>", r"\1", row["answer"])
        assert "".join(p["text"] for p in parts if p["type"] != "python") == without_annotations
        assert parts[-1]["type"] == "text" and parts[-1]["text"].endswith(row["answer"].split("#### ")[-1])


def test_gsm8k_answers(mirror):
    assert extract_answer(GSM8K_ROWS[1]["answer"]) == "10000"
    assert extract_answer("no marker 42") is None
    assert extract_answer("#### -3") == "-3" and extract_answer("#### $1,234.50") == "1234.50"
    assert answer_to_parts("no calls #### 5") == [{"type": "text", "text": "no calls #### 5"}]
    task = GSM8K("main", "test")
    natalia, pens, apples = task[0], task[1], task[2]
    assert task.evaluate(natalia, "She sold 72 in total.\n#### 72") == 1
    assert task.evaluate(natalia, "#### 72.0") == 1
    assert task.evaluate(natalia, "#### 71") == 0
    assert task.evaluate(natalia, "The answer is 72") == 0  # no #### marker: no answer
    assert task.evaluate(pens, "#### 10,000") == 1 and task.evaluate(pens, "#### 10000") == 1
    assert task.evaluate(apples, "#### 3.5") == 1 and task.evaluate(apples, "#### 3") == 0
    assert task.evaluate(apples, "#### 7/2") == 1 and task.evaluate(apples, "#### 35e-1.") == 1  # read whole, exactly
    assert task.reward(pens, "#### 10000") == 1.0 and task.reward(pens, "####") == 0.0


def test_final_numbers_compare_exactly():
    # integers are exact (a relative 1e-6 made these equal; two GSM8K answers are >= 1e6)
    assert not numbers_equal("1450000", "1450001") and numbers_equal("1450000", "1450000.0")
    assert numbers_equal("18", "18.00") and numbers_equal("0.1", "1/10") and numbers_equal("5e3", "5000")
    assert not numbers_equal("0.1", "0.1000000001") and not numbers_equal(None, "1")
    # a fraction or an exponent is taken whole, or refused; never its leading digits
    assert extract_final_number("#### 1/2") == "1/2" and extract_final_number("#### 5e3") == "5e3"
    assert extract_final_number("so #### $1,234.50.") == "1234.50"
    for refused in ("#### 2^3", "#### 5x", "#### 1/0", "#### nan", "#### 1e99999", "no marker 7"):
        assert extract_final_number(refused) is None, refused
    assert extract_final_number("#### 1 then #### 2") == "2"  # the last marker


def test_humaneval(mirror, tiny_tokenizer):
    task = HumanEval(timeout=5.0)
    assert task.eval_type == "generative" and len(task) == 1
    conversation = task[0]
    check_renders(tiny_tokenizer, conversation)
    row = HUMANEVAL_ROWS[0]
    full = row["prompt"] + row["canonical_solution"]
    assert conversation["messages"][1]["content"] == full
    assert task.evaluate(conversation, f"Here you go:\n```python\n{full}```\nDone.") == 1  # fenced full function
    assert task.evaluate(conversation, row["canonical_solution"]) == 1  # body continuing the prompt
    wrong = "def below_zero(operations):\n    return sum(operations) < 0\n"
    assert task.evaluate(conversation, f"```python\n{wrong}```") == 0
    assert task.evaluate(conversation, "    while True:\n        pass\n") == 0  # caught by the timeout
    assert task.evaluate(conversation, "import sys\nsys.exit(0)\n") == 0  # exiting before the tests is no pass
    assert extract_program("no fence") == "no fence"


def test_smoltalk(mirror, tiny_tokenizer):
    task = SmolTalk("train")
    assert len(task) == 2
    first = task[0]
    assert first["messages"] == [{"role": m["role"], "content": m["content"]} for m in CHAT_ROWS[0]["messages"]]
    assert first["messages"][0]["role"] == "system"  # kept
    check_renders(tiny_tokenizer, first)  # the tokenizer folds the system message into the first user turn
    check_renders(tiny_tokenizer, task[1])


def test_spellingbee(mirror, tiny_tokenizer):
    task = SpellingBee(size=40, split="train")
    again = SpellingBee(size=40, split="train")
    assert [task[i] for i in range(40)] == [again[i] for i in range(40)]  # deterministic per index
    assert [c["messages"] for c in SpellingBee(size=40, split="test")] != [c["messages"] for c in task]
    assert len({c["messages"][0]["content"] for c in task}) > 30  # varied phrasings and words
    for conversation in task:
        check_renders(tiny_tokenizer, conversation)
        word, letter = conversation["word"], conversation["letter"]
        assert word in WORDS
        parts = conversation["messages"][1]["content"]
        assert ",".join(word) in parts[0]["text"]  # spelled out first
        call, output = parts[1], parts[2]
        assert call["type"] == "python" and output["type"] == "python_output"
        assert eval(call["text"]) == word.count(letter) == int(output["text"])  # the call computes the answer
        count = word.count(letter)
        assert task.evaluate(conversation, f"... so the answer is\n#### {count}") == 1
        assert task.evaluate(conversation, f"#### {count}<|assistant_end|>") == 1
        assert task.evaluate(conversation, f"#### {count + 1}") == 0
        # only the taught format scores (it is chat_rl's reward): no last-number fallback
        assert task.evaluate(conversation, f"There are {count} of them.") == 0
        assert task.evaluate(conversation, f"zq x{count}") == 0 and task.reward(conversation, f"x{count}") == 0.0
    simple = SimpleSpelling(size=10, split="test")
    for conversation in simple:
        check_renders(tiny_tokenizer, conversation)
        word = conversation["word"]
        assert conversation["messages"][1]["content"] == ",".join(word)
        assert simple.evaluate(conversation, " ".join(word.upper())) == 1
        assert simple.evaluate(conversation, ",".join(word[:-1])) == 0


def test_customjson(tmp_path, tiny_tokenizer):
    good = tmp_path / "good.jsonl"
    conversations = [
        [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am nanochat."}],
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": [{"type": "python", "text": "2+2"},
                                                        {"type": "python_output", "text": "4"},
                                                        {"type": "text", "text": "It is 4."}]}]},
    ]
    good.write_text("\n".join(json.dumps(c) for c in conversations) + "\n\n")
    task = CustomJSON(str(good))
    assert len(task) == 2
    assert task[0]["messages"] == conversations[0] and task[1]["messages"] == conversations[1]["messages"]
    check_renders(tiny_tokenizer, task[0])

    bad_lines = [
        json.dumps(conversations[0]),                                               # 1 ok
        '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}',  # 2 truncated JSON
        json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),  # 3 no alternation
        json.dumps([{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]),  # 4 unknown role
        json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]),  # 5 content type
        json.dumps({"conversation": []}),                                            # 6 no messages key
        json.dumps([{"role": "user", "content": "a"}]),                              # 7 too short
        json.dumps([{"role": "user", "content": "a"},
                    {"role": "assistant", "content": [{"type": "code", "text": "x"}]}]),  # 8 part type
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(bad_lines) + "\n")
    with pytest.raises(ValueError) as error:
        CustomJSON(str(bad))
    message = str(error.value)
    reported = sorted(int(n) for n in re.findall(rf"{re.escape(str(bad))}:(\d+):", message))
    assert reported == [2, 3, 4, 5, 6, 7, 8]
    for line, reason in ((2, "invalid JSON"), (3, "'user' where 'assistant'"), (4, "'bot'"), (5, "int"),
                         (6, "'messages'"), (7, "at least"), (8, "part 0")):
        assert re.search(rf":{line}: .*{re.escape(reason)}", message), (line, reason, message)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        CustomJSON(str(tmp_path / "missing.jsonl"))


# -----------------------------------------------------------------------------
# the Task machinery


class Numbers(Task):
    """A task whose item i is a conversation naming i (checks indices without any data)."""

    def __init__(self, n, name="n", **kwargs):
        super().__init__(**kwargs)
        self.n, self.name = n, name

    def num_examples(self):
        return self.n

    def get_example(self, index):
        assert 0 <= index < self.n
        return {"messages": [{"role": "user", "content": f"{self.name}{index}"},
                             {"role": "assistant", "content": str(index)}]}


def names(task):
    return [c["messages"][0]["content"] for c in task]


def test_slicing_matches_list_slicing():
    task = Numbers(20)
    reference = [f"n{i}" for i in range(20)]
    for key in (slice(None), slice(2, 8), slice(2, 18, 3), slice(-5, None), slice(None, None, -1),
                slice(5, 2), slice(100, 200)):
        assert names(task[key]) == reference[key], key
        assert len(task[key]) == len(reference[key])
    view = task[2:18:3][1:4]  # views of views compose
    assert names(view) == reference[2:18:3][1:4]
    assert task[-1]["messages"][0]["content"] == "n19" and view[0] == task[5]
    with pytest.raises(IndexError):
        task[20]
    with pytest.raises(TypeError, match="integers or slices"):
        task["3"]
    with pytest.raises(IndexError):
        view[3]
    assert names(Numbers(20, start=5, stop=15, step=5)) == ["n5", "n10"]
    assert len(task) == 20  # the original is untouched


def test_task_sequence_and_mixture():
    a, b, c = Numbers(7, "a"), Numbers(5, "b")[1:], Numbers(0, "c")
    everything = names(a) + names(b) + names(c)
    assert names(TaskSequence([a, c, b])) == names(a) + names(b)
    mixture = TaskMixture([a, b, c])
    mixed = names(mixture)
    assert len(mixture) == len(everything) == 11
    assert Counter(mixed) == Counter(everything)  # every item exactly once
    assert mixed != everything  # actually shuffled
    assert names(TaskMixture([a, b, c])) == mixed  # deterministic
    assert names(TaskMixture([a, b, c], seed=7)) != mixed
    assert names(mixture[3:6]) == mixed[3:6]
    upweighted = names(TaskMixture([a, a, b]))
    assert Counter(upweighted)["a0"] == 2  # repeating a task repeats its items


def test_mixture_of_real_tasks(mirror):
    mixture = TaskMixture([ARC("ARC-Easy", "train"), GSM8K("main", "train"), SpellingBee(size=4)])
    assert len(mixture) == 3 + 3 + 4
    assert sum(isinstance(c["messages"][1]["content"], list) for c in mixture) == 3 + 4


# -----------------------------------------------------------------------------
# data location errors


def test_missing_mirror_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gsm8k" / "main" / "test.parquet"))):
        GSM8K("main", "test")


def test_no_mirror_and_no_datasets_package(monkeypatch):
    monkeypatch.delenv("NANOCHAT_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    with pytest.raises(RuntimeError, match="NANOCHAT_DATA_DIR.*pip install datasets"):
        ARC("ARC-Easy", "test")


def test_an_answer_the_calculator_printed_is_no_answer(mirror, answer_tokenizer):
    """A scripted model that calls the calculator on '## 72'.replace('#','##') gets "#### 72" forced back as
    the tool's output and stops: GSM8K (the answer is 72) scores 0 through the real engine and
    evaluator, which read the reply's own text only; on the decoded reply, tool output included, it
    would read the calculator's "#### 72" (it scored 1 before). Its own "#### 72" does count."""
    tok = answer_tokenizer
    sp = tok.encode_special
    chain = [sp("<|assistant_start|>"), sp("<|python_start|>"), *tok.encode(MARKER_CALL), sp("<|python_end|>")]
    successor = dict(zip(chain[:-1], chain[1:]))
    successor[sp("<|output_end|>")] = sp("<|assistant_end|>")
    model = scripted_model(tok, successor)
    task = GSM8K("main", "test")
    task.rows = [{"question": "Half of 144?", "answer": "144/2 = <<144/2=72>>72\n#### 72"}]  # fits the context
    assert evaluate_generative(model, tok, task, max_new_tokens=20) == (0, 1)
    assert evaluate_generative(model, tok, task, max_new_tokens=20, batched=False) == (0, 1)
    prompt = tok.render_for_completion(task[0])
    rows, _ = Engine(model, tok).generate_batch(prompt, max_tokens=20, temperature=0.0)
    reply = rows[0][len(prompt):]
    assert "<|output_start|>#### 72<|output_end|>" in tok.decode(reply)  # the tool printed the marker ...
    assert task.evaluate(task[0], tok.decode(reply)) == 1  # ... which the decoded text would score
    assert reply_text(tok, reply) == ""  # the reply has no text of its own
    own = tok.encode("So:\n") + reply + tok.encode("\n#### 72")
    assert reply_text(tok, own) == "So:\n\n#### 72" and task.evaluate(task[0], reply_text(tok, own)) == 1


def test_reply_text_keeps_the_assistants_own_text_only(tiny_tokenizer):
    tok = tiny_tokenizer
    sp = tok.encode_special
    text = tok.encode("caf\u00e9 ")  # a multi-byte character: decoded whole
    reply = (text + [sp("<|python_start|>")] + tok.encode("'#### 3'") + [sp("<|python_end|>"), sp("<|output_start|>")]
             + tok.encode("#### 3") + [sp("<|output_end|>")] + tok.encode(" done") + [sp("<|assistant_end|>")])
    assert reply_text(tok, reply) == "caf\u00e9  done"
    cut = text + [sp("<|python_start|>")] + tok.encode("#### 3")  # cut off inside a call: none of it is text
    assert reply_text(tok, cut) == "caf\u00e9 "
    spelled = tok.encode("<|output_start|>#### 4<|output_end|>")  # ordinary tokens: the assistant's own text
    assert all(t < tok.get_vocab_size() - len(tok.get_special_tokens()) for t in spelled)
    assert reply_text(tok, spelled) == "<|output_start|>#### 4<|output_end|>"
