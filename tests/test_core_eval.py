"""
Tests for nanochat/core_eval.py (the CORE metric).

Scoring is checked against a slow reference written here: every option is rendered by hand, run
through the model alone and unpadded, and its continuation log-probabilities summed token by token.
The models are small deterministic stubs: a causal "bigram + running context" LM with random
weights (log-probabilities known from one full forward) and a memorising oracle that knows the gold
continuations. The tokenizer is the real one (the `tiny_tokenizer` fixture of conftest.py).

    uv run pytest tests/test_core_eval.py -q
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat import core_eval
from nanochat.core_bundle import load_core_tasks
from nanochat.stats import bootstrap_centered_mean, wilson_interval
from nanochat.core_eval import (
    centered_accuracy,
    core_metric,
    evaluate_example,
    evaluate_task,
    fewshot_indices,
    prepare_example,
    score_rows,
    score_rows_fast,
)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: extra intra-op threads only add contention on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -----------------------------------------------------------------------------
# stub models

class Config:
    def __init__(self, sequence_len):
        self.sequence_len = sequence_len


class StubLM(nn.Module):
    """Causal LM with random weights: logits[t] = B[idx[t]] + mean(onehot(idx[:t+1])) @ C.

    The running mean makes every position depend on the whole prefix, so misplaced padding,
    shifted positions or a wrong crop change the scores.
    """

    def __init__(self, vocab_size, sequence_len=4096, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bigram = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g) * 2.0)
        self.context = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g) * 4.0)
        self.vocab_size = vocab_size
        self.config = Config(sequence_len)

    def forward(self, idx):  # (B, T) -> (B, T, V)
        onehot = F.one_hot(idx, self.vocab_size).float()
        counts = torch.arange(1, idx.size(1) + 1, dtype=torch.float32)[None, :, None]
        prefix_mean = onehot.cumsum(dim=1) / counts
        return self.bigram[idx] + prefix_mean @ self.context


class OracleLM(nn.Module):
    """Knows a set of token sequences: when the input so far is a prefix of one, it puts a large logit
    on that sequence's next token; everywhere else the distribution is uniform."""

    def __init__(self, vocab_size, sequences, sequence_len=4096):
        super().__init__()
        self.vocab_size = vocab_size
        self.next_token = {}
        for seq in sequences:
            for t in range(1, len(seq)):
                self.next_token[tuple(seq[:t])] = seq[t]
        self.config = Config(sequence_len)

    def forward(self, idx):
        logits = torch.zeros(idx.size(0), idx.size(1), self.vocab_size)
        for b, row in enumerate(idx.tolist()):
            for t in range(len(row)):
                nxt = self.next_token.get(tuple(row[: t + 1]))
                if nxt is not None:
                    logits[b, t, nxt] = 20.0
        return logits


# -----------------------------------------------------------------------------
# hand-made tasks (words from the tiny corpus, so the tiny tokenizer has merges for them)

MC_ITEMS = [
    {"query": "The model learns to", "choices": ["predict the next token", "answers politely", "fine tuned"], "gold": 0},
    {"query": "It is fine tuned on", "choices": ["conversations", "the model", "text and then"], "gold": 0},
    {"query": "What is 12 + 30? It is", "choices": ["forty two", "seven", "large"], "gold": 0},
    {"query": "The next token from a large", "choices": ["amount of text", "model", "questions"], "gold": 0},
    {"query": "so that it answers", "choices": ["questions politely", "the next token", "large"], "gold": 0},
    {"query": "def add(a, b):", "choices": ["return a + b", "print(add)", "for i"], "gold": 0},
]
SCHEMA_ITEMS = [
    {"context_options": ["The model", "The token"], "continuation": "learns to predict the next token", "gold": 0},
    {"context_options": ["It answers questions", "It answers text"], "continuation": "politely and correctly", "gold": 0},
    {"context_options": ["We fine tune the model", "We fine tune the text"], "continuation": "on conversations", "gold": 1},
    {"context_options": ["A large amount of text", "A large amount of tokens", "A large model"], "continuation": "is used", "gold": 2},
]
LM_ITEMS = [
    {"context": "The model learns to predict the next", "continuation": "token"},
    {"context": "12 + 30 =", "continuation": "42"},
    {"context": "It is fine tuned on", "continuation": "conversations"},
    {"context": "def add(a, b):\n   ", "continuation": "return a + b"},
    {"context": "What is 1234 * 5678?", "continuation": "7006652"},
]


