"""
Time to a fixed val bpb on this machine: runcpu.sh's base stage as it was (BEFORE) against the one
it runs now (AFTER, read from runcpu.sh), two seeds each, run in turn on the data mirror.

    python -m scripts.base_bench                                  # the comparison (~35 min on 2 cores)
    python -m scripts.base_bench --after-minutes 6,10            # + AFTER at runcpu's own budget (~60 min)
    python -m scripts.base_bench --configs after --after-minutes 10 --seeds 0   # today's runcpu base stage, once
    python -m scripts.base_bench --configs after --seeds 0 --after-minutes 3 --after-flags="--matrix-lr=0.04"
                                                                  # an experiment: runcpu's flags, some replaced
(--after-flags=... / --before-flags=...: with "=", since the value starts with "--".)

Each run is `python -m scripts.base_train` with the config's flags (one process, the default device)
plus --seed, --dtype (default float32: a machine without fast bf16 must gain too; `--dtype auto` is
what runcpu.sh does), an evaluation every --eval-interval minutes of training time and at the end,
no checkpoints and no samples, in a temporary base dir holding a copy of the project's tokenizer
(get_base_dir()/tokenizer, made by scripts/tok_train.py). The runs go seed by seed, BEFORE then
AFTER, so that a drift of the machine's speed hits both alike.

AFTER trains for --after-minutes (default 6: "the same bpb in 6 minutes instead of 10" is a run with
a 6-minute schedule), one run per horizon when several are given ("6,10": also what runcpu.sh's own
10 minutes reach); each horizon is a config of its own, "after@6", "after@10". Why not read the
crossing off a 10-minute run: inside any schedule the lr warm-down at its end takes a large part of
the bpb (~0.1 in the last 2 minutes of a 10-minute run), so a curve crosses BEFORE's final only near
its own end, whatever the config; the horizon is what a speed-up has to shorten.

The target (default) is seed by seed: the final val bpb of that seed's BEFORE run, i.e. what today's
defaults reach in their budget on this machine in this run; BEFORE's time is its training time, and
AFTER's is when its eval curve (val bpb against training time, evaluation excluded, compilation
included; an evaluation every --eval-interval minutes and at the end) first crosses that bpb,
interpolated linearly between the two evaluations around the crossing. The speed-up is the median
over seeds of BEFORE's time / AFTER's, per horizon. With --target-bpb every run's time is its crossing of that
value. Both configs are scored on the same validation tokens (the benchmark refuses configs whose
--max-seq-len, --packing or --eval-tokens differ: another validation set is not the same bpb).

Prints each run's curve, a table and, as its last line, one JSON object with every run and the speed-up.
"""

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

from nanochat.common import get_base_dir
from nanochat.flags import DEVICE_TYPES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# runcpu.sh's base stage before issue 19 (commit 637edfb): 10 minutes of training time
BEFORE = ["--depth=4", "--max-seq-len=512", "--device-batch-size=8", "--total-batch-tokens=8192",
          "--max-train-minutes=10", "--eval-every=-1", "--eval-tokens=65536", "--sample-every=-1"]
SAME_VALIDATION = ("--max-seq-len", "--packing", "--eval-tokens")  # flags that pick the val tokens


def runcpu_base_flags(path=os.path.join(REPO_ROOT, "runcpu.sh")):
    """The flags of runcpu.sh's `stage base_train ... python -m scripts.base_train FLAGS` line."""
    with open(path) as f:
        text = f.read().replace("\\\n", " ")  # join continued lines
    line = next((l for l in text.splitlines() if l.startswith("stage base_train ")), None)
    if line is None:
        raise ValueError(f"no `stage base_train` line in {path}")
    words = shlex.split(line, comments=True)
    return words[words.index("scripts.base_train") + 1:]


def flag_values(flags):
    """{--name: value} of --name=value flags (the form BEFORE and runcpu.sh use)."""
    values = {}
    for flag in flags:
        if not re.fullmatch(r"--[a-z0-9-]+=\S*", flag):
            raise ValueError(f"write flags as --name=value, got {flag!r}")
        name, value = flag.split("=", 1)
        values[name] = value
    return values


def merged(flags, overrides):
    """flags with the --name=value of overrides replacing (or added to) theirs."""
    values = flag_values(flags)
    values.update(flag_values(overrides))
    return [f"{k}={v}" for k, v in values.items()]


