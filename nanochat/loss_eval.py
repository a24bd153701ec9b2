"""
Bits per byte (bpb): the model's loss in a unit that does not depend on the tokenizer; the one home
of it for every stage (base_train, base_loss, mid_train, chat_sft).

    bpb = sum of the cross-entropy (nats) of the target tokens / (ln 2 * their total UTF-8 bytes)

Only targets with a byte length > 0 count, on both sides of the fraction: special tokens such as
<|bos|> or <|assistant_end|> (0 bytes in the token-bytes table) and ignored targets (-1) are left
out. The mean loss (evaluate_loss_bpb) is over every target that is not -1, special ones included.
Sums are float64 (float32 on MPS, which has none). Under torch.distributed the sums are
all-reduced before the division, so every rank returns the value of all ranks' batches together.
"""

import math

import torch
import torch.distributed as dist


def _loss_sums(model, batches, steps, token_bytes):
    """[nats of the valid targets, valid targets, nats of the targets with bytes, their bytes] over
    the next `steps` batches, all ranks together."""
    device = token_bytes.device
    sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    stats = torch.zeros(4, dtype=sum_dtype, device=device)
    batch_iter = iter(batches)
    for _ in range(steps):
        inputs, targets = next(batch_iter)[:2]  # extra items (a loader state) are ignored
        loss = model(inputs, targets, loss_reduction="none").view(-1).to(sum_dtype)  # (B*T,) nats, 0 where -1
        targets = targets.view(-1)
        valid = targets >= 0
        num_bytes = torch.where(valid, token_bytes[targets.clamp(min=0)], 0)  # (B*T,)
        stats += torch.stack([loss.sum(), valid.sum().to(sum_dtype), torch.where(num_bytes > 0, loss, 0.0).sum(),
                              num_bytes.sum().to(sum_dtype)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats.tolist()


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes):
    """bpb of `model` over the next `steps` batches of the iterable `batches`.

    batches: yields (inputs, targets), each (B, T) int64 on the model's device (extra items, such as a
    loader state, are ignored). token_bytes: int tensor (vocab_size,) on the same device.
    """
    _, _, byte_nats, nbytes = _loss_sums(model, batches, steps, token_bytes)
    assert nbytes > 0, "the evaluated targets hold no bytes (only special or ignored tokens?)"
    return byte_nats / (math.log(2) * nbytes)


@torch.no_grad()
def evaluate_loss_bpb(model, batches, token_bytes):
    """(mean loss in nats per valid target, bpb) of `model` over every batch of the list `batches`
    (the chat stages: targets are -1 outside the assistant's tokens)."""
    nats, count, byte_nats, nbytes = _loss_sums(model, batches, len(batches), token_bytes)
    assert count > 0 and nbytes > 0, "the validation batches hold no trained targets"
    return nats / count, byte_nats / (math.log(2) * nbytes)
