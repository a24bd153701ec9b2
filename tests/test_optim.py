"""
Tests of nanochat/optim.py: AdamW against torch.optim.AdamW, Muon's orthogonalisation, shape scale and
momentum warm-up against a naive recompute, and 2 ranks (torchrun, gloo on CPU) against 1 process.

    uv run pytest tests/test_optim.py           # ~1 min on 2 idle cores; the torchrun test is most of it
"""

import copy
import os
import subprocess
import sys

import pytest
import torch

from nanochat.optim import AdamW, Muon, zeropower_via_newtonschulz5

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS_DIR, "dist_optim_worker.py")
EPS32 = torch.finfo(torch.float32).eps


def ns_atol(shape, steps=5):
    """Newton-Schulz in fp32 against float64: each of `steps` iterations rounds matmuls of length
    max(shape) over entries of size <= 1 (the input is normalised to Frobenius norm 1)."""
    return 4 * EPS32 * max(shape) * steps


# -----------------------------------------------------------------------------
# AdamW

def make_adamw_problem(cls, seed=0, **kw):
    """Params of several shapes (2-D, 1-D, 0-D) in three groups with their own lr / wd / betas."""
    torch.manual_seed(seed)
    params = [torch.randn(7, 5), torch.randn(11), torch.randn(()), torch.randn(3, 4)]
    params = [p.requires_grad_() for p in params]
    groups = [
        dict(params=params[:2], lr=0.01),
        dict(params=params[2:3], lr=0.1, weight_decay=0.5),
        dict(params=params[3:], lr=0.003, betas=(0.5, 0.9), weight_decay=0.0),
    ]
    return params, cls(groups, lr=1.0, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, **kw)


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch(fused):
    # the reference is torch's plain for-loop implementation (foreach=False), not the kernel we call
    ours_p, ours = make_adamw_problem(AdamW, fused=fused)
    ref_p, ref = make_adamw_problem(torch.optim.AdamW, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        if step == 6:  # a schedule changes the lr between steps: both must read it from the group
            for opt in (ours, ref):
                opt.param_groups[0]["lr"] = 0.02
        for p, q in zip(ours_p, ref_p):
            g = torch.randn(p.shape, generator=gen) * 10 ** (step % 3 - 1)  # gradients at several scales
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        # elementwise updates in another order: a few fp32 roundings per step, accumulated over the steps
        rtol = 4 * EPS32 * (step + 1)
        for p, q in zip(ours_p, ref_p):
            torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * float(q.abs().max()))
    for p, q in zip(ours_p, ref_p):
        v = ref.state[q]["exp_avg_sq"]
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], v, rtol=rtol, atol=rtol * float(v.abs().max()))


def test_adamw_skips_params_without_grad_and_resumes_from_state_dict():
    params, opt = make_adamw_problem(AdamW)
    for p in params:
        p.grad = torch.ones_like(p)
    params[1].grad = None
    before = params[1].detach().clone()
    opt.step()
    assert torch.equal(params[1], before) and params[1] not in opt.state

    # a second optimizer loaded from the state dict continues exactly like the first
    params2 = [p.detach().clone().requires_grad_() for p in params]
    _, opt2 = make_adamw_problem(AdamW)
    opt2.param_groups[0]["params"][:] = params2[:2]
    opt2.param_groups[1]["params"][:] = params2[2:3]
    opt2.param_groups[2]["params"][:] = params2[3:]
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if through a file: no shared tensors
    for p, q in zip(params, params2):
        p.grad = torch.full_like(p, 0.3)
        q.grad = torch.full_like(q, 0.3)
    opt.step()
    opt2.step()
    for p, q in zip(params, params2):
        assert torch.equal(p, q)


# -----------------------------------------------------------------------------
# Muon

