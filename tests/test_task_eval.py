"""
The chat-task evaluators of nanochat/task_eval.py, with stub models whose answers are known and
with the project's transformer (random weights) against the reference paths.

The categorical evaluator must read the logits at the last prompt position of each row (prompts
are right-padded in a batch) and compare only the answer letters; its fast path (prompts sorted by
length, the head at the last positions only) must predict what the reference predicts. The batched
generative path (Engine.generate_many over all problems) must give each problem the completion
that one-at-a-time greedy generation gives it.

    uv run pytest tests/test_task_eval.py -q
"""

import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from nanochat.task_eval import (chatcore, eval_indices, evaluate_categorical, evaluate_generative, evaluate_task,
                                 letter_token_ids)
from tasks.arc import ARC
from tasks.registry import EVAL_TASKS as TASKS
from tasks.common import Task, evaluate_letter, render_mc
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.spellingbee import SpellingBee

LETTERS = ["A", "B", "C", "D"]


class ToyMC(Task):
    """Multiple-choice items whose questions have different lengths."""

    eval_type = "categorical"

    def __init__(self, n=13, seed=0, **kwargs):
        super().__init__(**kwargs)
        rng = random.Random(seed)
        self.items = []
        for i in range(n):
            question = "Which one? " + "really " * i  # lengths differ, so padding matters
            self.items.append((question, rng.choice(LETTERS)))

    def num_examples(self):
        return len(self.items)

    def get_example(self, index):
        question, answer = self.items[index]
        return {"messages": [{"role": "user", "content": render_mc(question, LETTERS, ["w", "x", "y", "z"])},
                             {"role": "assistant", "content": answer}],
                "letters": LETTERS}

    def evaluate(self, conversation, completion):
        return evaluate_letter(conversation, completion)


class PositionOracle(nn.Module):
    """Logits that depend on the position only: at position p the answer letter of the prompt whose
    last token is at p gets a high score, but a non-letter token (the decoy) gets an even higher one.
    An evaluator that reads the wrong position or looks beyond the letters gets the answer wrong."""

    def __init__(self, vocab_size, answers_by_last_position, decoy_id, sequence_len=4096):
        super().__init__()
        self.vocab_size = vocab_size
        self.answers = answers_by_last_position
        self.decoy_id = decoy_id
        self.config = SimpleNamespace(sequence_len=sequence_len)

    def get_device(self):
        return torch.device("cpu")

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab_size)
        logits[:, :, self.decoy_id] = 10.0
        for position, token_id in self.answers.items():
            if position < T:
                logits[:, position, token_id] = 5.0
        return logits


def test_categorical_evaluator_reads_the_last_prompt_position_and_only_letters(tiny_tokenizer):
    task = ToyMC()
    letter_ids = dict(zip(LETTERS, letter_token_ids(tiny_tokenizer, LETTERS)))
    answers = {}
    for conversation in task:
        prompt = tiny_tokenizer.render_for_completion(conversation)
        answers[len(prompt) - 1] = letter_ids[conversation["messages"][-1]["content"]]
    assert len(answers) == len(task), "every item needs its own prompt length for this test"
    oracle = PositionOracle(tiny_tokenizer.get_vocab_size(), answers, decoy_id=tiny_tokenizer.get_bos_token_id())
    for fast in (False, True):
        for batch_size in (1, 4, 64):
            correct, total = evaluate_categorical(oracle, tiny_tokenizer, task, batch_size=batch_size, fast=fast)
            assert (correct, total) == (len(task), len(task))
        correct, total = evaluate_categorical(oracle, tiny_tokenizer, task, batch_size=4, max_items=5, fast=fast)
        assert (correct, total) == (5, 5)


def test_categorical_evaluator_with_a_constant_guess(tiny_tokenizer):
    task = ToyMC(n=40, seed=3)
    b_id = letter_token_ids(tiny_tokenizer, ["B"])[0]

    class AlwaysB(PositionOracle):
        def forward(self, idx):
            logits = torch.zeros(*idx.shape, self.vocab_size)
            logits[:, :, b_id] = 1.0
            return logits

    model = AlwaysB(tiny_tokenizer.get_vocab_size(), {}, decoy_id=0)
    expected = sum(answer == "B" for _, answer in task.items)
    assert 0 < expected < len(task)
    for fast in (False, True):
        assert evaluate_categorical(model, tiny_tokenizer, task, batch_size=8, fast=fast) == (expected, len(task))


def random_gpt(tokenizer, sequence_len=256, n_kv_head=1, seed=0):
    """The project's transformer, small, every weight random (so letters and tokens are not ties)."""
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2,
                       n_kv_head=n_kv_head, n_embd=32)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


class Recording:
    """Wraps a task: evaluate() also records, per user message, the completion it was given."""

    def __init__(self, task):
        self.task, self.seen = task, {}
        self.eval_type, self.baseline = task.eval_type, task.baseline

    def __len__(self):
        return len(self.task)

    def __getitem__(self, i):
        return self.task[i]

    def evaluate(self, conversation, completion):
        self.seen[conversation["messages"][0]["content"]] = completion
        return self.task.evaluate(conversation, completion)


