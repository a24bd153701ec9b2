"""
The CORE metric of the DCLM paper (Li et al. 2024, "DataComp-LM", section 3 and appendix G): 22
in-context-learning tasks scored by comparing log-probabilities of continuations, each accuracy
centred against the task's random baseline, CORE = the mean of the centred accuracies.

    out = evaluate_core(model, tokenizer, device, max_per_task=20)   # any stage, any rank count
    out["core"], out["tasks"]["hellaswag"]["centered"]

This file owns (the eval bundle's files and download are nanochat/core_bundle.py's):
- prompt rendering (few-shot examples, continuation delimiter), tokenisation, locating the
  continuation tokens, cropping long prompts from the left;
- scoring one item / one task / all of CORE with any causal LM whose forward(idx) returns logits
  (B, T, V), spread over ranks when torch.distributed is initialised. With nanochat's GPT the fast
  path (the default) computes the head only at the scored positions and runs the context shared
  by an item's options once; fast=False is the reference it is tested against.

Units: accuracies, random baselines and centred accuracies are fractions (0..1; a centred accuracy
is 0 at chance and negative below it). eval_meta_data.csv gives baselines in percent; they are
converted when read.

The three task kinds (llm-foundry's ICL formats):
- multiple_choice {query, choices, gold}: one context, several continuations; the prediction is the
  continuation with the highest MEAN log-probability per token.
- schema {context_options, continuation, gold}: several contexts, one continuation; the prediction is
  the context under which the shared continuation has the highest mean log-probability.
- language_modeling {context, continuation}: correct when greedy argmax decoding reproduces every
  token of the continuation.

Library only; the CLI is scripts/base_eval.py. Tests: tests/test_core_eval.py.
"""

import random
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import print0
from nanochat.core_bundle import TASK_TYPES, get_core_bundle_dir, load_core_tasks, load_task_data
from nanochat.stats import bootstrap_centered_mean, wilson_interval

FEWSHOT_SEPARATOR = "\n\n"
FEWSHOT_SEED = 1234  # item idx draws its examples with random.Random(FEWSHOT_SEED + idx)

# -----------------------------------------------------------------------------
# Prompts and tokens

def fewshot_indices(idx, n, k):
    """k distinct indices in [0, n) other than idx, the same every time for the same (idx, n, k)."""
    assert 0 <= idx < n and 0 <= k < n, f"cannot draw {k} few-shot examples for item {idx} of {n}"
    rng = random.Random(FEWSHOT_SEED + idx)
    # sample from the n-1 other items: shift draws at or after idx up by one so idx itself is never drawn
    return [j + (j >= idx) for j in rng.sample(range(n - 1), k)]


def render_prompts(item, fewshot_items, task_meta):
    """The prompt strings of one item.

    multiple_choice: one full prompt per choice; schema: one per context option;
    language_modeling: [prompt up to the continuation (less the delimiter's trailing spaces), full prompt].
    """
    delim, kind = task_meta["continuation_delimiter"], task_meta["task_type"]
    if kind == "multiple_choice":
        shots = [ex["query"] + delim + ex["choices"][ex["gold"]] for ex in fewshot_items]
        prefix = "".join(s + FEWSHOT_SEPARATOR for s in shots)
        return [prefix + item["query"] + delim + choice for choice in item["choices"]]
    if kind == "schema":
        shots = [ex["context_options"][ex["gold"]] + delim + ex["continuation"] for ex in fewshot_items]
        prefix = "".join(s + FEWSHOT_SEPARATOR for s in shots)
        return [prefix + ctx + delim + item["continuation"] for ctx in item["context_options"]]
    if kind == "language_modeling":
        shots = [ex["context"] + delim + ex["continuation"] for ex in fewshot_items]
        prefix = "".join(s + FEWSHOT_SEPARATOR for s in shots)
        context = prefix + item["context"]
        # BPE merges a space into the word after it, so the context alone ends before the delimiter's trailing spaces
        return [context + delim.rstrip(" "), context + delim + item["continuation"]]
    raise ValueError(f"unknown task type {kind!r}; expected one of {TASK_TYPES}")


def _common_prefix_len(rows):
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return n


def _common_suffix_len(rows):
    return _common_prefix_len([r[::-1] for r in rows])


