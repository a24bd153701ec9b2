"""
Resume at another world size (issue 16 item 5) and two nodes (item 4), end to end on CPU (gloo), on
tiny data made here, for base_train (parquet streams), chat_sft (padded rows) and, marked slow,
mid_train (packed rows). Per stage, four runs:
  - "one":  1 process, 2 micro-batches per step, 12 steps, saving at steps 6 and 12 (the reference);
  - "nodes": the same flags as two "nodes" of one process on torchrun's c10d rendezvous
    (tests/world_fixtures.py, as speedrun.sh launches NNODES > 1): the losses of "one";
  - 2 -> 1: the "nodes" run cut at step 6 and resumed on 1 process;
  - 1 -> 2: the "one" run cut at step 6 and resumed on 2 processes (torchrun --standalone);
and the resumed steps and evaluations must give those of "one".

How a preemption is simulated: deleting the step-12 folder of a finished run leaves the state that a
run preempted right after step 6 leaves, and --resume continues from there. Every step has S = 2
micro-batches (1 rank x 2 micro-steps, or 2 ranks x 1), so the data of every step is the same at
both world sizes (nanochat/dataloader.py).

Tolerance (rel 1e-5). Everything runs in fp32. 2 ranks and 1 process with 2 micro-steps differ only
in how the two micro-batches' gradients are averaged: (g1 + g2) / 2 by the reduce-scatter vs
g1 / 2 + g2 / 2 accumulated in .grad; halving is exact in binary floating point, so these agree
bit for bit barring underflow (measured: identical losses), and any other order of the sums would
differ by a few ulps (~1e-7) per step. 1e-5 is the bound of the 2-process-vs-1 tests
(tests/test_base_train.py); a skipped or repeated batch, or a lost optimizer state, moves the loss
by 1e-2 or more.

    uv run pytest tests/test_resume_world_size.py -q
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from chat_stage_fixtures import read_log
from nanochat.checkpoint_manager import SOURCE_DIRS, list_steps
from world_fixtures import BASE_FLAGS, CUT, MID_FLAGS, REPO, SFT_FLAGS, STEPS, TOL, launch, run_folder, stage_envs, \
    tag_flag, two_nodes

STAGES = {"base": ("scripts.base_train", BASE_FLAGS), "sft": ("scripts.chat_sft", SFT_FLAGS),
          "mid": ("scripts.mid_train", MID_FLAGS)}


def preempt_after_cut(run_dir):
    """Leave run_dir as a run preempted right after step CUT leaves it: its later checkpoint removed."""
    assert list_steps(run_dir) == [CUT, STEPS], list_steps(run_dir)
    shutil.rmtree(os.path.join(run_dir, f"{STEPS:06d}"))


def check_same_run(whole_dir, other_dir, first_step, what):
    """other_dir's steps and evaluations from first_step on give whole_dir's; returns the relative loss gaps."""
    whole, whole_evals = read_log(whole_dir)
    other, other_evals = read_log(other_dir)
    assert sorted(other) == sorted(whole) == list(range(STEPS))
    for s in range(first_step, STEPS):
        assert other[s]["loss"] == pytest.approx(whole[s]["loss"], **TOL), f"{what}, step {s}"
        for key in ("targets", "tokens"):
            assert other[s].get(key) == whole[s].get(key), f"{what}, step {s}: another batch ({key})"
    for s, evals in whole_evals.items():
        for key in ("val_bpb", "val_loss"):
            if key in evals and s >= first_step:
                assert other_evals[s][key] == pytest.approx(evals[key], **TOL), f"{what}, {key} at step {s}"
    return [abs(other[s]["loss"] - whole[s]["loss"]) / whole[s]["loss"] for s in range(first_step, STEPS)]


def resume_elsewhere(module, env, flags, saved_dir, resumed_dir, nproc):
    """Copy saved_dir (a finished 12-step run) to resumed_dir, cut it at step CUT, resume it on nproc processes."""
    shutil.copytree(saved_dir, resumed_dir, symlinks=True)
    preempt_after_cut(resumed_dir)
    out = launch(module, env, [*flags, "--resume"], nproc)
    assert f"resumed from {resumed_dir} at step {CUT}" in out.stdout, out.stdout[-3000:]


@pytest.fixture(scope="module")
def envs(tmp_path_factory, tiny_tokenizer):
    return stage_envs(tmp_path_factory.mktemp("resume_world"), tiny_tokenizer)


@pytest.mark.parametrize("stage", ["base", "sft", pytest.param("mid", marks=pytest.mark.slow)])
def test_two_nodes_and_world_size_changes_give_the_one_process_run(envs, stage):
    env, (module, flags) = envs[stage], STAGES[stage]
    folder, tag = (lambda name: run_folder(env, stage, name)), (lambda name: tag_flag(env, stage, name))
    launch(module, env, [*flags, tag("one")])
    nodes = two_nodes(module, [env, env], [*flags, tag("nodes")])
    for code, output in nodes:
        assert code == 0, output[-6000:]
    check_same_run(folder("one"), folder("nodes"), 0, f"{stage}: 2 nodes vs 1 process")
    step_dir = os.path.join(folder("nodes"), f"{CUT:06d}")
    with open(os.path.join(step_dir, f"meta_{CUT:06d}.json")) as f:
        meta = json.load(f)
    assert meta["world_size"] == 2 and meta["data_state"]["streams"] == 2
    assert sorted(os.listdir(step_dir)) == [f"meta_{CUT:06d}.json", f"model_{CUT:06d}.pt", f"optim_{CUT:06d}.pt"]
    resume_elsewhere(module, env, [*flags, tag("two_to_one")], folder("nodes"), folder("two_to_one"), 1)
    gaps = check_same_run(folder("one"), folder("two_to_one"), CUT, f"{stage}: saved on 2, resumed on 1")
    resume_elsewhere(module, env, [*flags, tag("one_to_two")], folder("one"), folder("one_to_two"), 2)
    gaps += check_same_run(folder("one"), folder("one_to_two"), CUT, f"{stage}: saved on 1, resumed on 2")
    print(f"{stage}: largest relative loss gap after a world-size change {max(gaps):.2e}")


def test_resume_with_another_micro_batch_or_model_is_refused(envs):
    env = envs["base"]
    saved = os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["base"], "base_one")
    if not os.path.isdir(saved):
        launch("scripts.base_train", env, [*BASE_FLAGS, "--model-tag=base_one"])
    cases = [("other_batch", ["--device-batch-size=4"], "streams=2, now streams=1"),
             ("other_model", ["--aspect-ratio=64"], "model config")]
    procs = []
    for tag, flags, _ in cases:  # both at once: each is mostly start-up
        shutil.copytree(saved, os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["base"], tag))
        procs.append(subprocess.Popen([sys.executable, "-m", "scripts.base_train", *BASE_FLAGS, *flags,
                                       f"--model-tag={tag}", "--resume"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc, (_, _, message) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode != 0 and message in stderr, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-2000:]
