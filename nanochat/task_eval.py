"""
Evaluating a chat model on the tasks in tasks/: accuracy per task and ChatCORE.

    result = evaluate_task(model, tokenizer, "ARC-Easy", max_items=100)   # {"accuracy": ..., ...}
    score = chatcore({name: result, ...})

Two kinds of task (a Task's `eval_type`):
- categorical (ARC, MMLU): the prompt is rendered for completion and the model's next-token logits
  are compared over the answer letters only; the most likely letter is the answer. Prompts are
  sorted by length and batched (right-padded: attention is causal, so padding after the prompt
  changes nothing before it); with nanochat's GPT the head runs at each prompt's last position
  only. fast=False is the reference (prompts in order, full logits) it is tested against.
- generative (GSM8K, HumanEval, SpellingBee): completions are sampled through the Engine (greedy by
  default, with tool use), all of a rank's problems batched together by Engine.generate_many;
  with num_samples > 1 a problem passes if any sample passes (pass@k). batched=False is the
  reference, one problem at a time through Engine.generate_batch. A task scores `reply_text`: the
  assistant's own text, without its tool calls and the tool's outputs, so a "#### 5" that the
  calculator printed (a call on the string '#### 5') is no answer; chat_rl's reward reads the same.

A cap (max_items) evaluates a seeded random sample of the whole split (`eval_indices`), the same
items on every run: splits are often stored sorted (MMLU by subject), so the first N items would
cover a few subjects only. Items are spread over ranks (rank::world_size) and the counts are summed across ranks.
Each accuracy comes with its 95% Wilson interval, and `score_intervals` adds ChatCORE's bootstrap
interval (nanochat/stats.py) for the records that report.md reads.
Units: accuracies, baselines and centred accuracies are fractions (0..1). Each task's random
baseline is its Task class's `baseline` attribute (0.25 for 4-way multiple choice, 0 for
generative tasks); ChatCORE is the mean over tasks of the centred accuracy
(acc - baseline) / (1 - baseline).

Used by scripts/chat_eval.py and scripts/chat_sft.py, which pick the Task by name in
tasks/registry.py: this module scores the Task it is given and imports nothing from tasks/.
"""

import random
import time

import torch
import torch.distributed as dist

from nanochat.common import get_rank, get_world_size, print0
from nanochat.core_eval import centered_accuracy
from nanochat.engine import Engine, SamplingParams
from nanochat.stats import bootstrap_centered_mean, interval_record, wilson_interval


