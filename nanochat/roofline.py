"""
The machine's roofline: how fast this CPU reads memory and multiplies matrices, and the least time
a forward step of a GPT can take on it, so that every benchmark line can say what fraction of the
machine it reaches instead of only how it compares with a peer.

A decode step of B sequences reads every weight once (the embedding table only at B rows) and
each sequence's KV cache, and does 2 FLOPs per weight per sequence plus the attention over its
context. Its time is at least max(FLOPs / matmul rate, bytes / read bandwidth): at batch 1 the
bytes bind (the weights are read for one token), at many sequences the FLOPs begin to. The read
bandwidth is measured on a buffer the size of what the step reads (a working set that fits the
last-level cache reads faster than one that streams from DRAM), and on 1 GiB (DRAM).

    uv run python -m nanochat.roofline      # this machine's numbers
"""

import functools
import math
import time
from dataclasses import dataclass

import torch

from nanochat.common import measure_matmul_flops

DRAM_PROBE_BYTES = 1 << 30


def measure_read_bandwidth(nbytes=DRAM_PROBE_BYTES, seconds=0.3):
    """Best read rate, bytes/s, of this process's CPU threads over `seconds`: sums of an fp32 buffer of
    `nbytes` (a sum does one add per 4 bytes read, far below the arithmetic rate, so it waits on
    memory), repeated so that each timing reads at least 64 MiB (one sum of a small buffer is too
    short to time)."""
    x = torch.ones(max(1, nbytes // 4))
    reps = max(1, (64 << 20) // (x.numel() * 4))
    x.sum()  # warm-up: pages touched, thread pool up
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            x.sum()
        t1 = time.perf_counter()
        best = max(best, reps * x.numel() * 4 / (t1 - t0))
        if t1 > t_end:
            return best


@functools.lru_cache(maxsize=None)
def read_bandwidth(nbytes):
    """measure_read_bandwidth, once per buffer size and process."""
    return measure_read_bandwidth(nbytes)


@functools.lru_cache(maxsize=None)
def matmul_rate(dtype=torch.float32):
    """The matmul rate MFU uses (common.measure_matmul_flops), once per dtype and process."""
    return measure_matmul_flops(dtype)


@dataclass
class Bound:
    """The least time of some work on this machine and what limits it."""
    seconds: float
    compute_s: float
    memory_s: float

    @property
    def limit(self):
        return "compute" if self.compute_s >= self.memory_s else "bandwidth"


def step_costs(model, contexts, bytes_per_value=4):
    """(FLOPs, bytes read) of one forward step of one new token for each sequence, `contexts` its
    cached positions. Weights: every block matrix and the head once for all, the embedding at one row
    per sequence; the KV cache: keys and values of every layer over each context; FLOPs: 2 per
    weight and token plus the attention's q.k and p.v (4 x context x head dim per head and layer)."""
    config = model.config
    d, L = config.n_embd, config.n_layer
    head_dim = d // config.n_head
    kv_width = config.n_kv_head * head_dim
    matmul_weights = model.num_params() - model.transformer.wte.weight.numel()  # the blocks and the head
    cached = sum(contexts)
    flops = len(contexts) * 2 * matmul_weights + L * config.n_head * 4 * head_dim * cached
    nbytes = (matmul_weights + len(contexts) * d + L * 2 * kv_width * cached) * bytes_per_value
    return flops, nbytes


def decode_bound(model, prompt_lens, new_tokens, shared_prompt=False, dtype=torch.float32):
    """The least time to decode `new_tokens` for each sequence after its prompt (lengths
    `prompt_lens`; shared_prompt: one prefill for all, as for n samples of one prompt). Prefill at
    the matmul rate (a prompt's tokens attend to half its length on average); each decode step of
    all sequences at the larger of its compute and memory times."""
    rate, size = matmul_rate(dtype), torch.finfo(dtype).bits // 8
    prefills = prompt_lens[:1] if shared_prompt else prompt_lens
    compute_s = sum(step_costs(model, [n // 2] * n, size)[0] for n in prefills) / rate
    memory_s, total = 0.0, compute_s
    for i in range(new_tokens):
        flops, nbytes = step_costs(model, [n + i for n in prompt_lens], size)
        c, m = flops / rate, nbytes / read_bandwidth(_bucket(nbytes))
        compute_s, memory_s, total = compute_s + c, memory_s + m, total + max(c, m)
    return Bound(total, compute_s, memory_s)


def _bucket(nbytes):
    """A working-set size rounded down to a quarter octave (a handful of bandwidth probes per
    benchmark; down, because a smaller buffer reads at least as fast: the bound stays a bound)."""
    return max(1 << 20, int(2 ** (math.floor(4 * math.log2(max(nbytes, 1))) / 4)))


def describe(dtype=torch.float32):
    """One line: the matmul rate, the DRAM read bandwidth and their ratio (the FLOPs per byte where
    work turns from memory- to compute-bound)."""
    rate, bw = matmul_rate(dtype), read_bandwidth(DRAM_PROBE_BYTES)
    return (f"roofline ({torch.get_num_threads()} threads): {str(dtype).removeprefix('torch.')} matmul "
            f"{rate / 1e9:.0f} GFLOP/s, read bandwidth {bw / 1e9:.1f} GB/s (1 GiB buffer), "
            f"balance {rate / bw:.1f} FLOP/byte")


if __name__ == "__main__":
    print(describe(torch.float32))
    for size in (8 << 20, 32 << 20, 64 << 20, DRAM_PROBE_BYTES):
        print(f"  read bandwidth, {size >> 20} MiB buffer: {read_bandwidth(size) / 1e9:.1f} GB/s")