def meta(kind, shots=0, delim=" ", label=None):
    return dict(label=label or kind, dataset_uri="x.jsonl", num_fewshot=shots, task_type=kind,
                continuation_delimiter=delim, random_baseline=0.0)


def reference_prompts(item, shots, kind, delim):
    """(context, [full prompt per option]) built by hand: examples joined by a blank line, then the item."""
    if kind == "multiple_choice":
        shot_texts = [s["query"] + delim + s["choices"][s["gold"]] for s in shots]
        head = "\n\n".join(shot_texts + [item["query"]])
        return [head] * len(item["choices"]), [head + delim + c for c in item["choices"]]
    if kind == "schema":
        shot_texts = [s["context_options"][s["gold"]] + delim + s["continuation"] for s in shots]
        heads = ["\n\n".join(shot_texts + [c]) for c in item["context_options"]]
        return heads, [h + delim + item["continuation"] for h in heads]
    shot_texts = [s["context"] + delim + s["continuation"] for s in shots]
    head = "\n\n".join(shot_texts + [item["context"]])
    return [head], [head + delim + item["continuation"]]


def reference_scores(model, tokenizer, item, shots, kind, delim, max_seq_len=None):
    """Per option: (sum log-prob, mean log-prob, greedy reproduces the continuation), one unpadded forward each."""
    bos = tokenizer.get_bos_token_id()
    heads, fulls = reference_prompts(item, shots, kind, delim)
    out = []
    for head, full in zip(heads, fulls):
        head_ids = [bos] + tokenizer.encode(head)
        ids = [bos] + tokenizer.encode(full)
        assert ids[: len(head_ids)] == head_ids, "test precondition: the context tokenises as a prefix"
        start = len(head_ids)
        if max_seq_len is not None and len(ids) > max_seq_len:
            cut = len(ids) - max_seq_len
            ids, start = ids[cut:], start - cut
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
        total, greedy = 0.0, True
        for t in range(start, len(ids)):
            total += logp[t - 1, ids[t]].item()
            greedy = greedy and int(logp[t - 1].argmax()) == ids[t]
        out.append((total, total / (len(ids) - start), greedy, ids, start))
    # test preconditions: the options differ at the first continuation token (multiple choice)
    # or at the last context token (schema), so the continuation is exactly the text after the context
    if kind == "multiple_choice":
        assert len({ids[start] for *_, ids, start in out}) == len(out)
    if kind == "schema":
        assert len({ids[start - 1] for *_, ids, start in out}) == len(out)
    return [o[:3] for o in out]


def reference_correct(model, tokenizer, data, idx, task, max_seq_len=None):
    shots = [data[j] for j in fewshot_indices(idx, len(data), task["num_fewshot"])]
    scores = reference_scores(model, tokenizer, data[idx], shots, task["task_type"], task["continuation_delimiter"], max_seq_len)
    if task["task_type"] == "language_modeling":
        return scores[0][2]
    means = [m for _, m, _ in scores]
    return means.index(max(means)) == data[idx]["gold"]


# -----------------------------------------------------------------------------
# scoring against the reference

@pytest.mark.parametrize("kind,data,shots", [
    ("multiple_choice", MC_ITEMS, 0), ("multiple_choice", MC_ITEMS, 2),
    ("schema", SCHEMA_ITEMS, 0), ("schema", SCHEMA_ITEMS, 1),
    ("language_modeling", LM_ITEMS, 0), ("language_modeling", LM_ITEMS, 3),
])
def test_scores_match_reference(tiny_tokenizer, kind, data, shots):
    task = meta(kind, shots)
    for seed in range(3):
        model = StubLM(tiny_tokenizer.get_vocab_size(), seed=seed)
        for idx in range(len(data)):
            rows, spans, _ = prepare_example(idx, data, tiny_tokenizer, task)
            picked = [data[j] for j in fewshot_indices(idx, len(data), shots)]
            ref = reference_scores(model, tiny_tokenizer, data[idx], picked, kind, " ")
            got = score_rows(model, rows, spans, "cpu", pad_id=tiny_tokenizer.get_bos_token_id())
            assert len(got) == len(ref)
            for (mean, greedy), (_, ref_mean, ref_greedy) in zip(got, ref):
                assert mean == pytest.approx(ref_mean, abs=1e-4)
                assert greedy == ref_greedy
            assert evaluate_example(idx, model, tiny_tokenizer, data, "cpu", task) == \
                reference_correct(model, tiny_tokenizer, data, idx, task)