def _sum_across_ranks(*counts, device):
    if get_world_size() == 1:
        return counts
    t = torch.tensor(counts, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(t.tolist())


SAMPLE_SEED = 42  # the seed of the capped evaluations' item sample


def eval_indices(num_items, max_items=None, seed=SAMPLE_SEED):
    """The task indices an evaluation covers: all of them in order, or with a cap a seeded random
    sample of max_items drawn from the whole split (deterministic for a seed, in sampled order)."""
    if max_items is None or max_items >= num_items:
        return list(range(num_items))
    return random.Random(seed).sample(range(num_items), max_items)


TOOL_BLOCKS = {"<|python_start|>": "<|python_end|>", "<|output_start|>": "<|output_end|>"}


def reply_text(tokenizer, tokens):
    """The assistant's own text in a reply (token ids after <|assistant_start|>), what a task scores:
    the tokens inside a tool call (<|python_start|> ... <|python_end|>) or a tool output
    (<|output_start|> ... <|output_end|>, forced by the engine) are left out, the special tokens too.
    Read from the ids, not from decoded text: ordinary tokens can spell "<|output_end|>" as well."""
    closing = {tokenizer.encode_special(a): tokenizer.encode_special(b) for a, b in TOOL_BLOCKS.items()}
    specials = {tokenizer.encode_special(name) for name in tokenizer.get_special_tokens()}
    own, until = [], None  # until: the token that ends the tool block we are in
    for token in tokens:
        if until is not None:
            until = None if token == until else until
        elif token in closing:
            until = closing[token]
        elif token not in specials:
            own.append(token)
    return tokenizer.decode(own)  # decoded together: a character split over two tokens stays whole


def letter_token_ids(tokenizer, letters):
    """The single token id of each answer letter (as the assistant writes it, with no space)."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(letter)
        assert len(encoded) == 1, f"answer letter {letter!r} is {len(encoded)} tokens; expected one"
        ids.append(encoded[0])
    return ids


@torch.inference_mode()
def evaluate_categorical(model, tokenizer, task, batch_size=8, max_items=None, fast=True):
    """(num_correct, num_total) of a categorical task on max_items items (eval_indices), summed over ranks."""
    device = model.get_device()
    rank, world = get_rank(), get_world_size()
    pad = tokenizer.get_bos_token_id()  # any id: padded positions come after every prompt's last token
    items = []  # (conversation, prompt ids) of this rank's items
    for i in eval_indices(len(task), max_items)[rank::world]:
        conversation = task[i]
        items.append((conversation, tokenizer.render_for_completion(conversation)))
    if fast:
        items.sort(key=lambda item: len(item[1]))  # similar lengths together: little padding
    use_hidden = fast and hasattr(model, "hidden_states")
    correct = total = 0
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        lengths = [len(prompt) for _, prompt in batch]
        ids = torch.full((len(batch), max(lengths)), pad, dtype=torch.long)
        for row, (_, prompt) in enumerate(batch):
            ids[row, :len(prompt)] = torch.tensor(prompt)
        ids = ids.to(device)
        rows, last = torch.arange(len(batch), device=device), torch.tensor(lengths, device=device) - 1
        if use_hidden:  # the head at each prompt's last position only
            logits = model.logits_from_hidden(model.hidden_states(ids)[rows, last])  # (B, V)
        else:
            logits = model(ids)[rows, last]  # (B, T, V) -> (B, V)
        for row, (conversation, _) in enumerate(batch):
            letters = conversation["letters"]
            choice_ids = torch.tensor(letter_token_ids(tokenizer, letters), device=device)
            predicted = letters[int(logits[row, choice_ids].argmax())]
            correct += int(task.evaluate(conversation, predicted))
            total += 1
    return _sum_across_ranks(correct, total, device=device)


@torch.inference_mode()
def evaluate_generative(model, tokenizer, task, num_samples=1, max_new_tokens=512, temperature=0.0,
                        top_k=50, max_items=None, seed=42, batched=True, num_slots=16):
    """(num_passed, num_total) of a generative task on max_items problems (eval_indices), pass@num_samples,
    summed over ranks. Problem i samples with seed + i. batched=True runs all of this rank's problems
    through one Engine.generate_many (num_slots KV-cache rows); batched=False is the reference, one
    problem at a time."""
    device = model.get_device()
    rank, world = get_rank(), get_world_size()
    room = model.config.sequence_len
    problems = []  # (index, conversation, prompt, max_tokens) of this rank's answerable problems
    passed = total = 0
    for i in eval_indices(len(task), max_items)[rank::world]:
        conversation = task[i]
        prompt = tokenizer.render_for_completion(conversation)
        max_tokens = min(max_new_tokens, room - len(prompt))
        if max_tokens <= 0:
            total += 1  # a prompt that fills the context cannot be answered: counted as failed
            continue
        problems.append((i, conversation, prompt, max_tokens))
    if batched:
        engine = Engine(model, tokenizer, num_slots=max(num_slots, num_samples))
        params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k or None,
                                 seed=seed + i, n=num_samples) for i, _, _, max_tokens in problems]
        outputs = engine.generate_many([prompt for _, _, prompt, _ in problems], params) if problems else []
        texts = [[reply_text(tokenizer, c.tokens) for c in completions] for completions in outputs]
    else:
        engine = Engine(model, tokenizer)
        texts = []
        for i, _, prompt, max_tokens in problems:
            results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                               temperature=temperature, top_k=top_k, seed=seed + i)
            texts.append([reply_text(tokenizer, r[len(prompt):]) for r in results])
    for (_, conversation, _, _), completions in zip(problems, texts, strict=True):
        passed += int(any(task.evaluate(conversation, c) for c in completions))
        total += 1
    return _sum_across_ranks(passed, total, device=device)


def evaluate_task(model, tokenizer, name, task, batch_size=8, num_samples=1, max_new_tokens=512,
                  temperature=0.0, top_k=50, max_items=None, fast=True):
    """One task (a tasks/ Task, e.g. tasks.registry.load_eval_task(name)), reported under `name`: a
    dict with task, correct, total, accuracy, baseline, centered (fractions) and seconds. fast=False
    runs the reference paths (categorical: full logits, prompts in order; generative: one at a time)."""
    t0 = time.time()
    if task.eval_type == "categorical":
        correct, total = evaluate_categorical(model, tokenizer, task, batch_size, max_items, fast=fast)
    else:
        if temperature == 0.0 and num_samples > 1:
            print0(f"{name}: {num_samples} greedy samples are identical; use --temperature > 0 for pass@k")
        correct, total = evaluate_generative(model, tokenizer, task, num_samples, max_new_tokens,
                                             temperature, top_k, max_items, batched=fast)
    accuracy = correct / max(total, 1)
    return {"task": name, "correct": correct, "total": total, "accuracy": accuracy, "baseline": task.baseline,
            "centered": centered_accuracy(accuracy, task.baseline), "interval": list(wilson_interval(correct, total)),
            "seconds": time.time() - t0}


def chatcore(results):
    """ChatCORE: the mean centred accuracy over the evaluated tasks ({name: evaluate_task's dict})."""
    assert results, "ChatCORE needs at least one task"
    return sum(r["centered"] for r in results.values()) / len(results)


def score_intervals(results):
    """{name: interval record, ..., "ChatCORE": ...} of evaluate_task results ({name: dict}): each
    accuracy's Wilson interval and ChatCORE's seeded bootstrap (nanochat.stats), for a results record."""
    intervals = {name: interval_record(*wilson_interval(r["correct"], r["total"]), r["total"], "wilson")
                 for name, r in results.items()}
    counted = [r for r in results.values() if r["total"] > 0]
    if len(counted) == len(results):
        low, high = bootstrap_centered_mean([(r["correct"], r["total"], r["baseline"]) for r in counted])
        intervals["ChatCORE"] = interval_record(low, high, sum(r["total"] for r in counted), "bootstrap")
    return intervals
