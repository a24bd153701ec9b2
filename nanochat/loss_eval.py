"""
Bits per byte (bpb): the model's loss in a unit that does not depend on the tokenizer.

    bpb = sum of the cross-entropy (nats) of the target tokens / (ln 2 * their total UTF-8 bytes)

Only targets with a byte length > 0 count, on both sides of the fraction: special tokens such as
<|bos|> (0 bytes in the token-bytes table) and ignored targets (-1) are left out. Under
torch.distributed both sums are all-reduced (SUM) before the division, so every rank returns the
bpb of all ranks' batches together.
"""

import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes):
    """bpb of `model` over the next `steps` batches of the iterator `batches`.

    batches: yields (inputs, targets), each (B, T) int64 on the model's device (extra items, such as a
    loader state, are ignored). token_bytes: int tensor (vocab_size,) on the same device.
    """
    device = token_bytes.device
    sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total_nats = torch.zeros((), dtype=sum_dtype, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    batch_iter = iter(batches)
    for _ in range(steps):
        inputs, targets = next(batch_iter)[:2]
        loss = model(inputs, targets, loss_reduction="none").view(-1)  # (B*T,) nats, 0 where target == -1
        targets = targets.view(-1)
        valid = targets >= 0
        num_bytes = torch.where(valid, token_bytes[targets.clamp(min=0)], 0)  # (B*T,)
        counted = num_bytes > 0
        total_nats += torch.where(counted, loss, 0.0).sum().to(sum_dtype)
        total_bytes += num_bytes.sum()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    total_bytes = total_bytes.item()
    assert total_bytes > 0, "the evaluated targets hold no bytes (only special or ignored tokens?)"
    return total_nats.item() / (math.log(2) * total_bytes)
