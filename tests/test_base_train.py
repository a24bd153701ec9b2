"""
End-to-end tests of scripts/base_train.py (and base_loss.py, nanochat/loss_eval.py) on a tiny corpus
and the tiny tokenizer, both made here (no data mirror, no network), on CPU:

  - bits per byte on a hand-checked case, and against a naive recompute with a real GPT;
  - a tiny model lowers its train loss and val bpb; base_loss reproduces the run's final val bpb;
  - `torchrun --nproc_per_node=2` (gloo) matches one process with gradient accumulation 2;
  - a run killed between checkpoints (SIGKILL) or preempted (SIGTERM) and resumed with --resume
    reproduces the uninterrupted run's losses;
  - bad flags and missing inputs give a clear message and a non-zero exit.

The corpus is built so that every row group holds between B*(T+1) and (B+1)*(T+1) tokens: with
concat packing each row group then gives exactly B rows, one micro-batch. (Since the data order is
world-size independent, nanochat/dataloader.py, 2 ranks and 1 process with 2 micro-steps see the
same batches on any corpus; tests/test_resume_world_size.py uses one without this property.)

    uv run pytest tests/test_base_train.py -q
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import evaluate_bpb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T = 2, 32
WORDS = ("the model learns to predict the next token from a large amount of text and then it is fine tuned "
         "on conversations so that it answers questions politely and correctly").split()
COMMON = ["--depth=1", "--aspect-ratio=32", "--head-dim=16", f"--max-seq-len={T}", f"--device-batch-size={B}",
          f"--total-batch-tokens={2 * B * T}", f"--eval-tokens={2 * B * T}", "--sample-every=-1", "--packing=concat",
          "--run=dummy"]


def make_row_group(rng, tokenizer):
    """Texts whose tokens (with one BOS per text) number in [B*(T+1), (B+1)*(T+1))."""
    while True:
        texts, n = [], 0
        while n < B * (T + 1):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 6))) + "."
            texts.append(text)
            n += 1 + len(tokenizer.encode(text))
        if n < (B + 1) * (T + 1):
            return texts


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    """Environment of a run: NANOCHAT_BASE_DIR (tokenizer inside) and NANOCHAT_DATA_DIR (4 shards)."""
    root = tmp_path_factory.mktemp("base_train")
    tiny_tokenizer.save(str(root / "base" / "tokenizer"))
    rng = random.Random(0)
    pretrain = root / "data" / "pretrain"
    pretrain.mkdir(parents=True)
    for s, num_groups in enumerate([4, 4, 2]):  # 2 train shards of 4 row groups, 1 val shard of 2
        with pq.ParquetWriter(pretrain / f"shard_{s:05d}.parquet", pa.schema([("text", pa.string())])) as writer:
            for _ in range(num_groups):
                writer.write_table(pa.table({"text": make_row_group(rng, tiny_tokenizer)}))
    return dict(os.environ, NANOCHAT_BASE_DIR=str(root / "base"), NANOCHAT_DATA_DIR=str(root / "data"),
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def train_cmd(*flags, nproc=1):
    if nproc == 1:
        return [sys.executable, "-m", "scripts.base_train", *COMMON, *flags]
    # "--" ends torchrun's own flags (it would read --run=... as an abbreviation of its --run-path)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "scripts.base_train", "--", *COMMON, *flags]


def run_train(env, *flags, nproc=1, check=True):
    out = subprocess.run(train_cmd(*flags, nproc=nproc), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"base_train failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def read_log(env, tag):
    with open(os.path.join(env["NANOCHAT_BASE_DIR"], "base_checkpoints", tag, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    bpbs = {r["step"]: r["val_bpb"] for r in records if "val_bpb" in r}
    return losses, bpbs


def read_lrms(env, tag):
    with open(os.path.join(env["NANOCHAT_BASE_DIR"], "base_checkpoints", tag, "log.jsonl")) as f:
        return {r["step"]: r["lrm"] for r in map(json.loads, f) if "lrm" in r}


# -----------------------------------------------------------------------------
# bits per byte

class Uniform(nn.Module):
    """A model that predicts every token of a V-token vocabulary with probability 1/V."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx, targets, loss_reduction="mean"):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        return F.cross_entropy(logits.view(-1, self.vocab_size), targets.view(-1), ignore_index=-1,
                               reduction=loss_reduction)


