"""
Tests of nanochat/gpt.py: the model against an independent float64 re-implementation (explicit
per-head attention, RoPE by complex multiplication), the KV-cache path against the full forward
(MHA, GQA, MQA), the loss against F.cross_entropy, the FLOP/parameter counts against a hand count,
and the optimizer set-up.

    uv run pytest tests/test_gpt.py -q
"""

import math

import pytest
import torch
import torch.nn.functional as F

import nanochat.gpt as gpt_module
from nanochat.kv_cache import KVCache
from nanochat.gpt import GPT, GPTConfig, SoftcapCrossEntropy, apply_rotary_emb, softcap_cross_entropy_reference


def tiny_model(n_head=4, n_kv_head=4, n_embd=32, n_layer=2, vocab_size=97, sequence_len=64, seed=0, randomize=True):
    """A tiny GPT. randomize=True also fills the zero-initialised projections and scales the head up,
    so that every block and every head actually contributes to the logits."""
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                    n_kv_head=n_kv_head, n_embd=n_embd)
    model = GPT(cfg)
    model.init_weights()
    if randomize:
        with torch.no_grad():
            for block in model.transformer.h:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    proj.weight.normal_(0.0, proj.in_features ** -0.5)
            model.lm_head.weight.normal_(0.0, 0.3)
    return model


def fp32_atol(cfg, reference):
    """The absolute tolerance of an fp32 logit from its computation: per layer a few fp32 roundings of
    dot products of length n_embd (summed in an order the CPU's SIMD width decides), relative to the
    logit scale (the largest |logit| of `reference`, at least 1)."""
    return 4 * torch.finfo(torch.float32).eps * cfg.n_embd * cfg.n_layer * max(1.0, float(reference.abs().max()))


