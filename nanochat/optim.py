"""
The two optimizers of nanochat: AdamW for the embedding, the head and any scalars, and Muon for the
2-D weight matrices of the transformer blocks. `GPT.setup_optimizers` (nanochat/gpt.py) builds both.

One class each serves one process and many. When torch.distributed is initialised with a world size
above 1, `step()` itself averages the gradients across ranks (so the model is never wrapped in DDP):
  1. reduce-scatter (average) the gradients, so that each rank receives only the slice it owns;
  2. update only that slice of the parameters, with optimizer state kept only for that slice;
  3. all-gather the updated slices so that every rank again holds the full parameters.
Optimizer state per rank therefore falls as 1/world_size (ZeRO-1 style). At world size 1 there is no
communication at all and the same update code runs on whole tensors.

What a rank owns:
  - AdamW: a contiguous slice of every parameter, flattened: elements [rank*chunk, (rank+1)*chunk)
    with chunk = ceil(numel / world_size); the last slices are padded with zeros for the collectives.
  - Muon: whole matrices. Within each param group the matrices are bucketed by shape; a bucket of n
    matrices is padded (with zero matrices) to a multiple of world_size and rank r owns the r-th
    contiguous block, so one reduce-scatter and one all-gather per bucket move them, and each rank
    orthogonalises only its own matrices, batched (bmm) over the block.
Comms are launched with async_op=True: all reduce-scatters first, then each bucket's update starts
as soon as its own gradients have arrived, and its all-gather overlaps the next bucket's update.

Backends: NCCL on CUDA, gloo on CPU. gloo in torch 2.15 supports reduce_scatter_tensor,
all_gather_into_tensor and ReduceOp.AVG (checked with a 2-process probe), so there is no
all-reduce fallback. All ranks must agree on which parameters have gradients (true when they run
the same model). A rank's own state (state_dict) is only valid at its world size; full_state_dict()
gathers the state as it would be at world size 1 (what checkpoints save) and load_full_state_dict()
keeps this rank's part of it, at any world size: the re-sharding of a resume on fewer or more ranks.

Numerics and speed: Newton-Schulz runs in bf16 on CUDA (tensor cores) and in float32 elsewhere: on
the CPUs we develop on a bf16 matmul is ~35x slower than float32 (measured 712 ms vs 20 ms for one
1024x256 orthogonalisation), slower than the whole forward and backward pass. In float32 the
rectangular (4d, d) MLP matrices use an algebraically equal Gram form of the iteration (44% fewer
flops, 1.6-2x faster; see _newton_schulz_gram). Matrices of one shape are orthogonalised in one
batched call (baddbmm). torch.compile is not used: the step is matmul-bound, there is little to fuse.
AdamW calls torch's fused AdamW kernel (one pass over memory, ~6x the _foreach_ path on CPU).

Tests: tests/test_optim.py (AdamW vs torch.optim.AdamW, Newton-Schulz vs a float64 naive iteration,
singular values, Muon vs a naive recompute incl. momentum warm-up, 2-process torchrun vs 1 process).
"""

import math

import torch
import torch.distributed as dist
from torch.optim.adamw import adamw as torch_adamw_functional

from nanochat.common import get_rank, get_world_size

_STEPS_TAKEN = [0]


def steps_taken():
    """How many optimizer steps (AdamW or Muon) this process has taken. A fused kernel updates the
    weights in place without bumping their tensors' version counters, so a cache derived from the
    weights (GPT's inference copies of the head and of q/k/v) keys on this count as well."""
    return _STEPS_TAKEN[0]


# -----------------------------------------------------------------------------
# AdamW

class AdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay, the same update as torch.optim.AdamW (amsgrad off).

    Per parameter: p *= 1 - lr*wd; m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g^2;
    p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps).
    fused=True (the default where torch has the kernel: cpu, cuda, mps) runs that math for a whole
    param group in torch's fused AdamW kernel, one pass over memory: on our 2-core CPU it is ~6x
    faster than the ~10 _foreach_* passes of fused=False (45 ms vs 270 ms CPU time for 25M params).
    This class adds the sharding across ranks; the kernel is shared with torch.optim.AdamW(fused=True).
    State: "exp_avg", "exp_avg_sq" (this rank's flat slice of the parameter), "step" (0-d float32).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=None):
        if lr < 0.0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas must lie in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.fused = fused

    @torch.no_grad()
    def step(self, closure=None):
        _STEPS_TAKEN[0] += 1
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = get_rank(), get_world_size()

        # 1) launch the gradient reduce-scatters of every parameter (none at world size 1)
        received = []  # (group, p, this rank's averaged gradient slice, work)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if world == 1:
                    received.append((group, p, p.grad, None))
                    continue
                assert p.is_contiguous(), f"AdamW shards flat views of parameters; got a non-contiguous {tuple(p.shape)}"
                chunk = -(-p.numel() // world)  # ceil
                grad = p.grad.reshape(-1)
                if chunk * world != p.numel():  # pad to equal slices (a copy; only for odd sizes)
                    grad = torch.nn.functional.pad(grad, (0, chunk * world - p.numel()))
                grad_shard = grad.new_empty(chunk)
                work = dist.reduce_scatter_tensor(grad_shard, grad, op=dist.ReduceOp.AVG, async_op=True)
                received.append((group, p, grad_shard, work))

        # 2) update this rank's slices, one kernel call per param group; 3) launch the all-gathers
        gathers = []  # (p, gathered (chunk*world,) buffer, work)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for g, p, grad_shard, work in received:
                if g is not group:
                    continue
                if work is not None:
                    work.wait()
                p_shard = self._shard(p, rank, world)
                grad_shard = grad_shard[: p_shard.numel()] if world > 1 else grad_shard
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p_shard)
                    state["exp_avg_sq"] = torch.zeros_like(p_shard)
                if state["step"].device != p.device:  # e.g. loaded with map_location="cpu"
                    state["step"] = state["step"].to(p.device)
                assert state["exp_avg"].shape == p_shard.shape, (
                    f"AdamW state of a parameter of shape {tuple(p.shape)} has shape {tuple(state['exp_avg'].shape)}, "
                    f"but this rank owns {tuple(p_shard.shape)}: was it saved with another world size?"
                )
                if p_shard.numel() > 0:  # the last ranks own nothing of a parameter smaller than world
                    params.append(p_shard)
                    grads.append(grad_shard)
                    exp_avgs.append(state["exp_avg"])
                    exp_avg_sqs.append(state["exp_avg_sq"])
                    steps.append(state["step"])
            if params:
                fused = self.fused if self.fused is not None else params[0].device.type in ("cpu", "cuda", "mps")
                (_adamw_fused if fused else _adamw_foreach)(params, grads, exp_avgs, exp_avg_sqs, steps, group)
            if world > 1:
                for g, p, _, _ in received:
                    if g is not group:
                        continue
                    chunk = -(-p.numel() // world)
                    p_shard = self._shard(p, rank, world)
                    shard = p.new_zeros(chunk)  # a copy, since the gather may write into p itself
                    shard[: p_shard.numel()] = p_shard
                    # gather straight into the parameter when the slices tile it exactly
                    everyone = p.view(-1) if chunk * world == p.numel() else p.new_empty(chunk * world)
                    gathers.append((p, everyone, dist.all_gather_into_tensor(everyone, shard, async_op=True)))
        for p, everyone, work in gathers:
            work.wait()
            if everyone.data_ptr() != p.data_ptr():
                p.view(-1).copy_(everyone[: p.numel()])
        return loss

    def full_state_dict(self):
        """This optimizer's state_dict as it would be at world size 1, every state tensor whole and on
        the CPU: the same at every world size (what a checkpoint saves). A collective: every rank
        calls it; rank 0 gets the dict, the others None."""
        sd, rank, world = self.state_dict(), get_rank(), get_world_size()
        params = [p for group in self.param_groups for p in group["params"]]
        full = {}
        for i, p in enumerate(params):
            if i not in sd["state"]:  # no state yet (never stepped): alike on every rank
                continue
            state = dict(sd["state"][i])  # a copy: the dict's tensors are the live state
            for key in ("exp_avg", "exp_avg_sq"):
                shard = state[key].reshape(-1)
                if world > 1:
                    chunk = -(-p.numel() // world)
                    mine = shard.new_zeros(chunk)
                    mine[: shard.numel()] = shard
                    everyone = shard.new_empty(chunk * world)
                    dist.all_gather_into_tensor(everyone, mine)
                    shard = everyone[: p.numel()]
                state[key] = shard.view(p.shape).cpu().clone() if rank == 0 else None  # host memory: rank 0 only
            state["step"] = state["step"].cpu().clone()
            full[i] = state
        return dict(sd, state=full) if rank == 0 else None

    def load_full_state_dict(self, sd):
        """Load a full_state_dict (saved at any world size): this rank keeps its slice of each tensor."""
        rank, world = get_rank(), get_world_size()
        params = [p for group in self.param_groups for p in group["params"]]
        local = {}
        for i, state in sd["state"].items():
            p, state = params[int(i)], dict(state)
            for key in ("exp_avg", "exp_avg_sq"):
                assert state[key].numel() == p.numel(), (
                    f"AdamW state {key} of parameter {i} has {state[key].numel()} elements, the parameter {p.numel()}")
                state[key] = self._shard(state[key].reshape(p.shape).contiguous(), rank, world).clone()
            local[i] = state
        self.load_state_dict(dict(sd, state=local))

    @staticmethod
    def _shard(p, rank, world):
        """This rank's part of p: p itself at world size 1, else a flat view of elements [lo, hi)."""
        if world == 1:
            return p
        chunk = -(-p.numel() // world)
        lo, hi = min(rank * chunk, p.numel()), min((rank + 1) * chunk, p.numel())
        return p.view(-1)[lo:hi]


def _adamw_fused(params, grads, exp_avgs, exp_avg_sqs, steps, group):
    """torch's fused AdamW kernel (it also increments the steps)."""
    beta1, beta2 = group["betas"]
    torch_adamw_functional(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=True, amsgrad=False,
                           beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                           eps=group["eps"], maximize=False)


def _adamw_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, group):
    """The same math in _foreach_* ops, op for op like torch.optim.AdamW(foreach=True)."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    torch._foreach_add_(steps, 1)
    ts = [t.item() for t in steps]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_sizes = [-lr / (1 - beta1**t) for t in ts]
    bias_correction2_sqrt = [math.sqrt(1 - beta2**t) for t in ts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


# -----------------------------------------------------------------------------
# Muon

# Quintic Newton-Schulz coefficients (Keller Jordan, "Muon: An optimizer for hidden layers", 2024):
# chosen to maximise the slope at 0, so that 5 steps push every singular value that is not tiny into
# roughly [0.7, 1.2] instead of converging exactly to 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G, steps=5, dtype=None):
    """Approximately orthogonalise a batch of matrices: G (B, R, C) -> ~U V^T of G's SVD, (B, R, C).

    Quintic Newton-Schulz: X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation (so A is
    the small (m, m) Gram matrix, m = min(R, C)). dtype None: bf16 on CUDA, float32 elsewhere (a CPU
    with fast bf16 matmuls passes torch.bfloat16); the caller casts back.
    """
    assert G.ndim == 3, f"expected a batch of matrices (B, R, C), got shape {tuple(G.shape)}"
    a, b, c = NS_COEFFS
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm >= spectral norm, so sigma <= 1
    X = X.contiguous()  # (B, m, n), m <= n
    m, n = X.shape[-2:]
    if X.dtype == torch.float32 and n >= 2 * m:
        X = _newton_schulz_gram(X, steps)
    else:
        for _ in range(steps):
            A = X @ X.mT  # (B, m, m)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A; fused: ~20% faster on CPU than separate ops
            X = torch.baddbmm(X, B, X, beta=a)  # a*X + B@X
    return X.mT if tall else X


def _newton_schulz_gram(X, steps):
    """The same iteration for a wide X (B, m, n), carried out on (m, m) matrices.

    Every iterate is X_k = Q_k X_0 with Q_k a polynomial in G = X_0 X_0^T (so Q_k is symmetric and
    commutes with G): A_k = X_k X_k^T = Q_k G Q_k and Q_{k+1} = (a I + b A_k + c A_k^2) Q_k.
    Matmul cost: 2 m^2 n + (4 steps - 3) m^3 instead of steps (2 m^2 n + m^3): 44% less for the
    (4d, d) MLP matrices at 5 steps, measured 1.6-2x faster on CPU in fp32. Only used in fp32: forming
    G squares the condition number, which bf16 does not have the precision for. Max error vs a float64
    direct iteration: 8e-7 for a random 1024x256 matrix (direct fp32: 6e-7, direct bf16 as on GPUs:
    9e-3); 2.4e-4 for a 128x32 spectrum spanning 6 decades (direct fp32: 4e-6, direct bf16: 0.1).
    """
    a, b, c = NS_COEFFS
    G = X @ X.mT  # (B, m, m)
    A, Q = G, None
    for k in range(steps):
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        if Q is None:  # Q_0 = I
            Q = B + a * torch.eye(B.size(-1), dtype=B.dtype, device=B.device)
        else:
            Q = torch.baddbmm(Q, B, Q, beta=a)  # (a I + B) Q
        if k < steps - 1:
            A = Q @ G @ Q
    return Q @ X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices only.

    Per matrix: buf = lerp(buf, g, 1-momentum); u = lerp(g, buf, momentum) if nesterov else buf;
    p *= 1 - lr*wd; p -= lr * max(1, rows/cols)**0.5 * NS(u).
    The shape scale keeps the per-element update size comparable for tall matrices (the orthogonalised
    update of a (R, C) matrix with R > C has entries of size ~1/sqrt(R)).
    Every hyperparameter, momentum included, is read from the param group at each step, so the caller
    can warm momentum up by assigning group["momentum"]. ns_dtype: "auto" (bf16 on CUDA, fp32
    elsewhere), "float32" or "bfloat16": the dtype of the Newton-Schulz matmuls.
    State: "momentum_buffer" for the matrices this rank owns.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, ns_dtype="auto"):
        if ns_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"Muon: ns_dtype must be 'auto', 'float32' or 'bfloat16', got {ns_dtype!r}")
        if lr < 0.0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must lie in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon handles 2-D weight matrices only; got a parameter of shape "
                                     f"{tuple(p.shape)}: give it to AdamW instead")

    def _buckets(self, with_grad=True):
        """[(group, [params of one shape])], in the same order on every rank; with_grad: only the
        params that have a gradient (a step), else all (the owners of the state)."""
        buckets = []
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None or not with_grad:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            buckets.extend((group, ps) for ps in by_shape.values())
        return buckets

    def _owned(self, ps, rank, world):
        k = -(-len(ps) // world)
        return ps[rank * k: (rank + 1) * k]

    def full_state_dict(self):
        """This optimizer's state_dict as it would be at world size 1 (every matrix's momentum buffer,
        on the CPU): the same at every world size. A collective: every rank calls it; rank 0 gets the
        dict, the others None. Assumes every matrix steps (the owners of a bucket are computed over
        all its matrices)."""
        sd, rank, world = self.state_dict(), get_rank(), get_world_size()
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        stepped = bool(self.state)
        if world > 1:  # a rank that owns no matrix has no state even after a step
            flag = torch.tensor([float(stepped)], device=self.param_groups[0]["params"][0].device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stepped = bool(flag.item())
        full = {}
        for _, ps in self._buckets(with_grad=False) if stepped else []:
            owned = self._owned(ps, rank, world)
            assert all("momentum_buffer" in self.state[p] for p in owned), "Muon: a matrix it owns never stepped"
            bufs = [self.state[p]["momentum_buffer"] for p in owned]
            if world > 1:
                k = -(-len(ps) // world)
                mine = torch.stack(bufs + [torch.zeros_like(ps[0])] * (k - len(owned)))
                everyone = ps[0].new_empty((k * world, *ps[0].shape))
                dist.all_gather_into_tensor(everyone, mine)
                bufs = list(everyone[: len(ps)].unbind(0))
            for p, buf in zip(ps, bufs) if rank == 0 else []:  # host memory: rank 0 only
                full[index[id(p)]] = {"momentum_buffer": buf.cpu().clone()}
        return dict(sd, state=full) if rank == 0 else None

    def load_full_state_dict(self, sd):
        """Load a full_state_dict (saved at any world size): this rank keeps the matrices it owns."""
        rank, world = get_rank(), get_world_size()
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        local = {}
        for _, ps in self._buckets(with_grad=False):
            for p in self._owned(ps, rank, world):
                i = index[id(p)]
                if i in sd["state"]:
                    assert sd["state"][i]["momentum_buffer"].shape == p.shape, f"Muon state {i} has another shape"
                    local[i] = sd["state"][i]
        self.load_state_dict(dict(sd, state=local))

    @torch.no_grad()
    def step(self, closure=None):
        _STEPS_TAKEN[0] += 1
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = get_rank(), get_world_size()
        buckets = self._buckets()

        # 1) launch one gradient reduce-scatter per bucket: (n_pad, R, C) -> this rank's (k, R, C)
        received = []
        for group, ps in buckets:
            if world == 1:
                received.append((None, None))
                continue
            k = -(-len(ps) // world)
            grads = [p.grad for p in ps] + [torch.zeros_like(ps[0])] * (k * world - len(ps))
            mine = ps[0].new_empty((k, *ps[0].shape))
            work = dist.reduce_scatter_tensor(mine, torch.stack(grads), op=dist.ReduceOp.AVG, async_op=True)
            received.append((mine, work))

        # 2) per bucket: momentum + orthogonalise the owned matrices, then 3) launch their all-gather
        gathers = []
        for (group, ps), (grads, work) in zip(buckets, received):
            k = -(-len(ps) // world)
            owned = self._owned(ps, rank, world)  # empty when a small bucket has no matrix for us
            if work is None:
                grads = torch.stack([p.grad for p in ps])  # (k, R, C), a copy that the update may modify
            else:
                work.wait()
                grads = grads[: len(owned)]
            if owned:
                self._update(group, owned, grads)
            if world > 1:
                mine = torch.stack(owned + [torch.zeros_like(ps[0])] * (k - len(owned)))
                everyone = ps[0].new_empty((k * world, *ps[0].shape))
                gathers.append((ps, everyone, dist.all_gather_into_tensor(everyone, mine, async_op=True)))
        for ps, everyone, work in gathers:
            work.wait()
            torch._foreach_copy_(ps, list(everyone[: len(ps)].unbind(0)))
        return loss

    def _update(self, group, params, grads):
        """Muon update of this rank's same-shape matrices params, given their averaged gradients
        stacked as grads (len(params), R, C), which it overwrites."""
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        grad_list = list(grads.unbind(0))
        torch._foreach_lerp_(bufs, grad_list, 1 - momentum)
        if group["nesterov"]:
            torch._foreach_lerp_(grad_list, bufs, momentum)  # u = lerp(g, buf, momentum), in place
            updates = grads
        else:
            updates = torch.stack(bufs)
        ns_dtype = group.get("ns_dtype", "auto")
        ortho = zeropower_via_newtonschulz5(updates, group["ns_steps"],
                                            None if ns_dtype == "auto" else getattr(torch, ns_dtype)).to(params[0].dtype)
        rows, cols = params[0].shape
        scale = max(1.0, rows / cols) ** 0.5
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-lr * scale)