def time_to_target(evals, target):
    """Training seconds at which the eval curve first reaches target: linear between the evaluation
    before and the first at or below it (None: never reached)."""
    prev = None
    for e in evals:
        if e["val_bpb"] <= target:
            if prev is None or prev["val_bpb"] == e["val_bpb"]:
                return e["train_time"]
            frac = (prev["val_bpb"] - target) / (prev["val_bpb"] - e["val_bpb"])
            return prev["train_time"] + frac * (e["train_time"] - prev["train_time"])
        prev = e
    return None


def run_base_train(flags, seed, args, data_dir, tokenizer_dir):
    """One base_train run in a temporary base dir; its summary and its evaluations."""
    minutes = float(flag_values(flags)["--max-train-minutes"])
    n = int(minutes / args.eval_interval + 1e-9)
    eval_at = ",".join(f"{k * args.eval_interval:g}" for k in range(1, n + 1) if k * args.eval_interval < minutes)
    with tempfile.TemporaryDirectory(prefix="nanochat_bench_") as base_dir:
        shutil.copytree(tokenizer_dir, os.path.join(base_dir, "tokenizer"))
        env = dict(os.environ, NANOCHAT_BASE_DIR=base_dir, NANOCHAT_DATA_DIR=os.path.abspath(data_dir))
        cmd = [sys.executable, "-m", "scripts.base_train", *flags, f"--seed={seed}", f"--dtype={args.dtype}",
               f"--eval-at-minutes={eval_at}", "--save-every=0", "--model-tag=bench",
               *([f"--device-type={args.device_type}"] if args.device_type else [])]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True)
        run_dir = os.path.join(base_dir, "base_checkpoints", "bench")
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            evals = [dict(train_time=r["train_time"], val_bpb=r["val_bpb"]) for r in map(json.loads, f) if "val_bpb" in r]
    return summary, evals


