"""
Benchmark the chat server under concurrent streaming clients, side by side with `transformers serve
--continuous-batching` serving a model of the same size. No user data and no network: everything is
made in a temporary folder.

    python -m scripts.web_bench                                  # 1, 4, 16 clients; ours vs the peer
    python -m scripts.web_bench --clients 1,16 --max-new-tokens 128 --rounds 5
    python -m scripts.web_bench --no-peer --device-type cpu      # our server alone

The models: a depth-4 nanochat GPT (width 256, 2 heads of dim 128, vocab 32768, random weights)
and a Llama of the same shape (nanochat/llama_reference.py: 4 layers, hidden 256, 2 heads of dim 128,
SwiGLU MLP of width 704, about the parameter count of our 4x ReLU^2 one, untied head, vocab 32768), both served
from local folders. Both use the same tokenizer (random merges, exported to tokenizer.json for the
peer, with a chat template that renders like ours), so a prompt is the same number of tokens on
both. In both models the head rows of the special tokens are zero and decoding is greedy, so no
reply ends early: every request generates exactly --max-new-tokens tokens (checked against the usage).

Per client count, each of the C clients sends --requests-per-client streaming requests one after
another (distinct prompts); the servers are measured in turn, interleaved, for --rounds rounds.
Reported: aggregate tokens/s (all completion tokens / wall time; the median over rounds) and the
p50 / p95 time to first token over all requests. The last line is one JSON object.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict

import torch

import rustbpe

from nanochat.checkpoint_manager import SOURCE_DIRS, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.flags import renamed
from nanochat.llama_reference import llama_like
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

parser = argparse.ArgumentParser(description="Benchmark chat_web against transformers serve.")
# load
parser.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent streaming clients")
parser.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends, one after another")
parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per request")
renamed(parser, "--max-tokens", "--max-new-tokens")
parser.add_argument("--rounds", type=int, default=3, help="measurements per server and client count (medians)")
# servers
parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="also run transformers serve")
parser.add_argument("--num-slots", type=int, default=16, help="our server's decoding slots")
parser.add_argument("--device-type", default=None, choices=["cuda", "cpu"], help="device (default: cuda if available)")
parser.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS of both servers (default: torch's own choice); 1 on a shared CPU box")
parser.add_argument("--startup-timeout", type=int, default=600, help="seconds to wait for a server to come up")
args = parser.parse_args()
clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
if not clients_list or min(clients_list) < 1 or args.max_new_tokens < 1 or args.rounds < 1 or args.requests_per_client < 1:
    parser.error("--clients, --max-new-tokens, --rounds and --requests-per-client must be positive")
device_type = args.device_type or ("cuda" if torch.cuda.is_available() else "cpu")

VOCAB, DEPTH, WIDTH, HEADS, SEQ_LEN = 32768, 4, 256, 2, 2048

# -----------------------------------------------------------------------------
# a tokenizer, our checkpoint and the peer's Llama, in a temporary folder

work = tempfile.mkdtemp(prefix="web_bench_")
base_dir, peer_dir = os.path.join(work, "base"), os.path.join(work, "llama")
num_merged = VOCAB - len(SPECIAL_TOKENS)
# random merged tokens: short lowercase words, each a distinct byte string (ids 256 .. num_merged-1)
gen = torch.Generator().manual_seed(0)
letters = b"abcdefghijklmnopqrstuvwxyz"
pieces, seen = [], set()
while len(pieces) < num_merged - 256:
    n = int(torch.randint(2, 7, (1,), generator=gen))
    word = b" " + bytes(letters[int(i)] for i in torch.randint(0, 26, (n,), generator=gen))
    if word not in seen:
        seen.add(word)
        pieces.append(word)
tokenizer = Tokenizer([bytes([b]) for b in range(256)] + pieces, rustbpe.GPT4_PATTERN)
assert tokenizer.get_vocab_size() == VOCAB
tokenizer.save(os.path.join(base_dir, "tokenizer"))
special_ids = [tokenizer.encode_special(s) for s in SPECIAL_TOKENS]

torch.manual_seed(0)
cfg = GPTConfig(sequence_len=SEQ_LEN, vocab_size=VOCAB, n_layer=DEPTH, n_head=HEADS, n_kv_head=HEADS, n_embd=WIDTH)
model = GPT(cfg)
model.init_weights()
with torch.no_grad():
    for block in model.transformer.h:  # non-zero projections: every layer does its full work
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.normal_(0.0, proj.in_features ** -0.5)
    model.lm_head.weight.normal_(0.0, 0.02)
    model.lm_head.weight[special_ids] = 0.0  # never the best token: no reply ends early
save_checkpoint(os.path.join(base_dir, SOURCE_DIRS["sft"], f"d{DEPTH}"), 0, model.state_dict(), None,
                {"model_config": asdict(cfg)})
n_params = sum(p.numel() for p in model.parameters())  # the model stays for the roofline's counts

if args.peer:
    from transformers import GenerationConfig

    from nanochat.hf import write_tokenizer

    llama = llama_like(cfg, bos_token_id=tokenizer.get_bos_token_id(),
                       eos_token_id=tokenizer.encode_special("<|assistant_end|>"))
    lcfg = llama.config
    with torch.no_grad():
        llama.lm_head.weight[special_ids] = 0.0
    llama.generation_config = GenerationConfig(do_sample=False, bos_token_id=lcfg.bos_token_id, eos_token_id=lcfg.eos_token_id)
    llama.save_pretrained(peer_dir)
    peer_params = sum(p.numel() for p in llama.parameters())
    del llama
    write_tokenizer(tokenizer, peer_dir, cfg.sequence_len)  # tokenizer.json + the chat template (nanochat/hf.py)

# -----------------------------------------------------------------------------
# servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, cmd, env, port):
    log_path = os.path.join(work, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {"name": name, "proc": proc, "port": port, "log": log_path}


def wait_ready(server, path):
    deadline = time.time() + args.startup_timeout
    while time.time() < deadline:
        if server["proc"].poll() is not None:
            break
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"web_bench: {server['name']} did not come up; its log ({server['log']}):\n{open(server['log']).read()[-3000:]}")


server_env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
port = free_port()
ours = start("nanochat", [sys.executable, "-m", "scripts.chat_web", "-i", "sft", "--port", str(port),
                          "--device-type", device_type, "--num-slots", str(args.num_slots), "--max-queue", "100000",
                          "--max-new-tokens", str(args.max_new_tokens)],
             {**server_env, "NANOCHAT_BASE_DIR": base_dir, "NANOCHAT_API_KEY": ""}, port)
ours["model"] = "nanochat"
servers = [ours]
if args.peer:
    port = free_port()
    cli = os.path.join(os.path.dirname(sys.executable), "transformers")
    peer = start("transformers serve", [cli, "serve", "--continuous-batching", "--host", "127.0.0.1", "--port", str(port),
                                        "--device", device_type, "--dtype", "bfloat16" if device_type == "cuda" else "float32",
                                        peer_dir],
                 {**server_env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, port)
    peer["model"] = peer_dir
    servers.append(peer)
try:
    wait_ready(ours, "/health")
    if args.peer:
        wait_ready(peer, "/health")

    # -------------------------------------------------------------------------
    # load

    def one_request(server, prompt):
        """Stream one chat completion -> (time to first token, completion tokens, prompt tokens)."""
        body = {"model": server["model"], "messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_new_tokens,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=600)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, f"{server['name']}: HTTP {resp.status} {resp.read()[:500]}"
        ttft, tokens, prompt_tokens = None, None, None
        for line in resp:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens, prompt_tokens = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
        conn.close()
        assert tokens is not None, f"{server['name']}: no usage in the stream"
        return ttft if ttft is not None else time.perf_counter() - t0, tokens, prompt_tokens

    def run_load(server, clients, salt):
        results, errors = [], []

        def client(c):
            try:
                for r in range(args.requests_per_client):
                    prompt = f"Request {salt}-{c}-{r}: tell me about the weather in city number {c * 31 + r}, please."
                    results.append(one_request(server, prompt))
            except Exception as e:  # reported after the join
                errors.append(e)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        tokens = sum(n for _, n, _ in results)
        assert all(n == args.max_new_tokens for _, n, _ in results), \
            f"{server['name']}: some replies were not {args.max_new_tokens} tokens: {sorted({n for _, n, _ in results})}"
        if server is ours:
            prompt_lens.extend(p for _, _, p in results)
        return tokens / wall, [t for t, _, _ in results]

    prompt_lens = []  # of our requests, for the roofline
    for server in servers:  # warm-up: first requests pay one-time costs (allocation, the peer's CB set-up)
        run_load(server, 2, "warmup")

    measured = {(s["name"], c): {"tps": [], "ttft": []} for s in servers for c in clients_list}
    for c in clients_list:
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]  # interleaved, alternating who goes first
            for server in order:
                tps, ttfts = run_load(server, c, f"{c}.{r}")
                measured[(server["name"], c)]["tps"].append(tps)
                measured[(server["name"], c)]["ttft"].extend(ttfts)
                print(f"  {server['name']:<20} clients {c:>3} round {r}: {tps:8.1f} tok/s", flush=True)
finally:
    for server in servers:
        server["proc"].terminate()
    for server in servers:
        try:
            server["proc"].wait(15)
        except subprocess.TimeoutExpired:
            server["proc"].kill()
    shutil.rmtree(work, ignore_errors=True)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


print(f"\nweb_bench: {device_type}, depth {DEPTH} width {WIDTH} ({n_params / 1e6:.1f}M params"
      + (f"; peer Llama {peer_params / 1e6:.1f}M" if args.peer else "") + f"), {args.max_new_tokens} tokens per request, "
      f"{args.requests_per_client} requests per client, {args.rounds} rounds")
print(f"| server | clients | tok/s (median) | TTFT p50 ms | TTFT p95 ms |")
print(f"|---|---|---|---|---|")
summary = {}
for server in servers:
    for c in clients_list:
        m = measured[(server["name"], c)]
        tps, p50, p95 = statistics.median(m["tps"]), 1000 * pct(m["ttft"], 0.5), 1000 * pct(m["ttft"], 0.95)
        print(f"| {server['name']} | {c} | {tps:.1f} | {p50:.1f} | {p95:.1f} |")
        key = "" if server is ours else "peer_"
        summary[f"{key}tok_per_s_{c}"] = round(tps, 1)
        summary[f"{key}ttft_p50_ms_{c}"] = round(p50, 1)
        summary[f"{key}ttft_p95_ms_{c}"] = round(p95, 1)
lo, hi = min(clients_list), max(clients_list)
summary[f"speedup_{hi}_vs_{lo}"] = round(summary[f"tok_per_s_{hi}"] / summary[f"tok_per_s_{lo}"], 2)
if args.peer:
    for c in clients_list:
        summary[f"vs_transformers_serve_{c}"] = round(summary[f"tok_per_s_{c}"] / summary[f"peer_tok_per_s_{c}"], 2)
if device_type == "cpu":  # the least time of the same work on this machine (nanochat/roofline.py), servers stopped
    from nanochat.roofline import decode_bound, describe

    if args.threads:
        torch.set_num_threads(args.threads)
    prompt_len = round(statistics.mean(prompt_lens))
    print(f"\n{describe(torch.float32)}\nour server against the roofline of its work (C sequences at once, "
          f"{prompt_len}-token prompts, prefill included, no server overhead):")
    for c in clients_list:
        bound_rate = c * args.max_new_tokens / decode_bound(model, [prompt_len] * c, args.max_new_tokens).seconds
        frac = summary[f"tok_per_s_{c}"] / bound_rate
        print(f"  {c:>3} client(s): {summary[f'tok_per_s_{c}']:.1f} of {bound_rate:.1f} tok/s = {frac:.1%}")
        summary[f"fraction_of_roofline_{c}"] = round(frac, 3)
summary["device"] = device_type
print(json.dumps(summary))
