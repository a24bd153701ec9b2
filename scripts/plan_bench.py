"""
The planner's memory estimate (nanochat/plan.py) against what a CPU training step really holds, for
several depths and micro-batches: a benchmark, not a test (run it by hand; dev/LOG.md keeps results).

    python -m scripts.plan_bench                        # the default grid, ~1-3 minutes on 2 cores
    python -m scripts.plan_bench --depths 2,4 --batches 2,8 --seq-len 256 --vocab 8192

Method. Each configuration runs in a fresh subprocess with glibc's MALLOC_MMAP_THRESHOLD_=65536, so
that every tensor over 64 KiB is its own mmap, unmapped when freed: the resident set size (RSS) then
follows the bytes allocated, not what the allocator keeps cached. The child builds the model and its
optimizers and runs one whole step (the optimizer state exists from then on), then:
  1. RSS before the step's forward (weights, optimizer state, no gradients: zero_grad(set_to_none));
  2. resets the kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0);
  3. the forward with autograd: RSS after it - before = what autograd holds for the backward
     (activations + the logits/loss buffer) -> compared with the plan's activations + logits;
  4. the backward: VmHWM (the peak RSS since the reset) - before = the step's peak on top of the
     weights -> compared with the plan's step peak less weights and optimizer state (held +
     the larger of the forward's temporaries and the backward's gradients + temporaries).
fp32 only (what a CPU trains in; bf16 autocast is checked on CUDA by dev/gpu_check.sh). Memory does
not depend on the machine's load; only the wall time of the run does.
"""

import argparse
import json
import os
import subprocess
import sys

parser = argparse.ArgumentParser(description="Planner memory estimate vs measured CPU peaks.")
parser.add_argument("--depths", default="2,4,6", help="comma-separated depths (width = 64 x depth, heads of 64)")
parser.add_argument("--batches", default="2,8", help="comma-separated micro-batch sizes")
parser.add_argument("--seq-len", type=int, default=256, help="tokens per row")
parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size")
parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # depth,batch: measure one configuration
args = parser.parse_args()


def rss_bytes(field):
    """VmRSS / VmHWM of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


if args.child:
    import gc

    import torch

    from nanochat.gpt import GPT
    from nanochat.plan import base_config

    depth, B = (int(v) for v in args.child.split(","))
    torch.manual_seed(0)
    config = base_config(depth, args.vocab, args.seq_len, aspect_ratio=64, head_dim=64)
    model = GPT(config)
    model.init_weights()
    optimizers = model.setup_optimizers()
    x = torch.randint(0, args.vocab, (B, args.seq_len + 1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    model(inputs, targets).backward()  # one whole step: the optimizer state exists afterwards
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    gc.collect()
    before = rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS mark to the current RSS
    loss = model(inputs, targets)
    held = rss_bytes("VmRSS") - before
    loss.backward()
    peak = rss_bytes("VmHWM") - before
    print(json.dumps(dict(depth=depth, batch=B, width=config.n_embd, held=held, peak=peak)))
    sys.exit(0)

import torch  # noqa: E402  (the parent only plans)

from nanochat.plan import base_config, memory_plan  # noqa: E402

rows = []
for depth in (int(d) for d in args.depths.split(",")):
    for B in (int(b) for b in args.batches.split(",")):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        out = subprocess.run([sys.executable, "-m", "scripts.plan_bench", "--child", f"{depth},{B}",
                              "--seq-len", str(args.seq_len), "--vocab", str(args.vocab)],
                             env=env, capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        config = base_config(depth, args.vocab, args.seq_len, aspect_ratio=64, head_dim=64)
        m = memory_plan(config, B, args.seq_len, 1, torch.float32, "cpu", compiled=False)
        est_held = m.activations + m.logits
        est_peak = m.total - m.weights - m.optimizer  # the step's peak on top of the weights and optimizer state
        rows.append(dict(measured, est_held=est_held, est_peak=est_peak, held_ratio=est_held / measured["held"],
                         peak_ratio=est_peak / measured["peak"], activations=m.activations, logits=m.logits))

MiB = 2 ** 20
print(f"seq len {args.seq_len}, vocab {args.vocab}, fp32 on CPU; MiB; ratio = estimate / measured")
print(f"{'depth':>5} {'width':>5} {'batch':>5} | {'held':>8} {'estimate':>8} {'ratio':>6} | {'peak':>8} {'estimate':>8} {'ratio':>6}")
for r in rows:
    print(f"{r['depth']:>5} {r['width']:>5} {r['batch']:>5} | {r['held'] / MiB:>8.1f} {r['est_held'] / MiB:>8.1f} "
          f"{r['held_ratio']:>6.3f} | {r['peak'] / MiB:>8.1f} {r['est_peak'] / MiB:>8.1f} {r['peak_ratio']:>6.3f}")
within = all(0.8 <= r["held_ratio"] <= 1.2 for r in rows)
print(f"held estimate within +-20% of measured: {within}")
print(json.dumps(dict(seq_len=args.seq_len, vocab=args.vocab, rows=rows, held_within_20pct=within)))