def prepare_example(idx, data, tokenizer, task_meta, max_seq_len=None):
    """Tokenise item idx with its few-shot examples.

    Returns (rows, spans, gold): rows are token lists (one per option; one for language_modeling),
    spans[i] = (start, end) such that rows[i][start:end] are the continuation tokens scored,
    gold is the index of the right option (None for language_modeling).
    """
    item, kind = data[idx], task_meta["task_type"]
    shots = [data[j] for j in fewshot_indices(idx, len(data), task_meta["num_fewshot"])]
    prompts = render_prompts(item, shots, task_meta)
    rows = tokenizer.encode(prompts, prepend=tokenizer.get_bos_token_id())
    if kind == "multiple_choice":
        assert len(rows) >= 2, f"item {idx} has {len(rows)} choices; multiple choice needs at least 2"
        # everything up to the first token where the options differ is the shared context;
        # keep at least one token per option to score (an option may be a token-prefix of another)
        start = min(_common_prefix_len(rows), min(len(r) for r in rows) - 1)
        spans, gold = [(start, len(r)) for r in rows], item["gold"]
    elif kind == "schema":
        assert len(rows) >= 2, f"item {idx} has {len(rows)} context options; schema needs at least 2"
        # the shared continuation is the common tail; at least the BOS token stays in every context
        n_cont = min(_common_suffix_len(rows), min(len(r) for r in rows) - 1)
        spans, gold = [(len(r) - n_cont, len(r)) for r in rows], item["gold"]
    else:
        context, full = rows
        # normally the context tokens are a prefix of the full prompt; if the tokeniser merged across
        # the boundary, the merged token is scored as part of the continuation
        start = min(_common_prefix_len([context, full]), len(full) - 1)
        rows, spans, gold = [full], [(start, len(full))], None
    if max_seq_len is not None:
        rows, spans = zip(*(_crop_left(r, s, max_seq_len, task_meta["label"], idx) for r, s in zip(rows, spans)))
        rows, spans = list(rows), list(spans)
    return rows, spans, gold


def _crop_left(row, span, max_seq_len, label, idx):
    """Drop tokens from the left so the row fits the model's context; the continuation is kept whole."""
    if len(row) <= max_seq_len:
        return row, span
    cut = len(row) - max_seq_len
    start, end = span[0] - cut, span[1] - cut
    if start < 1:  # position start-1 must remain to predict the first continuation token
        raise ValueError(f"task {label} item {idx}: the continuation ({span[1] - span[0]} tokens) "
                         f"does not fit a context of {max_seq_len} tokens")
    return row[cut:], (start, end)


# -----------------------------------------------------------------------------
# Scoring. Two paths give the same (mean log-prob, greedy ok) per row:
# - the reference, score_rows: one forward of the whole padded batch, the head at every position;
# - the fast path: the head only at the positions scored (model.hidden_states, then
#   model.logits_from_hidden), items sorted by length before batching, and the options of one item
#   sharing their common prefix, which runs once through a KV cache (score_items_shared_prefix).
# At depth 4 the 32K-vocab head is ~70% of a full position's matmul FLOPs, and a multiple-choice
# context is usually far longer than its continuations, so both savings are large (dev/LOG.md).

def _right_pad(rows, pad_id):
    """(B, T) ids, rows padded on the right: with causal attention a pad never changes an earlier position."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids


@torch.no_grad()
def score_rows(model, rows, spans, device, pad_id=0):
    """The reference scorer: all rows as one right-padded batch through model(idx) -> (B, T, V).

    Returns, per row, (mean log-prob of the continuation tokens, whether greedy argmax reproduces them all).
    """
    ids = _right_pad(rows, pad_id)
    logits = model(ids.to(device))  # (B, T, V)
    results = []
    for i, (start, end) in enumerate(spans):
        # logits at position t predict token t+1: positions start-1 .. end-2 predict the continuation
        pred = logits[i, start - 1 : end - 1].float()  # (L, V)
        targets = ids[i, start:end].to(pred.device)  # (L,)
        logprobs = F.log_softmax(pred, dim=-1).gather(1, targets[:, None]).squeeze(1)  # (L,)
        greedy_ok = bool((pred.argmax(dim=-1) == targets).all())
        results.append((logprobs.mean().item(), greedy_ok))
    return results


def _scored_positions(ids, spans, shifts=None):
    """Where score_rows reads logits in a batch ids (B, T) on the device: row i's positions
    start-1 .. end-2, less shifts[i] leading tokens of the row held in a KV cache. Returns (row_idx (N,),
    pos_idx (N,), targets (N,), positions per row)."""
    shifts = shifts or [0] * len(spans)
    row_idx, pos_idx = [], []
    for i, ((start, end), shift) in enumerate(zip(spans, shifts, strict=True)):
        row_idx += [i] * (end - start)
        pos_idx += range(start - 1 - shift, end - 1 - shift)
    row_idx = torch.tensor(row_idx, device=ids.device)
    pos_idx = torch.tensor(pos_idx, device=ids.device)
    return row_idx, pos_idx, ids[row_idx, pos_idx + 1], [end - start for start, end in spans]


def _segment_scores(logits, targets, lengths):
    """score_rows' output from logits (N, V) and targets (N,) of several rows back to back, lengths[i] each."""
    logprobs = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # (N,)
    hits = logits.argmax(dim=-1) == targets  # (N,)
    means = torch.stack([seg.mean() for seg in logprobs.split(lengths)]).tolist()  # one host sync
    greedy = torch.stack([seg.all() for seg in hits.split(lengths)]).tolist()
    return list(zip(means, greedy))