def test_categorical_fast_matches_reference_on_a_real_gpt(tiny_tokenizer):
    for seed in range(3):
        model = random_gpt(tiny_tokenizer, seed=seed)
        reference = Recording(ToyMC(n=23, seed=seed))
        counts = evaluate_categorical(model, tiny_tokenizer, reference, batch_size=1, fast=False)
        assert len(set(reference.seen.values())) > 1, "test precondition: the model does not always pick one letter"
        for batch_size in (1, 5, 64):
            fast = Recording(ToyMC(n=23, seed=seed))
            assert evaluate_categorical(model, tiny_tokenizer, fast, batch_size=batch_size) == counts
            assert fast.seen == reference.seen  # the same letter for every item


class ToyGenerative(Task):
    """Prompts of different lengths; a completion passes if it has an even number of characters."""

    def __init__(self, n=7, long_prompt_at=None, **kwargs):
        super().__init__(**kwargs)
        self.n, self.long_prompt_at = n, long_prompt_at

    def num_examples(self):
        return self.n

    def get_example(self, index):
        question = f"Item {index}: tell me about " + "the model " * (index % 4)
        if index == self.long_prompt_at:
            question += "text and tokens " * 200  # fills the context: counted as failed, never generated
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]}

    def evaluate(self, conversation, completion):
        return int(len(completion) % 2 == 0)


@pytest.mark.parametrize("num_slots", [3, 16])
def test_generative_batched_matches_one_at_a_time(tiny_tokenizer, num_slots):
    # greedy decoding: every problem must get the same completion in the batched engine (prompts of
    # different lengths prefilled together, problems joining as slots free up) as on its own
    model = random_gpt(tiny_tokenizer, sequence_len=128)
    reference = Recording(ToyGenerative(n=7, long_prompt_at=5))
    counts = evaluate_generative(model, tiny_tokenizer, reference, max_new_tokens=12, batched=False)
    assert counts[1] == 7 and len(reference.seen) == 6  # the long prompt is a failure, not generated
    assert len(set(reference.seen.values())) > 1, "test precondition: the problems get different completions"
    batched = Recording(ToyGenerative(n=7, long_prompt_at=5))
    assert evaluate_generative(model, tiny_tokenizer, batched, max_new_tokens=12, num_slots=num_slots) == counts
    assert batched.seen == reference.seen
    capped = Recording(ToyGenerative(n=7))
    assert evaluate_generative(model, tiny_tokenizer, capped, max_new_tokens=12, max_items=3)[1] == 3
    assert len(capped.seen) == 3


def test_task_baselines_and_chatcore(tiny_tokenizer):
    # each task's random baseline lives on its class, as a fraction
    assert ARC.baseline == MMLU.baseline == 0.25
    assert GSM8K.baseline == HumanEval.baseline == SpellingBee.baseline == 0.0
    assert set(TASKS) == {"ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"}
    task = ToyMC(n=8)
    task.baseline = 0.25
    r = evaluate_task(random_gpt(tiny_tokenizer), tiny_tokenizer, "toy", task=task)
    assert r["baseline"] == 0.25 and r["total"] == 8
    assert r["centered"] == pytest.approx((r["accuracy"] - 0.25) / 0.75)
    results = {"ARC-Easy": {"centered": 0.0}, "MMLU": {"centered": 0.5}, "GSM8K": {"centered": 0.1}}
    assert chatcore(results) == pytest.approx(0.2)
    with pytest.raises(AssertionError):
        chatcore({})


class SortedBySubject(Task):
    """MMLU-like: 20 subjects of 30 items each, stored sorted by subject (as MMLU's test split is);
    records which items an evaluation reads."""

    eval_type = "categorical"
    baseline = 0.25

    def __init__(self):
        super().__init__()
        self.read = []

    def num_examples(self):
        return 600

    def get_example(self, index):
        self.read.append(index)
        subject = index // 30
        return {"messages": [{"role": "user", "content": render_mc(f"subject {subject} item {index}?", LETTERS,
                                                                 ["w", "x", "y", "z"])},
                             {"role": "assistant", "content": "A"}],
                "letters": LETTERS, "subject": subject}

    def evaluate(self, conversation, completion):
        return evaluate_letter(conversation, completion)


def test_a_cap_samples_the_whole_split_with_a_fixed_seed(tiny_tokenizer):
    model = random_gpt(tiny_tokenizer, sequence_len=128)
    runs = []
    for _ in range(2):
        task = SortedBySubject()
        assert evaluate_categorical(model, tiny_tokenizer, task, batch_size=16, max_items=60)[1] == 60
        runs.append(task.read)
    assert runs[0] == runs[1], "the same items on every run"
    assert len(set(runs[0])) == 60
    assert len({i // 30 for i in runs[0]}) >= 15  # the first 60 items would be 2 of the 20 subjects
    assert sorted(eval_indices(600, 60)) == sorted(runs[0]) and eval_indices(600, 60, seed=1) != eval_indices(600, 60)
    assert eval_indices(5, 10) == eval_indices(5) == [0, 1, 2, 3, 4]  # a cap at or above the size: all, in order
