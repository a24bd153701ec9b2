"""
nanochat/sampling.py at its edges: a row's uniform number within 2^-25 of 1 (which rounds to 1.0
in fp32) never yields a token the filters removed, and tiny temperatures act as greedy instead of
overflowing to NaN.
"""

import pytest
import torch

from nanochat.sampling import GREEDY_BELOW, sample_next_token, sample_rows

EDGE_UNIFORMS = [1 - 2**-25, 1 - 2**-30, 1 - 2**-53, 0.0, 0.5]  # the first three round to 1.0 in fp32


def edge_logits(V=1000, seed=0):
    """(3, V) fp32 logits with one clear argmax per row and a long tail of tiny probabilities."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, V, generator=g) * 4
    logits[:, -1] = -40.0  # the last vocabulary id has probability ~1e-20: the old clamp target
    return logits


@pytest.mark.parametrize("u", EDGE_UNIFORMS)
def test_top_k_1_is_the_argmax_for_any_uniform(u):
    logits = edge_logits()
    picks = sample_rows(logits, [1.0] * 3, [1] * 3, [None] * 3, [u] * 3)
    assert torch.equal(picks, logits.argmax(dim=-1))
    # beside a top-p row the batch is fully sorted, so a top_k=1 row has V candidates, V-1 masked
    picks = sample_rows(logits, [1.0] * 3, [1, None, 1], [None, 0.5, None], [u] * 3)
    assert int(picks[0]) == int(logits[0].argmax()) and int(picks[2]) == int(logits[2].argmax())


@pytest.mark.parametrize("u", EDGE_UNIFORMS)
def test_top_k_and_top_p_picks_stay_inside_their_filters(u):
    logits = edge_logits()
    probs = logits.softmax(dim=-1)
    # top_k=5: one of the 5 largest; top_p=0.5: inside the smallest prefix whose mass reaches 0.5
    picks = sample_rows(logits, [1.0] * 3, [5, None, 3], [None, 0.5, 0.9], [u] * 3)
    top5 = set(logits[0].topk(5).indices.tolist())
    assert int(picks[0]) in top5
    sorted_p, order = probs[1].sort(descending=True)
    keep = int(((sorted_p.cumsum(0) - sorted_p) < 0.5).sum())  # the nucleus size
    assert int(picks[1]) in set(order[:keep].tolist())
    assert int(picks[2]) in set(logits[2].topk(3).indices.tolist())


@pytest.mark.parametrize("u", EDGE_UNIFORMS)
def test_plain_rows_never_pick_a_zero_probability_token(u):
    logits = edge_logits()
    logits[:, -10:] = float("-inf")  # exactly zero probability: the last 10 ids
    picks = sample_rows(logits, [1.0] * 3, [None] * 3, [None] * 3, [u] * 3)
    assert (picks < logits.size(1) - 10).all()
    if u >= 1 - 2**-25:  # the top of the cdf: the last token of positive probability
        assert (picks == logits.size(1) - 11).all()


def test_plain_row_inverse_cdf_matches_a_float64_reference():
    logits = edge_logits(V=50, seed=1)
    uniforms = [0.1, 0.37, 0.93]
    picks = sample_rows(logits, [0.7] * 3, [None] * 3, [None] * 3, uniforms)
    cdf = (logits.double() / 0.7).softmax(dim=-1).cumsum(dim=-1)
    expected = torch.searchsorted(cdf, torch.tensor(uniforms, dtype=torch.float64)[:, None] * cdf[:, -1:],
                                  right=True).view(3)
    assert torch.equal(picks, expected)  # no u sits within fp32 rounding of a cdf step here


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, 5e-324, GREEDY_BELOW / 2])
def test_tiny_temperatures_are_greedy(temperature):
    logits = edge_logits()
    argmax = logits.argmax(dim=-1)
    for top_k, top_p in ((None, None), (5, None), (None, 0.9)):
        picks = sample_rows(logits, [temperature] * 3, [top_k] * 3, [top_p] * 3, [0.999] * 3)
        assert torch.equal(picks, argmax)
    # mixed with an ordinary row, the tiny-temperature rows still take their argmax
    picks = sample_rows(logits, [temperature, 1.0, temperature], [None] * 3, [None] * 3, [0.999] * 3)
    assert int(picks[0]) == int(argmax[0]) and int(picks[2]) == int(argmax[2])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, g, temperature=temperature).view(3), argmax)