def main():
    parser = argparse.ArgumentParser(description="Time to a fixed val bpb: runcpu.sh's base stage before vs now.")
    parser.add_argument("--configs", default="before,after", help="which to run, in this order per seed")
    parser.add_argument("--seeds", default="0,1", help="comma-separated weight-init seeds")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                        help="compute dtype of every run (float32: the gain must hold without fast bf16)")
    parser.add_argument("--after-flags", default="", help="base_train flags (--name=value) replacing runcpu.sh's in AFTER")
    parser.add_argument("--before-flags", default="", help="base_train flags (--name=value) replacing BEFORE's")
    parser.add_argument("--after-minutes", default="6",
                        help="comma-separated training budgets of AFTER, one run each (its --max-train-minutes)")
    parser.add_argument("--target-bpb", type=float, default=None, help="default: seed by seed, the final val bpb of that seed's BEFORE run")
    parser.add_argument("--eval-interval", type=float, default=1.0, help="minutes of training time between evaluations")
    parser.add_argument("--device-type", default=None, choices=DEVICE_TYPES, help="device (default: autodetect)")
    parser.add_argument("--data-dir", default=None, help="data mirror (default: $NANOCHAT_DATA_DIR, else ../shared/data)")
    args = parser.parse_args()

    try:
        minutes = [float(m) for m in args.after_minutes.split(",") if m.strip()]
    except ValueError:
        minutes = []
    if not minutes or not all(math.isfinite(m) and m > 0 for m in minutes):
        parser.error(f"--after-minutes takes comma-separated positive minutes, got {args.after_minutes!r}")
    try:
        after = merged(runcpu_base_flags(), shlex.split(args.after_flags))
        configs = {"before": merged(BEFORE, shlex.split(args.before_flags)),
                   **{f"after@{m:g}": merged(after, [f"--max-train-minutes={m:g}"]) for m in minutes}}
    except ValueError as e:
        parser.error(str(e))
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not wanted or set(wanted) - {"before", "after"}:
        parser.error(f"--configs takes a list of before, after, got {args.configs!r}")
    names = [n for w in wanted for n in configs if n.split("@")[0] == w]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if not seeds or args.eval_interval <= 0:
        parser.error("need at least one seed and a positive --eval-interval")
    if "before" not in names and args.target_bpb is None:
        print("base_bench: no BEFORE run and no --target-bpb: times to target are not reported", flush=True)
    views = {name: {k: flag_values(flags).get(k) for k in SAME_VALIDATION} for name, flags in configs.items()}
    if len(names) > 1 and len({json.dumps(views[n], sort_keys=True) for n in names}) > 1:
        parser.error(f"the configs would be scored on different validation tokens: {views}")
    data_dir = args.data_dir or os.environ.get("NANOCHAT_DATA_DIR") or os.path.join(REPO_ROOT, "..", "shared", "data")
    tokenizer_dir = os.path.join(get_base_dir(), "tokenizer")
    if not os.path.isdir(os.path.join(data_dir, "pretrain")):
        sys.exit(f"base_bench: error: no pretrain/ folder in the data mirror {data_dir}; pass --data-dir or set NANOCHAT_DATA_DIR")
    if not os.path.isdir(tokenizer_dir):
        sys.exit(f"base_bench: error: no tokenizer in {tokenizer_dir}; train one with `python -m scripts.tok_train`")
    for name in names:
        print(f"{name}: {' '.join(configs[name])}", flush=True)

    runs = []
    for seed in seeds:
        for name in names:
            summary, evals = run_base_train(configs[name], seed, args, data_dir, tokenizer_dir)
            runs.append(dict(config=name, seed=seed, steps=summary["step"], tok_per_s=summary["tok_per_s"],
                             mfu=summary["mfu"], training_time_s=summary["training_time_s"],
                             final_val_bpb=summary["final_val_bpb"], compute_dtype=summary["compute_dtype"], evals=evals))
            print(f"{name} seed {seed}: " + " | ".join(f"{e['train_time'] / 60:.2f} min {e['val_bpb']:.4f}" for e in evals), flush=True)

    before = {r["seed"]: r for r in runs if r["config"] == "before"}
    for r in sorted(runs, key=lambda r: r["config"] != "before"):  # BEFORE's times first: AFTER's ratio needs them
        base = before.get(r["seed"])  # the target: --target-bpb, else the final bpb of the seed's BEFORE run
        r["target_bpb"] = args.target_bpb if args.target_bpb is not None else (base and base["final_val_bpb"])
        if r["target_bpb"] is None:
            r["time_to_target_s"] = None
        elif r is base and args.target_bpb is None:
            r["time_to_target_s"] = r["training_time_s"]  # it reaches its own final at its end, by definition
        else:
            r["time_to_target_s"] = time_to_target(r["evals"], r["target_bpb"])
        if r["config"] != "before" and base and r["time_to_target_s"] and base["time_to_target_s"]:
            r["speedup"] = base["time_to_target_s"] / r["time_to_target_s"]
    what = f"--target-bpb {args.target_bpb}" if args.target_bpb is not None else "the final val bpb of the seed's BEFORE run"
    print(f"\ntarget: {what}")
    print(f"{'config':>8} | {'seed':>4} | {'steps':>5} | {'tok/s':>7} | {'MFU':>6} | {'dtype':>8} | {'final bpb':>9} | "
          f"{'target':>7} | {'to target (min)':>15} | {'speed-up':>8}")
    for r in runs:
        t, target = r["time_to_target_s"], r["target_bpb"]
        gain = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        print(f"{r['config']:>8} | {r['seed']:>4} | {r['steps']:>5} | {r['tok_per_s']:>7,.0f} | {100 * (r['mfu'] or 0):>5.1f}% | "
              f"{r['compute_dtype']:>8} | {r['final_val_bpb']:>9.4f} | {'-' if target is None else f'{target:.4f}':>7} | "
              f"{'not reached' if t is None else f'{t / 60:.2f}':>15} | {gain:>8}")
    speedups = {}  # per AFTER horizon: the median over seeds, when every seed reached the target
    for name in (n for n in names if n != "before" and "before" in names):
        paired = [r for r in runs if r["config"] == name]
        reached = [r["speedup"] for r in paired if "speedup" in r]
        finals = ", ".join(f"{r['final_val_bpb']:.4f}" for r in paired)
        if len(reached) == len(paired):
            speedups[name] = statistics.median(reached)
            print(f"{name}: speed-up to the same val bpb {speedups[name]:.2f}x (median over seeds of BEFORE time / "
                  f"{name} time); final val bpb {finals}")
        else:
            print(f"{name}: reached BEFORE's bpb in {len(reached)} of {len(paired)} seeds; final val bpb {finals}")
    speedup = max(speedups.values()) if speedups else None  # the horizon with the largest ratio
    if speedup is not None:
        print(f"speed-up: {speedup:.2f}x (the best horizon's)")
    print(json.dumps(dict(speedup=speedup, speedups=speedups, dtype=args.dtype,
                          configs={n: configs[n] for n in names}, runs=runs)))


if __name__ == "__main__":
    main()