@pytest.mark.parametrize("kind,data", [("multiple_choice", MC_ITEMS), ("schema", SCHEMA_ITEMS), ("language_modeling", LM_ITEMS)])
def test_evaluate_task_batched_matches_reference(tiny_tokenizer, kind, data):
    task = meta(kind, shots=1)
    for seed in range(4):
        model = StubLM(tiny_tokenizer.get_vocab_size(), seed=10 + seed)
        expected = [reference_correct(model, tiny_tokenizer, data, i, task) for i in range(len(data))]
        for batch_size in (1, 3, len(data)):
            acc = evaluate_task(model, tiny_tokenizer, data, "cpu", task, batch_size=batch_size)
            assert acc == pytest.approx(sum(expected) / len(data))
        # max_items evaluates a prefix, with few-shot examples still drawn from all the data
        acc = evaluate_task(model, tiny_tokenizer, data, "cpu", task, max_items=2)
        assert acc == pytest.approx(sum(expected[:2]) / 2)


@pytest.mark.parametrize("kind,data", [("multiple_choice", MC_ITEMS), ("schema", SCHEMA_ITEMS), ("language_modeling", LM_ITEMS)])
def test_oracle_scores_perfect_and_wrong_oracle_scores_zero(tiny_tokenizer, kind, data):
    bos, task = tiny_tokenizer.get_bos_token_id(), meta(kind)
    V = tiny_tokenizer.get_vocab_size()

    def sequences(pick):  # the full token sequence of the option `pick(item)` for every item
        seqs = []
        for item in data:
            _, fulls = reference_prompts(item, [], kind, " ")
            seqs.append([bos] + tiny_tokenizer.encode(fulls[pick(item)]))
        return seqs

    if kind == "language_modeling":
        assert evaluate_task(OracleLM(V, sequences(lambda it: 0)), tiny_tokenizer, data, "cpu", task) == 1.0
        assert evaluate_task(StubLM(V, seed=3), tiny_tokenizer, data, "cpu", task) == 0.0  # random weights never recite
    else:
        gold = OracleLM(V, sequences(lambda it: it["gold"]))
        wrong = OracleLM(V, sequences(lambda it: (it["gold"] + 1) % len(reference_prompts(it, [], kind, " ")[1])))
        assert evaluate_task(gold, tiny_tokenizer, data, "cpu", task) == 1.0
        assert evaluate_task(wrong, tiny_tokenizer, data, "cpu", task) == 0.0


def gpt_logprob_atol(model):
    """The absolute tolerance of a mean log-probability from the project's GPT in fp32, from the
    computation: per layer a few roundings of dot products of length n_embd (batched and padded
    rows sum in another order), then a log-softmax over the vocabulary, on logits of size <= 15
    (the soft-cap)."""
    cfg = model.config
    return 4 * torch.finfo(torch.float32).eps * (cfg.n_embd * cfg.n_layer + math.log2(cfg.vocab_size)) * 15.0


def random_gpt(tokenizer, sequence_len, n_kv_head=2, seed=0):
    """The project's transformer, small, with every weight random (init_weights zeroes the output
    projections and nearly zeroes the head, which would make all options tie)."""
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


@pytest.mark.parametrize("kind,data", [("multiple_choice", MC_ITEMS), ("schema", SCHEMA_ITEMS), ("language_modeling", LM_ITEMS)])
def test_real_gpt_padded_batch_matches_reference(tiny_tokenizer, kind, data):
    # the project's transformer: right padding in a batch must not change any option's score,
    # in the reference scorer nor in the fast one (head at the scored positions only)
    max_len = 64  # long enough that rows differ in length, short enough that some are cropped
    model = random_gpt(tiny_tokenizer, max_len)
    task = meta(kind, shots=2)
    prepared = [prepare_example(i, data, tiny_tokenizer, task, max_seq_len=max_len) for i in range(len(data))]
    rows = [r for p in prepared for r in p[0]]
    spans = [s for p in prepared for s in p[1]]
    assert len({len(r) for r in rows}) > 1, "test precondition: rows of different lengths, so some are padded"
    ref = []
    for i in range(len(data)):
        shots = [data[j] for j in fewshot_indices(i, len(data), 2)]
        ref += reference_scores(model, tiny_tokenizer, data[i], shots, kind, " ", max_seq_len=max_len)
    for scorer in (score_rows, score_rows_fast):
        got = scorer(model, rows, spans, "cpu", pad_id=tiny_tokenizer.get_bos_token_id())  # one padded batch
        for (mean, greedy), (_, ref_mean, ref_greedy) in zip(got, ref, strict=True):
            assert mean == pytest.approx(ref_mean, abs=gpt_logprob_atol(model))
            assert greedy == ref_greedy
    expected = [reference_correct(model, tiny_tokenizer, data, i, task, max_len) for i in range(len(data))]
    for fast in (False, True):
        acc = evaluate_task(model, tiny_tokenizer, data, "cpu", task, batch_size=4, fast=fast)
        assert acc == pytest.approx(sum(expected) / len(data))