def test_bpb_hand_checked():
    # vocab of 8: ids 0..5 are 1, 1, 2, 3, 4, 1 bytes long; 6 and 7 are special (0 bytes)
    token_bytes = torch.tensor([1, 1, 2, 3, 4, 1, 0, 0], dtype=torch.int32)
    inputs = torch.zeros(2, 4, dtype=torch.long)
    targets = torch.tensor([[0, 2, 6, 4], [-1, 3, 7, 5]])
    # counted targets: 0, 2, 4, 3, 5 -> 1 + 2 + 4 + 3 + 1 = 11 bytes, 5 tokens of ln(8) = 3 ln(2) nats each
    # -> 5 * 3 ln(2) / (ln(2) * 11) = 15 / 11 bits per byte
    assert evaluate_bpb(Uniform(8), [(inputs, targets)], 1, token_bytes) == pytest.approx(15 / 11, rel=1e-6)  # fp32 losses


def test_bpb_matches_a_naive_recompute():
    torch.manual_seed(0)
    V = 50
    model = GPT(GPTConfig(sequence_len=16, vocab_size=V, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    for p in model.parameters():  # move off the init (zero projections, tiny head) so the loss varies per token
        p.data += 0.3 * torch.randn_like(p)
    token_bytes = torch.randint(0, 5, (V,), dtype=torch.int32)
    batches = [(torch.randint(0, V, (3, 16)), torch.randint(-1, V, (3, 16))) for _ in range(2)]
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            logp = torch.log_softmax(model(inputs).double(), dim=-1)  # (B, T, V)
            for b in range(3):
                for t in range(16):
                    y = targets[b, t].item()
                    if y >= 0 and token_bytes[y] > 0:
                        nats -= logp[b, t, y].item()
                        nbytes += token_bytes[y].item()
    assert evaluate_bpb(model, iter(batches), 2, token_bytes) == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-5)


# -----------------------------------------------------------------------------
# training runs

def test_tiny_model_learns_and_base_loss_agrees(env):
    run_train(env, "--num-iterations=40", "--eval-every=20", "--model-tag=learn")
    losses, bpbs = read_log(env, "learn")
    assert sorted(losses) == list(range(40)) and sorted(bpbs) == [0, 20, 40]
    assert sum(losses[s] for s in range(35, 40)) / 5 < losses[0] - 1.0, f"train loss did not fall: {losses}"
    assert bpbs[40] < bpbs[0] - 0.3, f"val bpb did not fall: {bpbs}"
    with open(os.path.join(env["NANOCHAT_BASE_DIR"], "base_checkpoints", "learn", "summary.json")) as f:
        summary = json.load(f)
    assert summary["final_val_bpb"] == bpbs[40] and summary["min_val_bpb"] == min(bpbs.values())
    assert summary["total_flops"] > 0 and summary["mfu"] > 0
    # the schedule runs step s at progress s / 40: the warm-down (last 20%) starts at 1.0 on step 32 and
    # the last step still trains at 1/8 of the peak (it ran at 0, a wasted step, when evaluated at (s + 1) / n)
    lrms = read_lrms(env, "learn")
    assert lrms[31] == lrms[32] == 1.0 and lrms[33] == pytest.approx(0.875) and lrms[39] == pytest.approx(0.125)
    # base_loss on the final checkpoint evaluates the same val rows: the same bpb
    out = subprocess.run([sys.executable, "-m", "scripts.base_loss", "--model-tag=learn", f"--device-batch-size={B}",
                          f"--eval-tokens={2 * B * T}", "--max-new-tokens=4"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["val_bpb"] == pytest.approx(bpbs[40], rel=1e-5)


def test_torchrun_two_ranks_match_one_process(env):
    steps = ["--num-iterations=6", "--eval-every=3"]
    run_train(env, *steps, "--model-tag=single")
    run_train(env, *steps, "--model-tag=ddp", nproc=2)
    single, single_bpb = read_log(env, "single")
    ddp, ddp_bpb = read_log(env, "ddp")
    assert sorted(single) == sorted(ddp) == list(range(6))
    for s in range(6):
        assert ddp[s] == pytest.approx(single[s], rel=1e-5, abs=1e-6), f"step {s}: {ddp[s]} vs {single[s]}"
    assert sorted(single_bpb) == sorted(ddp_bpb) == [0, 3, 6]
    for s in single_bpb:
        assert ddp_bpb[s] == pytest.approx(single_bpb[s], rel=1e-5)
    assert single[5] < single[0]  # it trained at all


def test_evaluation_reads_each_val_token_at_most_once(env):
    # the val shard holds 2 row groups = 2 micro-batches; asking for far more evaluates those 2, once each
    out = run_train(env, "--num-iterations=2", "--eval-every=1", "--eval-tokens=1000000", "--model-tag=evalonce")
    assert "fewer than the" in out.stdout + out.stderr
    assert f"validation: {2 * B * T:,} tokens per evaluation" in out.stdout
    assert "starting epoch" not in out.stdout + out.stderr  # the one-pass read stops at the split's end


RESUME_FLAGS = ["--num-iterations=150", "--save-every=10", "--eval-every=50"]


@pytest.fixture(scope="module")
def uninterrupted(env):
    run_train(env, *RESUME_FLAGS, "--model-tag=whole")
    return read_log(env, "whole")


def interrupt(env, tag, sig, after_step=15, flags=RESUME_FLAGS):
    """Start a run and send it `sig` once its log shows a step >= after_step; return its exit status and output."""
    log = os.path.join(env["NANOCHAT_BASE_DIR"], "base_checkpoints", tag, "log.jsonl")
    proc = subprocess.Popen(train_cmd(*flags, f"--model-tag={tag}"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log):
            with open(log) as f:
                if any(json.loads(line).get("step", -1) >= after_step for line in f if line.endswith("\n")):
                    proc.send_signal(sig)
                    break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_exactly(env, uninterrupted, sig):
    tag = f"killed_{sig.name}"
    code, output = interrupt(env, tag, sig)
    losses, _ = read_log(env, tag)
    assert max(losses) < 149, "the run finished before it was interrupted; the test did not test anything"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # a clean exit after saving the step it was on
        assert code == 0 and "stopped on SIGTERM" in output, output[-3000:]
        assert os.path.isdir(os.path.join(env["NANOCHAT_BASE_DIR"], "base_checkpoints", tag, f"{max(losses) + 1:06d}"))
    run_train(env, *RESUME_FLAGS, f"--model-tag={tag}", "--resume")
    resumed, resumed_bpb = read_log(env, tag)
    whole, whole_bpb = uninterrupted
    assert sorted(resumed) == list(range(150))
    assert resumed == whole, "the resumed run's losses differ from the uninterrupted run's"
    assert resumed_bpb == whole_bpb


def test_resume_under_dtype_auto_keeps_the_checkpoints_dtype(env):
    """--dtype auto decided bf16 (forced through $NANOCHAT_AUTO_DTYPE, so that the test does not depend
    on this CPU); preempted and resumed where auto would now decide fp32, the run goes on in bf16 and
    matches the uninterrupted auto run exactly. An explicit other --dtype is refused."""
    flags = ["--num-iterations=40", "--save-every=5", "--eval-every=20", "--dtype=auto"]
    bf16, fp32 = dict(env, NANOCHAT_AUTO_DTYPE="bfloat16"), dict(env, NANOCHAT_AUTO_DTYPE="float32")
    out = run_train(bf16, *flags, "--model-tag=auto_whole")
    assert "compute dtype bfloat16 (auto: bfloat16 from $NANOCHAT_AUTO_DTYPE" in out.stdout, out.stdout[-2000:]
    code, output = interrupt(bf16, "auto_cut", signal.SIGTERM, after_step=7, flags=flags)
    assert code == 0 and "stopped on SIGTERM" in output, output[-3000:]
    cut, _ = read_log(env, "auto_cut")
    assert max(cut) < 39, "the run finished before it was interrupted; the test did not test anything"
    refused = run_train(fp32, *flags, "--model-tag=auto_cut", "--resume", "--dtype=float32", check=False)
    assert refused.returncode != 0 and "trains in bfloat16, not --dtype float32" in refused.stderr, refused.stderr[-2000:]
    out = run_train(fp32, *flags, "--model-tag=auto_cut", "--resume")
    assert "compute dtype bfloat16 (bfloat16, the dtype of the checkpoint resumed)" in out.stdout, out.stdout[-2000:]
    assert read_log(env, "auto_cut") == read_log(env, "auto_whole")
    fp32_run = run_train(fp32, *flags, "--model-tag=auto_fp32")  # and auto -> fp32 does differ
    assert "compute dtype float32" in fp32_run.stdout
    assert read_log(env, "auto_fp32")[0][0] != read_log(env, "auto_whole")[0][0]  # step 0: the init, in fp32


# -----------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("flags, env_change, message", [
    (["--total-batch-size=100"], {}, "--total-batch-tokens=100 is not a multiple"),  # the old name still works
    (["--depth=0"], {}, "--depth must be >= 1"),
    (["--run=myrun"], {}, "wandb is not installed"),
    (["--resume", "--model-tag=never_saved"], {}, "--resume"),
    ([], {"NANOCHAT_DATA_DIR": "MISSING"}, "does not exist"),
    ([], {"NANOCHAT_BASE_DIR": "EMPTY"}, "tokenizer"),
])
def test_bad_flags_and_inputs_give_clear_errors(env, tmp_path, flags, env_change, message):
    bad_env = dict(env)
    for key, value in env_change.items():  # an existing folder without pretrain/ or tokenizer/ inside
        bad_env[key] = str(tmp_path / value.lower())
        os.makedirs(bad_env[key], exist_ok=True)
    out = run_train(bad_env, "--num-iterations=2", *flags, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_base_bench_time_to_target_interpolates_the_first_crossing():
    from scripts.base_bench import time_to_target
    curve = [dict(train_time=60.0, val_bpb=3.0), dict(train_time=120.0, val_bpb=2.0), dict(train_time=180.0, val_bpb=1.0),
             dict(train_time=240.0, val_bpb=1.2), dict(train_time=300.0, val_bpb=0.5)]
    assert time_to_target(curve, 2.5) == 90.0        # halfway between the evaluations at 3.0 and 2.0
    assert time_to_target(curve, 1.0) == 180.0       # an evaluation exactly at the target
    assert time_to_target(curve, 3.5) == 60.0        # below it at the first evaluation
    assert time_to_target(curve, 0.75) == 240.0 + 60.0 * (1.2 - 0.75) / (1.2 - 0.5)  # after the bump, not before
    assert time_to_target(curve, 0.1) is None


def test_base_bench_compares_before_and_after_on_the_same_val_tokens(env, tmp_path):
    """scripts/base_bench end to end on the tiny mirror (both configs shrunk by --before-flags /
    --after-flags): two runs, the target of both is BEFORE's final val bpb, BEFORE's time its training
    time, AFTER's (one run per --after-minutes horizon) the crossing of its curve (time_to_target) and the
    speed-up their ratio; configs that would be scored on other val tokens are refused. runcpu.sh's own base
    flags (what AFTER starts from) pass base_train's checks (--dry-run)."""
    from scripts.base_bench import runcpu_base_flags, time_to_target
    tiny = " ".join(COMMON + ["--max-train-minutes=0.02"])
    cmd = [sys.executable, "-m", "scripts.base_bench", "--configs=before,after", "--seeds=0", "--eval-interval=0.01",
           "--after-minutes=0.01,0.02", f"--before-flags={tiny}", f"--after-flags={tiny} --matrix-lr=0.04"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    before, short, full = result["runs"]
    assert [r["config"] for r in result["runs"]] == ["before", "after@0.01", "after@0.02"]
    assert before["compute_dtype"] == "float32" and len(before["evals"]) >= 2
    assert before["time_to_target_s"] == before["training_time_s"]
    for after, minutes in ((short, 0.01), (full, 0.02)):  # one run per horizon, each its own schedule
        assert f"--max-train-minutes={minutes:g}" in result["configs"][after["config"]]
        assert after["target_bpb"] == before["final_val_bpb"]
        assert after["time_to_target_s"] == time_to_target(after["evals"], before["final_val_bpb"])
        if after["time_to_target_s"] is not None:
            assert after["speedup"] == before["training_time_s"] / after["time_to_target_s"]
            assert result["speedups"][after["config"]] == after["speedup"]  # one seed: the median is that run
    assert result["speedup"] == (max(result["speedups"].values()) if result["speedups"] else None)
    assert "--matrix-lr=0.04" in result["configs"]["after@0.02"] and "--matrix-lr=0.04" not in result["configs"]["before"]
    other = subprocess.run(cmd[:-1] + [f"--after-flags={tiny} --eval-tokens={4 * B * T}"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "different validation tokens" in other.stderr
    dry = run_train(env, *runcpu_base_flags(), "--dry-run")
    assert "dry run" in dry.stdout
