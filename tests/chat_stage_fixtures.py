"""
Helpers for the chat-stage tests (test_chat_data, test_mid_train, test_chat_sft): a tiny data mirror
in the layout of ../shared/data, a reference renderer for the training mask, a tiny base checkpoint,
and running a stage script as a subprocess.

    data = write_mirror(tmp / "data")               # chat/, gsm8k/, arc/, mmlu/, words/ (tiny parquet files)
    base = make_base_dir(tmp / "base", tokenizer)   # <base>/tokenizer and <base>/base_checkpoints/d1/000000
    ids, trained = reference_render(tokenizer, conversation)
    out = run_stage("scripts.chat_sft", env, "--num-iterations=4")
    results = run_stages_at_once("scripts.chat_sft", [(env, ["--total-batch-rows=3"]), ...])   # error cases
    code, output = interrupt("scripts.mid_train", env, flags, run_dir, signal.SIGTERM, after_step=15)
    steps, evals = check_preempted_then_killed_run_resumes("scripts.mid_train", env, flags, run_dir, 60, 10)

Every conversation here is made from a few words the tiny tokenizer (tests/conftest.py) knows, so
the rows stay short (tens of tokens) and a one-layer model learns them in a few dozen steps.
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nanochat.checkpoint_manager import SOURCE_DIRS, list_steps, save_checkpoint
from nanochat.gpt import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the model learns to predict the next token from text and then it answers questions politely "
         "and correctly").split()
SPELLING_WORDS = ["strawberry", "banana", "mississippi", "cat", "letter", "bookkeeper", "rhythm", "aardvark"]
TINY_CONFIG = dict(sequence_len=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)


def _phrase(rng, lo=2, hi=5):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(lo, hi)))


def chat_rows(n, seed):
    """SmolTalk-schema rows: an optional system turn, then 1-2 user/assistant exchanges."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": "Answer briefly."})
        for _ in range(rng.randrange(1, 3)):
            phrase = _phrase(rng)
            messages += [{"role": "user", "content": f"Repeat: {phrase}"}, {"role": "assistant", "content": phrase}]
        rows.append({"messages": messages, "source": "tiny"})
    return rows


def gsm8k_rows(n, seed):
    """GSM8K-schema rows with <<a+b=c>> calculator annotations and a '#### c' answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(1, 50), rng.randrange(1, 50)
        rows.append({"question": f"What is {a} + {b}?", "answer": f"{a}+{b} = <<{a}+{b}={a + b}>>{a + b}.\n#### {a + b}"})
    return rows


def arc_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        choices = [_phrase(rng, 1, 3) for _ in range(4)]
        rows.append({"id": f"tiny_{seed}_{k}", "question": f"Which one is {choices[k % 4]}?",
                     "choices": {"text": choices, "label": ["A", "B", "C", "D"]}, "answerKey": "ABCD"[k % 4]})
    return rows


def mmlu_rows(n, seed):
    rng = random.Random(seed)
    return [{"question": f"Pick {_phrase(rng, 1, 2)}.", "subject": "tiny_subject",
             "choices": [_phrase(rng, 1, 2) for _ in range(4)], "answer": k % 4} for k in range(n)]


def _write_parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_mirror(root, num_chat=24, num_math=12, num_arc=8):
    """A tiny NANOCHAT_DATA_DIR in the mirror's layout (see ../shared/data/MANIFEST.md); returns its path."""
    root = os.fspath(root)
    for split, seed in (("train", 0), ("test", 1)):
        _write_parquet(os.path.join(root, "chat", f"{split}.parquet"), chat_rows(num_chat, seed))
        _write_parquet(os.path.join(root, "gsm8k", "main", f"{split}.parquet"), gsm8k_rows(num_math, seed))
    for s, subset in enumerate(("ARC-Easy", "ARC-Challenge")):
        for k, split in enumerate(("train", "validation", "test")):
            _write_parquet(os.path.join(root, "arc", subset, f"{split}.parquet"), arc_rows(num_arc, 10 * s + k))
    for k, split in enumerate(("dev", "validation", "test")):
        _write_parquet(os.path.join(root, "mmlu", "all", f"{split}.parquet"), mmlu_rows(8, 20 + k))
    os.makedirs(os.path.join(root, "words"), exist_ok=True)
    with open(os.path.join(root, "words", "words_alpha.txt"), "wb") as f:
        f.write("".join(w + "\r\n" for w in SPELLING_WORDS).encode())
    return root


def make_base_dir(root, tokenizer, tag="d1", seed=0):
    """A NANOCHAT_BASE_DIR holding the tokenizer and one tiny base checkpoint (step 0, random weights)."""
    root = os.fspath(root)
    tokenizer.save(os.path.join(root, "tokenizer"))
    config = GPTConfig(vocab_size=tokenizer.get_vocab_size(), **TINY_CONFIG)
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    for p in model.parameters():  # off the init (zero projections, tiny head) so the model is not trivial
        p.data += 0.02 * torch.randn_like(p)
    save_checkpoint(os.path.join(root, SOURCE_DIRS["base"], tag), 0, model.state_dict(), None,
                    dict(model_config=asdict(config), user_config={}, step=0))
    return root