def matrix_with_spectrum(rows, cols, singular_values, seed=0):
    """U diag(s) V^T with random orthonormal U, V: a matrix whose singular values we know."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    return U @ torch.diag(singular_values) @ V.T, U @ V.T


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96)])
def test_newton_schulz_singular_values_near_one(shape):
    # singular values over two decades: after the Frobenius normalisation the smallest is ~1e-3,
    # which the quintic (slope 3.4445 at 0, 5 steps) still lifts into its band
    k = min(shape)
    s = torch.logspace(-2, 0, k)
    G, polar = matrix_with_spectrum(*shape, s)
    X = zeropower_via_newtonschulz5(G[None])[0]
    assert X.shape == G.shape and X.dtype == torch.float32
    sv = torch.linalg.svdvals(X)
    assert sv.min() > 0.6 and sv.max() < 1.3, f"singular values in [{sv.min():.3f}, {sv.max():.3f}]"
    # and it approximates the polar factor U V^T (same singular vectors), not just any orthogonal matrix
    assert torch.linalg.norm(X - polar) / torch.linalg.norm(polar) < 0.3
    # a plain Gaussian matrix: tall/wide ones are well conditioned, square ones have a few tiny
    # singular values that 5 steps cannot lift, so bound the bulk and the top there
    gaussian = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    sv = torch.linalg.svdvals(zeropower_via_newtonschulz5(gaussian)[0])
    assert sv.max() < 1.3 and torch.quantile(sv, 0.1 if shape[0] == shape[1] else 0.0) > 0.6


def naive_newton_schulz(G, steps=5):
    """The quintic iteration written out for one matrix, in float64, on the original orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.double() / G.double().norm()
    for _ in range(steps):
        if X.shape[0] <= X.shape[1]:
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        else:  # the same polynomial applied from the right: X (a + b X^T X + c (X^T X)^2)
            A = X.T @ X
            X = a * X + X @ (b * A + c * A @ A)
    return X.float()


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96), (40, 60)])
def test_newton_schulz_matches_naive_iteration(shape):
    # covers both code paths: the direct iteration (square, 40x60) and the Gram form (aspect >= 2)
    G = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    X = zeropower_via_newtonschulz5(G)
    for i in range(3):
        torch.testing.assert_close(X[i], naive_newton_schulz(G[i]), rtol=0, atol=ns_atol(shape))


def naive_muon_step(p, g, buf, lr, momentum, wd):
    """Muon for one matrix, written out: EMA momentum, Nesterov, orthogonalise, decay, scaled step."""
    buf = buf + (1 - momentum) * (g - buf)
    u = g + momentum * (buf - g)
    scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
    return p * (1 - lr * wd) - lr * scale * zeropower_via_newtonschulz5(u[None])[0], buf


def test_muon_step_and_momentum_warmup_match_naive_recompute():
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (24, 24), (24, 24)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = Muon(params, lr=0.05, momentum=0.5, weight_decay=0.1)
    naive = [p.detach().clone() for p in params]
    fixed = [p.detach().clone() for p in params]  # the same run if the warm-up were ignored
    bufs, fixed_bufs = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    for step, momentum in enumerate([0.5, 0.5, 0.9, 0.95]):  # the caller warms momentum up between steps
        opt.param_groups[0]["momentum"] = momentum
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for i, g in enumerate(grads):
            naive[i], bufs[i] = naive_muon_step(naive[i], g, bufs[i], 0.05, momentum, 0.1)
            fixed[i], fixed_bufs[i] = naive_muon_step(fixed[i], g, fixed_bufs[i], 0.05, 0.5, 0.1)
            # the buffer: elementwise, a few roundings per step; the weights move by lr x scale x NS(u) a step
            steps = step + 1
            torch.testing.assert_close(opt.state[params[i]]["momentum_buffer"], bufs[i], rtol=4 * EPS32 * steps,
                                       atol=4 * EPS32 * steps * float(bufs[i].abs().max()))
            scale = max(1.0, shapes[i][0] / shapes[i][1]) ** 0.5
            torch.testing.assert_close(params[i].detach(), naive[i], rtol=4 * EPS32 * steps,
                                       atol=steps * 0.05 * scale * ns_atol(shapes[i]))
    for p, f in zip(params, fixed):
        assert (p.detach() - f).abs().max() > 1e-3  # the warm-up changed the trajectory


