"""
Unit tests of the shared training mechanics: nanochat/schedules.py (lr and momentum schedules),
nanochat/runlog.py (log.jsonl on resume, the progress meter, the stop flag, results) and the
compute-dtype choice in nanochat/common.py.

    uv run pytest tests/test_schedules.py -q
"""

import json
import os

import pytest
import torch

from nanochat.common import get_peak_flops, measure_matmul_flops, pick_compute_dtype
from nanochat.runlog import ProgressMeter, RunLog, StopFlag, finish_run, load_results, save_results
from nanochat.schedules import lr_multiplier, muon_momentum, set_lr, set_momentum


def multipliers(n, **kw):
    return [lr_multiplier(s / n, **kw) for s in range(n)]


def test_warmdown_ends_where_it_should():
    # 10 steps, warm-down over the last 20%: the last two steps are 1.0 and 0.5 (not 0.5, 0.0)
    lrms = multipliers(10, warmdown_ratio=0.2)
    assert lrms[:9] == [1.0] * 9 and lrms[9] == pytest.approx(0.5)
    assert lrms[-1] > 0, "the last step must still learn"


def test_warmup_flat_warmdown_and_final_fraction():
    lrms = multipliers(20, warmup_ratio=0.1, warmdown_ratio=0.5, final_lr_frac=0.2)
    assert lrms[:3] == [0.0, 0.5, 1.0]
    assert all(m == 1.0 for m in lrms[2:11])
    # in the warm-down the multiplier falls linearly from 1 towards final_lr_frac, which progress 1 reaches
    assert lrms[11] == pytest.approx(0.9 + 0.1 * 0.2) and lrms[19] == pytest.approx(0.1 + 0.9 * 0.2)
    assert lr_multiplier(1.0, 0.1, 0.5, 0.2) == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrms[2:], lrms[3:]))


def test_no_warmdown_and_clamping():
    assert multipliers(5, warmdown_ratio=0.0) == [1.0] * 5
    assert lr_multiplier(1.5) == lr_multiplier(1.0) == 0.0
    with pytest.raises(AssertionError):
        lr_multiplier(0.5, warmup_ratio=0.6, warmdown_ratio=0.6)


def test_muon_momentum_and_setters():
    assert muon_momentum(0) == 0.85 and muon_momentum(150) == pytest.approx(0.90) and muon_momentum(10_000) == 0.95
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.5)
    opt.param_groups[0]["initial_lr"] = 0.1
    set_lr([opt], 0.25)
    set_momentum(opt, 300)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025) and opt.param_groups[0]["momentum"] == 0.95


def test_runlog_keeps_earlier_steps_on_resume(tmp_path):
    log = RunLog(str(tmp_path), master=True)
    for step in range(5):
        log.record({"step": step, "loss": float(step)})
    with open(log.path, "a") as f:
        f.write('{"step": 5, "loss"')  # a line cut short by a crash
    RunLog(str(tmp_path), master=True, resume_step=3)
    with open(log.path) as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1, 2]
    RunLog(str(tmp_path), master=True)  # a fresh run starts an empty log
    assert os.path.getsize(log.path) == 0


def test_progress_meter_ema_eta_mfu_and_resume():
    meter = ProgressMeter(tokens_per_step=1000, flops_per_token=6.0, peak_flops=12_000.0, world_size=1, num_iterations=10)
    line, rec = meter.update(0, 2.0, 1.0, lrm=1.0)
    assert rec["smooth_loss"] == pytest.approx(2.0)  # debiased: the first EMA value is the loss itself
    assert rec["tok_per_s"] == 1000 and rec["mfu"] == pytest.approx(0.5)
    assert "1/10 (10.0%)" in line and "eta 0.1 min" in line and "mfu 50.0%" in line
    line, rec = meter.update(1, 1.0, 1.0)
    assert rec["smooth_loss"] == pytest.approx((0.9 * 0.1 * 2.0 + 0.1 * 1.0) / (1 - 0.9 ** 2))
    resumed = ProgressMeter(1000, 6.0, 12_000.0, 1, 10)
    resumed.load_state_dict(meter.state_dict())
    assert resumed.update(2, 1.5, 1.0)[1]["smooth_loss"] == meter.update(2, 1.5, 1.0)[1]["smooth_loss"]
    summary = meter.summary()
    assert summary["total_tokens"] == 3000 and summary["training_time_s"] == 3.0 and summary["mfu"] == pytest.approx(0.5)
    assert ProgressMeter(1000, 6.0, None, 1, 10).update(0, 1.0, 1.0)[1]["mfu"] is None


def test_stop_flag_single_process():
    stop = StopFlag(install=False)
    assert stop.reduce(torch.tensor(1.5), "cpu") == (1.5, False)
    stop.requested = True
    assert stop.reduce(torch.tensor(1.5), "cpu") == (1.5, True)


def test_results_and_finish_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    log = RunLog(str(run_dir), master=True)
    for step in range(3):
        log.record({"step": step, "smooth_loss": 3.0 - step})
    artifacts = finish_run(str(run_dir), {"final": 1.0}, master=True)
    assert artifacts["loss_curve"] and os.path.exists(artifacts["loss_curve"])
    assert json.load(open(run_dir / "summary.json")) == {"final": 1.0}
    path = save_results("chat_eval", source="sft", model_tag="d4", step=7, metrics={"GSM8K": 0.1}, artifacts=artifacts)
    assert os.path.basename(path) == "chat_eval_sft_d4_000007.json"
    save_results("chat_eval", source="sft", model_tag="d6", step=7, metrics={"GSM8K": 0.2})
    records = load_results()
    assert [r["model_tag"] for r in records] == ["d4", "d6"]  # two models never overwrite each other
    assert records[0]["metrics"] == {"GSM8K": 0.1} and records[0]["wall_time_s"] >= 0


def test_compute_dtype_choice():
    assert pick_compute_dtype("cuda") == torch.bfloat16 and pick_compute_dtype("mps") == torch.float32
    assert pick_compute_dtype("cpu", "float32") == torch.float32 and pick_compute_dtype("cpu", "bfloat16") == torch.bfloat16
    # auto on CPU follows a measurement of this machine: bf16 only where it is clearly faster
    fp32 = measure_matmul_flops(torch.float32, n=512, seconds=0.2)
    bf16 = measure_matmul_flops(torch.bfloat16, n=512, seconds=0.2)
    choice = pick_compute_dtype("cpu")
    if bf16 > 2 * fp32:
        assert choice == torch.bfloat16
    elif bf16 < fp32:
        assert choice == torch.float32
    with pytest.raises(ValueError, match="compute dtype"):
        pick_compute_dtype("cpu", "fp8")
    peak, what = get_peak_flops("cpu", torch.float32)
    assert peak > 1e8 and "float32" in what
