"""
Reinforcement learning on GSM8K from the SFT (or mid) checkpoint: on-policy policy gradient with a
per-question mean baseline.

    python -m scripts.chat_rl                                          # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.chat_rl -- --run=rl_d20     # 8 GPUs: the questions are spread over ranks
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.chat_rl --device-type=cpu --questions-per-step=4 \
        --num-samples=4 --max-new-tokens=128 --num-iterations=20 --eval-every=10 --eval-items=20
                                                                       # a small CPU run
Under torchrun put "--" before the script's flags (as for base_train).

One step, with Q = --questions-per-step (all ranks together) and n = --num-samples:
  1. the next Q questions of the train split, in an order shuffled once per pass (--seed); rank r
     takes questions r, r + world, ... of the step;
  2. n completions of each, sampled from the current model by the engine (continuous batching, the
     calculator on: a tool output is forced into the reply and has mask 0), --temperature, --top-k;
  3. reward r = task.reward(conversation, reply text): 1 for a correct final answer, else 0;
  4. advantage A = r - (mean of the n rewards of the same question);
  5. loss = sum over replies and their SAMPLED tokens t of -A log p(t | prefix), divided by the number
     of sampled tokens of the step (all ranks); one Muon + AdamW step (linear lr decay to 0).
This is REINFORCE with a group-mean baseline: GRPO's group-relative advantage (Shao et al. 2024,
DeepSeekMath) without its division by the group's reward std. What it is NOT: no ratio to an old
policy and no clipping (not PPO), since every batch of samples is used for exactly one gradient step
by the policy that drew it (on-policy, no off-policy reuse); no KL penalty and no reference model; no
value function; no entropy bonus. The prompt and forced tool outputs get no gradient; the stop token
<|assistant_end|> that the model sampled does (it learns when to stop). A reply cut off at
--max-new-tokens keeps its tokens and its reward. A question whose n samples all got the same reward
has A = 0 everywhere: its replies are not forwarded, but their tokens still count in the normaliser.
A step whose every advantage is 0 (on all ranks) has nothing to learn: its optimizer step is skipped
(logged as skipped_update), so the weights and the optimizer state stay bitwise as they were; an
AdamW/Muon step on zero gradients would still move them (momentum, weight decay).

The optimizers start fresh (the source's optimizer state is not loaded); Muon's momentum stays at
0.95 (no warm-up: the weights are already trained). Rewards score the reply's own text
(nanochat.task_eval.reply_text: its tool calls and the tool's outputs left out), as scripts/chat_eval
scores it: an answer the calculator printed earns nothing.

Reproducibility: sample j of question q in step s is drawn with a seed made of (--seed, s, q, j)
(the engine seeds each sample from its params' seed and its index), so a step's samples do not
depend on which rank or batch slot they land in (up to float rounding of batched matmuls, which can
flip a rare sample). The data position is a function of the step, so --resume reproduces the
uninterrupted run's samples, rewards and losses exactly. SIGTERM finishes the step, saves, exits 0.

Evaluation every --eval-every steps (and at the end): on --eval-items questions of the test split
(a seeded sample, nanochat.task_eval.eval_indices, the same every time), --eval-samples completions each at the training temperature: pass@1 (mean fraction
correct) and pass@k (fraction of questions with any correct sample), k = --eval-samples. Greedy
accuracy is scripts/chat_eval's job.

The run folder get_base_dir()/rl_checkpoints/<model tag> (the source's tag) holds the checkpoints
(nanochat.checkpoint_manager; chat_eval -i rl loads them), log.jsonl (one record per step and per
evaluation), samples.jsonl (every --log-samples steps: rank 0's replies with their tokens, masks,
rewards and advantages), summary.json and loss.svg; the final metrics go to
get_base_dir()/results/ (nanochat.runlog.save_results, stage "chat_rl").
--task (tasks/registry.py, RL_TASKS): spellingbee (count a letter, with the calculator) is a small
side task for quick runs and tests. The shared mechanics (flags, set-up, resume, SIGTERM, cadences,
progress line, summary, results) are nanochat/stage.py's. The model is not compiled: prompt and reply lengths vary from step to step.
"""