@torch.no_grad()
def score_rows_fast(model, rows, spans, device, pad_id=0):
    """score_rows' results from one right-padded batch, with the head at the scored positions only
    (for a model with hidden_states/logits_from_hidden, as nanochat's GPT; other models give full logits)."""
    ids = _right_pad(rows, pad_id).to(device)
    row_idx, pos_idx, targets, lengths = _scored_positions(ids, spans)
    if hasattr(model, "hidden_states"):
        logits = model.logits_from_hidden(model.hidden_states(ids)[row_idx, pos_idx])  # (N, V)
    else:
        logits = model(ids)[row_idx, pos_idx].float()
    return _segment_scores(logits, targets, lengths)


def shared_prefix_len(rows, spans):
    """How many leading tokens all rows share and no row scores a prediction from (those run once)."""
    return min(_common_prefix_len(rows), min(start for start, _ in spans) - 1)


@torch.no_grad()
def score_items_shared_prefix(model, items, device, pad_id=0):
    """score_rows' results for several items at once, each item's options sharing their common prefix
    (nanochat's GPT; items: a list of (rows, spans) with shared_prefix_len >= 1). Returns, per item,
    the list of its rows' (mean log-prob, greedy ok).

    One KV cache holds K prefix rows and then one row per option: the K prefixes run once, right-
    padded, as one batch; each option row copies its item's prefix (its real positions only); then
    every option's remaining tokens run as one right-padded batch, each row from its own position.
    The head runs at the scored positions only.
    """
    from nanochat.kv_cache import KVCache

    shared = [shared_prefix_len(rows, spans) for rows, spans in items]
    assert min(shared) >= 1, "an item's rows share no prefix; score it with score_rows_fast"
    owner = [k for k, (rows, _) in enumerate(items) for _ in rows]  # the item of each option row
    rests = [r[shared[k]:] for k, (rows, _) in enumerate(items) for r in rows]
    K, R = len(items), len(rests)
    cfg = model.config
    cache = KVCache(K + R, cfg.n_kv_head, max(shared) + max(len(r) for r in rests), cfg.n_embd // cfg.n_head,
                    cfg.n_layer)
    # the keys come out in the autocast dtype under autocast (CUDA bf16), else in the weights' dtype
    autocast = torch.is_autocast_enabled(torch.device(device).type)
    cache.allocate(torch.get_autocast_dtype(torch.device(device).type) if autocast else model.lm_head.weight.dtype,
                   device)
    prefixes = cache.rows(0, K)
    model.hidden_states(_right_pad([rows[0][:s] for (rows, _), s in zip(items, shared)], pad_id).to(device), prefixes)
    prefixes.lengths.copy_(torch.tensor(shared))  # the padding after a shorter prefix does not count
    for r, k in enumerate(owner):
        cache.copy_row(k, K + r)
    ids = _right_pad(rests, pad_id).to(device)  # (R, T)
    hidden = model.hidden_states(ids, cache.rows(K, K + R))  # (R, T, C)
    spans = [span for _, item_spans in items for span in item_spans]
    row_idx, pos_idx, targets, lengths = _scored_positions(ids, spans, [shared[k] for k in owner])
    scores = _segment_scores(model.logits_from_hidden(hidden[row_idx, pos_idx]), targets, lengths)
    out, offset = [], 0
    for rows, _ in items:
        out.append(scores[offset : offset + len(rows)])
        offset += len(rows)
    return out