@pytest.mark.parametrize("n_kv_head", [2, 1])
@pytest.mark.parametrize("kind,data", [("multiple_choice", MC_ITEMS), ("schema", SCHEMA_ITEMS), ("language_modeling", LM_ITEMS)])
def test_fast_matches_reference_on_a_real_gpt(tiny_tokenizer, kind, data, n_kv_head):
    # the fast path (head at the scored positions, an item's shared prefix run once through the KV
    # cache, items sorted by length into padded batches) gives the reference's scores and accuracy;
    # at a context of 40 some prompts are cropped differently per option and share no prefix
    bos = tiny_tokenizer.get_bos_token_id()
    shared_seen = 0
    for max_len, shots in ((128, 2), (40, 3)):
        model = random_gpt(tiny_tokenizer, max_len, n_kv_head, seed=max_len)
        task = meta(kind, shots=shots)
        shareable, shareable_refs = [], []
        for i in range(len(data)):
            rows, spans, _ = prepare_example(i, data, tiny_tokenizer, task, max_seq_len=max_len)
            ref = score_rows(model, rows, spans, "cpu", pad_id=bos)
            got = [score_rows_fast(model, rows, spans, "cpu", pad_id=bos)]
            if len(rows) > 1 and core_eval.shared_prefix_len(rows, spans) >= 1:
                [alone] = core_eval.score_items_shared_prefix(model, [(rows, spans)], "cpu", pad_id=bos)
                got.append(alone)
                shareable.append((rows, spans))
                shareable_refs.append(ref)
            for scores in got:
                for (mean, greedy), (ref_mean, ref_greedy) in zip(scores, ref, strict=True):
                    assert mean == pytest.approx(ref_mean, abs=gpt_logprob_atol(model))
                    assert greedy == ref_greedy
        if shareable:  # all at once: prefixes of different lengths in one cache, rows at their own positions
            assert len({core_eval.shared_prefix_len(*item) for item in shareable}) > 1
            together = core_eval.score_items_shared_prefix(model, shareable, "cpu", pad_id=bos)
            for scores, ref in zip(together, shareable_refs, strict=True):
                for (mean, greedy), (ref_mean, ref_greedy) in zip(scores, ref, strict=True):
                    assert mean == pytest.approx(ref_mean, abs=gpt_logprob_atol(model))
                    assert greedy == ref_greedy
            shared_seen += len(shareable)
        reference = evaluate_task(model, tiny_tokenizer, data, "cpu", task, batch_size=1, fast=False)
        for batch_size in (1, 3, 16):
            assert evaluate_task(model, tiny_tokenizer, data, "cpu", task, batch_size=batch_size) == reference
    if kind != "language_modeling":
        assert shared_seen >= len(data), "the shared-prefix path was not exercised"


def test_language_modeling_needs_every_token_greedy(tiny_tokenizer):
    # the oracle knows all but the last continuation token: the item must count as wrong
    bos, V = tiny_tokenizer.get_bos_token_id(), tiny_tokenizer.get_vocab_size()
    data = [{"context": "It is fine tuned on", "continuation": "conversations politely"}]
    full = [bos] + tiny_tokenizer.encode("It is fine tuned on conversations politely")
    assert evaluate_task(OracleLM(V, [full]), tiny_tokenizer, data, "cpu", meta("language_modeling")) == 1.0
    assert evaluate_task(OracleLM(V, [full[:-1]]), tiny_tokenizer, data, "cpu", meta("language_modeling")) == 0.0


# -----------------------------------------------------------------------------
# few-shot examples