def reference_forward(model, idx):
    """The model's logits recomputed independently, in float64, from its weights."""
    cfg = model.config
    C, H, Hkv, L = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.n_layer
    D = C // H
    B, T = idx.shape
    W = {k: v.double() for k, v in model.state_dict().items()}
    eps = torch.finfo(torch.float32).eps  # F.rms_norm's default eps for fp32 inputs

    def rms(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    # RoPE: the pair (z[i], z[i + D/2]) as a complex number, rotated by -t * base^(-2i/D)
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    rotation = torch.polar(torch.ones_like(angles), -angles)

    def rope(z):  # (B, T, heads, D)
        zc = torch.complex(z[..., : D // 2], z[..., D // 2:]) * rotation[None, :, None, :]
        return torch.cat([zc.real, zc.imag], dim=-1)

    x = rms(W["transformer.wte.weight"][idx])
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in range(L):
        p = f"transformer.h.{layer}."
        a = rms(x)
        q = rms(rope((a @ W[p + "attn.c_q.weight"].T).view(B, T, H, D)))
        k = rms(rope((a @ W[p + "attn.c_k.weight"].T).view(B, T, Hkv, D)))
        v = (a @ W[p + "attn.c_v.weight"].T).view(B, T, Hkv, D)
        out = torch.zeros(B, T, H, D, dtype=torch.float64)
        for h in range(H):
            g = h // (H // Hkv)  # the kv head that query head h reads
            scores = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, g]) / math.sqrt(D)
            scores = scores.masked_fill(causal, float("-inf"))
            out[:, :, h] = torch.softmax(scores, dim=-1) @ v[:, :, g]
        x = x + out.reshape(B, T, C) @ W[p + "attn.c_proj.weight"].T
        m = rms(x)
        x = x + torch.relu(m @ W[p + "mlp.c_fc.weight"].T).pow(2) @ W[p + "mlp.c_proj.weight"].T
    logits = rms(x) @ W["lm_head.weight"].T
    return 15.0 * torch.tanh(logits / 15.0)


@pytest.mark.parametrize("n_head,n_kv_head", [(4, 4), (4, 2), (4, 1)])
def test_forward_matches_reference(n_head, n_kv_head):
    model = tiny_model(n_head=n_head, n_kv_head=n_kv_head)
    idx = torch.randint(0, model.config.vocab_size, (2, 24))
    logits = model(idx)
    assert logits.shape == (2, 24, model.config.vocab_size) and logits.dtype == torch.float32
    expected = reference_forward(model, idx)
    torch.testing.assert_close(logits.double(), expected, atol=fp32_atol(model.config, expected), rtol=0)


def test_loss_matches_cross_entropy_and_ignores_minus_one():
    model = tiny_model()
    V = model.config.vocab_size
    idx = torch.randint(0, V, (3, 16))
    targets = torch.randint(0, V, (3, 16))
    targets[0, :5] = -1
    targets[2, 10:] = -1
    logits = model(idx).view(-1, V)
    keep = targets.view(-1) != -1
    per_token = -logits.log_softmax(-1)[torch.arange(logits.size(0)), targets.view(-1).clamp(min=0)]
    torch.testing.assert_close(model(idx, targets), per_token[keep].mean())
    torch.testing.assert_close(model(idx, targets, loss_reduction="sum"), per_token[keep].sum())
    none = model(idx, targets, loss_reduction="none")
    assert none.shape == (3 * 16,)
    torch.testing.assert_close(none[keep], per_token[keep])
    assert torch.all(none[~keep] == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("blocks", ["one", "many"])
def test_fused_cpu_loss_matches_plain_ops(reduction, blocks, monkeypatch):
    """The CPU fast path (matmul + soft-cap + cross-entropy in one node, gradient computed in the
    forward) against the same computation in plain autograd ops: loss and both gradients, with the
    sweeps in one block and in many (7 rows of 3000, the last block ragged)."""
    if blocks == "many":
        monkeypatch.setattr(gpt_module, "SWEEP_BLOCK_ELEMENTS", 7 * 300)
    torch.manual_seed(0)
    N, C, V = 300, 24, 3000
    x = torch.randn(N, C, requires_grad=True)
    w = (torch.randn(V, C) * 2.0).requires_grad_()  # large logits: the soft-cap saturates
    targets = torch.randint(0, V, (N,))
    targets[::7] = -1
    fused = SoftcapCrossEntropy.apply(x, w, targets, reduction)
    plain = softcap_cross_entropy_reference(x, w, targets, reduction)
    # fp32 roundings: a logit is a dot of length C, a loss a log-sum-exp over V (and a mean over N
    # tokens); a gradient entry of w also sums over the N tokens. Relative to the largest value.
    eps = torch.finfo(torch.float32).eps
    loss_rtol, grad_rtol = 4 * eps * (C + math.log2(V) + math.log2(N)), 4 * eps * (C + math.log2(V) + N)
    torch.testing.assert_close(fused, plain, atol=loss_rtol * float(plain.abs().max()), rtol=loss_rtol)
    g = torch.randn_like(fused)  # a non-trivial upstream gradient (per token for "none")
    for a, b in zip(torch.autograd.grad(fused, (x, w), g), torch.autograd.grad(plain, (x, w), g)):
        torch.testing.assert_close(a, b, atol=grad_rtol * float(b.abs().max()), rtol=grad_rtol)
    with torch.no_grad():  # the no-grad branch skips the gradient sweep; same loss
        torch.testing.assert_close(SoftcapCrossEntropy.apply(x, w, targets, reduction), plain)


def test_init_scheme():
    model = tiny_model(randomize=False, vocab_size=1000)
    for block in model.transformer.h:
        assert torch.all(block.attn.c_proj.weight == 0) and torch.all(block.mlp.c_proj.weight == 0)
    assert not any(isinstance(m, torch.nn.Linear) and m.bias is not None for m in model.modules())
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()  # untied
    # zero projections make every block the identity; a tiny head gives near-uniform predictions
    idx = torch.randint(0, 1000, (2, 32))
    loss = model(idx, idx)
    assert abs(loss.item() - math.log(1000)) < 0.05
    # the logit soft-cap bounds the logits at 15 whatever the head's scale
    with torch.no_grad():
        model.lm_head.weight.mul_(1e5)
    assert model(idx).abs().max() <= 15.0


def test_meta_device_construction_matches_eager():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=16, vocab_size=50, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    eager = GPT(cfg)
    with torch.device("meta"):
        meta = GPT(cfg)
    meta.to_empty(device="cpu")
    meta.init_weights()
    torch.testing.assert_close(meta.cos, eager.cos)
    torch.testing.assert_close(meta.sin, eager.sin)
    assert meta.cos.size(1) == 10 * cfg.sequence_len
    # the rotary tables are derived, so checkpoints do not carry them
    assert not any("cos" in k or "sin" in k for k in meta.state_dict())
    meta.load_state_dict(eager.state_dict())
    idx = torch.randint(0, 50, (1, 8))
    torch.testing.assert_close(meta(idx), eager(idx))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_logits_match_full_forward(n_kv_head):
    """Prefill, then a multi-token chunk, then one token at a time == one full forward."""
    model = tiny_model(n_head=4, n_kv_head=n_kv_head)
    cfg = model.config
    B, T = 2, 30
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    full = model(idx)
    kv = KVCache(B, n_kv_head, T, cfg.n_embd // cfg.n_head, cfg.n_layer)
    pieces = [model(idx[:, :9], kv_cache=kv), model(idx[:, 9:14], kv_cache=kv)]
    pieces += [model(idx[:, t:t + 1], kv_cache=kv) for t in range(14, T)]
    assert kv.get_pos() == T
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=fp32_atol(cfg, full), rtol=0)


def test_kv_cache_prefill_broadcasts_to_rows():
    model = tiny_model(n_kv_head=2)
    cfg = model.config
    D = cfg.n_embd // cfg.n_head
    prompt = torch.randint(0, cfg.vocab_size, (1, 7))
    one = KVCache(1, 2, 7, D, cfg.n_layer)
    model(prompt, kv_cache=one)
    many = KVCache(3, 2, 12, D, cfg.n_layer)
    many.prefill(one)
    assert many.get_pos() == 7
    # continuing 3 different rows from the shared prefix == full forwards of each row
    nxt = torch.randint(0, cfg.vocab_size, (3, 1))
    step = model(nxt, kv_cache=many)
    full = model(torch.cat([prompt.expand(3, -1), nxt], dim=1))[:, -1:]
    torch.testing.assert_close(step, full, atol=fp32_atol(cfg, full), rtol=0)


@pytest.mark.parametrize("rows", [1, 3])
def test_cpu_decode_head_matches_plain_head_and_follows_weight_updates(rows):
    """The CPU decode path of the head (a cached transposed copy for one row, W @ x^T for several)
    gives the plain head's logits, and a weight update in place invalidates the cached copy."""
    model = tiny_model(vocab_size=300)
    x = torch.randn(rows, 1, model.config.n_embd, generator=torch.Generator().manual_seed(rows))
    for _ in range(2):
        with torch.inference_mode():
            fast = model._head(x)
        plain = x @ model.lm_head.weight.detach().t()
        # one dot product of length n_embd per logit, summed in another order: n_embd roundings of |x||w|
        atol = 4 * torch.finfo(torch.float32).eps * model.config.n_embd * float(x.abs().max() * model.lm_head.weight.abs().max())
        torch.testing.assert_close(fast, plain, atol=atol, rtol=0)
        with torch.no_grad():
            model.lm_head.weight.mul_(-2.0)  # e.g. an optimizer step between two generations


def test_rotary_attention_depends_only_on_relative_position():
    """After the rotation a query-key score depends on the distance between their positions only."""
    model = tiny_model()
    D = model.config.n_embd // model.config.n_head
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, D, generator=gen), torch.randn(1, 1, 1, D, generator=gen)

    def score(tq, tk):
        rq = apply_rotary_emb(q, model.cos[:, tq:tq + 1], model.sin[:, tq:tq + 1])
        rk = apply_rotary_emb(k, model.cos[:, tk:tk + 1], model.sin[:, tk:tk + 1])
        return (rq * rk).sum()
    # fp32 rotation tables: an angle t * f rounds by ~eps * t (t up to 105), a score sums D products of |q||k|
    atol = 4 * torch.finfo(torch.float32).eps * 105 * float(q.norm() * k.norm())
    torch.testing.assert_close(score(5, 2), score(105, 102), atol=atol, rtol=0)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)