import argparse
import functools
import json
import os
import random
import time

import torch
import torch.distributed as dist

from nanochat.common import atomic_write, print0
from nanochat.engine import Engine, SamplingParams
from nanochat.flags import add_compute_flags, add_eval_items_flag, add_optimizer_flags, add_reply_flags, \
    add_run_flags, add_source_flags, renamed
from nanochat.plan import rl_plan
from nanochat.stage import Stage, due
from nanochat.stats import bootstrap_mean, fmt_estimate, interval_record, wilson_interval
from nanochat.task_eval import eval_indices, reply_text
from tasks.registry import RL_TASKS, load_rl_task

parser = argparse.ArgumentParser(description="RL (policy gradient with a group-mean baseline) on GSM8K.")
add_compute_flags(parser)
add_source_flags(parser, ("sft", "mid"), default="sft", help_tag="the source's model tag, also the run folder name "
                                                                 "(default: its largest)")
add_run_flags(parser, horizon="one pass over the train split", eval_every=60, save_every=60,
              seed_help="seed of the question order and of sampling")
# task and sampling
parser.add_argument("--task", default="gsm8k", choices=tuple(RL_TASKS), help="the task (train split to learn, test split to evaluate)")
parser.add_argument("--questions-per-step", type=int, default=16, help="questions per optimizer step, all ranks together")
parser.add_argument("--num-samples", type=int, default=16, help="completions sampled per question (the group)")
add_reply_flags(parser, max_new_tokens=256, temperature=1.0, top_k=50)
parser.add_argument("--num-slots", type=int, default=0,
                    help="completions the engine decodes at once (0: all of a rank's step, its share of Q x n)")
# optimization
parser.add_argument("--device-batch-size", type=int, default=8, help="completions (rows) per forward/backward on each device")
add_optimizer_flags(parser, init_lr_frac=0.05, warmdown_ratio=1.0)
# evaluation and output
add_eval_items_flag(parser, default=400, what="evaluation (0: none); test questions")
renamed(parser, "--eval-examples", "--eval-items")
parser.add_argument("--eval-samples", type=int, default=8, help="samples per test question: pass@1 and pass@k for k = this")
parser.add_argument("--log-samples", type=int, default=100, help="write rank 0's replies to samples.jsonl every N steps (-1: never)")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags before any process group exists (every rank exits the same way)

run = Stage("chat_rl", parser, args)
world_size, rank = run.world_size, run.rank
if args.questions_per_step < 1 or args.questions_per_step % world_size:
    parser.error(f"--questions-per-step={args.questions_per_step} must be a positive multiple of the number of ranks "
                 f"({world_size}): every rank takes the same number of questions")
if args.num_samples < 2:
    parser.error(f"--num-samples must be at least 2, got {args.num_samples}: the baseline is the mean reward of a "
                 f"question's samples, so with one sample every advantage is 0 and nothing is learned")
if args.temperature <= 0:
    parser.error(f"--temperature must be > 0, got {args.temperature}: greedy samples are all the same (advantage 0)")
for flag in ("max_new_tokens", "device_batch_size", "eval_samples"):
    if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
if args.top_k < 0 or args.num_slots < 0 or (args.eval_items or 0) < 0:
    parser.error("--top-k, --num-slots and --eval-items must be >= 0")
try:
    train_task, test_task = load_rl_task(args.task)
except (FileNotFoundError, RuntimeError, ValueError) as e:  # no data mirror file, no `datasets`, an empty word list
    run.fail(f"cannot load the {args.task} task: {e}")
questions_per_rank = args.questions_per_step // world_size
num_iterations = args.num_iterations or len(train_task) // args.questions_per_step
if num_iterations < 1:
    run.fail(f"the {args.task} train split has {len(train_task)} questions, fewer than "
             f"--questions-per-step={args.questions_per_step}; lower it or set --num-iterations")

# -----------------------------------------------------------------------------
# compute, source model

