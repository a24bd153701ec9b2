"""
What a training or evaluation stage writes about itself while it runs and when it ends.

    log = RunLog(run_dir, master, resume_step=step)      # log.jsonl: one JSON record per step / eval
    log.record({"step": 10, "loss": 2.3})
    meter = ProgressMeter(tokens_per_step, flops_per_token, peak_flops, world_size, num_iterations)
    line = meter.update(step, train_loss, dt)            # "step 00010 11/200 (5.5%) | loss ... | eta ..."
    stop = StopFlag()                                    # SIGTERM -> save after this step, on every rank
    train_loss, stopping = stop.reduce(loss_sum / grad_accum, device)   # one all-reduce for both
    finish_run(run_dir, summary)                         # summary.json + loss.svg
    save_results("chat_sft", name="chat_sft_d4", config=vars(args), metrics={...})

Results. Every stage records its configuration, metrics and timings once, at its end, in one
machine-readable place: get_base_dir()/results/<name>.json (written atomically, rank 0 only).
Schema (nanochat/report.py renders these; anything may read them):
    {"stage": "base_train" | "base_loss" | "base_eval" | "tok_train" | "tok_eval" | "mid_train"
              | "chat_sft" | "chat_rl" | "chat_eval" | ...,
     "name": file stem, unique per (stage, model, source, step) so two models never overwrite,
     "source": "base" | "mid" | "sft" | "rl" | None   (the checkpoint evaluated or trained from),
     "model_tag": "d4" | None, "step": int | None,
     "started_at": unix time, "finished_at": unix time, "wall_time_s": float,
     "config": vars(args) or any JSON dict, "metrics": {name: number or str or list},
     "artifacts": {"run_dir": ..., "log": .../log.jsonl, "loss_curve": .../loss.svg} (paths, optional),
     "extra": any JSON (samples, per-task tables)}
"""

import json
import math
import os
import resource
import signal
import time

import torch
import torch.distributed as dist

from nanochat.common import atomic_write, get_base_dir, print0

PROCESS_START = time.time()


class RunLog:
    """log.jsonl of a run folder: one JSON record per line, appended by rank 0 (and sent to wandb).

    On a resume from step s the records of steps < s are kept and the later ones dropped (the
    resumed run writes them again); a line cut short by a crash has no newline and is dropped too.
    Without resume_step the log starts empty.
    """

    def __init__(self, run_dir, master, resume_step=None, wandb_run=None):
        self.path = os.path.join(run_dir, "log.jsonl")
        self.master = master
        self.wandb_run = wandb_run
        if not master:
            return
        os.makedirs(run_dir, exist_ok=True)
        kept = []
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.endswith("\n") and json.loads(line)["step"] < resume_step]
        atomic_write(self.path, lambda f: f.writelines(kept))

    def record(self, rec):
        """Append one record (a JSON dict with a "step") to log.jsonl and wandb (rank 0)."""
        if not self.master:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(rec)


