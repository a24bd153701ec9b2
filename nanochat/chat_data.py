"""
Conversation batches for the chat stages (mid-training and SFT): a task (tasks/, usually a
TaskMixture) -> rendered conversations -> (inputs, targets) on the device, with the training mask
applied: targets are -1 wherever the tokenizer's mask is 0 (<|bos|>, user turns, <|assistant_start|>,
tool outputs), so the loss is taken on the assistant's own tokens only.

    loader = mid_data_loader_with_state(tokenizer, task, B, T, device=device)        # packed rows
    loader = sft_data_loader_with_state(tokenizer, task, B, T, device=device)        # padded rows
    inputs, targets, state = next(loader)       # (B, T) / (B, W <= T) int64; state: resume position
    loader = sft_data_loader_with_state(..., resume_state=state)                     # goes on exactly
    batches, short = load_val_batches(tokenizer, task, B, T, max_batches, packed=True, device=device)
    loss, n_targets, n_tokens, state = masked_loss_step(model, loader, micro_steps, autocast, device)

Spreading and epochs. Each epoch visits the task's items in a fresh seeded order (random.Random
(f"{seed}:{epoch}")); position i of that order belongs to rank i % world_size. After a rank's last
item a new epoch begins (logged). Ranks may get one item more or less than others.

Mid-training rows ("packed"): a rank's items are rendered a pool of `pool_size` conversations at a
time (each cut to T + 1 tokens) and packed into rows of T + 1 tokens with the pretraining loader's
BOS-aligned best fit (nanochat.dataloader.pack_bos_bestfit: whole conversations, longest first;
only the last one of a row is cropped, its rest dropped; a pool's last, unfinished row is dropped).
Token and mask travel through the packer together as one int, id * 2 + mask. Every batch is (B, T).

SFT rows ("padded"): one conversation per row, cut to T + 1 tokens (a longer conversation is
truncated, never dropped), B rows per batch, padded to the longest row of the batch (so W <= T);
pad positions are <|bos|> in the inputs and -1 in the targets. A row may hold no trained token at all
(a prompt longer than T): its targets are all -1, which the loss must tolerate.

Exact resume. The state after a batch says where the next row comes from:
    packed: {"epoch": e, "pool": p, "rows": r, ...}   r rows of pool p were used
    padded: {"epoch": e, "index": i, ...}             i items of this rank's share were used
plus the world size, item count, seed and pool size, which a resume must match (else ValueError).
A loader started with resume_state yields exactly the batches the uninterrupted loader yields after it.
NOT covered: the task must give the same items as before (same data files, same tokenizer).

Validation (load_val_batches): a rank's share is read once, in the task's own order (no shuffle, no
second epoch), so no item is scored twice; when it holds fewer batches than asked, those are
returned and a log line says so. Ranks may hold different numbers of batches: the evaluation sums
over all ranks with a single all-reduce at the end.

Tests: uv run pytest tests/test_chat_data.py
"""

import math
import random

import torch
import torch.distributed as dist

from nanochat.common import get_rank, get_world_size, print0, setup_logging
from nanochat.dataloader import pack_bos_bestfit

DEFAULT_POOL_SIZE = 256  # conversations per packing pool (per rank)


def render_row(tokenizer, conversation, max_tokens):
    """(ids, mask) of one conversation, cut to max_tokens."""
    return tokenizer.render_conversation(conversation, max_tokens=max_tokens)


def to_inputs_targets(ids, mask):
    """A row of n token ids and its mask -> inputs (n - 1,) and targets (n - 1,) lists, target -1
    where the mask of the predicted token is 0."""
    return ids[:-1], [t if m else -1 for t, m in zip(ids[1:], mask[1:])]


def epoch_order(num_items, epoch, seed):
    """The order in which an epoch visits items 0..num_items-1 (the same on every rank)."""
    order = list(range(num_items))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def rank_share(num_items, epoch, seed, rank, world_size):
    """The items of one rank in one epoch, in order: positions rank, rank + world_size, ... of the epoch's order."""
    return epoch_order(num_items, epoch, seed)[rank::world_size]


def _to_device(inputs, targets, device):
    """(B, W) CPU tensors -> the device (pinned and non-blocking on CUDA)."""
    if torch.device(device).type == "cuda":
        return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)


def _check_resume(resume_state, expected, what):
    for key, value in expected.items():
        if resume_state.get(key) != value:
            raise ValueError(f"cannot resume the {what} loader: it was saved with {key}={resume_state.get(key)!r}, "
                             f"now {key}={value!r} (another number of ranks, another mixture or another pool size?); "
                             f"resume with the run's own flags and data")


# -----------------------------------------------------------------------------
# mid-training: packed rows