run.init_compute()
device = run.device
model, tokenizer, _ = run.load_source(args.source)
config, model_tag, source_step = model.config, run.source["model_tag"], run.source["step"]
run.set_run_dir("rl", model_tag)
# The flags that decide which questions and samples a step sees: a resume must keep them.
TRAJECTORY_FLAGS = ("task", "seed", "questions_per_step", "num_samples", "max_new_tokens", "temperature", "top_k")
if run.resume_meta is not None:
    changed = [f for f in TRAJECTORY_FLAGS if run.resume_meta["user_config"].get(f) != getattr(args, f)]
    if changed:
        run.fail(f"--resume: the run in {run.run_dir} was started with other " +
                 ", ".join(f"--{f.replace('_', '-')}={run.resume_meta['user_config'].get(f)}" for f in changed) +
                 "; resume with the run's own flags")
dtype, autocast = run.pick_dtype()
assistant_end = tokenizer.encode_special("<|assistant_end|>")

# Every KV-cache slot holds the longest prompt plus --max-new-tokens, so a reply is cut only by
# --max-new-tokens, never by the length of the prompt or of the other prompts in the batch.
eval_items = eval_indices(len(test_task), args.eval_items) if args.eval_items != 0 else []
longest_prompt = max([len(tokenizer.render_for_completion(train_task[i])) for i in range(len(train_task))] +
                     [len(tokenizer.render_for_completion(test_task[i])) for i in eval_items])
slot_len = longest_prompt + args.max_new_tokens
num_slots = args.num_slots or max(questions_per_rank * args.num_samples, args.eval_samples)
if slot_len > model.cos.size(1):
    run.fail(f"the longest prompt ({longest_prompt} tokens) + --max-new-tokens={args.max_new_tokens} "
             f"exceeds the model's {model.cos.size(1)} rotary positions; lower --max-new-tokens")
if num_slots < max(args.num_samples, args.eval_samples):
    run.fail(f"--num-slots={num_slots} cannot hold the {max(args.num_samples, args.eval_samples)} "
             f"samples of one question (--num-samples, --eval-samples); raise it")
head_dim = config.n_embd // config.n_head
kv_bytes = num_slots * slot_len * config.n_layer * 2 * config.n_kv_head * head_dim * torch.finfo(dtype).bits // 8

print0(f"task {args.task}: {len(train_task):,} train questions, {len(test_task):,} test | {num_iterations:,} steps of "
       f"{args.questions_per_step} questions x {args.num_samples} samples ({world_size} rank(s), {questions_per_rank} "
       f"question(s) each) | max {args.max_new_tokens} new tokens, temperature {args.temperature}, "
       f"top-k {args.top_k or 'off'} | lr decay over the last {100 * args.warmdown_ratio:g}%")
print0(f"engine: {num_slots} slots of {slot_len} positions (longest prompt {longest_prompt} + "
       f"{args.max_new_tokens} new), KV cache {kv_bytes / 2 ** 30:.2f} GiB")
optimizers = run.setup_optimizers(model)  # fine-tuning: every lr x --init-lr-frac, the schedule scales from there

# -----------------------------------------------------------------------------
# resume, logging

run.meta_extra = dict(source=args.source, source_step=source_step)
run.fit_device_batch(slot_len, questions_per_rank * args.num_samples)  # explicit micro-batch; the plan's shapes
data_position = run.start(dict(eval=None, intervals={}, last_reward=None), None, None, num_iterations,  # MFU of decoding: n/a
                          plan=rl_plan(num_iterations * args.questions_per_step * args.num_samples * slot_len, model,
                                       kv_bytes))
assert data_position in (None, run.step * args.questions_per_step), f"data position {data_position} is not step x Q"
run.data_state = run.step * args.questions_per_step  # the data position is a function of the step
samples_path = os.path.join(run.run_dir, "samples.jsonl")
if run.master:  # like log.jsonl: keep the steps before the resume point, drop the rest
    kept = []
    if args.resume and os.path.exists(samples_path):
        with open(samples_path) as f:
            kept = [line for line in f if line.endswith("\n") and json.loads(line)["step"] < run.step]
    atomic_write(samples_path, lambda f: f.writelines(kept))
engine = Engine(model, tokenizer, num_slots=num_slots, max_seq_len=slot_len)


