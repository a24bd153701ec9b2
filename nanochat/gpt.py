"""
The GPT model: a small, modern decoder-only transformer.

    token embedding -> RMSNorm -> n_layer x Block -> RMSNorm -> head -> 15*tanh(logits/15)
    Block: x + Attention(RMSNorm(x)), then x + MLP(RMSNorm(x))

- RMSNorm has no parameters (F.rms_norm); no Linear has a bias.
- Positions come only from rotary embeddings (RoPE, Su et al. 2021), read from a precomputed
  cos/sin buffer that is 10x the training sequence length so that decoding may run past it.
- QK-norm: queries and keys are RMS-normalised after the rotation, which keeps attention logits
  bounded without a learned temperature.
- Grouped-query attention (Ainslie et al. 2023): n_kv_head divides n_head, each key/value head
  serves n_head // n_kv_head query heads; n_kv_head == 1 is multi-query attention.
- Attention is F.scaled_dot_product_attention (flash kernels on CUDA, a fused kernel on CPU).
- The MLP is 4x wide with ReLU^2 (So et al. 2021, "Primer").
- The input embedding and the output head are separate matrices (untied).
- Logits are soft-capped at 15 (15 * tanh(logits / 15)), computed in fp32.
- The training loss on CPU in fp32 goes through SoftcapCrossEntropy, one autograd node for the
  head matmul, soft-cap and cross-entropy (about 1.8x faster there than the plain ops, which are
  kept as softcap_cross_entropy_reference for CUDA/MPS, where torch.compile fuses them).

Initialisation (init_weights):
    embedding           N(0, 1)                 the RMSNorm after it fixes the scale anyway
    q, k, v, c_fc       N(0, 1/fan_in)          unit-variance outputs for unit-variance inputs
    attn/mlp c_proj     zeros                   every block starts as the identity
    head                N(0, 0.001^2)           initial logits ~0, loss ~ln(vocab_size)

Precision: the parameters are fp32. bf16 autocast and torch.compile on CUDA are the caller's
choice (base_train wraps the forward in autocast); on CPU and MPS everything runs in fp32.

Inference passes a KVCache (nanochat/kv_cache.py) whose rows each have their own length: the new
tokens of row b go to positions lengths[b].., the rotary tables are sliced (rows at one position)
or gathered per row, and each query attends only to its row's filled keys (a boolean mask when
the rows differ). `forward_last` is the engine's step: logits at each row's last real token only,
for padded prefill batches and for decode. Without autograd (no_grad / inference_mode) the
attention takes a shorter path with the same results: one q/k/v matmul against a cached
concatenation of the three weights, and the rotation and RMSNorm of q and k in one go.

Usage:
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_kv_head=4, n_embd=256))
    model.init_weights()
    loss = model(idx, targets)          # idx, targets: (B, T) int64; targets == -1 are ignored
    logits = model(idx)                 # (B, T, vocab_size) fp32
    logits = model.forward_last(idx, kv_cache, num_tokens)   # (B, vocab_size), inference
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.optim import steps_taken

SOFTCAP = 15.0       # logit soft-cap (as in Gemma 2); keeps early training stable
ROTARY_BASE = 10000  # RoPE base frequency
ROTARY_HORIZON = 10  # the rotary tables cover ROTARY_HORIZON x sequence_len positions
SWEEP_BLOCK_ELEMENTS = 1 << 24  # logits per block in the sweeps: few, large ops (see SoftcapCrossEntropy)


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6      # query heads
    n_kv_head: int = 6   # key/value heads (GQA); must divide n_head
    n_embd: int = 768    # width; head dim = n_embd // n_head


def norm(x):
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    """Rotate pairs (x[..., i], x[..., i + D/2]) by position-dependent angles.

    x: (B, T, H, D); cos, sin: (1, T, 1, D/2), already sliced to the positions of x.
    """
    d = x.shape[-1] // 2
    if cos.dtype != x.dtype:  # bf16 under autocast
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat([y1, y2], dim=-1)


def apply_rotary_emb_full(x, cos_full, sin_signed):
    """apply_rotary_emb with full-width tables, in three ops (inference, where per-op overhead
    dominates): cos_full = [cos, cos], sin_signed = [sin, -sin], both (..., D); roll by D/2
    swaps the halves, so y = [x1 cos + x2 sin, x2 cos - x1 sin] as in apply_rotary_emb."""
    if cos_full.dtype != x.dtype:
        cos_full, sin_signed = cos_full.to(x.dtype), sin_signed.to(x.dtype)
    return torch.addcmul(x * cos_full, x.roll(x.size(-1) // 2, dims=-1), sin_signed)


def softcap_cross_entropy_reference(x, weight, targets, reduction="mean"):
    """The head and loss in plain ops: soft-capped fp32 logits, then F.cross_entropy (ignore -1).
    x: (N, C), weight: (V, C), targets: (N,). Used on CUDA/MPS, where torch.compile fuses it."""
    logits = F.linear(x, weight).float()
    logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
    if reduction == "mean":  # sum / n_valid with n_valid >= 1: a batch with every target -1 has loss 0, not NaN
        n_valid = (targets != -1).sum().clamp(min=1)
        return F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum") / n_valid
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)


class SoftcapCrossEntropy(torch.autograd.Function):
    """The head matmul, soft-cap and cross-entropy as one autograd node, for fp32 on CPU.

    Why: in plain ops (softcap_cross_entropy_reference) the (N, V) logits go through ~20 memory
    passes (div, tanh, mul, log_softmax, the one-hot fill of nll_loss, and their backwards), a
    third of a CPU training step at vocab 32768. Here:
      - the logits are computed transposed, zT = W @ x^T of shape (V, N): MKL runs this product
        faster than x @ W^T on our 2-core AMD EPYC dev machine (N=2048, C=256, V=32768, one
        thread: 50-64 vs 36-48 GFLOP/s), and the two backward products from (V, N) are as fast
        as from (N, V) (58-59 vs 51-66 GFLOP/s);
      - zT is then turned, in place, into d loss / d logits in two sweeps over blocks of rows
        (the softmax needs the column sums before the gradient). The blocks are large
        (SWEEP_BLOCK_ELEMENTS): every op is an OpenMP parallel region ending in a barrier, and on
        a shared machine a descheduled thread makes each barrier cost a time slice; measured
        with 2 threads under load, 1 MB blocks took 25-29 s for the forward, 64 MB blocks 2.8 s.
        With g = sigmoid(2z / 15) the soft-capped logit is 15 tanh(z / 15) = 30 g - 15, and
        its derivative is 1 - tanh^2 = 4 g (1 - g); sigmoid is 3x cheaper than tanh on this CPU,
        and 4 g (1 - g) does not cancel catastrophically where |tanh| is near 1. The constant
        -15 cancels in the softmax, so with e = exp(30 g) (<= e^30: no overflow, and no
        max-subtraction needed, since the soft-cap bounds every logit):
            sweep 1:  g = sigmoid(2 z / 15),  s_j = sum_v e_vj
            loss_j = log s_j - 30 g[target_j, j]
            sweep 2:  dz = e / s * 4 g (1 - g), then minus 4 g (1 - g) at the targets
        (e is recomputed in sweep 2 rather than stored: cheaper than another (V, N) buffer).
    Backward is then the two matmuls, with the per-token scale (grad_output, 1/n_valid for the
    mean, 0 for ignored targets) applied to the small (N, C) operands instead of to dz.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, reduction):
        losses, dzT, valid, n_valid = _fused_softcap_cross_entropy(x, weight, targets, need_grad=True)
        ctx.reduction = reduction
        ctx.save_for_backward(x, weight, dzT, valid, n_valid)
        return _reduce(losses, n_valid, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, dzT, valid, n_valid = ctx.saved_tensors
        # d loss / d logits for token j is grad_output (per token for "none") times dz[:, j]
        scale = valid.to(x.dtype) * (grad_output / n_valid if ctx.reduction == "mean" else grad_output)
        scale = scale.unsqueeze(1)  # (N, 1)
        grad_x = (dzT.t() @ weight).mul_(scale) if ctx.needs_input_grad[0] else None  # (N, C)
        grad_w = dzT @ (x * scale) if ctx.needs_input_grad[1] else None               # (V, C)
        return grad_x, grad_w, None, None


def _fused_softcap_cross_entropy(x, weight, targets, need_grad):
    """The sweeps of SoftcapCrossEntropy. Returns (losses (N,), dzT (V, N) or None, valid (N,) bool,
    n_valid): n_valid is clamped to 1, so a batch whose targets are all -1 has loss 0 and zero
    gradients (0 / 0 would be NaN, and 0 * (1 / 0) in the backward wrote NaN into every upstream
    gradient; F.cross_entropy gives zero gradients there too)."""
    N, V = x.size(0), weight.size(0)
    zT = weight @ x.t()  # (V, N) logits, transposed
    rows = min(V, max(1, SWEEP_BLOCK_ELEMENTS // N))  # the scratch block is never larger than the logits
    scratch = torch.empty(rows, N, dtype=zT.dtype, device=zT.device)
    sum_exp = torch.zeros(N, dtype=zT.dtype, device=zT.device)
    for r0 in range(0, V, rows):
        zb = zT[r0:r0 + rows]
        e = scratch[:zb.size(0)]
        zb.mul_(2.0 / SOFTCAP).sigmoid_()  # zb = g
        sum_exp += torch.mul(zb, 2.0 * SOFTCAP, out=e).exp_().sum(dim=0)
    valid = targets != -1
    safe_targets = targets.clamp(min=0).unsqueeze(0)  # (1, N)
    g_target = zT.gather(0, safe_targets).squeeze(0)  # (N,)
    losses = (sum_exp.log() - 2.0 * SOFTCAP * g_target).masked_fill_(~valid, 0.0)
    if need_grad:
        scale = 4.0 / sum_exp
        for r0 in range(0, V, rows):
            zb = zT[r0:r0 + rows]
            e = scratch[:zb.size(0)]
            torch.mul(zb, 2.0 * SOFTCAP, out=e).exp_().mul_(scale)  # e = 4 * softmax
            torch.addcmul(zb, zb, zb, value=-1.0, out=zb).mul_(e)   # zb = 4 p g (1 - g)
        zT.scatter_add_(0, safe_targets, (-4.0 * g_target * (1.0 - g_target)).unsqueeze(0))  # - onehot * 4g(1-g)
    n_valid = valid.sum().clamp_(min=1)
    return losses, (zT if need_grad else None), valid, n_valid


def _reduce(losses, n_valid, reduction):
    if reduction == "mean":
        return losses.sum() / n_valid
    if reduction == "sum":
        return losses.sum()
    return losses


def fused_softcap_cross_entropy(x, weight, targets, reduction="mean"):
    """SoftcapCrossEntropy when autograd records, else the loss alone: the gradient sweep (and its
    (V, N) buffer) is skipped under torch.no_grad / inference_mode, as in evaluation. (Inside
    Function.forward grad mode is always off and ctx.needs_input_grad only says whether the inputs
    require grad, so the check has to happen here, before apply.)"""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return SoftcapCrossEntropy.apply(x, weight, targets, reduction)
    losses, _, _, n_valid = _fused_softcap_cross_entropy(x, weight, targets, need_grad=False)
    return _reduce(losses, n_valid, reduction)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        assert config.n_kv_head >= 1 and config.n_head % config.n_kv_head == 0, \
            f"n_kv_head ({config.n_kv_head}) must divide n_head ({config.n_head})"
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)

    def _fused_qkv_weight(self):
        """The q, k, v weights concatenated, ((H + 2 Hkv) D, C), cached for inference and rebuilt
        when any of them changes in place; the parameters and state_dict keys stay as they are."""
        ws = (self.c_q.weight, self.c_k.weight, self.c_v.weight)
        if torch.compiler.is_compiling():  # inside a compiled graph the concat is part of it; a cache key
            return torch.cat(ws, dim=0)    # (the step count) would be a guard that recompiles after every step
        key = tuple((w.data_ptr(), w._version) for w in ws) + (steps_taken(),)  # see nanochat.optim.steps_taken
        if getattr(self, "_qkv_key", None) != key:
            self._qkv_weight, self._qkv_key = torch.cat([w.detach() for w in ws], dim=0), key
        return self._qkv_weight

    def forward(self, x, cos, sin, kv_cache):
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        if torch.is_grad_enabled():
            # training: three projections; cos, sin are the half-width tables (see GPT._trunk)
            q = norm(apply_rotary_emb(self.c_q(x).view(B, T, H, D), cos, sin))
            k = norm(apply_rotary_emb(self.c_k(x).view(B, T, Hkv, D), cos, sin))
            v = self.c_v(x).view(B, T, Hkv, D)
        else:
            # inference, where the many small ops of a decode step cost more than their FLOPs: one
            # projection, then the rotation and the norm of the q and k heads together; cos, sin
            # are the full-width tables of apply_rotary_emb_full
            qkv = F.linear(x, self._fused_qkv_weight()).view(B, T, H + 2 * Hkv, D)
            qk = norm(apply_rotary_emb_full(qkv[:, :, :H + Hkv], cos, sin))  # (B, T, H + Hkv, D)
            q, k, v = qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + Hkv:]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T, H, D) -> (B, H, T, D)

        if kv_cache is None:
            # training / full recompute: plain causal attention over the T tokens
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)
        else:
            # write this pass's keys/values at each row's own positions; read keys [0, Tk) of every
            # row, Tk = the longest row after the write. blocked: None when every row starts at the
            # same position, else (B, 1, T, Tk) bool, True where query i of row b must not look
            # (key j > start_b + i: the future, or positions that row has not filled)
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)  # (B, Hkv, Tk, D)
            pos, blocked = kv_cache.pass_start, kv_cache.pass_blocked
            Tk = k.size(2)
            if blocked is None and pos == 0:
                # prefill from empty: the ordinary causal mask
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)
            elif T == 1 or blocked is not None:
                # explicit scores: two small batched matmuls. At one query per row they beat the
                # fused SDPA kernel (its per-call set-up dominates; depth 4, batch 8 decode on CPU:
                # 24 vs 25 ms/step on 1 thread, 84-88 vs 207-225 ms on 2 threads of a loaded
                # machine), and with rows at different positions the mask is applied by
                # masked_fill, which also replaces whatever the blocked scores were: a blocked
                # position contributes exactly 0 (exp(-inf) = 0, times a finite value).
                # GQA: fold the query heads of each group into the rows, (B, H, T, D) ->
                # (B, Hkv, H/Hkv * T, D), so the kv heads are used without repeating; query head h
                # belongs to kv head h // (H/Hkv), as in SDPA's enable_gqa
                G = H // Hkv
                qg = q.reshape(B, Hkv, G * T, D)
                att = torch.matmul(qg, k.transpose(-2, -1)).mul_(D ** -0.5)  # (B, Hkv, G*T, Tk)
                if blocked is not None:  # (B, 1, T, Tk) -> (B, 1, G*T, Tk), query heads major
                    att.masked_fill_(blocked.expand(B, G, T, Tk).reshape(B, 1, G * T, Tk), float("-inf"))
                y = torch.matmul(att.softmax(dim=-1), v).view(B, H, T, D)
            else:
                # a chunk of T tokens after a non-empty prefix, every row at the same start: query
                # i (at start + i) sees keys <= start + i (SDPA's is_causal aligns the mask
                # top-left, which would be wrong here)
                allowed = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(diagonal=pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=Hkv != H)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        if torch.is_grad_enabled():
            return self.c_proj(F.relu(self.c_fc(x)).square())
        return self.c_proj(torch.relu_(self.c_fc(x)).square_())  # inference: in place, no temporaries


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache):
        x = x + self.attn(norm(x), cos, sin, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # rotary tables: derived, not learned, so not saved in checkpoints (persistent=False)
        self.rotary_seq_len = ROTARY_HORIZON * config.sequence_len
        cos, sin = self._precompute_rotary(self.rotary_seq_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """The init scheme in the module docstring. Call after construction, or after
        `to_empty(device=...)` when the model was built on the meta device."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=module.in_features ** -0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=1.0)
        for block in self.transformer.h:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        # buffers are left uninitialised by to_empty, so recompute them on the current device
        cos, sin = self._precompute_rotary(self.rotary_seq_len, self.config.n_embd // self.config.n_head,
                                           device=self.lm_head.weight.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    @staticmethod
    def _precompute_rotary(seq_len, head_dim, device=None):
        """cos, sin: (1, seq_len, 1, head_dim/2) fp32, broadcastable against (B, T, H, D/2)."""
        assert head_dim % 2 == 0, f"rotary embeddings need an even head dim, got {head_dim}"
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)  # (seq_len, head_dim/2)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def get_device(self):
        return self.transformer.wte.weight.device

    def num_params(self):
        """Number of parameters (every tensor in self.parameters())."""
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self):
        """FLOPs per token of one training step (forward + backward).

        6 per parameter for the matmuls (2 forward, 4 backward), the embedding lookup excluded,
        plus attention scores and values: 12 * n_layer * n_head * head_dim * sequence_len
        (2 matmuls of T x D per query per head, x2 for multiply-add, x3 for forward + backward,
        counted at the full context as is customary, e.g. the PaLM paper's appendix B).
        """
        cfg = self.config
        n_matmul = self.num_params() - self.transformer.wte.weight.numel()
        head_dim = cfg.n_embd // cfg.n_head
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_head * head_dim * cfg.sequence_len

    def setup_optimizers(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0,
                         adam_betas=(0.8, 0.95)):
        """[AdamW (embedding, head, any non-matrix param), Muon (the 2-D weights of the blocks)].

        The AdamW learning rates are tuned at width 768 and scaled by (n_embd / 768) ** -0.5.
        Every param group records its starting lr as "initial_lr" for the caller's schedule.
        """
        from nanochat.optim import AdamW, Muon  # imported here: nanochat.optim is only needed for training

        matrix_params, other_block_params = [], []
        for p in self.transformer.h.parameters():
            (matrix_params if p.ndim == 2 else other_block_params).append(p)
        embedding_params = list(self.transformer.wte.parameters())
        head_params = list(self.lm_head.parameters())
        n_grouped = len(matrix_params) + len(other_block_params) + len(embedding_params) + len(head_params)
        assert n_grouped == len(list(self.parameters())), "every parameter must belong to exactly one optimizer"

        lr_scale = (self.config.n_embd / 768) ** -0.5
        adam_groups = [
            dict(params=head_params, lr=unembedding_lr * lr_scale),
            dict(params=embedding_params, lr=embedding_lr * lr_scale),
        ]
        if other_block_params:  # scalars/vectors, should a future block have any
            adam_groups.append(dict(params=other_block_params, lr=unembedding_lr * lr_scale))
        adamw = AdamW(adam_groups, lr=embedding_lr * lr_scale, betas=adam_betas, eps=1e-10, weight_decay=weight_decay)
        muon = Muon(matrix_params, lr=matrix_lr, momentum=0.95, weight_decay=weight_decay)
        optimizers = [adamw, muon]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    def _head(self, x):
        """(B, T, C) -> (B, T, V) logits, before the soft-cap.

        Decoding on CPU (one position per row, no autograd) is a matrix-vector product over the
        whole head, and MKL's speed there depends on the operand layout. Measured on the 2-core
        dev box (V=32768, C=256, ms per call; F.linear / x @ W^T-copy / W @ x^T):
        1 row 5.0 / 2.0 / 4.9; 2 rows 8.0 / 2.5 / 1.6; 8 rows 10.4 / 12.1 / 3.0. So one row goes
        through a cached contiguous (C, V) copy of the head, several rows through W @ x^T.
        """
        B, T, C = x.shape
        if x.device.type != "cpu" or x.dtype != torch.float32 or T != 1 or torch.is_grad_enabled():
            return self.lm_head(x)
        W = self.lm_head.weight  # (V, C)
        if B > 1:
            return (W @ x.view(B, C).t()).t().view(B, 1, -1)  # (V, B) -> (B, 1, V)
        key = (W.data_ptr(), W._version, steps_taken())  # stale once the weights change in place (optim.steps_taken)
        if getattr(self, "_head_t_key", None) != key:
            self._head_t, self._head_t_key = W.detach().t().contiguous(), key  # (C, V)
        return (x.view(1, C) @ self._head_t).view(1, 1, -1)

    def hidden_states(self, idx, kv_cache=None):
        """(B, T) token ids -> the final normalised hidden states (B, T, C), no head: for scorers
        that need the logits at a few positions only (apply `logits_from_hidden` to those).
        With a KVCache, its B rows are extended by the T tokens, as in forward."""
        return self._trunk(idx, kv_cache)

    def logits_from_hidden(self, x):
        """(..., C) hidden states -> soft-capped fp32 logits (..., V), as forward(idx) computes them."""
        logits = self.lm_head(x).float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)

    def _rotary(self, T, kv_cache):
        """cos, sin for T new tokens: (1, T, 1, D/2) slices when every row starts at the same
        position (always without a cache), else gathered per row, (B, T, 1, D/2)."""
        start, end, positions = (0, T, None) if kv_cache is None else \
            (kv_cache.pass_start, kv_cache.pass_end, kv_cache.pass_positions)
        assert end <= self.cos.size(1), f"position {end} is past the rotary tables ({self.cos.size(1)} positions)"
        if positions is None:
            return self.cos[:, start:start + T], self.sin[:, start:start + T]
        return self.cos[0, :, 0][positions].unsqueeze(2), self.sin[0, :, 0][positions].unsqueeze(2)

    def _trunk(self, idx, kv_cache):
        """(B, T) ids -> the final normalised hidden states (B, T, C); with a KVCache, the cache's B
        rows are extended by the T tokens (row b's tokens at positions lengths[b] ...)."""
        B, T = idx.shape
        if kv_cache is not None:
            kv_cache.begin_pass(T, idx.device)
        cos, sin = self._rotary(T, kv_cache)
        if not torch.is_grad_enabled():  # the attention's inference path takes full-width tables
            cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, -sin], dim=-1)
        x = norm(self.transformer.wte(idx))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cos, sin, kv_cache)
        return norm(x)

    @staticmethod
    def softcap(logits):
        """Raw fp32 logits -> soft-capped, SOFTCAP * tanh(logits / SOFTCAP), in place."""
        return logits.div_(SOFTCAP).tanh_().mul_(SOFTCAP)

    @torch.no_grad()
    def forward_last(self, idx, kv_cache, num_tokens=None, softcap=True):
        """Inference through a KVCache whose rows are at their own positions: the engine's step.

        idx: (B, T) new tokens per row; num_tokens: None (every token is real) or a list of B
        counts, row b's first num_tokens[b] tokens real and the rest padding (any id; a padded
        batch of prompts of different lengths, prefilled from an empty cache). The padding's
        keys/values are written after the real ones, where nothing attends until they are
        overwritten; each row's length then grows by its real count only.
        Returns the soft-capped fp32 logits at each row's last real token, (B, V): the head runs
        on B positions, not B * T. softcap=False returns them before the cap (GPT.softcap applies
        it): the cap is increasing, so greedy decoding can take the argmax of these and skip the
        tanh over (B, V), 7% of a batch-16 decode step on the dev box.
        """
        B, T = idx.shape
        x = self._trunk(idx, kv_cache)  # (B, T, C)
        if num_tokens is None:
            x = x[:, -1:]  # (B, 1, C)
        else:
            assert len(num_tokens) == B and all(1 <= n <= T for n in num_tokens), \
                f"num_tokens must be B={B} counts in [1, {T}], got {num_tokens}"
            last = torch.tensor(num_tokens, device=idx.device) - 1
            x = x[torch.arange(B, device=idx.device), last].unsqueeze(1)  # (B, 1, C)
            kv_cache.lengths -= T - torch.tensor(num_tokens)  # the padding does not count
        logits = self._head(x).float().view(B, -1)
        return self.softcap(logits) if softcap else logits

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """idx: (B, T) token ids. Returns the cross-entropy loss when targets (B, T) are given
        (targets == -1 are ignored; loss_reduction "mean" | "sum" | "none" as in F.cross_entropy),
        else the soft-capped logits (B, T, vocab_size) in fp32."""
        B, T = idx.shape
        x = self._trunk(idx, kv_cache)  # (B, T, C)
        if targets is None:
            logits = self._head(x).float()  # soft-cap in fp32: tanh saturates badly in bf16
            return SOFTCAP * torch.tanh(logits / SOFTCAP)
        assert loss_reduction in ("mean", "sum", "none"), f"unknown loss_reduction {loss_reduction!r}"
        x, targets = x.view(B * T, -1), targets.reshape(B * T)
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            return fused_softcap_cross_entropy(x, self.lm_head.weight, targets, loss_reduction)
        return softcap_cross_entropy_reference(x, self.lm_head.weight, targets, loss_reduction)