def _packed_rows(tokenizer, items, T, pool_size, first_pool=0, skip=0):
    """(row of T + 1 codes id * 2 + mask, pool index, rows used in that pool) over `items`, a sequence
    of conversations read in slices of pool_size; starts at pool first_pool after its first `skip` rows."""
    for p in range(first_pool, math.ceil(len(items) / pool_size)):
        docs = []
        for conversation in items[p * pool_size:(p + 1) * pool_size]:
            ids, mask = render_row(tokenizer, conversation, T + 1)
            docs.append([2 * i + m for i, m in zip(ids, mask)])  # one int per token: id and mask together
        for r, row in enumerate(pack_bos_bestfit(docs, T + 1), start=1):
            if p > first_pool or r > skip:
                yield row, p, r


class _RankItems:
    """The items of one rank in one epoch, as a lazily indexed, sliceable sequence."""

    def __init__(self, task, indices):
        self.task, self.indices = task, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        assert isinstance(key, slice), "_RankItems is read in slices"
        return [self.task[i] for i in self.indices[key]]


def _rows_to_batch(rows):
    """B packed rows of (id, mask) codes -> (inputs, targets), each (B, T), on the CPU."""
    codes = torch.tensor(rows, dtype=torch.long)  # (B, T + 1)
    ids, mask = codes >> 1, codes & 1
    inputs = ids[:, :-1].contiguous()
    targets = torch.where(mask[:, 1:].bool(), ids[:, 1:], -1).contiguous()
    return inputs, targets


def mid_data_loader_with_state(tokenizer, task, B, T, device="cpu", resume_state=None, seed=0,
                               pool_size=DEFAULT_POOL_SIZE):
    """Yield (inputs, targets, state) forever: packed rows of the task's conversations, (B, T) int64."""
    assert B >= 1 and T >= 1 and pool_size >= 1, f"need B, T, pool_size >= 1, got {B}, {T}, {pool_size}"
    rank, world_size = get_rank(), get_world_size()
    num_items = len(task)
    if num_items < world_size:
        raise ValueError(f"the mixture holds {num_items} conversations, fewer than the {world_size} ranks")
    fixed = dict(world_size=world_size, num_items=num_items, pool_size=pool_size, seed=seed)
    epoch, pool, skip = 1, 0, 0
    if resume_state is not None:
        _check_resume(resume_state, fixed, "mid-training")
        epoch, pool, skip = resume_state["epoch"], resume_state["pool"], resume_state["rows"]
    log = setup_logging()

    def rows():
        nonlocal epoch, pool, skip
        while True:
            mine = _RankItems(task, rank_share(num_items, epoch, seed, rank, world_size))
            made = 0
            for row, p, r in _packed_rows(tokenizer, mine, T, pool_size, pool, skip):
                made += 1
                yield row, dict(fixed, epoch=epoch, pool=p, rows=r, items_done=min((p + 1) * pool_size, len(mine)),
                                items=len(mine))
            if made == 0 and pool == 0 and skip == 0:  # a whole epoch without a row: it would loop forever
                raise ValueError(f"the mixture's {len(mine)} conversations on rank {rank} do not fill one row of "
                                 f"{T + 1} tokens; lower the sequence length or add data")
            epoch, pool, skip = epoch + 1, 0, 0
            log.info(f"mid-training loader (rank {rank}): used all {len(mine)} of its conversations; starting epoch {epoch}")

    row_stream = rows()
    while True:
        batch = [next(row_stream) for _ in range(B)]
        inputs, targets = _rows_to_batch([row for row, _ in batch])
        yield (*_to_device(inputs, targets, device), batch[-1][1])


# -----------------------------------------------------------------------------
# SFT: one conversation per row, padded


