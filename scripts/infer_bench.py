"""
Inference benchmark on this CPU: our Engine vs Hugging Face transformers, same model shape.

Model: depth 4, the base_train shape (width 256, head dim 128 => 2 heads, vocab 32768, context
2048), random init, fp32. The reference is a LlamaForCausalLM of the same depth, width, heads and
vocab (nanochat/llama_reference.py: SwiGLU intermediate 8/3 * width rounded up to a multiple of
64, ~the same MLP parameter count; untied embeddings), as in scripts/model_bench.py. Greedy decoding; neither model can stop
early (our stop tokens are ids the model never emits; HF has no eos), so both decode exactly the
requested tokens. tok/s counts new tokens of all sequences; times include prefill.

1. decode: one 32-token prompt, 1 sequence and 8 samples of it:
   ours = Engine.generate_many(n=samples) vs HF `generate` (use_cache=True).
2. continuous batching: 1 sequence, and 16 independent sequences with prompts of different
   lengths, all submitted at once: ours = Engine.generate_many (16 slots) vs HF's continuous
   batching (`model.generate_batch` with a GenerationConfig, the path behind `transformers serve
   --continuous-batching`), its paged cache sized for the workload (ContinuousBatchingConfig
   num_blocks / max_batch_tokens: its defaults size the cache from the machine's memory and were
   slower here). Also our 16-sequence rate over our 1-sequence rate.
3. --core: CORE with --core-eval-items items per task, nanochat.core_eval.evaluate_core(fast=True)
   vs fast=False on the same random model (needs NANOCHAT_DATA_DIR and a trained tokenizer), the
   speedup and whether the scores are identical.

Every competitor runs once per round, rounds interleaved (the machine is shared); medians of
--runs rounds are reported. Ours first runs a warm-up round.

On a shared, oversubscribed CPU set OMP_WAIT_POLICY=PASSIVE: by default OpenMP's idle worker
threads spin after every parallel region and take the CPU from the thread doing the work; on the
2-core dev box at load ~10, 2 threads, our batch-1 decode ran at 7.6 tok/s without it and 47 with.

    uv run python -m scripts.infer_bench --quick          # while developing
    uv run python -m scripts.infer_bench                  # the run recorded in dev/LOG.md
    NANOCHAT_DATA_DIR=/work/shared/data uv run python -m scripts.infer_bench --core
    uv run python -m scripts.infer_bench --profile        # torch.profiler tables of our decode

The last line is one JSON object with the headline numbers.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch

from nanochat.engine import Engine, SamplingParams
from nanochat.flags import renamed
from nanochat.gpt import GPT, GPTConfig
from nanochat.llama_reference import llama_like
from nanochat.roofline import decode_bound, describe

parser = argparse.ArgumentParser(description="Inference benchmark: nanochat Engine vs HF transformers (CPU)")
# what to run
parser.add_argument("--quick", action="store_true", help="short run for development: 1 round, fewer tokens")
parser.add_argument("--skip-decode", action="store_true", help="skip the decode section (vs HF generate)")
parser.add_argument("--skip-cb", action="store_true", help="skip the continuous-batching section (vs HF generate_batch)")
parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of our decode (1 and 16 sequences)")
# model
parser.add_argument("--depth", type=int, default=4, help="model depth (width 64*depth, head dim 128)")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size of both models")
parser.add_argument("--seq-len", type=int, default=2048, help="context length of both models (our slot capacity)")
# decode
parser.add_argument("--prompt-len", type=int, default=32, help="decode: prompt tokens")
parser.add_argument("--new-tokens", type=int, default=128, help="decode: new tokens per sequence")
parser.add_argument("--samples", type=str, default="1,8", help="decode: comma-separated numbers of samples")
# continuous batching
parser.add_argument("--cb-sequences", type=int, default=16, help="continuous batching: concurrent sequences")
parser.add_argument("--cb-new-tokens", type=int, default=32, help="continuous batching: new tokens per sequence")
parser.add_argument("--cb-prompt-lens", type=str, default="16,256",
                    help="continuous batching: prompt lengths spread evenly over this range (min,max)")
# CORE
parser.add_argument("--core", action="store_true", help="also time CORE, evaluate_core fast vs slow (needs NANOCHAT_DATA_DIR)")
parser.add_argument("--core-eval-items", type=int, default=20, help="CORE items per task")
renamed(parser, "--core-max-per-task", "--core-eval-items")
# machine
parser.add_argument("--runs", type=int, default=3, help="interleaved rounds; medians are reported")
parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
args = parser.parse_args()
if args.quick:
    args.runs, args.new_tokens, args.cb_new_tokens = 1, 32, 16
samples = [int(s) for s in args.samples.split(",") if s]
lo_len, hi_len = (int(x) for x in args.cb_prompt_lens.split(","))
torch.set_num_threads(args.threads)
torch.manual_seed(0)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, args: {vars(args)}")


class BenchTokenizer:
    """What Engine needs from a tokenizer: the special tokens are ids the model cannot emit (-1),
    so no sequence stops early; every id has some bytes, so the text streaming runs as usual."""

    def encode_special(self, name):
        return -1

    def get_vocab_size(self):
        return args.vocab_size

    def get_mergeable_ranks(self):
        return {bytes([i % 256]) + i.to_bytes(2, "little"): i for i in range(args.vocab_size)}


WIDTH = 64 * args.depth
CONFIG = GPTConfig(sequence_len=args.seq_len, vocab_size=args.vocab_size, n_layer=args.depth, n_head=WIDTH // 128,
                   n_kv_head=WIDTH // 128, n_embd=WIDTH)


def make_ours():
    model = GPT(CONFIG)
    model.init_weights()
    return model.eval()


def make_llama():
    model = llama_like(CONFIG).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


ours, llama = make_ours(), make_llama()
print(f"ours : {ours.num_params():,} params; llama: {sum(p.numel() for p in llama.parameters()):,} params")
engine = Engine(ours, BenchTokenizer(), num_slots=max(16, args.cb_sequences, max(samples)), max_seq_len=args.seq_len)


def ours_generate(prompts, new_tokens, n=1):
    out = engine.generate_many(prompts, SamplingParams(max_tokens=new_tokens, n=n))
    count = sum(len(c.tokens) for cs in out for c in cs)
    assert count == len(prompts) * n * new_tokens, f"decoded {count} tokens"
    return count


def hf_generate(prompt, new_tokens, n):
    ids = torch.tensor([prompt] * n)
    with torch.inference_mode():
        out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    assert out.shape == (n, len(prompt) + new_tokens), f"HF generated {tuple(out.shape)}"
    return n * new_tokens


def hf_continuous(prompts, new_tokens):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    page = 64
    blocks = sum(math.ceil((len(p) + new_tokens) / page) for p in prompts) + 4
    gen_cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cb_cfg = ContinuousBatchingConfig(page_size=page, num_blocks=blocks,
                                      max_batch_tokens=max(512, max(len(p) for p in prompts)))
    with torch.inference_mode():
        out = llama.generate_batch(prompts, generation_config=gen_cfg, continuous_batching_config=cb_cfg,
                                   progress_bar=False, warmup=False)
    count = sum(len(o.generated_tokens) for o in out.values())
    assert count == len(prompts) * new_tokens, f"HF continuous batching generated {count} tokens"
    return count


def timed(fn):
    t0 = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - t0)


def rounds(competitors):
    """competitors: {name: fn -> tokens}. Interleaved rounds; median tok/s per name."""
    rates = {name: [] for name in competitors}
    for _ in range(args.runs):
        for name, fn in competitors.items():
            rates[name].append(timed(fn))
    return {name: statistics.median(r) for name, r in rates.items()}, rates


def profile(fn, title, rows=20):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n--- profile: {title} ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


summary = {}
table = []  # (section, setting, ours tok/s, reference tok/s, ratio)
roof = []   # (setting, ours tok/s, bound tok/s, what limits it, fraction)
print(describe(torch.float32))


def roofline(name, setting, rate, prompt_lens, new_tokens, shared_prompt=False):
    """Our measured rate against the roofline bound of the same work (nanochat/roofline.py)."""
    bound = decode_bound(ours, prompt_lens, new_tokens, shared_prompt)
    bound_rate = len(prompt_lens) * new_tokens / bound.seconds
    roof.append((setting, rate, bound_rate, bound.limit, rate / bound_rate))
    summary[f"{name}_fraction_of_roofline"] = round(rate / bound_rate, 3)
vocab = args.vocab_size

if not args.skip_decode:
    prompt = torch.randint(0, vocab, (args.prompt_len,)).tolist()
    n = args.new_tokens
    print(f"\ndecode: prompt {args.prompt_len}, {n} new tokens, greedy, samples {samples}")
    for s in samples:
        ours_generate([prompt], n, s)  # warm-up
        hf_generate(prompt, n, s)
        med, raw = rounds({"ours": lambda: ours_generate([prompt], n, s), "hf": lambda: hf_generate(prompt, n, s)})
        print(f"  {s} samples: ours {[round(r) for r in raw['ours']]} tok/s, HF generate {[round(r) for r in raw['hf']]}")
        table.append(("decode vs HF generate", f"{s} sample(s)", med["ours"], med["hf"], med["ours"] / med["hf"]))
        summary[f"decode_tok_per_s_batch{s}"] = round(med["ours"], 1)
        summary[f"hf_decode_tok_per_s_batch{s}"] = round(med["hf"], 1)
        summary[f"decode_speedup_vs_hf_batch{s}"] = round(med["ours"] / med["hf"], 3)
        roofline(f"decode_batch{s}", f"decode, {s} sample(s)", med["ours"], [args.prompt_len] * s, n, shared_prompt=True)

if not args.skip_cb:
    S, n = args.cb_sequences, args.cb_new_tokens
    lens = [round(lo_len + (hi_len - lo_len) * i / max(1, S - 1)) for i in range(S)]
    many = [torch.randint(0, vocab, (k,)).tolist() for k in lens]
    one = [many[S // 2]]
    print(f"\ncontinuous batching: {S} sequences, prompts {lens[0]}..{lens[-1]} tokens, {n} new tokens each; "
          f"and 1 sequence of {len(one[0])} prompt tokens")
    ours_generate(many, n)  # warm-up
    ours_generate(one, n)
    hf_continuous(one, n)
    med, raw = rounds({"ours1": lambda: ours_generate(one, n), "hf1": lambda: hf_continuous(one, n),
                       "ours16": lambda: ours_generate(many, n), "hf16": lambda: hf_continuous(many, n)})
    for k, v in raw.items():
        print(f"  {k}: {[round(r, 1) for r in v]} tok/s")
    table.append(("vs HF continuous batching", "1 sequence", med["ours1"], med["hf1"], med["ours1"] / med["hf1"]))
    table.append(("vs HF continuous batching", f"{S} sequences", med["ours16"], med["hf16"], med["ours16"] / med["hf16"]))
    table.append(("ours: many vs 1 sequence", f"{S} vs 1", med["ours16"], med["ours1"], med["ours16"] / med["ours1"]))
    summary.update(cb_ours_tok_per_s_1=round(med["ours1"], 1), cb_hf_tok_per_s_1=round(med["hf1"], 1),
                   cb_ours_tok_per_s_many=round(med["ours16"], 1), cb_hf_tok_per_s_many=round(med["hf16"], 1),
                   batch1_vs_hf_continuous_batching=round(med["ours1"] / med["hf1"], 3),
                   batch16_vs_hf_continuous_batching=round(med["ours16"] / med["hf16"], 3),
                   batch16_speedup_vs_1=round(med["ours16"] / med["ours1"], 3))
    roofline("cb1", "slots, 1 sequence", med["ours1"], [len(one[0])], n)
    roofline(f"cb{S}", f"slots, {S} sequences", med["ours16"], lens, n)
    if args.profile:
        profile(lambda: ours_generate(one, n), "our decode, 1 sequence")
        profile(lambda: ours_generate(many, n), f"our continuous batching, {S} sequences")

summary["core20_speedup"] = None
if args.core:
    from nanochat import core_eval
    from nanochat.tokenizer import get_tokenizer

    skip = None
    if not os.environ.get("NANOCHAT_DATA_DIR"):
        skip = "NANOCHAT_DATA_DIR is not set (point it at the data mirror, e.g. /work/shared/data)"
    elif not hasattr(core_eval, "evaluate_core"):
        skip = "nanochat.core_eval has no evaluate_core yet"
    else:
        try:
            tokenizer = get_tokenizer()
        except Exception as e:  # no trained tokenizer in the base dir
            skip = f"no tokenizer ({e}); train one with scripts/tok_train.py"
    if skip:
        print(f"\nCORE: skipped: {skip}")
    else:
        model = GPT(GPTConfig(sequence_len=args.seq_len, vocab_size=tokenizer.get_vocab_size(), n_layer=args.depth,
                              n_head=64 * args.depth // 128, n_kv_head=64 * args.depth // 128, n_embd=64 * args.depth))
        model.init_weights()
        model.eval()
        k = args.core_eval_items
        t0 = time.perf_counter()
        fast = core_eval.evaluate_core(model, tokenizer, "cpu", max_per_task=k, fast=True)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = core_eval.evaluate_core(model, tokenizer, "cpu", max_per_task=k, fast=False)
        t_slow = time.perf_counter() - t0
        same = fast["core"] == slow["core"] and all(  # the timings differ, the scores must not
            fast["tasks"][t]["accuracy"] == slow["tasks"][t]["accuracy"] for t in fast["tasks"])
        print(f"\nCORE, {k} items per task: fast {t_fast:.1f} s (CORE {fast['core']:.4f}), "
              f"slow {t_slow:.1f} s (CORE {slow['core']:.4f}), identical results: {same}")
        table.append((f"CORE {k}/task (s, lower is better)", "fast vs slow", t_fast, t_slow, t_slow / t_fast))
        summary.update(core_max_per_task=k, core_fast_s=round(t_fast, 1), core_slow_s=round(t_slow, 1),
                       core_scores_identical=same)
        summary[f"core{k}_speedup"] = round(t_slow / t_fast, 3)  # core20_speedup at the default 20 items

print(f"\n{'section':<34} {'setting':<14} {'ours':>9} {'reference':>10} {'ratio':>7}")
for section, setting, a, b, r in table:
    print(f"{section:<34} {setting:<14} {a:>9.1f} {b:>10.1f} {r:>7.2f}")
if roof:
    print(f"\n{'roofline (fp32, prefill included)':<34} {'ours':>9} {'bound':>10} {'limit':>10} {'fraction':>9}")
    for setting, rate, bound_rate, limit, frac in roof:
        print(f"{setting:<34} {rate:>9.1f} {bound_rate:>10.1f} {limit:>10} {frac:>9.1%}")
print(json.dumps(summary))
