"""
Evaluating a chat model on the tasks in tasks/: accuracy per task and ChatCORE.

Two kinds of task (a Task's `eval_type`):
- categorical (ARC, MMLU): the prompt is rendered for completion and the model's next-token logits
  are compared over the answer letters only; the most likely letter is the answer. Prompts are
  batched (right-padded: attention is causal, so padding after the prompt changes nothing before it).
- generative (GSM8K, HumanEval, SpellingBee): completions are sampled through the Engine (greedy by
  default, with tool use); with num_samples > 1 an item passes if any sample passes (pass@k).

Items are spread over ranks (rank::world_size) and the counts are summed across ranks.
ChatCORE is the mean over tasks of the centred accuracy (acc - baseline) / (1 - baseline), with
baseline 0.25 for the 4-way multiple-choice tasks and 0 for generative ones.

Used by scripts/chat_eval.py (and by later stages that evaluate during training).
"""

import time

import torch
import torch.distributed as dist

from nanochat.common import get_rank, get_world_size, print0
from nanochat.engine import Engine

# The tasks chat_eval knows, with their ChatCORE baselines.
BASELINES = {
    "ARC-Easy": 0.25,
    "ARC-Challenge": 0.25,
    "MMLU": 0.25,
    "GSM8K": 0.0,
    "HumanEval": 0.0,
    "SpellingBee": 0.0,
}


def load_task(name):
    """The evaluation split of a task by its chat_eval name."""
    if name in ("ARC-Easy", "ARC-Challenge"):
        from tasks.arc import ARC
        return ARC(name, "test")
    if name == "MMLU":
        from tasks.mmlu import MMLU
        return MMLU("all", "test")
    if name == "GSM8K":
        from tasks.gsm8k import GSM8K
        return GSM8K("main", "test")
    if name == "HumanEval":
        from tasks.humaneval import HumanEval
        return HumanEval()
    if name == "SpellingBee":
        from tasks.spellingbee import SpellingBee
        return SpellingBee(size=256, split="test")
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(BASELINES)}")


def _sum_across_ranks(*counts, device):
    if get_world_size() == 1:
        return counts
    t = torch.tensor(counts, dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(t.tolist())


def letter_token_ids(tokenizer, letters):
    """The single token id of each answer letter (as the assistant writes it, with no space)."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(letter)
        assert len(encoded) == 1, f"answer letter {letter!r} is {len(encoded)} tokens; expected one"
        ids.append(encoded[0])
    return ids


@torch.inference_mode()
def evaluate_categorical(model, tokenizer, task, batch_size=8, max_problems=None):
    """(num_correct, num_total) of a categorical task, summed over ranks."""
    device = model.get_device()
    rank, world = get_rank(), get_world_size()
    n = len(task) if max_problems is None else min(len(task), max_problems)
    pad = tokenizer.get_bos_token_id()  # any id: padded positions come after every prompt's last token
    correct = total = 0
    indices = list(range(rank, n, world))
    for start in range(0, len(indices), batch_size):
        conversations = [task[i] for i in indices[start:start + batch_size]]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = torch.tensor(prompt)
        logits = model(ids.to(device))  # (B, T, V)
        for row, (conversation, prompt) in enumerate(zip(conversations, prompts)):
            letters = conversation["letters"]
            choice_ids = torch.tensor(letter_token_ids(tokenizer, letters), device=device)
            scores = logits[row, len(prompt) - 1, choice_ids]  # (num_letters,)
            predicted = letters[int(scores.argmax())]
            correct += int(task.evaluate(conversation, predicted))
            total += 1
    return _sum_across_ranks(correct, total, device=device)


@torch.inference_mode()
def evaluate_generative(model, tokenizer, task, num_samples=1, max_new_tokens=512, temperature=0.0,
                        top_k=50, max_problems=None, seed=42):
    """(num_passed, num_total) of a generative task, pass@num_samples, summed over ranks."""
    device = model.get_device()
    engine = Engine(model, tokenizer)
    rank, world = get_rank(), get_world_size()
    n = len(task) if max_problems is None else min(len(task), max_problems)
    passed = total = 0
    room = model.config.sequence_len
    for i in range(rank, n, world):
        conversation = task[i]
        prompt = tokenizer.render_for_completion(conversation)
        max_tokens = min(max_new_tokens, room - len(prompt))
        if max_tokens <= 0:
            total += 1  # a prompt that fills the context cannot be answered: counted as failed
            continue
        results, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                           temperature=temperature, top_k=top_k, seed=seed + i)
        completions = [tokenizer.decode(r[len(prompt):]) for r in results]
        passed += int(any(task.evaluate(conversation, c) for c in completions))
        total += 1
    return _sum_across_ranks(passed, total, device=device)


def evaluate_task(model, tokenizer, name, task=None, batch_size=8, num_samples=1, max_new_tokens=512,
                  temperature=0.0, top_k=50, max_problems=None):
    """Accuracy of one task by name (loading its evaluation split unless `task` is given)."""
    task = load_task(name) if task is None else task
    t0 = time.time()
    if task.eval_type == "categorical":
        correct, total = evaluate_categorical(model, tokenizer, task, batch_size, max_problems)
    else:
        if temperature == 0.0 and num_samples > 1:
            print0(f"{name}: {num_samples} greedy samples are identical; use --temperature > 0 for pass@k")
        correct, total = evaluate_generative(model, tokenizer, task, num_samples, max_new_tokens,
                                             temperature, top_k, max_problems)
    accuracy = correct / max(total, 1)
    return {"task": name, "correct": correct, "total": total, "accuracy": accuracy,
            "seconds": time.time() - t0}


def centered(accuracy, baseline):
    return (accuracy - baseline) / (1.0 - baseline)


def chatcore(results):
    """The mean centred accuracy over the evaluated tasks (a dict name -> accuracy)."""
    assert results, "ChatCORE needs at least one task"
    return sum(centered(acc, BASELINES[name]) for name, acc in results.items()) / len(results)