def _padded_batch(tokenizer, conversations, T):
    """Conversations -> (inputs, targets) (B, W) on the CPU: each cut to T + 1 tokens, padded to the longest."""
    rows = [to_inputs_targets(*render_row(tokenizer, c, T + 1)) for c in conversations]
    width = max(len(inputs) for inputs, _ in rows)  # <= T
    pad = tokenizer.get_bos_token_id()
    inputs = torch.full((len(rows), width), pad, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, (x, y) in enumerate(rows):
        inputs[b, :len(x)] = torch.tensor(x, dtype=torch.long)
        targets[b, :len(y)] = torch.tensor(y, dtype=torch.long)
    return inputs, targets


def sft_data_loader_with_state(tokenizer, task, B, T, device="cpu", resume_state=None, seed=0):
    """Yield (inputs, targets, state) forever: B conversations per batch, one per row, (B, W <= T) int64."""
    assert B >= 1 and T >= 1, f"need B, T >= 1, got {B}, {T}"
    rank, world_size = get_rank(), get_world_size()
    num_items = len(task)
    if num_items < world_size:
        raise ValueError(f"the mixture holds {num_items} conversations, fewer than the {world_size} ranks")
    fixed = dict(world_size=world_size, num_items=num_items, seed=seed)
    epoch, index = 1, 0
    if resume_state is not None:
        _check_resume(resume_state, fixed, "SFT")
        epoch, index = resume_state["epoch"], resume_state["index"]
    log = setup_logging()
    mine = rank_share(num_items, epoch, seed, rank, world_size)
    while True:
        conversations = []
        while len(conversations) < B:
            if index == len(mine):
                epoch, index = epoch + 1, 0
                mine = rank_share(num_items, epoch, seed, rank, world_size)
                log.info(f"SFT loader (rank {rank}): used all of its conversations; starting epoch {epoch}")
            conversations.append(task[mine[index]])
            index += 1
        inputs, targets = _padded_batch(tokenizer, conversations, T)
        yield (*_to_device(inputs, targets, device), dict(fixed, epoch=epoch, index=index, items=len(mine)))


# -----------------------------------------------------------------------------
# validation and the loss


def load_val_batches(tokenizer, task, B, T, max_batches, packed, device="cpu", pool_size=DEFAULT_POOL_SIZE):
    """Up to max_batches (inputs, targets) of this rank's share of `task` (items rank::world_size, in
    order), each item read at most once; packed rows (mid-training) or padded ones (SFT).
    Returns (batches, short): short is True when the share held fewer batches than asked."""
    rank, world_size = get_rank(), get_world_size()
    mine = _RankItems(task, list(range(len(task)))[rank::world_size])
    batches = []
    if packed:
        rows = []
        for row, _, _ in _packed_rows(tokenizer, mine, T, pool_size):
            rows.append(row)
            if len(rows) == B:
                batches.append(_to_device(*_rows_to_batch(rows), device))
                rows = []
                if len(batches) == max_batches:
                    break
    else:
        for start in range(0, len(mine) - B + 1, B):
            if len(batches) == max_batches:
                break
            batches.append(_to_device(*_padded_batch(tokenizer, mine[start:start + B], T), device))
    short = len(batches) < max_batches
    if short:
        setup_logging().info(f"the validation mixture holds {len(batches)} batch(es) of {B} rows on rank {rank}, fewer "
                             f"than the {max_batches} asked for: evaluating on those, each conversation at most once")
    if not batches:
        raise ValueError(f"the validation mixture ({len(task)} conversations) holds less than one batch of {B} rows "
                         f"for rank {rank} of {world_size}; lower the batch size or add validation data")
    return batches, short


def chat_loaders(rows, tokenizer, train_task, val_task, B, T, val_batches, device="cpu", resume_state=None, seed=0):
    """(training loader, validation batches) of a chat stage: rows "packed" (mid-training) or
    "padded" (SFT), as tasks/registry.py's CHAT_MIXTURES says; val_batches: the most to load."""
    assert rows in ("packed", "padded"), f"rows are packed or padded, not {rows!r}"
    make = mid_data_loader_with_state if rows == "packed" else sft_data_loader_with_state
    train = make(tokenizer, train_task, B, T, device=device, resume_state=resume_state, seed=seed)
    val, _ = load_val_batches(tokenizer, val_task, B, T, val_batches, packed=rows == "packed", device=device)
    print0(f"validation: {len(val)} batch(es) of {B} {rows} rows per rank, each conversation at most once "
           f"(asked for {val_batches})")
    return train, val


def count_targets(batches, device):
    """(trained targets, tokens) of a list of (inputs, targets[, state]) batches, summed over all
    ranks (one all-reduce): the step's loss is its summed nats divided by the trained targets."""
    counts = torch.zeros(2, dtype=torch.long, device=device)
    for batch in batches:
        targets = batch[1]
        counts += torch.stack([(targets >= 0).sum(), torch.tensor(targets.numel(), device=targets.device)]).to(device)
    if get_world_size() > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n_targets, n_tokens = counts.tolist()
    return n_targets, n_tokens


def masked_loss_step(model, loader, micro_steps, autocast, device):
    """Forward/backward of one optimizer step of a chat stage: `micro_steps` batches of `loader`,
    the loss the mean over the step's trained (assistant) tokens on all ranks (each micro-batch's
    summed loss over their count, x world_size because the optimizers average ranks; a step with no
    trained token gives zero loss and zero gradient). Returns (the step's loss as this rank's 0-d
    part, whose mean over ranks is the loss; trained targets; tokens; the loader state after it)."""
    batches = [next(loader) for _ in range(micro_steps)]
    n_targets, n_tokens = count_targets(batches, device)
    scale = get_world_size() / max(n_targets, 1)
    loss_sum = torch.zeros((), device=device)
    for inputs, targets, _ in batches:
        with autocast:
            loss = model(inputs, targets, loss_reduction="sum")
        loss_sum += loss.detach()
        (loss * scale).backward()
    return loss_sum * scale, n_targets, n_tokens, batches[-1][2]