def test_num_params_and_flops_by_hand():
    V, C, L, H, Hkv, T = 50, 16, 2, 4, 2, 32
    D = C // H
    model = GPT(GPTConfig(sequence_len=T, vocab_size=V, n_layer=L, n_head=H, n_kv_head=Hkv, n_embd=C))
    per_layer = C * C + 2 * C * Hkv * D + C * C + C * 4 * C + 4 * C * C  # q, k+v, attn proj, mlp fc, mlp proj
    total = V * C + V * C + L * per_layer  # embedding, head, blocks
    assert model.num_params() == total
    assert model.estimate_flops() == 6 * (total - V * C) + 12 * L * H * D * T


def test_setup_optimizers_groups_and_training():
    pytest.importorskip("nanochat.optim")
    from nanochat.optim import AdamW, Muon

    model = tiny_model(n_embd=64, n_head=4, n_kv_head=2, randomize=False)
    adamw, muon = model.setup_optimizers()
    assert isinstance(adamw, AdamW) and isinstance(muon, Muon)
    groups = adamw.param_groups + muon.param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()), "each parameter in exactly one group"
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert muon_ids == {id(p) for p in model.transformer.h.parameters()}
    assert all(g["initial_lr"] == g["lr"] for g in groups)
    head_group = next(g for g in adamw.param_groups if any(p is model.lm_head.weight for p in g["params"]))
    assert head_group["lr"] == pytest.approx(0.004 * (64 / 768) ** -0.5)
    # a few steps on one fixed batch must bring the loss down a lot (memorisation)
    torch.manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (4, 32))
    first = None
    for _ in range(30):
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first