@functools.lru_cache(maxsize=2)
def pass_order(p):
    """The order in which pass p over the train split visits its questions."""
    order = list(range(len(train_task)))
    random.Random(f"{args.seed}-{p}").shuffle(order)  # a str seed: the same order on every Python version
    return order


def question_index(position):
    """The train question at a (global, 0-based) position of the run."""
    return pass_order(position // len(train_task))[position % len(train_task)]


def train_seed(step, q):
    """The sampling seed of question q (0..Q-1) of a step, whichever rank samples it; distinct for
    every (seed, step, q) (the engine takes any int: it seeds random.Random(f"{seed}/{sample}"))."""
    return (args.seed * 2 ** 32 + step) * 2 ** 32 + q


def eval_seed(i):
    """The sampling seed of test question i: the same at every evaluation, so only the model changes."""
    return (args.seed * 2 ** 32 + 2 ** 31) * 2 ** 32 + i


def sum_over_ranks(values):
    """Elementwise sum over ranks of a list of numbers (float64 on the device)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@torch.no_grad()
def evaluate(step, last):
    """pass@1 and pass@k on the --eval-items test questions, spread over ranks."""
    if not eval_items or not due(step, args.eval_every, last):
        return
    t0 = time.perf_counter()
    indices = eval_items[rank::world_size]
    conversations = [test_task[i] for i in indices]
    params = [SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                             seed=eval_seed(i), n=args.eval_samples) for i in indices]
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    with autocast:
        results = engine.generate_many(prompts, params) if indices else []
    k = args.eval_samples
    histogram = [0] * (k + 1)  # histogram[j]: questions with j of their k samples correct
    for conversation, completions in zip(conversations, results):
        histogram[sum(test_task.reward(conversation, reply_text(tokenizer, c.tokens)) > 0 for c in completions)] += 1
    histogram = [int(h) for h in sum_over_ranks(histogram)]
    total = sum(histogram)
    pass_1 = sum(j * h for j, h in enumerate(histogram)) / (k * total)
    pass_k = (total - histogram[0]) / total
    run.loop["eval"] = {"pass@1": pass_1, f"pass@{k}": pass_k, "eval_questions": total}
    run.loop["intervals"] = {  # 95%: questions are the independent units (nanochat/stats.py)
        "pass@1": interval_record(*bootstrap_mean(histogram, [j / k for j in range(k + 1)]), total, "bootstrap"),
        f"pass@{k}": interval_record(*wilson_interval(total - histogram[0], total), total, "wilson")}
    scores = " | ".join(f"{name} {fmt_estimate(run.loop['eval'][name], (i['low'], i['high']), total, percent=False)}"
                        for name, i in run.loop["intervals"].items())
    run.record_eval(f"{scores} (n: test questions) | eval {time.perf_counter() - t0:.1f}s",
                    **run.loop["eval"], train_time=run.meter.train_time)


# -----------------------------------------------------------------------------
# the loop

for step in run.steps(evaluate):
    # 1) sample: this rank's questions of the step, num_samples completions each, in one batched decode
    t0 = time.perf_counter()
    first = step * args.questions_per_step
    indices = [question_index(first + q) for q in range(rank, args.questions_per_step, world_size)]
    seeds = [train_seed(step, q) for q in range(rank, args.questions_per_step, world_size)]
    conversations = [train_task[i] for i in indices]
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    params = [SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                             seed=s, n=args.num_samples) for s in seeds]
    with autocast:
        results = engine.generate_many(prompts, params)  # per prompt, num_samples Completions

    # 2) rewards and advantages; one training row per completion: prompt + reply (+ the stop token it sampled)
    rows, samples = [], []  # rows: (token ids, loss mask over ids, advantage)
    reward_sum = sampled_tokens = forced_tokens = stopped = 0
    for index, conversation, prompt, completions in zip(indices, conversations, prompts, results):
        # scored on the reply's own text, as chat_eval scores it; logged whole (tool markers included)
        texts = [tokenizer.decode(c.tokens) for c in completions]
        rewards = [train_task.reward(conversation, reply_text(tokenizer, c.tokens)) for c in completions]
        baseline = sum(rewards) / len(rewards)
        for c, text, r in zip(completions, texts, rewards):
            # the engine stops on <|assistant_end|> or <|bos|> and keeps neither; Completion does not say
            # which, so a stopped reply is trained as ending in <|assistant_end|>, what SFT taught
            stop_tail = [assistant_end] if c.finish_reason == "stop" else []
            ids = prompt + c.tokens + stop_tail
            mask = [0] * len(prompt) + c.masks + [1] * len(stop_tail)
            rows.append((ids, mask, r - baseline))
            reward_sum += r
            sampled_tokens += sum(c.masks) + len(stop_tail)
            forced_tokens += len(c.masks) - sum(c.masks)
            stopped += len(stop_tail)
            if run.master and args.log_samples > 0 and step % args.log_samples == 0:
                samples.append(dict(step=step, question=index, text=text, tokens=c.tokens, masks=c.masks,
                                    finish_reason=c.finish_reason, reward=r, advantage=r - baseline))
    if samples:
        with open(samples_path, "a") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
    active = [row for row in rows if row[2] != 0]  # A = 0: no gradient; not forwarded
    totals = sum_over_ranks([sampled_tokens, forced_tokens, reward_sum, len(rows), stopped, len(active)])
    all_sampled, all_forced, all_reward, all_completions, all_stopped, all_active = totals
    t_sample = time.perf_counter() - t0

    # 3) policy gradient: sum over sampled tokens of -A log p, over the sampled tokens of all ranks. The
    # optimizers average gradients over ranks, so each rank's part is scaled by world_size.
    loss_sum = torch.zeros((), device=device)
    for b in range(0, len(active), args.device_batch_size):
        batch = active[b:b + args.device_batch_size]
        T = max(len(ids) for ids, _, _ in batch) - 1
        inputs = torch.full((len(batch), T), assistant_end, dtype=torch.long)  # padding: any id, never a target
        targets = torch.full((len(batch), T), -1, dtype=torch.long)
        for i, (ids, mask, _) in enumerate(batch):
            inputs[i, :len(ids) - 1] = torch.tensor(ids[:-1])
            target = torch.tensor(ids[1:])
            target[torch.tensor(mask[1:]) == 0] = -1  # predict only the sampled tokens
            targets[i, :len(ids) - 1] = target
        advantages = torch.tensor([a for _, _, a in batch], dtype=torch.float32, device=device)
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast:
            nll = model(inputs, targets, loss_reduction="none").view(len(batch), T)  # (B, T), 0 where target -1
        loss = (nll * advantages[:, None]).sum() / all_sampled
        loss_sum += loss.detach()
        (loss * world_size).backward()
    skip = all_active == 0  # every advantage of the step is 0, on every rank: nothing to learn
    if not skip:
        for p in model.parameters():  # every rank steps every parameter (the optimizers' collectives need it)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    lrm = run.optimizer_step(momentum_warmup=False, skip=skip)  # Muon's momentum stays 0.95: already trained
    if skip:
        print0(f"step {step:05d} | every advantage is 0: optimizer step skipped, the weights are unchanged")
    train_loss = run.reduce(loss_sum * world_size)  # mean over ranks of world x part = the loss
    dt = time.perf_counter() - t0
    run.loop["last_reward"] = reward = all_reward / all_completions
    run.data_state = (step + 1) * args.questions_per_step
    run.log_step(train_loss, dt, lrm=lrm, tokens=int(all_sampled + all_forced), reward=reward, sample_s=t_sample,
                 train_s=dt - t_sample,
                 log_extra=dict(sampled_tokens=int(all_sampled), forced_tokens=int(all_forced),
                                mean_reply_tokens=(all_sampled + all_forced) / all_completions,
                                frac_stopped=all_stopped / all_completions, active_completions=len(active),
                                skipped_update=skip))

# -----------------------------------------------------------------------------
# summary

loop = run.loop
run.finish(dict(final_eval=loop["eval"], last_reward=loop["last_reward"]),
           metrics=dict(loop["eval"] or {}, last_reward=loop["last_reward"]),
           artifacts=dict(samples=samples_path), extra=dict(source_step=source_step, intervals=loop.get("intervals") or {}))