def is_correct(scores, gold, task_type):
    """Whether the item was answered right, given score_rows' output for its rows."""
    if task_type == "language_modeling":
        return scores[0][1]
    means = [m for m, _ in scores]
    return means.index(max(means)) == gold


def evaluate_example(idx, model, tokenizer, data, device, task_meta, max_seq_len=None):
    """True when the model answers item idx correctly (the reference path)."""
    rows, spans, gold = prepare_example(idx, data, tokenizer, task_meta, max_seq_len)
    scores = score_rows(model, rows, spans, device, pad_id=tokenizer.get_bos_token_id())
    return is_correct(scores, gold, task_meta["task_type"])


def _model_max_seq_len(model):
    config = getattr(model, "config", None)
    return getattr(config, "sequence_len", None)


class _Progress:
    """'label: done/total items on rank 0', redrawn every tenth of the way (rank 0 only)."""

    def __init__(self, label, total, enabled):
        self.label, self.total, self.enabled, self.done, self.next = label, total, enabled and total > 0, 0, 0.1

    def update(self, n):
        self.done += n
        if self.enabled and self.done / self.total >= self.next:
            print0(f"\r  {self.label}: {self.done}/{self.total} items on rank 0", end="", flush=True)
            self.next += 0.1

    def close(self):
        if self.enabled:
            print0("\r" + " " * 70 + "\r", end="", flush=True)


