"""
Helper program for tests/test_optim.py: a few training steps of a small model with nanochat's
AdamW + Muon, in one process or under torchrun, writing what the tests compare.

    python tests/dist_optim_worker.py --out DIR [--models tiny,gpt] [--steps 3] [--resume]
    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_optim_worker.py --out DIR

Every run draws the same global batch per step (a fixed seed); a rank takes its contiguous share of
the rows and averages the loss over them, so the mean of the rank gradients is the full-batch
gradient of a single process: the final parameters must agree up to float rounding.
Each rank writes DIR/rank<r>.pt = {model: {"init"/"params": {name: tensor}, "state": {name: {key:
tensor}}, "state_numel": int, "resume_diff": float|None}} for each model of --models (one launch serves several: torchrun's
start-up is the slow part). --resume additionally saves a checkpoint (every rank its optimizer
shard), rebuilds model and optimizers from it, takes one more step with both, and records the
largest parameter difference.
"""

import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.common import compute_cleanup, compute_init
from nanochat.optim import AdamW, Muon

VOCAB, DIM, N_BLOCKS = 67, 33, 3  # odd sizes: AdamW slices need padding, Muon buckets of 3 split 2+1


class TinyModel(nn.Module):
    """Embedding -> blocks of square (33, 33), tall (132, 33) and wide (33, 132) matrices -> head.

    A stand-in for GPT with the parameter kinds the optimizers meet: an embedding and a head with an
    odd number of elements, a scalar, and 2-D block weights in buckets of several shapes.
    """

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList([nn.ModuleDict(dict(
            q=nn.Linear(DIM, DIM, bias=False), k=nn.Linear(DIM, DIM, bias=False), v=nn.Linear(DIM, DIM, bias=False),
            fc=nn.Linear(DIM, 4 * DIM, bias=False), proj=nn.Linear(4 * DIM, DIM, bias=False),
        )) for _ in range(N_BLOCKS)])
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, idx, targets):
        x = self.wte(idx)  # (B, T, D)
        for b in self.blocks:
            h = F.rms_norm(x, (DIM,))
            x = x + b["v"](torch.tanh(b["q"](h)) * b["k"](h))
            x = x + b["proj"](F.relu(b["fc"](F.rms_norm(x, (DIM,)))).square())
        logits = self.head(F.rms_norm(x, (DIM,))) * self.logit_scale  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))

    def setup_optimizers(self):
        matrices = [p for b in self.blocks for p in b.parameters()]
        adamw = AdamW([dict(params=[self.wte.weight], lr=0.05),
                       dict(params=[self.head.weight], lr=0.01, weight_decay=0.1),
                       dict(params=[self.logit_scale], lr=0.02, weight_decay=0.0)],
                      betas=(0.8, 0.95), eps=1e-10, weight_decay=0.05)
        muon = Muon(matrices, lr=0.02, momentum=0.85, weight_decay=0.01)
        return [adamw, muon]


def build(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "tiny":
        model = TinyModel()
        return model, model.setup_optimizers(), VOCAB
    from nanochat.gpt import GPT, GPTConfig
    config = GPTConfig(sequence_len=16, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model = GPT(config)
    model.init_weights()
    return model, model.setup_optimizers(weight_decay=0.01), VOCAB


def train_step(model, optimizers, step, rank, world, vocab, batch=8, seq=16):
    """One step on this rank's rows of the global batch of `step`; Muon momentum warms up with step."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    rows = tokens[rank * batch // world: (rank + 1) * batch // world]
    loss = model(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())
    loss.backward()
    for group in optimizers[1].param_groups:
        group["momentum"] = 0.85 + 0.03 * step  # the caller-driven warm-up that Muon must honour
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)


def state_numel(optimizer):
    return sum(v.numel() for s in optimizer.state.values() for k, v in s.items() if k != "step")


def named_state(model, optimizers):
    """{param name: {state key: tensor}} of this rank (sharded: AdamW slices, Muon's owned matrices)."""
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: {k: v.clone() for k, v in s.items() if k != "step"}
            for opt in optimizers for p, s in opt.state.items() if s}


def run(kind, steps, resume, out, rank, world):
    model, optimizers, vocab = build(kind)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    for step in range(steps):
        train_step(model, optimizers, step, rank, world, vocab)
    resume_diff = None
    if resume:
        from nanochat.checkpoint_manager import load_checkpoint, save_checkpoint
        ckpt_dir = os.path.join(out, f"ckpt_{kind}")
        save_checkpoint(ckpt_dir, steps, model.state_dict(), [o.state_dict() for o in optimizers],
                        {"model_config": {}, "world_size": world}, rank=rank)
        model_state, optim_states, _ = load_checkpoint(ckpt_dir, load_optimizer=True, rank=rank)
        model2, optimizers2, _ = build(kind, seed=123)  # another init: everything must come from disk
        model2.load_state_dict(model_state)
        for opt, state in zip(optimizers2, optim_states):
            opt.load_state_dict(state)
        train_step(model, optimizers, steps, rank, world, vocab)
        train_step(model2, optimizers2, steps, rank, world, vocab)
        resume_diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), model2.parameters()))
    return {
        "init": init,
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "state": named_state(model, optimizers),
        "state_numel": sum(state_numel(o) for o in optimizers),
        "resume_diff": resume_diff,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", required=True, help="folder for rank<r>.pt (and the checkpoints of --resume)")
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny (the test model), gpt (a tiny nanochat GPT)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps to take")
    parser.add_argument("--resume", action="store_true", help="also check a checkpoint save/load round trip")
    args = parser.parse_args()

    info = compute_init("cpu")
    results = {kind: run(kind, args.steps, args.resume, args.out, info.rank, info.world_size)
               for kind in args.models.split(",")}
    os.makedirs(args.out, exist_ok=True)
    torch.save(results, os.path.join(args.out, f"rank{info.rank}.pt"))
    compute_cleanup()


if __name__ == "__main__":
    main()
