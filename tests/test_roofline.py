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


def test_step_costs_count_every_matmul_weight_once_and_the_cache(model):
    cfg = model.config
    head_dim = cfg.n_embd // cfg.n_head
    for batch, context in [(1, 0), (1, 10), (3, 7)]:
        flops, nbytes = roofline.step_costs(model, batch, context, bytes_per_value=4)
        kv = batch * cfg.n_layer * 2 * cfg.n_kv_head * head_dim * context  # keys and values per layer
        attention = batch * cfg.n_layer * cfg.n_head * 4 * head_dim * context
        assert flops == batch * 2 * linear_weights(model) + attention
        assert nbytes == 4 * (linear_weights(model) + batch * cfg.n_embd + kv)  # + one embedding row per sequence
    assert roofline.step_costs(model, 1, 5, bytes_per_value=2)[1] * 2 == roofline.step_costs(model, 1, 5)[1]


def test_decode_bound_adds_prefill_and_each_steps_larger_time(model, monkeypatch):
    rate, bandwidth = 1e9, 1e8
    monkeypatch.setattr(roofline, "matmul_rate", lambda dtype=torch.float32: rate)
    monkeypatch.setattr(roofline, "read_bandwidth", lambda nbytes: bandwidth)
    prompts, new = [5, 9], 4
    bound = roofline.decode_bound(model, prompts, new)
    prefill = sum(roofline.step_costs(model, n, n // 2)[0] for n in prompts) / rate
    expect_total, expect_compute, expect_memory = prefill, prefill, 0.0
    for i in range(new):  # both sequences in one step: the weights read once
        flops = sum(roofline.step_costs(model, 1, n + i)[0] for n in prompts)
        nbytes = roofline.step_costs(model, 1, prompts[0] + i)[1] + sum(
            roofline.step_costs(model, 1, n + i)[1] - roofline.weight_bytes(model) for n in prompts[1:])
        expect_total += max(flops / rate, nbytes / bandwidth)
        expect_compute += flops / rate
        expect_memory += nbytes / bandwidth
    assert math.isclose(bound.seconds, expect_total, rel_tol=1e-12)
    assert math.isclose(bound.compute_s, expect_compute, rel_tol=1e-12)
    assert math.isclose(bound.memory_s, expect_memory, rel_tol=1e-12)
    assert bound.limit == "bandwidth" and bound.fraction(2 * bound.seconds) == 0.5
    shared = roofline.decode_bound(model, [5, 5], new, shared_prompt=True)
    alone = roofline.decode_bound(model, [5, 5], new)
    assert alone.seconds - shared.seconds == pytest.approx(roofline.step_costs(model, 5, 2)[0] / rate, rel=1e-9)


def test_measured_rates_are_positive_and_finite():
    bw = roofline.measure_read_bandwidth(1 << 20, seconds=0.05)
    assert 0 < bw < math.inf
    assert "GFLOP/s" in roofline.describe(torch.float32) and "GB/s" in roofline.describe(torch.float32)
