"""
Tests of the run planner (nanochat/plan.py) and of --device-batch-size auto (nanochat/stage.py), on CPU:

  - the planner's arithmetic against values computed by hand for a tiny config, and its parameter
    counts against the real model's numel;
  - a plan that does not fit refuses, naming --device-batch-size; a GPU the table does not know asks
    for its memory and peak instead of guessing;
  - base_train --dry-run exits 0 without training and without writing a checkpoint, with and
    without data;
  - the batch-size search: back-off on out-of-memory from the real training step, the weights and the
    optimizer state restored, gradient accumulation exact at the size chosen, two gloo ranks agreeing
    on the smaller size.

    uv run pytest tests/test_plan.py -q
"""

import argparse
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from nanochat.flags import add_batch_flags, add_compute_flags, add_optimizer_flags, add_run_flags
from nanochat.gpt import GPT, GPTConfig
from nanochat.plan import PlanError, candidates, check_fits, memory_plan, resolve_hardware, search_device_batch, \
    stage_plan
from nanochat.stage import Stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
@pytest.fixture(autouse=True)
def base_dir(tmp_path, monkeypatch):
    """Run folders of the in-process stages in a temporary base dir (none is written: no start())."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base_dir"))


TINY = GPTConfig(sequence_len=16, vocab_size=100, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)


def test_parameters_flops_and_memory_by_hand():
    C, L, V, T, H = 32, 2, 100, 16, 2
    per_layer = 4 * C * C + 2 * 4 * C * C  # q, k, v, proj + the 4x MLP
    total, matmul = 2 * V * C + L * per_layer, V * C + L * per_layer  # embedding and head; the head is a matmul
    assert (total, matmul) == (30976, 27776)
    model = GPT(TINY)
    assert total == sum(p.numel() for p in model.parameters())
    hw = resolve_hardware("H100", 2)
    plan = stage_plan("base_train", TINY, tokens=1000, steps=10, hardware=hw, memory=None)
    assert (plan.params, plan.matmul_params) == (total, matmul)
    assert plan.flops == 1000 * (6 * matmul + 12 * L * H * (C // H) * T)
    assert math.isclose(plan.seconds, plan.flops / (2 * 989e12 * 0.40))

    B = 2
    mem = memory_plan(TINY, B, T, world_size=2, dtype=torch.float32, device_type="cpu", compiled=False)
    assert mem.weights == mem.gradients == 4 * total
    # AdamW: two fp32 moments of the embedding and head, halved across 2 ranks
    assert mem.parts["adamw"] == 2 * 4 * (V * C // 2) * 2
    # Muon: 8 (C, C) matrices -> 4 per rank; 2 (4C, C) -> 1; 2 (C, 4C) -> 1; fp32 momentum
    assert mem.parts["muon"] == 4 * (4 * C * C + 1 * 4 * C * C + 1 * 4 * C * C)
    # activations: 19 C floats per layer and token + 3 C, plus the norms' rstd and the attention lse
    N = B * T
    assert mem.activations == N * (4 * (L * 19 * C + 3 * C) + (4 + H) * 4 * L)
    assert mem.logits == N * 4 * V and mem.weight_copies == 0
    # the step's peak: everything held + the larger of the loss's sweep block and the backward's copy of
    # d loss / d logits (both 4 V N here), since the gradients (4 x 30976) weigh less than what is held
    assert mem.activations == 169472 and mem.forward_transient == mem.backward_transient == 4 * V * N == 12800
    assert mem.total == 4 * total + mem.optimizer + 169472 + 12800 + 12800
    bf16 = memory_plan(TINY, B, T, 2, torch.bfloat16, "cuda", compiled=False)
    assert bf16.weight_copies == 2 * matmul and bf16.activations == N * (L * 46 * C + 14 * C + (4 + H) * 4 * L)


def test_a_plan_that_does_not_fit_refuses_and_names_the_flag():
    d20 = GPTConfig(sequence_len=2048, vocab_size=32768, n_layer=20, n_head=10, n_kv_head=10, n_embd=1280)
    hw = resolve_hardware("L4", 1)
    plan = stage_plan("base_train", d20, 1e9, 100, hw, memory_plan(d20, 32, 2048, 1, torch.bfloat16, "cuda", True))
    assert not plan.fits
    with pytest.raises(PlanError, match="Lower --device-batch-size"):
        check_fits(plan)
    small = stage_plan("base_train", d20, 1e9, 100, hw, memory_plan(d20, 1, 2048, 1, torch.bfloat16, "cuda", True))
    check_fits(small)  # one row fits a 24 GB card


def test_an_unknown_gpu_asks_for_its_figures(monkeypatch):
    monkeypatch.delenv("NANOCHAT_GPU_MEMORY_GB", raising=False)
    monkeypatch.delenv("NANOCHAT_GPU_PEAK_TFLOPS", raising=False)
    with pytest.raises(PlanError, match="--gpu-memory-gb GB --gpu-peak-tflops TFLOPS"):
        resolve_hardware("Radeon Imaginary 9000", 8)
    with pytest.raises(PlanError):  # memory alone is not enough: no guessed peak
        resolve_hardware("Radeon Imaginary 9000", 8, memory_gb=48)
    hw = resolve_hardware("Radeon Imaginary 9000", 8, memory_gb=48, peak_tflops=200)
    assert (hw.memory_bytes, hw.peak_flops) == (48e9, 200e12)
    monkeypatch.setenv("NANOCHAT_GPU_MEMORY_GB", "48")
    monkeypatch.setenv("NANOCHAT_GPU_PEAK_TFLOPS", "200")
    assert resolve_hardware("Radeon Imaginary 9000", 8).peak_flops == 200e12
    monkeypatch.delenv("NANOCHAT_GPU_PEAK_TFLOPS")  # given figures override the table's
    monkeypatch.delenv("NANOCHAT_GPU_MEMORY_GB")
    assert resolve_hardware("NVIDIA H100 80GB HBM3", 8).peak_flops == 989e12  # torch's name of an SXM card
    assert resolve_hardware("NVIDIA H100 PCIe", 1).peak_flops == 756e12


def _dry_run(tmp_path, *flags, data=False, tokenizer=None):
    base, data_dir = tmp_path / "base", tmp_path / "data"
    base.mkdir()
    data_dir.mkdir()
    if tokenizer is not None:
        tokenizer.save(str(base / "tokenizer"))
    if data:
        import pyarrow as pa
        import pyarrow.parquet as pq
        (data_dir / "pretrain").mkdir()
        for s in range(2):
            pq.write_table(pa.table({"text": ["the model learns to predict the next token"] * 50}),
                           data_dir / "pretrain" / f"shard_{s:05d}.parquet")
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_DATA_DIR=str(data_dir), NANOCHAT_AUTO_DTYPE="float32",
               OMP_NUM_THREADS="1", NANOCHAT_GPU_PRICE="3")
    cmd = [sys.executable, "-m", "scripts.base_train", "--dry-run", "--device-type=cpu", *flags]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300), base


def test_dry_run_plans_without_training_or_writing(tmp_path, tiny_tokenizer):
    out, base = _dry_run(tmp_path, "--depth=2", "--aspect-ratio=32", "--head-dim=16", "--max-seq-len=32",
                         "--device-batch-size=2", "--total-batch-tokens=128", "--num-iterations=5", "--run=dummy",
                         data=True, tokenizer=tiny_tokenizer)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "plan of base_train" in out.stdout and "dry run, stopping before training" in out.stdout
    assert "step 00000" not in out.stdout  # no training step, no evaluation
    assert f"vocab {tiny_tokenizer.get_vocab_size()}" in out.stdout
    written = [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]
    assert all("tokenizer" in path for path in written), written  # no checkpoint, log, summary or results


def test_dry_run_for_a_named_gpu_needs_no_data(tmp_path):
    out, base = _dry_run(tmp_path, "--depth=20", "--gpu=H100", "--num-gpus=8")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "planning at vocab 32,768" in out.stdout
    assert "parameters 477,102,080" in out.stdout  # d20 at vocab 32768: 20 x 12 x 1280^2 + 2 x 32768 x 1280
    assert "--device-batch-size auto -> 32 (the planner's estimate for H100" in out.stdout
    assert "cost: $" in out.stdout and "fits within" in out.stdout


def test_dry_run_refuses_what_does_not_fit(tmp_path):
    out, _ = _dry_run(tmp_path, "--depth=20", "--gpu=L4", "--num-gpus=1", "--device-batch-size=32")
    assert out.returncode == 1 and "does not fit" in out.stderr and "--device-batch-size" in out.stderr
    assert "Traceback" not in out.stderr


# -----------------------------------------------------------------------------
# --device-batch-size auto

def test_candidates_divide_the_rows_of_a_step():
    assert candidates(32) == [32, 16, 8, 4, 2, 1]
    assert candidates(24) == [8, 4, 2, 1]
    assert candidates(3) == [1]
    for rows in (1, 6, 12, 40, 64):
        assert all(rows % b == 0 for b in candidates(rows))


def test_search_backs_off_only_on_out_of_memory():
    tried = []

    def probe(b):
        tried.append(b)
        if b > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert search_device_batch([32, 16, 8, 4, 2, 1], probe, log=lambda *_: None) == 4
    assert tried == [32, 16, 8, 4]

    def cpu_refusal(b):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes")
    assert search_device_batch([2, 1], cpu_refusal, log=lambda *_: None) is None

    def wrapped(b):  # as torch.compile re-raises what its generated code raised
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as e:
            raise RuntimeError("backend compiler failed") from e
    assert search_device_batch([2, 1], wrapped, log=lambda *_: None) is None

    def bug(b):
        raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        search_device_batch([2, 1], bug, log=lambda *_: None)


def _stage(argv=()):
    parser = argparse.ArgumentParser()
    add_compute_flags(parser)
    add_run_flags(parser, horizon="n/a", eval_every=None)
    add_batch_flags(parser, "tokens", device_batch_size=4, total=8 * 16)
    add_optimizer_flags(parser)
    args = parser.parse_args(["--device-type=cpu", "--dtype=float32", *argv])
    run = Stage("test", parser, args)
    run.init_compute()
    run.pick_dtype()
    torch.manual_seed(0)
    model = GPT(TINY)
    model.init_weights()
    for p in model.parameters():  # off the init so that a step changes every weight
        p.data += 0.02 * torch.randn_like(p)
    run.set_run_dir("base", "test")
    run.setup_optimizers(model)
    return run, model


def _capped(run, cap):
    """The real probe, then out-of-memory above `cap` rows (after the real step ran and was undone)."""
    real = run._try_batch

    def probe(b):
        real(b)
        if b > cap:
            raise torch.OutOfMemoryError(f"{b} rows over a cap of {cap}")
    run._try_batch = probe


def test_auto_finds_the_largest_size_restores_the_model_and_accumulates_exactly(monkeypatch):
    monkeypatch.setenv("NANOCHAT_AUTO_DTYPE", "float32")
    run, model = _stage(["--device-batch-size=auto"])
    assert run.args.device_batch_size == "auto"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _capped(run, 2)
    rows_per_rank = 8
    assert run.fit_device_batch(16, rows_per_rank) == 2 == run.args.device_batch_size
    for k, v in model.state_dict().items():  # three real steps were tried (8, 4, 2) and undone
        assert torch.equal(v, before[k]), k
    assert all(not opt.state for opt in run.optimizers) and all(p.grad is None for p in model.parameters())

    # accumulation at the chosen size: 4 micro-steps of 2 rows give the gradient of 8 rows at once
    torch.manual_seed(1)
    x = torch.randint(0, TINY.vocab_size, (rows_per_rank, 17))
    model(x[:, :-1], x[:, 1:]).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    micro = rows_per_rank // run.device_batch_size
    for i in range(micro):
        xb = x[i * 2:(i + 1) * 2]
        (model(xb[:, :-1], xb[:, 1:]) / micro).backward()
    for g, p in zip(full, model.parameters()):
        tol = 1e-6 * g.abs().max().item() + 1e-9  # fp32 sums of 4 partial means vs one mean: rounding only
        assert (p.grad - g).abs().max().item() <= 10 * tol


def _agree_worker(rank, port, caps, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    parser = argparse.ArgumentParser()
    add_compute_flags(parser)
    add_run_flags(parser, horizon="n/a", eval_every=None)
    run = Stage("test", parser, parser.parse_args(["--device-type=cpu"]))
    run.init_compute()

    def probe(b):  # this rank's memory: out of memory above its cap (the real step is tested above)
        if b > caps[rank]:
            raise torch.OutOfMemoryError(f"{b} rows over a cap of {caps[rank]}")
    chosen = search_device_batch(candidates(8), probe, run._agree, log=lambda *_: None)  # Stage's all-reduce MIN
    torch.distributed.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}"), "w") as f:
        f.write(str(chosen))


def test_two_ranks_agree_on_the_smaller_size(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a fork after this process ran OpenMP regions can hang in the children
    mp.start_processes(_agree_worker, args=(port, (4, 2), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["2", "2"]


def test_auto_is_the_default_on_cuda_only(monkeypatch):
    parser = argparse.ArgumentParser()
    add_compute_flags(parser)
    add_run_flags(parser, horizon="n/a", eval_every=None)
    add_batch_flags(parser, "rows", device_batch_size=4, total=32)
    add_optimizer_flags(parser)
    assert Stage("t", parser, parser.parse_args(["--device-type=cpu"])).args.device_batch_size == 4
    assert Stage("t", parser, parser.parse_args(["--device-type=cuda"])).args.device_batch_size == "auto"
    assert Stage("t", parser, parser.parse_args(["--device-type=cuda", "--device-batch-size=8"])).args.device_batch_size == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--device-batch-size=0"])


def test_a_stage_planning_an_unknown_gpu_stops_with_the_question(monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_AUTO_DTYPE", "float32")
    run, _ = _stage(["--dry-run", "--gpu=Imaginary 9000", "--device-batch-size=2"])
    with pytest.raises(SystemExit) as exit_info:
        run.hardware()
    assert "--gpu-memory-gb GB --gpu-peak-tflops TFLOPS" in str(exit_info.value)


def test_plan_1_speedrun_prints_every_stage_and_a_total(tmp_path):
    env = dict(os.environ, PLAN="1", PLAN_GPU="H100", NPROC="8", NANOCHAT_GPU_PRICE="3",
               NANOCHAT_BASE_DIR=str(tmp_path / "base"))
    out = subprocess.run(["bash", "speedrun.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("base_train", "mid_train", "chat_sft", "chat_rl"):
        assert f"plan of {stage} on 8 x H100" in out.stdout
    assert "parameters 477,102,080" in out.stdout and "total of the training stages on 8 x H100" in out.stdout
    assert not os.path.exists(tmp_path / "base" / "speedrun")  # no stage ran
