"""
End-to-end tests of scripts/mid_train.py on a tiny mirror and a tiny base checkpoint made here
(chat_stage_fixtures; no data mirror, no network), on CPU:
  - a run lowers the train loss and the val bpb, writes log.jsonl, summary.json, loss.svg, a
    results record and a checkpoint that load_model("mid") reads; it says once that MMLU
    auxiliary_train is missing and goes on;
  - a run preempted (SIGTERM), resumed, killed between checkpoints (SIGKILL) and resumed again with
    --resume reproduces the uninterrupted run's losses and evaluations;
  - a missing or wrong-kind base checkpoint, a batch size that does not divide: a clear message and
    a non-zero exit, no traceback.
Run: uv run pytest tests/test_mid_train.py -q
"""

import json
import math
import os

import pytest

from chat_stage_fixtures import check_preempted_then_killed_run_resumes, make_base_dir, read_log, run_stage, \
    run_stages_at_once, stage_env, with_tag, write_mirror
from nanochat.checkpoint_manager import SOURCE_DIRS, load_model

MODULE = "scripts.mid_train"
COMMON = ["--device-batch-size=2", "--total-batch-tokens=256", "--identity-size=20", "--spelling-size=10",
          "--dtype=float32", "--eval-tokens=512", "--run=dummy"]
RESUME_FLAGS = ["--num-iterations=60", "--save-every=10", "--eval-every=20"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("mid_train")
    return stage_env(make_base_dir(root / "base", tiny_tokenizer), write_mirror(root / "data"))


def run_dir(env, tag):
    return os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["mid"], tag)


@pytest.fixture(scope="module")
def uninterrupted(env):
    out = run_stage(MODULE, env, *COMMON, *RESUME_FLAGS, with_tag(env, "whole"))
    return out, read_log(run_dir(env, "whole"))


def test_mid_training_learns_and_records(env, uninterrupted, monkeypatch):
    out, (steps, evals) = uninterrupted
    assert sorted(steps) == list(range(60)) and sorted(evals) == [0, 20, 40, 60]
    losses = [steps[s]["loss"] for s in range(60)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, f"train loss did not fall: {losses}"
    assert evals[60]["val_bpb"] < evals[0]["val_bpb"] - 0.5
    assert all(steps[s]["targets"] > 0 for s in steps)  # the loss is over assistant tokens, and there are some
    assert out.stdout.count("MMLU auxiliary_train is not available") == 1
    folder = run_dir(env, "whole")
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    assert summary["final_val_bpb"] == evals[60]["val_bpb"] and summary["step"] == 60
    assert os.path.exists(os.path.join(folder, "loss.svg"))
    with open(os.path.join(env["NANOCHAT_BASE_DIR"], "results", "mid_train_whole.json")) as f:
        results = json.load(f)
    assert results["stage"] == "mid_train" and results["source"] == "base" and results["step"] == 60
    assert results["metrics"]["val_bpb"] == evals[60]["val_bpb"]
    monkeypatch.setenv("NANOCHAT_BASE_DIR", env["NANOCHAT_BASE_DIR"])
    model, _, meta = load_model("mid", "cpu", "eval", "whole")
    assert meta["step"] == 60 and meta["source"]["source"] == "base"


def test_interrupted_run_resumes_exactly(env, uninterrupted):
    # preempted (SIGTERM: saves, exits 0), resumed, killed between checkpoints (SIGKILL), resumed to the end
    flags = [*COMMON, *RESUME_FLAGS, with_tag(env, "interrupted")]
    resumed, resumed_evals = check_preempted_then_killed_run_resumes(MODULE, env, flags, run_dir(env, "interrupted"),
                                                                     num_steps=60, save_every=10)
    _, (whole, whole_evals) = uninterrupted
    assert sorted(resumed) == list(range(60))
    assert [resumed[s]["loss"] for s in range(60)] == [whole[s]["loss"] for s in range(60)]
    assert {s: e["val_bpb"] for s, e in resumed_evals.items()} == {s: e["val_bpb"] for s, e in whole_evals.items()}


def test_bad_inputs_give_clear_errors(env, tmp_path, tiny_tokenizer):
    wrong = make_base_dir(tmp_path / "wrong", tiny_tokenizer)  # a checkpoint without a model config
    meta_path = os.path.join(wrong, SOURCE_DIRS["base"], "d1", "000000", "meta_000000.json")
    with open(meta_path, "w") as f:
        json.dump({"step": 0}, f)
    cases = [
        (env, ["--model-tag=d9"], "no model tag 'd9'"),
        (dict(env, NANOCHAT_BASE_DIR=wrong), [], "has no 'model_config'"),
        (env, ["--total-batch-size=100"], "--total-batch-tokens=100 is not a multiple"),  # the old name still works
    ]
    results = run_stages_at_once(MODULE, [(e, [*COMMON, "--num-iterations=2", *flags]) for e, flags, _ in cases])
    for (_, flags, message), (code, stdout, stderr) in zip(cases, results):
        assert code != 0, (flags, stdout[-2000:])
        assert message in stderr, (flags, stderr[-2000:])
        assert "Traceback" not in stderr, stderr[-2000:]
