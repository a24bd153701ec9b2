"""nanochat/roofline.py: the byte and FLOP counts of a decode step against counts taken from the
model's modules, and the bound's arithmetic against the measured rates it is built from."""

import math

import pytest
import torch

from nanochat import roofline
from nanochat.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    config = GPTConfig(sequence_len=64, vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    return GPT(config)


def linear_weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_step_costs_count_every_matmul_weight_once_and_each_cache(model):
    cfg = model.config
    head_dim = cfg.n_embd // cfg.n_head
    for contexts in ([0], [10], [7, 7, 7], [3, 0, 12]):
        flops, nbytes = roofline.step_costs(model, contexts, bytes_per_value=4)
        kv = sum(cfg.n_layer * 2 * cfg.n_kv_head * head_dim * c for c in contexts)  # keys and values per layer
        attention = sum(cfg.n_layer * cfg.n_head * 4 * head_dim * c for c in contexts)
        assert flops == len(contexts) * 2 * linear_weights(model) + attention
        assert nbytes == 4 * (linear_weights(model) + len(contexts) * cfg.n_embd + kv)  # + one embedding row each
    assert roofline.step_costs(model, [5], bytes_per_value=2)[1] * 2 == roofline.step_costs(model, [5])[1]


def test_decode_bound_adds_prefill_and_each_steps_larger_time(model, monkeypatch):
    cfg = model.config
    head_dim = cfg.n_embd // cfg.n_head
    rate, bandwidth = 1e9, 1e8
    monkeypatch.setattr(roofline, "matmul_rate", lambda dtype=torch.float32: rate)
    monkeypatch.setattr(roofline, "read_bandwidth", lambda nbytes: bandwidth)
    W, per_pos = linear_weights(model), cfg.n_layer * cfg.n_head * 4 * head_dim  # attention FLOPs per cached position
    kv_per_pos = 4 * cfg.n_layer * 2 * cfg.n_kv_head * head_dim
    prompts, new = [5, 9], 4
    bound = roofline.decode_bound(model, prompts, new)
    prefill = sum(n * (2 * W + per_pos * (n // 2)) for n in prompts) / rate
    expect_total, expect_compute, expect_memory = prefill, prefill, 0.0
    for i in range(new):  # both sequences in one step: the weights read once
        flops = sum(2 * W + per_pos * (n + i) for n in prompts)
        nbytes = 4 * (W + len(prompts) * cfg.n_embd) + sum(kv_per_pos * (n + i) for n in prompts)
        expect_total += max(flops / rate, nbytes / bandwidth)
        expect_compute += flops / rate
        expect_memory += nbytes / bandwidth
    assert math.isclose(bound.seconds, expect_total, rel_tol=1e-12)
    assert math.isclose(bound.compute_s, expect_compute, rel_tol=1e-12)
    assert math.isclose(bound.memory_s, expect_memory, rel_tol=1e-12)
    assert bound.limit == "bandwidth"
    shared = roofline.decode_bound(model, [5, 5], new, shared_prompt=True)
    alone = roofline.decode_bound(model, [5, 5], new)
    assert math.isclose(alone.seconds - shared.seconds, 5 * (2 * W + per_pos * 2) / rate, rel_tol=1e-9)


def test_measured_rates_are_positive_and_finite():
    bw = roofline.measure_read_bandwidth(1 << 20, seconds=0.05)
    assert 0 < bw < math.inf
    assert "GFLOP/s" in roofline.describe(torch.float32) and "GB/s" in roofline.describe(torch.float32)
