"""
Next-token sampling for inference: greedy, temperature, top-k and top-p, with a generator per row
(nanochat/engine.py samples every decoding row in one call of sample_rows).
"""

import torch
import torch.nn.functional as F

# Temperatures below this act as greedy (argmax). Dividing fp32 logits by a smaller temperature
# can overflow to inf (1e-45, 1e-38, 5e-324 do) and the softmax to NaN; at 1e-4 a logit gap of
# 0.01 already gives odds of e^100, so nothing but the argmax is ever drawn anyway.
GREEDY_BELOW = 1e-4


def is_greedy(temperature):
    """True when sampling at `temperature` means taking the argmax (0 and anything below GREEDY_BELOW)."""
    return temperature < GREEDY_BELOW


def _last_positive(probs):
    """(B, K) probabilities -> (B, 1) index of each row's last token with probability > 0: the
    cumulative count of positive entries reaches its maximum there first."""
    return (probs > 0).to(torch.int32).cumsum(dim=-1).argmax(dim=-1, keepdim=True)


def _inverse_cdf(probs, uniform):
    """probs (B, K), uniform (B, 1) in [0, 1) -> (B, 1) index of the first token whose cumulative
    probability exceeds uniform * total. A u within 2^-25 of 1 rounds u * total up to the total in
    fp32, past every entry; the pick is then capped at the last token of nonzero probability, so
    a token the filters removed (or one that underflowed to 0) is never returned."""
    cdf = probs.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
    return torch.minimum(pick, _last_positive(probs))


def sample_next_token(logits, rng, temperature=1.0, top_k=None):
    """logits (B, V) -> next token ids (B, 1), one generator for all rows. temperature 0 (or below GREEDY_BELOW)
    is greedy; top_k None or 0 is no top-k. (The engine samples with per-row parameters and generators in
    `sample_rows`; this is the simple form.)"""
    assert temperature >= 0.0, "temperature must be non-negative"
    if is_greedy(temperature):
        return torch.argmax(logits, dim=-1, keepdim=True)
    if top_k:
        vals, idx = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)  # (B, k), no full sort
        probs = F.softmax(vals / temperature, dim=-1)
        return idx.gather(1, torch.multinomial(probs, 1, generator=rng))
    probs = F.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=rng)


def sample_rows(logits, temperature, top_k, top_p, uniform):
    """Sample one token per row, each row with its own parameters. logits (B, V) fp32;
    temperature, top_k, top_p, uniform: lists of B values (temperature >= 0, below GREEDY_BELOW a
    row takes its argmax; top_k None/0 = off;
    top_p None/1 = off; uniform in [0, 1), the row's own random number). Returns (B,) token ids.

    Inverse-CDF sampling: row b takes the first token whose cumulative probability exceeds
    uniform[b] * total. The randomness is one number per row from that row's own generator, so a
    seeded request draws the same samples whatever else shares the batch (up to the last-bit
    differences a different batch size can make in the logits themselves).
    """
    B, V = logits.shape
    device = logits.device
    greedy = torch.tensor([is_greedy(t) for t in temperature], device=device)  # (B,)
    if bool(greedy.all()):
        return logits.argmax(dim=-1)
    # greedy rows are sampled at temperature 1 (a finite division) and replaced by their argmax below
    temps = [1.0 if is_greedy(t) else t for t in temperature]
    z = logits / torch.tensor(temps, dtype=logits.dtype, device=device)[:, None]
    ks = [k if k else V for k in top_k]
    ps = [p if p is not None else 1.0 for p in top_p]
    u = torch.tensor(uniform, dtype=logits.dtype, device=device)[:, None]  # (B, 1)
    if max(ks) == V and min(ps) >= 1.0:  # no filtering: sample in vocabulary order
        pick = _inverse_cdf(z.softmax(dim=-1), u).view(B)
        return torch.where(greedy, logits.argmax(dim=-1), pick)
    # top-p needs the probabilities in sorted order; a full sort only when some row asks for
    # top-p without a top-k, else the largest top-k among the rows suffices
    K = V if any(p < 1.0 and k == V for k, p in zip(ks, ps)) else max(ks)
    vals, order = torch.topk(z, min(K, V), dim=-1)  # (B, K), sorted descending
    K = vals.size(1)
    rank = torch.arange(K, device=device)[None, :]
    vals = vals.masked_fill(rank >= torch.tensor(ks, device=device)[:, None], float("-inf"))
    probs = vals.softmax(dim=-1)
    if min(ps) < 1.0:
        # nucleus (Holtzman et al. 2019): keep the smallest prefix whose mass reaches p (the first always)
        cdf = probs.cumsum(dim=-1)
        drop = (cdf - probs) >= torch.tensor(ps, dtype=probs.dtype, device=device)[:, None]
        probs = probs.masked_fill(drop, 0.0)
    pick = order.gather(1, _inverse_cdf(probs, u)).view(B)
    return torch.where(greedy, logits.argmax(dim=-1), pick)