def test_fewshot_indices_deterministic_and_never_the_item():
    n = 12
    for k in (0, 1, 5, n - 1):
        for idx in range(n):
            picks = fewshot_indices(idx, n, k)
            assert picks == fewshot_indices(idx, n, k)
            assert len(picks) == k and len(set(picks)) == k
            assert idx not in picks and all(0 <= j < n for j in picks)
    assert sorted(fewshot_indices(4, n, n - 1)) == [j for j in range(n) if j != 4]
    # different items get different examples (not one fixed list for everyone)
    assert len({tuple(fewshot_indices(i, 1000, 5)) for i in range(50)}) == 50


def test_fewshot_prompt_layout(tiny_tokenizer):
    data = [{"query": f"Question {i}:", "choices": [f" yes {i}", f" no {i}"], "gold": i % 2} for i in range(8)]
    task = meta("multiple_choice", shots=3, delim="\nAnswer:")
    for idx in range(len(data)):
        rows, _, _ = prepare_example(idx, data, tiny_tokenizer, task)
        shots = [data[j] for j in fewshot_indices(idx, len(data), 3)]
        expected = "".join(s["query"] + "\nAnswer:" + s["choices"][s["gold"]] + "\n\n" for s in shots)
        for row, choice in zip(rows, data[idx]["choices"]):
            assert row[0] == tiny_tokenizer.get_bos_token_id()
            text = tiny_tokenizer.decode(row[1:])
            assert text == expected + data[idx]["query"] + "\nAnswer:" + choice
            assert text.count(f"Question {idx}:") == 1  # the item is never its own example


# -----------------------------------------------------------------------------
# cropping long prompts from the left

@pytest.mark.parametrize("kind,data", [("multiple_choice", MC_ITEMS), ("schema", SCHEMA_ITEMS), ("language_modeling", LM_ITEMS)])
def test_left_crop_keeps_continuation(tiny_tokenizer, kind, data):
    task = meta(kind, shots=len(data) - 1)  # every other item as an example: long prompts
    max_len = 24
    model = StubLM(tiny_tokenizer.get_vocab_size(), sequence_len=max_len, seed=5)
    for idx in range(len(data)):
        full_rows, full_spans, _ = prepare_example(idx, data, tiny_tokenizer, task)
        assert max(len(r) for r in full_rows) > max_len, "test precondition: the prompt needs cropping"
        rows, spans, _ = prepare_example(idx, data, tiny_tokenizer, task, max_seq_len=max_len)
        for row, (s, e), frow, (fs, fe) in zip(rows, spans, full_rows, full_spans):
            assert len(row) == min(len(frow), max_len)
            assert row == frow[len(frow) - len(row):]  # the kept part is the end of the prompt
            assert row[s:e] == frow[fs:fe]  # the continuation survives whole
        # evaluate_task reads the context length from model.config and scores the cropped rows
        assert evaluate_example(idx, model, tiny_tokenizer, data, "cpu", task, max_seq_len=max_len) == \
            reference_correct(model, tiny_tokenizer, data, idx, task, max_seq_len=max_len)
    expected = sum(reference_correct(model, tiny_tokenizer, data, i, task, max_len) for i in range(len(data)))
    assert evaluate_task(model, tiny_tokenizer, data, "cpu", task) == pytest.approx(expected / len(data))


def test_continuation_longer_than_context_is_an_error(tiny_tokenizer):
    data = [{"context": "The", "continuation": "model learns to predict the next token from a large amount of text"}] * 2
    with pytest.raises(ValueError, match="does not fit a context of 4 tokens"):
        prepare_example(0, data, tiny_tokenizer, meta("language_modeling"), max_seq_len=4)


# -----------------------------------------------------------------------------
# centring and CORE

def test_centered_accuracy_and_core():
    # fractions everywhere: the baseline too (the bundle's percent is converted when read)
    assert centered_accuracy(0.25, 0.25) == pytest.approx(0.0)
    assert centered_accuracy(1.0, 0.25) == pytest.approx(1.0)
    assert centered_accuracy(0.7, 0.25) == pytest.approx(0.6)  # (0.7 - 0.25) / 0.75
    assert centered_accuracy(0.1, 0.5) == pytest.approx(-0.8)  # below chance is negative
    assert centered_accuracy(0.3, 0.0) == pytest.approx(0.3)
    with pytest.raises(AssertionError, match="not a fraction"):
        centered_accuracy(0.5, 25.0)  # a percentage passed by mistake
    assert core_metric({"a": 0.6, "b": -0.2, "c": 0.2}) == pytest.approx(0.2)


