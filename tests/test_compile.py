"""
The compiled path without a GPU (issue 16 item 3): a few steps of base_train, chat_sft and (slow)
mid_train with --compile on CPU (torch.compile, the inductor backend: it writes and builds C++ with
the system's compiler), against the same runs in eager mode:
  - the losses and val metrics equal eager's within rel 1e-4 (below);
  - no recompilation after the first steps, counted from torch's own log (TORCH_LOGS=recompiles): a
    run compiles its forward once for training and once for evaluation (no_grad is a guard of the
    graph), so at most one recompile, whose reason is the grad mode; SFT's rows of varying length
    are bucketed (nanochat/chat_data.py bucket_width) and at the tests' T = 64 fall into one bucket,
    so a recompile per width (what the unbucketed rows gave) fails the test.

Tolerance (rel 1e-4, fp32). Inductor fuses the elementwise ops and reorders the reductions (the
RMSNorms, the softmax of attention, the loss): each reordered fp32 sum of n terms differs by up to
~n * 2^-24 relative, ~1e-6 for the widths here, and a few training steps (Muon orthogonalises the
updates, which keeps their size but not their rounding) carry that to ~1e-5 at most. 1e-4 leaves a
margin of 10 over that; a wrong graph (a missed mask, a stale weight) moves the loss by 1e-2 or more.

Cost: compiling is most of it (tens of seconds of CPU per stage on 2 cores, cold inductor cache).

    uv run pytest tests/test_compile.py -q          # base_train, chat_sft; -m slow: mid_train too
"""

import re

import pytest

from chat_stage_fixtures import read_log
from world_fixtures import launch, run_folder, stage_envs, tag_flag

TOL = dict(rel=1e-4, abs=1e-6)
STEPS = ["--num-iterations=4", "--eval-every=2", "--save-every=0"]
STAGES = {
    "base": ("scripts.base_train", ["--depth=1", "--aspect-ratio=32", "--head-dim=16", "--max-seq-len=32",
                                    "--device-batch-size=2", "--total-batch-tokens=128", "--eval-tokens=128",
                                    "--sample-every=-1", "--run=dummy", "--dtype=float32", *STEPS]),
    "sft": ("scripts.chat_sft", ["--source=base", "--identity-size=20", "--spelling-size=10", "--chat-size=-1",
                                 "--dtype=float32", "--init-lr-frac=1.0", "--run=dummy", "--eval-rows=8",
                                 "--eval-tasks=", "--device-batch-size=2", "--total-batch-rows=4", *STEPS]),
    "mid": ("scripts.mid_train", ["--source=base", "--identity-size=20", "--spelling-size=10", "--dtype=float32",
                                  "--run=dummy", "--device-batch-size=2", "--total-batch-tokens=256",
                                  "--eval-tokens=256", *STEPS]),
}


@pytest.fixture(scope="module")
def envs(tmp_path_factory, tiny_tokenizer):
    return stage_envs(tmp_path_factory.mktemp("compile"), tiny_tokenizer)


def recompiles(output):
    """The reasons of torch's recompilations in a run's output (TORCH_LOGS=recompiles)."""
    blocks = re.split(r"Recompiling function", output)[1:]
    return [block.split("\n", 3)[:3] for block in blocks]


@pytest.mark.parametrize("stage", ["base", "sft", pytest.param("mid", marks=pytest.mark.slow)])
def test_compiled_run_matches_eager_without_recompiling(envs, stage):
    env, (module, flags) = envs[stage], STAGES[stage]
    folder, tag = (lambda name: run_folder(env, stage, name)), (lambda name: tag_flag(env, stage, name))
    launch(module, env, [*flags, tag("eager"), "--no-compile"])
    out = launch(module, dict(env, TORCH_LOGS="recompiles"), [*flags, tag("compiled"), "--compile"])
    assert "compile True" in out.stdout, out.stdout[-2000:]
    eager, eager_evals = read_log(folder("eager"))
    compiled, compiled_evals = read_log(folder("compiled"))
    assert sorted(compiled) == sorted(eager) == list(range(4))
    for s in eager:
        assert compiled[s]["loss"] == pytest.approx(eager[s]["loss"], **TOL), f"step {s}"
    for s, evals in eager_evals.items():
        for key in ("val_bpb", "val_loss"):
            if key in evals:
                assert compiled_evals[s][key] == pytest.approx(evals[key], **TOL), f"{key} at step {s}"
    reasons = recompiles(out.stdout + out.stderr)
    assert len(reasons) <= 1 and all("grad_mode" in " ".join(r) for r in reasons), reasons
    gaps = [abs(compiled[s]["loss"] - eager[s]["loss"]) / eager[s]["loss"] for s in eager]
    print(f"{stage}: compiled vs eager, largest relative loss gap {max(gaps):.2e}; recompiles {len(reasons)}")