# -----------------------------------------------------------------------------
# the fused loss: fully masked batches (issue 8) and evaluation cost


@pytest.mark.parametrize("fused", [True, False])
def test_fully_masked_micro_batch_leaves_gradients_and_weights_alone(fused, monkeypatch):
    """Two accumulated micro-batches, the second with every target -1 (e.g. an SFT batch of
    prompts only): the loss is finite (0) and the gradients equal those of the first alone
    (F.cross_entropy gives zero gradients for the masked one). Before the fix the fused CPU loss
    computed 0 * (1 / 0) in its backward and wrote NaN into every gradient. Also: a fresh
    optimizer step on a fully masked batch leaves the weights unchanged."""
    if not fused:  # the plain-ops path used on CUDA/MPS, forced here on the CPU
        monkeypatch.setattr(gpt_module, "fused_softcap_cross_entropy", softcap_cross_entropy_reference)
    model = tiny_model()
    V = model.config.vocab_size
    idx = torch.randint(0, V, (2, 16))
    targets = torch.randint(0, V, (2, 16))
    masked = torch.full_like(targets, -1)
    model(idx, targets).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss = model(idx, masked)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), f"{n}: non-finite gradient after a fully masked micro-batch"
        torch.testing.assert_close(p.grad, expected[n], atol=0, rtol=0)
    # an optimizer step on a fully masked batch alone moves nothing
    model.zero_grad(set_to_none=True)
    model(idx, masked).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for opt in model.setup_optimizers():  # Muon + AdamW, weight decay 0 (the default)
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], atol=0, rtol=0)


def test_fully_masked_batch_all_reductions():
    torch.manual_seed(0)
    x = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    t = torch.full((10,), -1)
    for reduction in ("mean", "sum", "none"):
        loss = SoftcapCrossEntropy.apply(x, w, t, reduction)
        gx, gw = torch.autograd.grad(loss.sum(), (x, w))
        assert torch.all(loss == 0) and torch.all(gx == 0) and torch.all(gw == 0), reduction


def _profiled_ops(fn, memory=False):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=memory) as prof:
        fn()
    return prof.key_averages()


def test_fused_loss_under_no_grad_skips_the_gradient_sweep():
    """Evaluation (torch.no_grad, weights still requiring grad) must not pay for the gradient:
    the profiler sees the gradient sweep (a second exp_ per block, the scatter_add_ at the
    targets) with autograd on and not under no_grad; the loss is the same."""
    model = tiny_model(vocab_size=500)
    idx = torch.randint(0, 500, (4, 32))
    with_grad = _profiled_ops(lambda: model(idx, idx))
    with torch.no_grad():
        no_grad = _profiled_ops(lambda: model(idx, idx))
        eval_loss = model(idx, idx)
    calls = lambda ops, name: sum(e.count for e in ops if e.key == name)  # noqa: E731
    assert calls(with_grad, "aten::scatter_add_") == 1 and calls(no_grad, "aten::scatter_add_") == 0
    assert calls(with_grad, "aten::exp_") == 2 and calls(no_grad, "aten::exp_") == 1
    torch.testing.assert_close(eval_loss, model(idx, idx).detach())


def test_fused_loss_scratch_is_sized_by_the_vocabulary():
    """The sweep's scratch block is at most (V, N): with a tiny vocabulary no allocation is large
    (it was SWEEP_BLOCK_ELEMENTS floats, 64 MB, whatever the vocabulary)."""
    model = tiny_model(vocab_size=97)
    idx = torch.randint(0, 97, (2, 32))
    ops = _profiled_ops(lambda: model(idx, idx), memory=True)
    largest = max(e.cpu_memory_usage for e in ops if e.key == "aten::empty")
    assert largest < 1 << 20, f"an allocation of {largest} bytes for a (97, 64) loss"


# -----------------------------------------------------------------------------
# rows at their own positions (the engine's continuous batching)