# -----------------------------------------------------------------------------
# a tiny bundle: core.yaml, eval_meta_data.csv, data files (its own tests: tests/test_core_bundle.py)

TINY_YAML = """\
# a comment line
icl_tasks:
-
  label: mc_task   # trailing comment
  dataset_uri: cat/mc.jsonl
  num_fewshot: [2]
  icl_task_type: multiple_choice
  continuation_delimiter: "\\nAnswer: "
- label: lm_task
  dataset_uri: cat/lm.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
  continuation_delimiter: 'it''s: '
  has_categories: true
"""
TINY_CSV = (
    "Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
    'mc_task,cat,multiple choice,2,6,25,,"A description, with a comma"\n'
    "lm_task,cat,language modeling,0,5,0,,plain\n"
    "unused_task,cat,schema,0,1,50,,not in the yaml\n"
)


def write_bundle(root, yaml_text=TINY_YAML, csv_text=TINY_CSV):
    (root / "eval_data" / "cat").mkdir(parents=True)
    (root / "core.yaml").write_text(yaml_text)
    (root / "eval_meta_data.csv").write_text(csv_text)
    (root / "eval_data" / "cat" / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in MC_ITEMS))
    (root / "eval_data" / "cat" / "lm.jsonl").write_text("".join(json.dumps(x) + "\n" for x in LM_ITEMS))
    return root


# -----------------------------------------------------------------------------
# evaluate_core and scripts/base_eval.py

def test_evaluate_core_fast_equals_reference(tiny_tokenizer, tmp_path, monkeypatch):
    write_bundle(tmp_path / "mirror" / "core")
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "mirror"))
    model = random_gpt(tiny_tokenizer, 128)
    reference = core_eval.evaluate_core(model, tiny_tokenizer, "cpu", max_per_task=4, fast=False, batch_size=1)
    assert set(reference["tasks"]) == {"mc_task", "lm_task"}
    assert core_eval.evaluate_core(model, tiny_tokenizer, "cpu", max_per_task=4) == {
        "core": reference["core"], "core_interval": reference["core_interval"],
        "tasks": {label: dict(r, seconds=pytest.approx(r["seconds"], abs=1e9)) for label, r in reference["tasks"].items()}}
    # each task as evaluate_task scores it on the first 4 items after the fixed shuffle
    import random
    tasks = load_core_tasks(str(tmp_path / "mirror" / "core"))
    for task in tasks:
        data = core_eval.load_task_data(str(tmp_path / "mirror" / "core"), task)
        random.Random(core_eval.DATA_SHUFFLE_SEED).shuffle(data)
        r = reference["tasks"][task["label"]]
        assert r["items"] == 4
        assert r["accuracy"] == evaluate_task(model, tiny_tokenizer, data, "cpu", task, max_items=4, fast=False)
        assert r["centered"] == pytest.approx(centered_accuracy(r["accuracy"], task["random_baseline"]))
        assert r["correct"] / 4 == r["accuracy"] and r["baseline"] == task["random_baseline"]
        assert r["interval"] == [pytest.approx(centered_accuracy(b, r["baseline"])) for b in wilson_interval(r["correct"], 4)]
    low, high = reference["core_interval"]
    assert (low, high) == bootstrap_centered_mean([(r["correct"], 4, r["baseline"]) for r in reference["tasks"].values()])
    assert low <= reference["core"] <= high
    assert reference["core"] == pytest.approx(core_metric({k: r["centered"] for k, r in reference["tasks"].items()}))
    only = core_eval.evaluate_core(model, tiny_tokenizer, "cpu", tasks=["lm_task"])
    assert set(only["tasks"]) == {"lm_task"} and only["tasks"]["lm_task"]["items"] == len(LM_ITEMS)
    with pytest.raises(ValueError, match="unknown CORE task.*choose from mc_task, lm_task"):
        core_eval.evaluate_core(model, tiny_tokenizer, "cpu", tasks=["lm_task", "nope"])