def peak_memory_gib(device):
    """Peak memory of this process: CUDA's max allocated, else the peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


class ProgressMeter:
    """The progress line of a training loop: step, % done, EMA loss, lr multiplier, step time,
    tokens/s, MFU, memory and ETA, and the matching log record.

        meter = ProgressMeter(tokens_per_step, flops_per_token, peak_flops, world_size, num_iterations)
        line, rec = meter.update(step, loss, dt, lrm=lrm, device=device)   # after each optimizer step

    The EMA of the loss (beta 0.9, debiased) and the training time are state: save
    meter.state_dict() in a checkpoint and load_state_dict() it on resume. With a time budget
    (time_budget_s) instead of num_iterations the ETA counts down the budget. tokens_per_step may be
    None when it varies (pass tokens= to update). peak_flops None: MFU is n/a.
    """

    def __init__(self, tokens_per_step, flops_per_token, peak_flops, world_size, num_iterations=None,
                 time_budget_s=None, beta=0.9):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world_size = peak_flops, world_size
        self.num_iterations, self.time_budget_s, self.beta = num_iterations, time_budget_s, beta
        self.ema, self.ema_steps, self.train_time, self.total_tokens = 0.0, 0, 0.0, 0
        self.step_times = []

    def state_dict(self):
        return dict(ema=self.ema, ema_steps=self.ema_steps, train_time=self.train_time, total_tokens=self.total_tokens)

    def load_state_dict(self, state):
        self.ema, self.ema_steps = state["ema"], state["ema_steps"]
        self.train_time, self.total_tokens = state["train_time"], state["total_tokens"]

    def mfu(self, tokens, seconds):
        if not self.peak_flops or not seconds or self.flops_per_token is None:
            return None
        return self.flops_per_token * tokens / seconds / (self.peak_flops * self.world_size)

    def update(self, step, loss, dt, lrm=None, tokens=None, device="cpu", **extra):
        """Account one optimizer step (0-based `step`, taking dt seconds, training loss `loss`);
        returns (progress line, log record). Extra keyword values go into both."""
        tokens = self.tokens_per_step if tokens is None else tokens
        self.step_times.append(dt)
        self.train_time += dt
        self.total_tokens += tokens
        self.ema_steps += 1
        self.ema = self.beta * self.ema + (1 - self.beta) * loss
        smooth = self.ema / (1 - self.beta ** self.ema_steps)
        tok_per_s = tokens / dt if dt > 0 else float("nan")
        mfu = self.mfu(tokens, dt)
        typical_dt = sorted(self.step_times)[len(self.step_times) // 2]
        if self.time_budget_s is not None:
            eta_s = self.time_budget_s - self.train_time
            of = f"{self.train_time / 60:.2f}/{self.time_budget_s / 60:g} min"
        elif self.num_iterations:
            eta_s = (self.num_iterations - step - 1) * typical_dt
            of = f"{step + 1}/{self.num_iterations} ({100 * (step + 1) / self.num_iterations:.1f}%)"
        else:
            eta_s, of = float("nan"), f"{step + 1}"
        mfu_str = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        extras = "".join(f" | {k} {v:.4f}" if isinstance(v, float) else f" | {k} {v}" for k, v in extra.items())
        lrm_str = f" | lrm {lrm:.3f}" if lrm is not None else ""
        line = (f"step {step:05d} {of} | loss {smooth:.6f}{extras}{lrm_str} | dt {1000 * dt:.0f} ms | "
                f"tok/s {tok_per_s:,.0f} | mfu {mfu_str} | mem {peak_memory_gib(device):.2f} GiB | "
                f"eta {max(eta_s, 0) / 60:.1f} min")
        rec = dict(step=step, loss=loss, smooth_loss=smooth, lrm=lrm, dt=dt, tok_per_s=tok_per_s, mfu=mfu,
                   train_time=self.train_time, **extra)
        return line, rec

    def summary(self):
        """Totals for summary.json: training time (evaluation excluded), tokens, FLOPs, tok/s, MFU."""
        t = self.train_time
        total_flops = self.flops_per_token * self.total_tokens if self.flops_per_token is not None else None
        return dict(training_time_s=t, total_tokens=self.total_tokens, total_flops=total_flops,
                    tok_per_s=self.total_tokens / t if t else None, mfu=self.mfu(self.total_tokens, t),
                    peak_flops_per_device=self.peak_flops)


class StopFlag:
    """SIGTERM (a preempted instance) asks the run to stop after the current step. Every rank must
    agree, or one would save while another waits in a collective: reduce() all-reduces the flag
    together with the step's loss, one collective per step.

        stop = StopFlag()
        train_loss, stopping = stop.reduce(loss_sum / grad_accum_steps, device)
        if stopping: save; exit 0
    """

    def __init__(self, install=True):
        self.requested = False
        if install:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.requested = True
        rank = os.environ.get("RANK", "0")
        print(f"rank {rank}: SIGTERM received; saving a checkpoint after this step", flush=True)

    def reduce(self, loss, device):
        """(mean of `loss` (a 0-d tensor) over the ranks, whether any rank was asked to stop)."""
        stats = torch.stack([loss.detach().float().to(device), torch.tensor(float(self.requested), device=device)])
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            world = dist.get_world_size()
        return stats[0].item() / world, stats[1].item() > 0


def finish_run(run_dir, summary, master):
    """Write summary.json and draw loss.svg from log.jsonl (rank 0). Returns the artifacts dict
    {"run_dir", "log", "summary", "loss_curve"} for save_results (loss_curve None when nothing was drawn)."""
    from nanochat.plot import plot_training_log

    log_path, svg_path = os.path.join(run_dir, "log.jsonl"), os.path.join(run_dir, "loss.svg")
    summary_path = os.path.join(run_dir, "summary.json")
    artifacts = dict(run_dir=run_dir, log=log_path, summary=summary_path, loss_curve=None)
    if not master:
        return artifacts
    atomic_write(summary_path, lambda f: json.dump(summary, f, indent=2, default=str))
    if os.path.exists(log_path) and plot_training_log(log_path, svg_path):
        artifacts["loss_curve"] = svg_path
        print0(f"loss curves: {svg_path}")
    return artifacts


def results_dir():
    """get_base_dir()/results, created on first use."""
    path = os.path.join(get_base_dir(), "results")
    os.makedirs(path, exist_ok=True)
    return path


def save_results(stage, name=None, config=None, metrics=None, source=None, model_tag=None, step=None,
                 artifacts=None, extra=None, started_at=None):
    """Write get_base_dir()/results/<name>.json (schema in the module docstring); returns its path.
    Call it on rank 0 only. started_at defaults to the time this module was imported (the script's start)."""
    name = name or "_".join(str(p) for p in (stage, source, model_tag, None if step is None else f"{step:06d}") if p)
    started_at = PROCESS_START if started_at is None else started_at
    finished_at = time.time()
    record = dict(stage=stage, name=name, source=source, model_tag=model_tag, step=step,
                  started_at=started_at, finished_at=finished_at, wall_time_s=finished_at - started_at,
                  config=config or {}, metrics=metrics or {}, artifacts=artifacts or {}, extra=extra or {})
    text = json.dumps(record, indent=2, default=str)  # before touching the disk: a bad record breaks nothing
    path = os.path.join(results_dir(), f"{name}.json")
    atomic_write(path, lambda f: f.write(text + "\n"))
    return path


def load_results():
    """Every results record under get_base_dir()/results, oldest first (unreadable files skipped)."""
    records = []
    for fname in sorted(os.listdir(results_dir())):
        if not fname.endswith(".json"):
            continue
        try:
            with open(os.path.join(results_dir(), fname)) as f:
                records.append(json.load(f))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("finished_at", 0))