def test_muon_update_has_shape_scaled_unit_singular_values():
    torch.manual_seed(0)
    for shape, scale in [((128, 32), 2.0), ((32, 128), 1.0), ((64, 64), 1.0)]:
        G, _ = matrix_with_spectrum(*shape, torch.logspace(-1, 0, min(shape)))
        p = torch.zeros(shape, requires_grad=True)
        p.grad = G
        Muon([p], lr=0.01, momentum=0.0).step()  # momentum 0: the update is NS(grad) itself
        sv = torch.linalg.svdvals(-p.detach() / 0.01)
        assert scale * 0.6 < sv.min() and sv.max() < scale * 1.3, (shape, sv.min(), sv.max())


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.zeros(5, requires_grad=True)])


def test_gpt_optimizers_reduce_loss():
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32))
    model.init_weights()
    optimizers = model.setup_optimizers()
    assert [type(o) for o in optimizers] == [AdamW, Muon]
    x = torch.randint(0, 64, (4, 33))
    losses = []
    for _ in range(15):
        loss = model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses  # memorising one batch: the loss must fall fast


# -----------------------------------------------------------------------------
# 2 processes (torchrun, gloo) vs 1 process

def run_worker(out, nproc):
    cmd = [sys.executable, WORKER, "--out", str(out), "--models", "tiny,gpt", "--steps", "3", "--resume"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + cmd[1:]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(nproc)]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    one = run_worker(tmp_path_factory.mktemp("one_rank"), 1)
    two = run_worker(tmp_path_factory.mktemp("two_ranks"), 2)
    return one, two


def assert_close_relative(actual, expected, reference, name, rtol=1e-3):
    """max |actual - expected| <= rtol * max |reference|: agreement measured against the size of what
    the optimizer did (reference: the total update, or the state itself)."""
    err, size = (actual - expected).abs().max().item(), reference.abs().max().item()
    assert err <= rtol * size + 1e-12, f"{name}: differs by {err:.3g}, {err / max(size, 1e-30):.3g} of {size:.3g}"


@pytest.mark.parametrize("kind", ["tiny", "gpt"])
def test_two_ranks_match_one_process(worker_results, kind):
    (single,), (rank0, rank1) = worker_results
    single, rank0, rank1 = single[kind], rank0[kind], rank1[kind]
    for name, p in single["params"].items():
        # every rank holds the same full parameters after the all-gather ...
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
        # ... equal to the single-process run up to the summation order of the gradient average. Both
        # optimizers nearly ignore the gradient scale (Adam's g/sqrt(v), Muon's normalisation), and
        # Newton-Schulz amplifies rounding in near-null directions, so rounding moves parameters by up
        # to ~1e-4 of their total update; a wrong shard or a missing average moves them by O(1) of it.
        assert_close_relative(rank0["params"][name], p, p - single["init"][name], name)
    # the optimizer state is sharded: each rank holds less, the two together what one process holds
    n1, n2 = single["state_numel"], [r["state_numel"] for r in (rank0, rank1)]
    assert max(n2) < n1 and sum(n2) == n1, (n1, n2)
    # and it is the same state: AdamW's moments are the flat slices of rank 0 then rank 1; Muon's
    # momentum buffers (averages of the gradients, so sensitive to their scale) are split by matrix
    for name, state in single["state"].items():
        for key, expected in state.items():
            if key == "momentum_buffer":
                actual = (rank0["state"].get(name) or rank1["state"][name])[key]
            else:
                actual = torch.cat([r["state"][name][key] for r in (rank0, rank1) if name in r["state"]])
                expected = expected.flatten()
            assert_close_relative(actual, expected, expected, f"{name}.{key}")


@pytest.mark.parametrize("kind", ["tiny", "gpt"])
def test_checkpoint_resume_is_exact_on_one_and_two_ranks(worker_results, kind):
    (single,), ranks = worker_results
    for result in [single, *ranks]:
        assert result[kind]["resume_diff"] == 0.0
