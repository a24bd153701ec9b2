"""
The chat-task evaluators of nanochat/task_eval.py, with stub models whose answers are known.

The categorical evaluator must read the logits at the last prompt position of each row (prompts
are right-padded in a batch) and compare only the answer letters.
"""

import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from nanochat.task_eval import BASELINES, centered, chatcore, evaluate_categorical, letter_token_ids
from tasks.common import Task, evaluate_letter, render_mc

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
    for batch_size in (1, 4, 64):
        correct, total = evaluate_categorical(oracle, tiny_tokenizer, task, batch_size=batch_size)
        assert (correct, total) == (len(task), len(task))
    correct, total = evaluate_categorical(oracle, tiny_tokenizer, task, batch_size=4, max_problems=5)
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
    assert evaluate_categorical(model, tiny_tokenizer, task, batch_size=8) == (expected, len(task))


def test_chatcore_is_the_mean_centred_accuracy():
    results = {"ARC-Easy": 0.25, "MMLU": 0.625, "GSM8K": 0.1}
    expected = (0.0 + (0.625 - 0.25) / 0.75 + 0.1) / 3
    assert chatcore(results) == pytest.approx(expected)
    assert centered(1.0, BASELINES["ARC-Challenge"]) == 1.0
    with pytest.raises(AssertionError):
        chatcore({})
