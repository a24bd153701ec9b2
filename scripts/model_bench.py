"""
Benchmark the GPT against Hugging Face transformers' LlamaForCausalLM on this CPU.

1. Training throughput: full steps (forward, backward, optimizer) at depth 4 and 6, sequence 512,
   vocab 32768, width 64*depth, head dim 64 (heads = width/64). Ours uses setup_optimizers()
   (Muon + AdamW from nanochat.optim); Llama (nanochat/llama_reference.py: same depth, width, heads,
   vocab; SwiGLU MLP of intermediate size 8/3*width rounded up to a multiple of 64, ~the same MLP
   parameter count; untied embeddings) uses torch.optim.AdamW. The two runs are interleaved and medians reported.
   MFU = estimate_flops() * tokens/s / (fp32 matmul rate measured here, nanochat.common.measure_matmul_flops);
   Llama's FLOPs per token come from the same formula on its own parameters:
   6 * (params - embedding) + 12 * layers * heads * head_dim * seq_len.
2. Decode throughput: 256 new tokens after a 32-token prompt, batch 1 and 8 samples, greedy, the
   same random-init depth-4 shape: our Engine vs transformers' generate (use_cache=True).
   Both decode exactly 256 tokens (no stop token can fire); tok/s counts new tokens of all rows
   and the time includes the prompt's prefill.

Run (the machine is shared: use --quick while developing):
    uv run python -m scripts.model_bench --quick
    uv run python -m scripts.model_bench                 # the full run recorded in dev/LOG.md
    uv run python -m scripts.model_bench --profile       # also print a profile of our train step
The last line of output is one JSON object with the headline numbers.
"""

import argparse
import json
import statistics
import time

import torch

from nanochat.common import measure_matmul_flops
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.llama_reference import llama_like, llama_mlp_width

parser = argparse.ArgumentParser(description="Training and decoding benchmark: nanochat GPT vs HF Llama (CPU)")
# what to run
parser.add_argument("--quick", action="store_true", help="short run for development: depth 4 only, 2 steps, 1 run, 64 new tokens")
parser.add_argument("--skip-train", action="store_true", help="skip the training benchmark")
parser.add_argument("--skip-decode", action="store_true", help="skip the decoding benchmark")
parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of our train step and decode")
# training
parser.add_argument("--depths", type=str, default="4,6", help="comma-separated model depths to train (width = 64*depth)")
parser.add_argument("--batch-size", type=int, default=8, help="sequences per training step")
parser.add_argument("--seq-len", type=int, default=512, help="training sequence length")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size of both models")
parser.add_argument("--steps", type=int, default=3, help="timed training steps per run")
parser.add_argument("--warmup-steps", type=int, default=1, help="untimed training steps before the runs")
parser.add_argument("--runs", type=int, default=3, help="interleaved repetitions (ours, Llama, ours, ...); medians are reported")
parser.add_argument("--compile", action="store_true", help="torch.compile our model for training")
# decoding
parser.add_argument("--decode-depth", type=int, default=4, help="model depth for the decoding benchmark")
parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens before decoding")
parser.add_argument("--new-tokens", type=int, default=256, help="tokens to decode per row")
parser.add_argument("--samples", type=str, default="1,8", help="comma-separated decode batch sizes (num_samples)")
# machine
parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (also for the matmul rate)")
args = parser.parse_args()
if args.quick:
    args.depths, args.steps, args.runs, args.new_tokens = "4", 2, 1, 64
depths = [int(d) for d in args.depths.split(",") if d]
samples = [int(s) for s in args.samples.split(",") if s]
torch.set_num_threads(args.threads)
torch.manual_seed(0)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, args: {vars(args)}")


def attention_flops(n_layer, n_head, head_dim, seq_len):
    return 12 * n_layer * n_head * head_dim * seq_len


# -----------------------------------------------------------------------------
# the two models and their training steps

def shape(depth, seq_len, vocab_size):
    """The benchmarked shape: width 64 * depth, head dim 64."""
    width = 64 * depth
    return GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=depth, n_head=width // 64,
                     n_kv_head=width // 64, n_embd=width)


def make_gpt(depth, seq_len, vocab_size):
    model = GPT(shape(depth, seq_len, vocab_size))
    model.init_weights()
    return model