def _rows_cache(model, B, T_max):
    cfg = model.config
    return KVCache(B, cfg.n_kv_head, T_max, cfg.n_embd // cfg.n_head, cfg.n_layer).allocate(torch.float32, "cpu")


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_rows_at_different_positions_match_full_forward(n_kv_head):
    """Prompts of different lengths prefilled in one padded pass, then decoding with every row at
    its own position, then a multi-token chunk: each row's logits equal a full forward of that
    row's own sequence. Unwritten positions are poisoned with NaN/huge values first, so reading
    one would show."""
    model = tiny_model(n_kv_head=n_kv_head).eval()
    V = model.config.vocab_size
    lens = [5, 11, 1, 8]
    B = len(lens)
    seqs = [torch.randint(0, V, (n + 12,)).tolist() for n in lens]
    kv = _rows_cache(model, B, 40)
    kv.k.fill_(float("nan"))
    kv.v.fill_(1e30)
    idx = torch.zeros(B, max(lens), dtype=torch.long)
    for b, n in enumerate(lens):
        idx[b, :n] = torch.tensor(seqs[b][:n])
    got = [model.forward_last(idx, kv, num_tokens=lens)]  # (B, V)
    assert kv.lengths.tolist() == lens
    for t in range(8):  # decode: row b feeds token lens[b] + t
        step = torch.tensor([[s[n + t]] for s, n in zip(seqs, lens)])
        got.append(model.forward_last(step, kv))
    chunk = torch.tensor([s[n + 8:n + 12] for s, n in zip(seqs, lens)])  # 4 tokens at different starts
    with torch.no_grad():
        chunk_logits = model(chunk, kv_cache=kv)  # (B, 4, V)
    assert kv.lengths.tolist() == [n + 12 for n in lens]
    with torch.no_grad():
        for b, n in enumerate(lens):
            full = model(torch.tensor([seqs[b]]))[0]  # (n + 12, V)
            expect = full[n - 1:n + 8]
            atol = fp32_atol(model.config, full)
            torch.testing.assert_close(torch.stack([g[b] for g in got]), expect, atol=atol, rtol=0)
            torch.testing.assert_close(chunk_logits[b], full[n + 8:n + 12], atol=atol, rtol=0)


def test_cache_rows_view_and_copy_row():
    model = tiny_model(n_kv_head=2).eval()
    V = model.config.vocab_size
    kv = _rows_cache(model, 4, 20)
    prompt = torch.randint(0, V, (1, 6))
    model.forward_last(prompt, kv.rows(2, 3))  # prefill row 2 only, through a view
    assert kv.lengths.tolist() == [0, 0, 6, 0]
    kv.copy_row(2, 0)
    assert kv.lengths.tolist() == [6, 0, 6, 0]
    nxt = torch.randint(0, V, (1, 1))
    a = model.forward_last(nxt, kv.rows(0, 1))
    with torch.no_grad():
        full = model(torch.cat([prompt, nxt], dim=1))[0, -1]
    torch.testing.assert_close(a[0], full, atol=fp32_atol(model.config, full), rtol=0)


def test_fused_qkv_inference_matches_training_path_and_follows_weight_updates():
    """Without autograd the three projections run as one cached matmul; the logits equal the
    autograd path's, the cached weight follows in-place updates, and the state_dict is unchanged."""
    model = tiny_model()
    keys = set(model.state_dict())
    idx = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    cfg = model.config
    for _ in range(2):
        with torch.no_grad():
            fast = model(idx)
        slow = model(idx).detach()  # grad enabled: separate projections
        # the two paths sum the same products in another order (the CPU's SIMD width decides it)
        torch.testing.assert_close(fast, slow, atol=fp32_atol(cfg, slow), rtol=1e-5)
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_k.weight.mul_(-1.5)
    assert set(model.state_dict()) == keys


def test_inference_caches_follow_an_optimizer_step():
    # GPT caches a transposed head and a fused q/k/v weight for CPU decoding; the fused AdamW kernel
    # updates weights in place without bumping their version counters, so a cache keyed on the
    # version alone kept decoding with the pre-step head (found by chat_rl's resume test)
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    optimizers = model.setup_optimizers()
    idx = torch.randint(0, 64, (1, 1))
    with torch.no_grad():
        model(idx)  # fills the caches
    model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).backward()
    for opt in optimizers:
        opt.step()
    with torch.no_grad():
        cached = model(idx)
        reference = model.logits_from_hidden(model.hidden_states(idx))
    torch.testing.assert_close(cached, reference)
