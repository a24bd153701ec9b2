"""
Tests of scripts/chat_sft.py on a tiny mirror, a tiny base checkpoint and --custom-json files made
here (chat_stage_fixtures; no data mirror, no network), on CPU:
  - a micro-batch whose every target is masked gives a finite loss (0), zero gradients, and an
    optimizer step on it leaves the weights unchanged; end to end, a run whose mixture holds such
    conversations logs only finite losses, steps with no trained token included;
  - a tiny SFT run lowers the loss and records summary.json, loss.svg, a results record and task
    accuracies;
  - `torchrun --nproc_per_node=2` (gloo) gives the losses of one process with the same total batch;
  - a run preempted (SIGTERM), resumed, killed between checkpoints (SIGKILL) and resumed again with
    --resume reproduces the uninterrupted run;
  - a malformed custom JSON line (named by file and line), a missing mid checkpoint, a batch size
    that does not divide: a clear message and a non-zero exit.
Run: uv run pytest tests/test_chat_sft.py -q
"""

import json
import math
import os
import random

import pytest
import torch

from chat_stage_fixtures import TINY_CONFIG, WORDS, check_preempted_then_killed_run_resumes, make_base_dir, \
    read_log, run_stage, run_stages_at_once, stage_env, with_tag, write_mirror
from nanochat.chat_data import count_targets, sft_data_loader_with_state
from nanochat.checkpoint_manager import SOURCE_DIRS
from nanochat.gpt import GPT, GPTConfig
from tasks.customjson import CustomJSON

MODULE = "scripts.chat_sft"
COMMON = ["--source=base", "--identity-size=20", "--spelling-size=10", "--chat-size=-1", "--dtype=float32",
          "--init-lr-frac=1.0", "--eval-rows=8", "--eval-tasks=ARC-Easy,MMLU", "--eval-items=4",
          "--run=dummy"]
RESUME_FLAGS = ["--device-batch-size=1", "--total-batch-rows=2", "--num-iterations=60", "--save-every=10",
                "--eval-every=20", "--eval-metrics-every=30"]
LONG_PROMPT = " ".join(["the model learns to predict the next token"] * 12)  # far more than a 64-token row


