"""
Helpers for the chat front-end tests (test_chat_web, test_chat_ui, test_chat_cli): a temporary base
dir with a tokenizer and two tiny chat checkpoints, and a real chat_web server process on a free port.

    base = make_chat_base(tmp_dir, tiny_tokenizer)    # <base>/tokenizer, <base>/<sft folder>/{d1,d2}
    with chat_server(base, "--model-tag", "d1") as url:  # http://127.0.0.1:<port>
        status, headers, body = request(url, "POST", "/v1/chat/completions", {...})
        for chunk in SSE(url, {...}): ...               # a raw stream; .close() disconnects
    with chat_servers(base, [flags...], [flags...]) as (url_a, url_b): ...  # started together

The checkpoints (saved with checkpoint_manager.save_checkpoint under SOURCE_DIRS["sft"]):
    d2  RANDOM_TAG    random weights; never emits a special token, so it writes until max_tokens
                      (or a stop string): long replies whose text depends on the whole prompt
    d1  SCRIPTED_TAG  a one-layer model whose next token depends only on the current one (blocks are
                      the identity), set so that every reply is SCRIPTED_REPLY: markdown, HTML that
                      must stay text, a calculator call 6*7 whose output the engine forces, a code
                      block, then <|assistant_end|>. Greedy or sampled, the reply is the same (the
                      scripted logit leads the others by ~14.5).
The tokenizer is the tiny one from conftest.py plus the few long pieces of SCRIPTED_REPLY as single
tokens (so the scripted chain never repeats a token).
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from urllib.parse import urlsplit

import torch

from nanochat.checkpoint_manager import SOURCE_DIRS, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANDOM_TAG, SCRIPTED_TAG = "d2", "d1"
XSS_SCRIPT = "<script>window.__xss = 1</script>"
XSS_IMG = '<img src=x onerror="window.__xss = 2">'
PIECES = [
    f"Here is **bold** and `inline code`. This stays text: {XSS_SCRIPT} {XSS_IMG} and six times seven is ",
    '.\n\n```python\nprint("<b>not bold</b>")\n```\n\n- one\n- two\n\n',
    "Done.",
]
TOOL_EXPR, TOOL_RESULT = "6*7", "42"
SCRIPTED_CONTENT = PIECES[0] + TOOL_RESULT + PIECES[1] + PIECES[2]  # what a plain client reads
SCRIPTED_PARTS = [{"type": "text", "text": PIECES[0]}, {"type": "python", "text": TOOL_EXPR},
                  {"type": "python_output", "text": TOOL_RESULT}, {"type": "text", "text": PIECES[1] + PIECES[2]}]


def chat_tokenizer(tiny_tokenizer):
    """The tiny tokenizer with PIECES appended as single tokens (ids after the merges, before the specials)."""
    ranks = sorted(tiny_tokenizer.get_mergeable_ranks().items(), key=lambda kv: kv[1])
    return Tokenizer([b for b, _ in ranks] + [p.encode() for p in PIECES], tiny_tokenizer.get_pattern())


def random_chat_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=512, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.normal_(0.0, proj.in_features ** -0.5)
        model.lm_head.weight.normal_(0.0, 0.3)
        for name in tokenizer.get_special_tokens():  # logit exactly 0, below the best other logit
            model.lm_head.weight[tokenizer.encode_special(name)] = 0.0
    return model, cfg


def scripted_chat_model(tokenizer):
    sp = tokenizer.encode_special
    n = tokenizer.get_vocab_size() - len(tokenizer.get_special_tokens())
    piece_ids = list(range(n - len(PIECES), n))
    expr = tokenizer.encode(TOOL_EXPR)
    chain = [sp("<|assistant_start|>"), piece_ids[0], sp("<|python_start|>"), *expr, sp("<|python_end|>"),
             sp("<|output_start|>")]
    successor = dict(zip(chain[:-1], chain[1:]))
    successor[sp("<|output_end|>")] = piece_ids[1]  # after the forced tool output
    successor[piece_ids[1]] = piece_ids[2]
    successor[piece_ids[2]] = sp("<|assistant_end|>")
    keys = list(successor)
    assert len(set(chain)) == len(chain), "the scripted chain must not repeat a token"
    C = 16
    assert len(keys) <= C
    cfg = GPTConfig(sequence_len=256, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=1, n_embd=C)
    model = GPT(cfg)
    model.init_weights()  # c_proj = 0: the block is the identity
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.lm_head.weight.zero_()
        for i, token in enumerate(keys):
            model.transformer.wte.weight[token, i] = 1.0  # after RMSNorm: sqrt(C) * e_i
            model.lm_head.weight[successor[token], i] = 30.0 / C ** 0.5  # logit 15 * tanh(30 / 15) ~ 14.5
    return model, cfg


def make_chat_base(base_dir, tiny_tokenizer):
    """Write the tokenizer and both checkpoints into base_dir; returns base_dir (a str)."""
    base_dir = str(base_dir)
    tok = chat_tokenizer(tiny_tokenizer)
    tok.save(os.path.join(base_dir, "tokenizer"))
    for tag, (model, cfg) in ((RANDOM_TAG, random_chat_model(tok)), (SCRIPTED_TAG, scripted_chat_model(tok))):
        save_checkpoint(os.path.join(base_dir, SOURCE_DIRS["sft"], tag), 0, model.state_dict(), None,
                        {"model_config": asdict(cfg)})
    return base_dir


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(base_dir):
    # one thread per process: several servers and the test share two cores; --dtype auto pinned to fp32,
    # the dtype of the in-process references
    return {**os.environ, "NANOCHAT_BASE_DIR": base_dir, "OMP_NUM_THREADS": "1", "NANOCHAT_API_KEY": "",
            "NANOCHAT_AUTO_DTYPE": "float32"}


@contextmanager
def chat_servers(base_dir, *flag_lists, timeout=300):
    """Start one `python -m scripts.chat_web` per list of flags, each on a free port, all at once;
    yields their URLs once every one answers /health, and stops them when the block ends."""
    procs = []
    try:
        for flags in flag_lists:
            port = free_port()
            log_path = os.path.join(base_dir, f"chat_web_{port}.log")
            cmd = [sys.executable, "-m", "scripts.chat_web", "--device-type", "cpu", "--port", str(port), *flags]
            with open(log_path, "w") as log:
                proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(base_dir), stdout=log, stderr=subprocess.STDOUT)
            procs.append((proc, f"http://127.0.0.1:{port}", log_path))
            RUNNING[procs[-1][1]] = proc
        deadline = time.time() + timeout
        for proc, url, log_path in procs:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"chat_web exited with {proc.returncode}:\n{open(log_path).read()}")
                try:
                    if request(url, "GET", "/health", timeout=1)[0] == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise AssertionError(f"chat_web did not answer /health in {timeout}s:\n{open(log_path).read()}")
                time.sleep(0.1)
        yield [url for _, url, _ in procs]
    finally:
        for proc, url, _ in procs:
            stop_server(url)


@contextmanager
def chat_server(base_dir, *flags, timeout=300):
    """One server: yields its URL."""
    with chat_servers(base_dir, flags, timeout=timeout) as urls:
        yield urls[0]


RUNNING = {}  # url -> the server's process


def stop_server(url):
    """Stop a server started by chat_servers (e.g. to see how a client copes with it gone)."""
    proc = RUNNING.pop(url, None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_log(base_dir, url):
    return open(os.path.join(base_dir, f"chat_web_{url.rsplit(':', 1)[1]}.log")).read()


# -----------------------------------------------------------------------------
# plain HTTP (the standard library's http.client: what goes over the wire is exactly what we send)

def _connect(url, timeout):
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def request(url, method, path, body=None, headers=None, timeout=60):
    """-> (status, headers, parsed JSON or text). body: a dict (sent as JSON), bytes or str."""
    conn = _connect(url, timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read().decode()
        try:
            data = json.loads(data)
        except ValueError:
            pass
        return resp.status, dict(resp.getheaders()), data
    finally:
        conn.close()


class SSE:
    """A streaming chat completion read chunk by chunk; close() drops the connection mid-stream."""

    def __init__(self, url, body, headers=None, timeout=60):
        self.conn = _connect(url, timeout)
        self.conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
                          headers={"Content-Type": "application/json", **(headers or {})})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def __iter__(self):
        """Yields each `data:` payload, parsed (the final [DONE] as the string "[DONE]")."""
        for line in self.resp:
            line = line.decode().strip()
            if line.startswith("data: "):
                payload = line[len("data: "):]
                yield payload if payload == "[DONE]" else json.loads(payload)

    def close(self):
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
