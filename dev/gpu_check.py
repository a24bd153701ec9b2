"""
The Python parts of dev/gpu_check.sh (run them through it; each appends JSON lines to the output file):

    python dev/gpu_check.py data ROOT                 # a tiny synthetic data mirror (tests/test_pipeline.py's)
    python dev/gpu_check.py memory OUT --depths 20,26 # auto micro-batch and plan vs measured peak memory
    python dev/gpu_check.py decode OUT --tag d12      # Engine decode tok/s at 1 and 16 sequences (the SFT model)
    python dev/gpu_check.py web OUT --tag d12         # chat_web answers one request
    python dev/gpu_check.py collect OUT               # each stage's summary.json (MFU, tok/s) into OUT

memory: for each depth, the d<N> model of base_train (vocab 32768, rows of 2048 tokens, bf16 autocast
on CUDA, eager) through nanochat/stage.py's own --device-batch-size auto (real steps at 32, 16, ...
rows, backing off on out-of-memory), then one more step at the size chosen with the peak counter
reset: torch.cuda.max_memory_allocated against the planner's estimate of that step (memory_plan,
compiled=False). On CPU it runs at --depths' sizes with no peak to compare (the code path only).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

parser = argparse.ArgumentParser(description="The Python parts of dev/gpu_check.sh.")
parser.add_argument("what", choices=("data", "memory", "decode", "web", "collect"))
parser.add_argument("path", help="data: the mirror's folder; else the output file (JSON lines appended)")
parser.add_argument("--depths", default="20,26", help="memory: depths to fit")
parser.add_argument("--seq-len", type=int, default=2048, help="memory: tokens per row")
parser.add_argument("--vocab", type=int, default=32768, help="memory: vocab size")
parser.add_argument("--rows", type=int, default=32, help="memory: rows of one rank's optimizer step (the auto ceiling)")
parser.add_argument("--tag", default="d12", help="decode/web: model tag of the SFT checkpoint")
parser.add_argument("--new-tokens", type=int, default=128, help="decode: new tokens per sequence")
parser.add_argument("--device-type", default=None, help="cuda | cpu (default: autodetect)")
args = parser.parse_args()


def emit(**record):
    print(json.dumps(record), flush=True)
    with open(args.path, "a") as f:
        f.write(json.dumps(record) + "\n")


if args.what == "data":
    from tests.test_pipeline import write_mirror
    write_mirror(args.path)
    sys.exit(0)

import torch  # noqa: E402

from nanochat.common import autodetect_device_type  # noqa: E402

device_type = args.device_type or autodetect_device_type()

if args.what == "memory":
    from nanochat.flags import add_batch_flags, add_compute_flags, add_optimizer_flags, add_run_flags
    from nanochat.gpt import GPT
    from nanochat.plan import base_config, memory_plan
    from nanochat.stage import Stage

    for depth in (int(d) for d in args.depths.split(",")):
        p = argparse.ArgumentParser()
        add_compute_flags(p)
        add_run_flags(p, horizon="n/a", eval_every=None)
        add_batch_flags(p, "tokens", device_batch_size=32, total=args.rows * args.seq_len)
        add_optimizer_flags(p)
        run = Stage("gpu_check", p, p.parse_args([f"--device-type={device_type}", "--device-batch-size=auto"]))
        run.init_compute()
        run.pick_dtype()
        config = base_config(depth, args.vocab, args.seq_len)
        model = GPT(config).to(run.device)
        model.init_weights()
        run.set_run_dir("base", f"gpu_check_d{depth}")
        run.setup_optimizers(model)
        t0 = time.perf_counter()
        b = run.fit_device_batch(args.seq_len, args.rows)
        search_s = time.perf_counter() - t0
        record = dict(check="memory", depth=depth, params=model.num_params(), auto_device_batch_size=b,
                      search_s=round(search_s, 1), dtype=str(run.dtype))
        if device_type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            run._forward = model
            run._try_batch(b)  # one step at the size chosen, undone (its weight copy on CPU is outside the count)
            run._snapshot = None
            measured = torch.cuda.max_memory_allocated()
            plan = memory_plan(config, b, args.seq_len, 1, run.dtype, "cuda", compiled=False)
            record.update(measured_peak_gib=round(measured / 2 ** 30, 3), planned_peak_gib=round(plan.total / 2 ** 30, 3),
                          ratio=round(plan.total / measured, 3), planned_activations_gib=round(plan.activations / 2 ** 30, 3),
                          device_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
        emit(**record)
        del model, run
        if device_type == "cuda":
            torch.cuda.empty_cache()

elif args.what == "decode":
    from nanochat.checkpoint_manager import load_model
    from nanochat.engine import Engine, SamplingParams

    device = torch.device(device_type)
    model, tokenizer, meta = load_model("sft", device, "eval", args.tag)
    prompt = tokenizer.encode("The capital of France is", prepend="<|bos|>")
    for n in (1, 16):
        engine = Engine(model, tokenizer, num_slots=16)
        params = SamplingParams(max_tokens=args.new_tokens, temperature=1.0, top_k=50)
        prompts = [prompt] * n
        ctx = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda" else torch.no_grad()
        with ctx:
            engine.generate_many(prompts[:1], params)  # warm-up
            if device_type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results = engine.generate_many(prompts, params)
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        tokens = sum(len(c.tokens) for completions in results for c in completions)
        emit(check="decode", sequences=n, new_tokens=tokens, seconds=round(dt, 3), tok_per_s=round(tokens / dt, 1))

elif args.what == "web":
    port = 8765
    cmd = [sys.executable, "-m", "scripts.chat_web", "-i", "sft", "--model-tag", args.tag, "--port", str(port),
           "--device-type", device_type, "--max-tokens", "32"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0, ok = time.perf_counter(), False
        while time.perf_counter() - t0 < 120 and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    ok = r.status == 200
                    break
            except OSError:
                time.sleep(1)
        if not ok:
            emit(check="web", ok=False, why="the server did not come up", output=(server.stdout.read() if server.poll()
                                                                                    is not None else "")[-2000:])
            sys.exit(1)
        body = json.dumps(dict(model=args.tag, messages=[dict(role="user", content="Hello! Who are you?")],
                               max_tokens=32)).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        t1 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            reply = json.loads(r.read())
        emit(check="web", ok=True, startup_s=round(t1 - t0, 1), request_s=round(time.perf_counter() - t1, 3),
             reply=reply["choices"][0]["message"]["content"][:200], usage=reply.get("usage"))
    finally:
        server.terminate()
        server.wait(timeout=30)

elif args.what == "collect":
    from nanochat.common import get_base_dir
    for folder in ("base_checkpoints", "mid_checkpoints", "chat_checkpoints", "rl_checkpoints"):
        root = os.path.join(get_base_dir(), folder)
        for tag in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            path = os.path.join(root, tag, "summary.json")
            if os.path.exists(path):
                with open(path) as f:
                    s = json.load(f)
                emit(check="summary", stage=folder, tag=tag, **{k: s.get(k) for k in (
                    "step", "mfu", "tok_per_s", "training_time_s", "compute_dtype", "final_val_bpb", "final_val_loss")})