def write_custom(path, num_learnable=40, num_masked=40, seed=0):
    """A JSONL of short 'Echo: x' -> 'x' conversations and of conversations whose prompt fills the row."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_learnable):
        word = rng.choice(WORDS)
        lines.append([{"role": "user", "content": f"Echo: {word}"}, {"role": "assistant", "content": word}])
    for _ in range(num_masked):
        lines.append({"messages": [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "ok"}]})
    with open(path, "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("chat_sft")
    e = stage_env(make_base_dir(root / "base", tiny_tokenizer), write_mirror(root / "data"))
    e["CUSTOM"] = write_custom(root / "custom.jsonl")
    return e


def run_dir(env, tag):
    return os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["sft"], tag)


def without_times(evals):
    return {s: {k: v for k, v in e.items() if k != "train_time"} for s, e in evals.items()}


# -----------------------------------------------------------------------------
# a micro-batch with nothing to train on

def test_fully_masked_micro_batch_is_finite_and_changes_nothing(tmp_path, tiny_tokenizer):
    task = CustomJSON(write_custom(tmp_path / "masked.jsonl", num_learnable=0, num_masked=4))
    inputs, targets, _ = next(sft_data_loader_with_state(tiny_tokenizer, task, 2, 64))
    assert (targets == -1).all() and inputs.shape == (2, 64)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.get_vocab_size(), **TINY_CONFIG))
    model.init_weights()
    for p in model.parameters():
        p.data += 0.02 * torch.randn_like(p)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizers = model.setup_optimizers()
    # the fused CPU loss (SoftcapCrossEntropy), in the default reduction and in the one chat_sft uses
    for reduction in ("mean", "sum"):
        assert model(inputs, targets, loss_reduction=reduction).item() == 0.0
    # exactly as chat_sft: summed loss over the step's trained-token count (0 here, so clamped to 1)
    n_targets, n_tokens = count_targets([(inputs, targets)], "cpu")
    assert (n_targets, n_tokens) == (0, 128)
    loss = model(inputs, targets, loss_reduction="sum") / max(n_targets, 1)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad == 0).all(), name
    for opt in optimizers:
        opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"{name} changed on a step with nothing to train"


# -----------------------------------------------------------------------------
# training runs

@pytest.fixture(scope="module")
def uninterrupted(env):
    out = run_stage(MODULE, env, *COMMON, *RESUME_FLAGS, f"--custom-json={env['CUSTOM']}", with_tag(env, "whole"))
    return out, read_log(run_dir(env, "whole"))


def test_sft_learns_records_and_survives_masked_steps(env, uninterrupted):
    out, (steps, evals) = uninterrupted
    assert sorted(steps) == list(range(60))
    losses = [steps[s]["loss"] for s in range(60)]
    assert all(math.isfinite(x) for x in losses), losses
    empty = [s for s in steps if steps[s]["targets"] == 0]
    assert empty, "no step had only masked rows; the mixture must make some (the test would test nothing)"
    assert all(steps[s]["loss"] == 0.0 for s in empty)
    trained = [steps[s]["loss"] for s in range(60) if steps[s]["targets"] > 0]
    assert sum(trained[-10:]) / 10 < sum(trained[:10]) / 10 - 0.5, f"the loss did not fall: {trained}"
    val = {s: e["val_loss"] for s, e in evals.items() if "val_loss" in e}
    assert sorted(val) == [0, 20, 40, 60] and val[60] < val[0] - 0.5
    accuracies = {s: e for s, e in evals.items() if "acc_ARC-Easy" in e}
    assert sorted(accuracies) == [0, 30, 60] and "acc_MMLU" in accuracies[60]
    folder = run_dir(env, "whole")
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    assert summary["final_val_loss"] == val[60] and summary["source"]["source"] == "base"
    assert os.path.exists(os.path.join(folder, "loss.svg"))
    with open(os.path.join(env["NANOCHAT_BASE_DIR"], "results", "chat_sft_whole.json")) as f:
        results = json.load(f)
    assert results["stage"] == "chat_sft" and results["metrics"]["val_loss"] == val[60]
    assert set(results["metrics"]) >= {"ARC-Easy", "MMLU"}
    for name in ("ARC-Easy", "MMLU"):  # each accuracy with its n and 95% interval, for report.md
        interval = results["extra"]["intervals"][name]
        assert interval["n"] == 4 and interval["low"] <= results["metrics"][name] <= interval["high"], interval
    assert f"custom {env['CUSTOM']}" in results["extra"]["mixture"]


def test_torchrun_two_ranks_match_one_process(env, uninterrupted):
    # the same total batch (2 conversations per step): 1 row x 2 ranks instead of 1 row x 2 micro-steps
    run_stage(MODULE, env, *COMMON, *RESUME_FLAGS, f"--custom-json={env['CUSTOM']}", with_tag(env, "ddp"), nproc=2)
    _, (single, single_evals) = uninterrupted
    ddp, ddp_evals = read_log(run_dir(env, "ddp"))
    assert sorted(single) == sorted(ddp) == list(range(60))
    for s in range(60):
        assert ddp[s]["targets"] == single[s]["targets"]  # the same conversations in every step
        assert ddp[s]["loss"] == pytest.approx(single[s]["loss"], rel=1e-5, abs=1e-6), f"step {s}"
    assert sorted(single_evals) == sorted(ddp_evals)
    for s in single_evals:
        if "val_loss" in single_evals[s]:
            assert ddp_evals[s]["val_loss"] == pytest.approx(single_evals[s]["val_loss"], rel=1e-5)
        for name in ("acc_ARC-Easy", "acc_MMLU"):
            assert ddp_evals[s].get(name) == single_evals[s].get(name)


def test_interrupted_run_resumes_exactly(env, uninterrupted):
    # preempted (SIGTERM: saves, exits 0), resumed, killed between checkpoints (SIGKILL), resumed to the end
    flags = [*COMMON, *RESUME_FLAGS, f"--custom-json={env['CUSTOM']}", with_tag(env, "interrupted")]
    resumed, resumed_evals = check_preempted_then_killed_run_resumes(MODULE, env, flags, run_dir(env, "interrupted"),
                                                                     num_steps=60, save_every=10)
    _, (whole, whole_evals) = uninterrupted
    assert sorted(resumed) == list(range(60))
    assert [resumed[s]["loss"] for s in range(60)] == [whole[s]["loss"] for s in range(60)]
    assert without_times(resumed_evals) == without_times(whole_evals)


def test_bad_inputs_give_clear_errors(env, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]\n'
                   '[{"role": "user", "content": "hi"}]\n')
    cases = [
        ([f"--custom-json={bad}"], f"{bad}:2: a conversation needs at least a user and an assistant message"),
        (["--source=mid"], "cannot load the mid model"),
        (["--device-batch-size=2", "--total-batch-size=3"], "--total-batch-rows=3 is not a multiple"),  # old name
    ]
    results = run_stages_at_once(MODULE, [(env, [*COMMON, "--num-iterations=2", *flags]) for flags, _ in cases])
    for (flags, message), (code, stdout, stderr) in zip(cases, results):
        assert code != 0, (flags, stdout[-2000:])
        assert message in stderr, (flags, stderr[-2000:])
        assert "Traceback" not in stderr, stderr[-2000:]