def test_base_eval_end_to_end(tiny_tokenizer, tmp_path, monkeypatch):
    # base_eval as a subprocess on a tiny bundle and checkpoint: its results record must hold what
    # evaluate_core computes in-process, under a name that says which model and step it was
    import subprocess
    import sys
    from nanochat.checkpoint_manager import save_checkpoint

    base, mirror = tmp_path / "base", tmp_path / "mirror"
    write_bundle(mirror / "core")
    tiny_tokenizer.save(str(base / "tokenizer"))
    model = random_gpt(tiny_tokenizer, 128)
    config = {"model_config": model.config.__dict__}
    save_checkpoint(str(base / "base_checkpoints" / "d2"), 5, model.state_dict(), None, dict(config, step=5))
    save_checkpoint(str(base / "chat_checkpoints" / "d2"), 7, model.state_dict(), None, dict(config, step=7))
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_DATA_DIR=str(mirror), OMP_NUM_THREADS="1")

    def base_eval(*flags):
        return subprocess.run([sys.executable, "-m", "scripts.base_eval", "--device-type", "cpu", *flags],
                              cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                              timeout=600)

    proc = base_eval("--eval-items", "3", "--dtype", "float32")  # fp32, as the reference below
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(base / "results" / "base_eval_d2_000005.json") as f:
        record = json.load(f)
    assert (record["stage"], record["source"], record["model_tag"], record["step"]) == ("base_eval", "base", "d2", 5)
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(mirror))
    expected = core_eval.evaluate_core(model, tiny_tokenizer, "cpu", max_per_task=3, fast=False, batch_size=1)
    assert record["metrics"] == pytest.approx(
        {"CORE": expected["core"], **{label: r["centered"] for label, r in expected["tasks"].items()}})
    assert record["extra"]["tasks"]["mc_task"]["items"] == 3 and record["config"]["eval_items"] == 3
    intervals = record["extra"]["intervals"]  # what report.md shows: CORE's bootstrap, each task's Wilson
    assert (intervals["CORE"]["low"], intervals["CORE"]["high"]) == pytest.approx(expected["core_interval"])
    assert intervals["CORE"]["n"] == 6 and intervals["CORE"]["method"] == "bootstrap"
    assert [intervals["mc_task"]["low"], intervals["mc_task"]["high"]] == pytest.approx(expected["tasks"]["mc_task"]["interval"])
    assert f"CORE: {expected['core']:.4f} [{expected['core_interval'][0]:.4f}, " in proc.stdout

    proc = base_eval("-i", "sft", "-a", "lm_task")  # another stage's checkpoint: its own record
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(base / "results" / "base_eval_sft_d2_000007.json") as f:
        sft = json.load(f)
    assert set(sft["metrics"]) == {"CORE", "lm_task"} and (sft["source"], sft["step"]) == ("sft", 7)
    proc = base_eval("-a", "lm_task,nope")
    assert proc.returncode != 0 and "unknown CORE task" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # two more interpreters importing torch
def test_base_eval_bad_flags_give_clear_errors(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tmp_path / "base"), NANOCHAT_DATA_DIR=str(tmp_path / "mirror"))
    write_bundle(tmp_path / "mirror" / "core")
    for flags, message in ((("--max-per-task", "0"), "--max-per-task"), (("-i", "rl"), "cannot load the rl model")):
        proc = subprocess.run([sys.executable, "-m", "scripts.base_eval", "--device-type", "cpu", *flags],
                              cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# -----------------------------------------------------------------------------
# items spread over ranks

def _ddp_worker(rank, world_size, init_file, vocab_size, tokenizer, queue):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = StubLM(vocab_size, seed=21)
        for kind, data in (("multiple_choice", MC_ITEMS), ("language_modeling", LM_ITEMS)):
            queue.put((rank, kind, evaluate_task(model, tokenizer, data, "cpu", meta(kind, shots=1))))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch: tens of seconds on a busy 2-core machine
def test_evaluate_task_two_ranks_equals_one(tiny_tokenizer, tmp_path):
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    V = tiny_tokenizer.get_vocab_size()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), V, tiny_tokenizer, queue), nprocs=2, join=True)
    results = [queue.get(timeout=10) for _ in range(4)]
    model = StubLM(V, seed=21)
    for kind, data in (("multiple_choice", MC_ITEMS), ("language_modeling", LM_ITEMS)):
        single = evaluate_task(model, tiny_tokenizer, data, "cpu", meta(kind, shots=1))
        assert sorted(r for r, k, _ in results if k == kind) == [0, 1]
        assert all(acc == pytest.approx(single) for _, k, acc in results if k == kind)