def reference_render(tokenizer, conversation):
    """(ids, trained) of a conversation, built here from the chat format (not from render_conversation's
    mask): trained is True on the assistant's text, its python calls with their delimiters and its
    <|assistant_end|>; False on <|bos|>, system/user turns, <|assistant_start|> and tool outputs."""
    sp = tokenizer.encode_special
    ids, trained = [sp("<|bos|>")], [False]

    def add(tokens, flag):
        ids.extend(tokens)
        trained.extend([flag] * len(tokens))

    messages = list(conversation["messages"])
    if messages[0]["role"] == "system":  # folded into the first user message
        messages = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}] + messages[2:]
    for message in messages:
        content = message["content"]
        if message["role"] == "user":
            add([sp("<|user_start|>")] + tokenizer.encode(content) + [sp("<|user_end|>")], False)
            continue
        add([sp("<|assistant_start|>")], False)
        for part in ([{"type": "text", "text": content}] if isinstance(content, str) else content):
            if part["type"] == "text":
                add(tokenizer.encode(part["text"]), True)
            elif part["type"] == "python":
                add([sp("<|python_start|>")] + tokenizer.encode(part["text"]) + [sp("<|python_end|>")], True)
            else:
                add([sp("<|output_start|>")] + tokenizer.encode(part["text"]) + [sp("<|output_end|>")], False)
        add([sp("<|assistant_end|>")], True)
    return ids, trained


def stage_env(base_dir, data_dir):
    """The environment of a stage subprocess. Where PYTHONDONTWRITEBYTECODE is set, every new process
    compiles torch's sources again (seconds of CPU each); a private bytecode cache outside the repo
    and the virtual environment lets the second and later processes skip that."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=os.fspath(base_dir), NANOCHAT_DATA_DIR=os.fspath(data_dir),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPYCACHEPREFIX=os.path.join(tempfile.gettempdir(), "nanochat_test_pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def with_tag(env, tag):
    """--model-tag=<tag> for the tiny base checkpoint "d1" linked under another tag: each run gets
    its own run folder from the same source model."""
    src = os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["base"], "d1")
    dst = os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["base"], tag)
    if not os.path.exists(dst):
        os.symlink(src, dst)
    return f"--model-tag={tag}"


def stage_cmd(module, flags, nproc=1):
    if nproc == 1:
        return [sys.executable, "-m", module, *flags]
    # "--" ends torchrun's own flags (it would read --run=... as an abbreviation of its --run-path)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, "--", *flags]


def run_stage(module, env, *flags, nproc=1, check=True):
    out = subprocess.run(stage_cmd(module, flags, nproc), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    if check:
        assert out.returncode == 0, f"{module} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def run_stages_at_once(module, runs):
    """Start every (env, flags) run of `module` together and wait for all: [(exit status, stdout, stderr)]."""
    procs = [subprocess.Popen(stage_cmd(module, flags), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for env, flags in runs]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, *output) for p, output in zip(procs, outputs)]


def read_log(run_dir):
    """{step: record} of the training steps and {step: merged records} of the evaluations in run_dir/log.jsonl."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]  # not a line cut by SIGKILL
    steps = {r["step"]: r for r in records if "loss" in r}
    evals = {}
    for r in records:
        if "loss" not in r:  # the evaluations of one step (val loss, task accuracies) merged into one dict
            evals.setdefault(r["step"], {}).update(r)
    return steps, evals


def interrupt(module, env, flags, run_dir, sig, after_step):
    """Start a stage and send it `sig` once its log shows a training step >= after_step; returns
    (exit status, output)."""
    log = os.path.join(run_dir, "log.jsonl")
    proc = subprocess.Popen(stage_cmd(module, flags), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log):
            with open(log) as f:
                records = [json.loads(line) for line in f if line.endswith("\n")]
            if any("loss" in r and r["step"] >= after_step for r in records):
                proc.send_signal(sig)
                break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=600)
    return proc.returncode, output


def check_preempted_then_killed_run_resumes(module, env, flags, run_dir, num_steps, save_every):
    """SIGTERM a run (it must save and exit 0), resume it and SIGKILL it between two checkpoints,
    resume it again to the end; returns the final (steps, evals) of run_dir's log for comparison."""
    code, output = interrupt(module, env, flags, run_dir, signal.SIGTERM, after_step=save_every + save_every // 2)
    steps, _ = read_log(run_dir)
    stopped_at = max(steps) + 1
    assert stopped_at < num_steps - 1, "the run finished before SIGTERM; the test did not test anything"
    assert code == 0 and "stopped on SIGTERM" in output, output[-3000:]
    assert os.path.isdir(os.path.join(run_dir, f"{stopped_at:06d}")), "SIGTERM must save the step it stopped at"
    # SIGKILL between two checkpoints. The signal lands a few steps after the step that triggered it
    # (the test polls the log), so on a loaded machine it can land just after a save: then no work
    # was lost and the case is not tested, so resume from that save and aim at the next midpoint.
    resumed_from, latest = stopped_at, stopped_at
    while latest == resumed_from:
        kill_after = (resumed_from // save_every + 2) * save_every - save_every // 2
        assert kill_after < num_steps - 1, f"every SIGKILL landed on a checkpoint: {list_steps(run_dir)}"
        code, output = interrupt(module, env, [*flags, "--resume"], run_dir, signal.SIGKILL, after_step=kill_after)
        assert f"resumed from {run_dir} at step {resumed_from}" in output, output[-3000:]
        steps, _ = read_log(run_dir)
        assert code == -signal.SIGKILL and max(steps) < num_steps - 1, "the resumed run ended before SIGKILL"
        latest = list_steps(run_dir)[-1]
        assert resumed_from < latest <= max(steps) + 1, f"no checkpoint between the two interruptions: {list_steps(run_dir)}"
        if latest == max(steps) + 1:  # killed right after a save: nothing lost, try again from it
            resumed_from = latest
    out = run_stage(module, env, *flags, "--resume")
    assert f"resumed from {run_dir} at step {latest}" in out.stdout, out.stdout[-3000:]
    return read_log(run_dir)