def evaluate_task(model, tokenizer, data, device, task_meta, max_items=None, batch_size=1, max_seq_len=None,
                  progress=False, fast=True):
    """Accuracy of the model on the task's first max_items items (all when None).

    Few-shot examples are drawn from all of `data`, so an item's prompt does not depend on max_items.
    Items are spread over ranks (rank::world_size) and the correct counts summed with all_reduce.
    batch_size items share one forward pass (two for the shared-prefix path). max_seq_len defaults
    to model.config.sequence_len.
    fast=False is the reference path (score_rows, items in order); fast=True gives the same scores
    with the head at the scored positions only, items batched by length, and the options of a
    multiple-choice or schema item sharing their common prefix (for a model with hidden_states).
    """
    n = len(data) if max_items is None else min(max_items, len(data))
    max_seq_len = max_seq_len if max_seq_len is not None else _model_max_seq_len(model)
    ddp = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    pad_id, kind = tokenizer.get_bos_token_id(), task_meta["task_type"]
    my_items = list(range(rank, n, world_size))
    bar = _Progress(task_meta["label"], len(my_items), progress)
    correct = 0
    if fast:
        prepared = [prepare_example(i, data, tokenizer, task_meta, max_seq_len) for i in my_items]
        can_share = hasattr(model, "hidden_states")  # the KV-cache pass needs nanochat's GPT

        def shareable(p):
            return can_share and len(p[0]) > 1 and shared_prefix_len(p[0], p[1]) >= 1

        shared = [p for p in prepared if shareable(p)]
        batched = [p for p in prepared if not shareable(p)]
        # similar lengths together: little padding
        shared.sort(key=lambda p: (shared_prefix_len(p[0], p[1]), max(len(r) for r in p[0])))
        for b in range(0, len(shared), batch_size):
            group = shared[b : b + batch_size]
            for scores, (_, _, gold) in zip(score_items_shared_prefix(model, [(r, s) for r, s, _ in group], device,
                                                                      pad_id), group):
                correct += is_correct(scores, gold, kind)
            bar.update(len(group))
        batched.sort(key=lambda p: max(len(r) for r in p[0]))
        batches = [batched[b : b + batch_size] for b in range(0, len(batched), batch_size)]
    else:  # the reference: items in order, tokenised batch by batch
        batches = ([prepare_example(i, data, tokenizer, task_meta, max_seq_len) for i in my_items[b : b + batch_size]]
                   for b in range(0, len(my_items), batch_size))
    for group in batches:
        rows = [r for p in group for r in p[0]]
        spans = [s for p in group for s in p[1]]
        scores = (score_rows_fast if fast else score_rows)(model, rows, spans, device, pad_id=pad_id)
        offset = 0
        for item_rows, _, gold in group:
            correct += is_correct(scores[offset : offset + len(item_rows)], gold, kind)
            offset += len(item_rows)
        bar.update(len(group))
    bar.close()
    if ddp:
        counts = torch.tensor([correct], dtype=torch.long, device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        correct = int(counts.item())
    return correct / n if n else float("nan")


def centered_accuracy(accuracy, random_baseline):
    """(acc - b) / (1 - b), both fractions in 0..1: 0 at chance, 1 when perfect, negative below chance."""
    assert 0.0 <= random_baseline < 1.0, f"a random baseline of {random_baseline} is not a fraction in [0, 1)"
    return (accuracy - random_baseline) / (1.0 - random_baseline)


def core_metric(centered):
    """CORE: the mean of the tasks' centred accuracies ({label: centred accuracy})."""
    assert centered, "CORE needs at least one task"
    return sum(centered.values()) / len(centered)


# -----------------------------------------------------------------------------
# CORE over the bundle, for any stage

DATA_SHUFFLE_SEED = 1337  # each task's items are shuffled once, so max_per_task N keeps the same N items


def prepare_core_bundle():
    """get_core_bundle_dir() on every rank, rank 0 first (it may download) while the others wait."""
    ddp = dist.is_available() and dist.is_initialized()
    error = [None]
    if not ddp or dist.get_rank() == 0:
        try:
            get_core_bundle_dir()
        except (OSError, RuntimeError) as e:
            error = [str(e)]
    if ddp:
        dist.broadcast_object_list(error, src=0)  # every rank learns whether rank 0 succeeded
    if error[0] is not None:
        raise RuntimeError(error[0])
    return get_core_bundle_dir()


def select_core_tasks(bundle_dir, labels=None):
    """core.yaml's tasks, in its order, restricted to `labels` (None: all); unknown labels are a ValueError."""
    tasks = load_core_tasks(bundle_dir)
    if labels is None:
        return tasks
    unknown = [label for label in labels if label not in {t["label"] for t in tasks}]
    if unknown or not labels:
        raise ValueError(f"unknown CORE task(s) {unknown or labels}; choose from {', '.join(t['label'] for t in tasks)}")
    return [t for t in tasks if t["label"] in labels]


def evaluate_core(model, tokenizer, device, max_per_task=None, tasks=None, fast=True, batch_size=None, progress=False):
    """CORE of a model: every task of core.yaml (or the labels in `tasks`), each on its first
    max_per_task items after a fixed shuffle (None: all), spread over ranks.

    Returns dict(core=float, core_interval=(low, high), tasks={label: {"accuracy", "centered", "items",
    "correct", "baseline", "interval", "seconds"}}), accuracies and centred accuracies as fractions (0..1;
    centred is 0 at the random baseline and may be negative); interval: the centred accuracy's 95% Wilson
    interval, core_interval: CORE's seeded bootstrap interval (nanochat/stats.py).
    progress=True prints one line per task as it finishes (rank 0). fast=False runs the reference path.
    batch_size: items per forward pass; None is 8 on the fast path and 1 on the reference path (whose
    full logits take B x T x vocab floats). Raises RuntimeError (no bundle) or ValueError (unknown
    task, continuation longer than the context).
    """
    assert max_per_task is None or max_per_task >= 1, f"max_per_task must be None or >= 1, got {max_per_task}"
    batch_size = batch_size if batch_size is not None else (8 if fast else 1)
    bundle_dir = prepare_core_bundle()
    selected = select_core_tasks(bundle_dir, tasks)
    results = {}
    for i, task in enumerate(selected):
        data = load_task_data(bundle_dir, task)
        random.Random(DATA_SHUFFLE_SEED).shuffle(data)
        n = len(data) if max_per_task is None else min(max_per_task, len(data))
        t0 = time.time()
        accuracy = evaluate_task(model, tokenizer, data, device, task, max_items=n, batch_size=batch_size,
                                 progress=progress, fast=fast)
        seconds = time.time() - t0
        baseline = task["random_baseline"]
        centered = centered_accuracy(accuracy, baseline)
        correct = round(accuracy * n)  # evaluate_task's correct / n, back to the count
        interval = [centered_accuracy(bound, baseline) for bound in wilson_interval(correct, n)]
        results[task["label"]] = dict(accuracy=accuracy, centered=centered, items=n, correct=correct,
                                      baseline=baseline, interval=interval, seconds=seconds)
        if progress:
            print0(f"[{i + 1:2d}/{len(selected)}] {task['label']:<34} accuracy {accuracy:.4f}  centred {centered:+.4f}  "
                   f"{seconds:7.1f}s ({1000 * seconds / max(n, 1):.0f} ms/item)", flush=True)
    core_interval = bootstrap_centered_mean([(r["correct"], r["items"], r["baseline"]) for r in results.values()])
    return dict(core=core_metric({label: r["centered"] for label, r in results.items()}), core_interval=core_interval,
                tasks=results)