def build_ours(depth, seq_len, vocab_size):
    model = make_gpt(depth, seq_len, vocab_size)
    try:
        optimizers = model.setup_optimizers()
        optim_name = "nanochat.optim Muon+AdamW"
    except ImportError as e:  # nanochat.optim not written yet: development stand-ins only
        print(f"WARNING: {e}; using torch.optim.Muon + torch.optim.AdamW stand-ins")
        matrices = [p for p in model.transformer.h.parameters()]
        others = [model.transformer.wte.weight, model.lm_head.weight]
        optimizers = [torch.optim.AdamW(others, lr=1e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
                      torch.optim.Muon(matrices, lr=0.02, momentum=0.95)]
        optim_name = "torch.optim Muon+AdamW (stand-in)"
    return model, optimizers, model.estimate_flops(), optim_name


def build_llama(depth, seq_len, vocab_size):
    width = 64 * depth
    intermediate = llama_mlp_width(width)  # SwiGLU: 3 matrices of 8/3*width ~ our 2 of 4*width
    model = llama_like(shape(depth, seq_len, vocab_size))
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    flops = 6 * (n_params - n_embed) + attention_flops(depth, width // 64, 64, seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    return model, [optimizer], flops, intermediate


def ours_step(model, optimizers, x, y):
    loss = model(x, y)
    loss.backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    return loss


def llama_step(model, optimizers, x, y):
    loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself: same next-token task
    loss.backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    return loss


def time_steps(step_fn, model, optimizers, x, y, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step_fn(model, optimizers, x, y)
    loss.item()
    return (time.perf_counter() - t0) / steps


def profile(fn, title, rows=15):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n--- profile: {title} ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def bench_train(depth):
    """Median step times of both models; MFU is added by the caller once the matmul rate is known."""
    B, T = args.batch_size, args.seq_len
    x = torch.randint(0, args.vocab_size, (B, T))
    y = torch.roll(x, -1, dims=1)
    ours, ours_opts, ours_flops, optim_name = build_ours(depth, T, args.vocab_size)
    llama, llama_opts, llama_flops, intermediate = build_llama(depth, T, args.vocab_size)
    ours_fwd = torch.compile(ours) if args.compile else ours
    print(f"\ndepth {depth}: width {64 * depth}, {depth} heads of dim 64, seq {T}, batch {B}, vocab {args.vocab_size}")
    print(f"  ours : {ours.num_params():,} params, {ours_flops / 1e6:.1f} MFLOP/token, {optim_name}"
          f"{', torch.compile' if args.compile else ''}")
    print(f"  llama: {sum(p.numel() for p in llama.parameters()):,} params (intermediate {intermediate}), "
          f"{llama_flops / 1e6:.1f} MFLOP/token, torch.optim.AdamW")
    for _ in range(args.warmup_steps):
        ours_step(ours_fwd, ours_opts, x, y)
        llama_step(llama, llama_opts, x, y)
    if args.profile:
        profile(lambda: ours_step(ours_fwd, ours_opts, x, y), f"our train step, depth {depth}")
        profile(lambda: llama_step(llama, llama_opts, x, y), f"Llama train step, depth {depth}")
    ours_t, llama_t = [], []
    for _ in range(args.runs):
        ours_t.append(time_steps(ours_step, ours_fwd, ours_opts, x, y, args.steps))
        llama_t.append(time_steps(llama_step, llama, llama_opts, x, y, args.steps))
    res = {}
    for name, times, flops in (("ours", ours_t, ours_flops), ("llama", llama_t, llama_flops)):
        tok_s = B * T / statistics.median(times)
        res[name] = dict(step_s=statistics.median(times), tok_per_s=tok_s, flops_per_s=flops * tok_s)
    return res


# -----------------------------------------------------------------------------
# decoding

class NoToolsTokenizer:
    """What Engine needs from a tokenizer, with the special tokens mapped to ids the model cannot
    emit (negative), so every run decodes exactly --new-tokens tokens, like HF generate with no eos."""

    def encode_special(self, name):
        return -1

    def encode(self, text):
        raise AssertionError("no tool calls can occur in the benchmark")

    def decode(self, ids):
        raise AssertionError("no tool calls can occur in the benchmark")


def bench_decode(depth):
    width = 64 * depth
    ours = make_gpt(depth, 2048, args.vocab_size)
    ours.eval()
    llama, _, _, _ = build_llama(depth, 2048, args.vocab_size)
    llama.eval()
    llama.generation_config.eos_token_id = None
    llama.generation_config.pad_token_id = 0
    engine = Engine(ours, NoToolsTokenizer())
    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,)).tolist()
    n = args.new_tokens

    def run_ours(num_samples):
        count = 0
        for column, _ in engine.generate(prompt, num_samples=num_samples, max_tokens=n, temperature=0.0):
            count += len(column)
        assert count == n * num_samples, f"decoded {count} tokens, expected {n * num_samples}"

    def run_llama(num_samples):
        ids = torch.tensor([prompt] * num_samples)
        with torch.inference_mode():
            out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, use_cache=True)
        assert out.shape == (num_samples, args.prompt_len + n), f"HF generated {tuple(out.shape)}"

    print(f"\ndecode: depth {depth}, width {width}, vocab {args.vocab_size}, prompt {args.prompt_len}, {n} new tokens, greedy")
    res = {}
    for num_samples in samples:
        run_ours(num_samples)  # warm-up
        run_llama(num_samples)
        if args.profile:
            profile(lambda: run_ours(num_samples), f"our decode, {num_samples} samples")
        ours_t, llama_t = [], []
        for _ in range(args.runs):
            for fn, times in ((run_ours, ours_t), (run_llama, llama_t)):
                t0 = time.perf_counter()
                fn(num_samples)
                times.append(time.perf_counter() - t0)
        res[num_samples] = dict(ours=n * num_samples / statistics.median(ours_t),
                                llama=n * num_samples / statistics.median(llama_t))
    return res


# -----------------------------------------------------------------------------

summary = {}
if not args.skip_train:
    peak_before = measure_matmul_flops(torch.float32)
    train = {depth: bench_train(depth) for depth in depths}
    peak_after = measure_matmul_flops(torch.float32)
    # other processes share this machine: take the better of the two rates (the lower, safer MFU)
    peak = max(peak_before, peak_after)
    print(f"\nfp32 matmul rate (nanochat.common.measure_matmul_flops, {args.threads} threads): {peak_before / 1e9:.1f} GFLOP/s "
          f"before the runs, {peak_after / 1e9:.1f} after; MFU uses {peak / 1e9:.1f}")
    for res in train.values():
        for r in res.values():
            r["mfu"] = r["flops_per_s"] / peak
    print(f"\n{'depth':>5} {'model':>6} {'step s':>8} {'tok/s':>8} {'MFU':>6} {'MFU ratio':>10}")
    for depth, res in train.items():
        for name in ("ours", "llama"):
            r = res[name]
            ratio = r["mfu"] / res["llama"]["mfu"]
            print(f"{depth:>5} {name:>6} {r['step_s']:>8.3f} {r['tok_per_s']:>8.0f} {r['mfu']:>6.3f} {ratio:>10.2f}")
    d0 = depths[0]
    summary.update(matmul_gflops=round(peak / 1e9, 1), train_depth=d0,
                   train_tok_per_s=round(train[d0]["ours"]["tok_per_s"], 1),
                   train_mfu=round(train[d0]["ours"]["mfu"], 4),
                   train_mfu_ratio_vs_llama=round(train[d0]["ours"]["mfu"] / train[d0]["llama"]["mfu"], 3),
                   llama_train_mfu=round(train[d0]["llama"]["mfu"], 4))
    for depth in depths[1:]:
        summary[f"train_d{depth}_tok_per_s"] = round(train[depth]["ours"]["tok_per_s"], 1)
        summary[f"train_d{depth}_mfu"] = round(train[depth]["ours"]["mfu"], 4)
        summary[f"train_d{depth}_mfu_ratio_vs_llama"] = round(train[depth]["ours"]["mfu"] / train[depth]["llama"]["mfu"], 3)

if not args.skip_decode:
    dec = bench_decode(args.decode_depth)
    print(f"\n{'samples':>7} {'ours tok/s':>11} {'HF tok/s':>9} {'speedup':>8}")
    for num_samples, r in dec.items():
        print(f"{num_samples:>7} {r['ours']:>11.0f} {r['llama']:>9.0f} {r['ours'] / r['llama']:>8.2f}")
        summary[f"decode_tok_per_s_batch{num_samples}"] = round(r["ours"], 1)
        summary[f"hf_decode_tok_per_s_batch{num_samples}"] = round(r["llama"], 1)
        summary[f"decode_speedup_vs_hf_batch{num_samples}"] = round(r["ours"] / r["llama"], 3)

print(json.dumps(summary))
