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

Spreading and epochs: the same order at every world size. Each epoch visits the task's items in a
fresh seeded order (random.Random(f"{seed}:{epoch}")), and the epochs follow one another forever:
global position p is item epoch_order(epoch p // n + 1)[p % n] (n items). As in the pretraining
loader (nanochat/dataloader.py), the positions are dealt to the S = world size x gradient
accumulation micro-batch slots of a step: stream j holds positions j, j + S, j + 2S, ..., and rank
r runs streams r, r + W, ... (W ranks), one per micro-step. So the rows of a step do not depend on
how its S micro-batches are spread over ranks and micro-steps.

Mid-training rows ("packed"): a stream's items are rendered a pool of `pool_size` conversations at a
time (each cut to T + 1 tokens) and packed into rows of T + 1 tokens with the pretraining loader's
BOS-aligned best fit (nanochat.dataloader.pack_bos_bestfit: whole conversations, longest first;
only the last one of a row is cropped, its rest dropped; a pool's last, unfinished row is dropped).
Token and mask travel through the packer together as one int, id * 2 + mask. Every batch is (B, T).

SFT rows ("padded"): one conversation per row, cut to T + 1 tokens (a longer conversation is
truncated, never dropped), B rows per batch, padded to the longest row of the batch (so W <= T);
pad positions are <|bos|> in the inputs and -1 in the targets. For a compiled model (chat_sft
--compile) the width is bucketed (bucket_width: the next power of two from 64, at most T), so that
torch.compile sees a handful of shapes; padding is masked (causal attention: no real token sees a
later pad; pad targets are -1), so only the float rounding of the wider matmuls changes.
A row may hold no trained token at all (a prompt longer than T): its targets are all -1, which the
loss must tolerate.

Exact resume, at any world size that divides S. The position of a stream after a batch says where
its next row comes from:
    packed: {"pool": q, "rows": r, "epoch": e}   r rows of the stream's pool q were used
    padded: {"index": i, "epoch": e}             i items of the stream were used
A rank's state is {"positions": {"<j>": position, for its streams}, "epoch": its first stream's,
plus S, the item count, the seed and the pool size}; save_training_state joins the ranks' positions
into the run's, and a loader started with resume_state=that state takes its own streams' positions
and yields exactly the batches the uninterrupted run yields after it. Another S, item count, seed or
pool size is refused (ValueError with the reason).
NOT covered: the task must give the same items as before (same data files, same tokenizer).

Validation (load_val_batches): stream j's share (items j, j + S, ... in the task's own order: no
shuffle, no second epoch) is read once, so no item is scored twice, and the set of batches is the
same at every world size with the same S; when it holds fewer batches than asked, those are
returned and a log line says so. Ranks may hold different numbers of batches: the evaluation sums
over all ranks with a single all-reduce at the end.

Tests: uv run pytest tests/test_chat_data.py
"""

import math
import random

import torch
import torch.distributed as dist

from nanochat.common import get_rank, get_world_size, print0, setup_logging
from nanochat.dataloader import check_resume, pack_bos_bestfit, stream_ids

DEFAULT_POOL_SIZE = 256  # conversations per packing pool (per stream)


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


class _Positions:
    """The global item order of a task (epochs one after another), read by position."""

    def __init__(self, num_items, seed):
        self.num_items, self.seed, self.orders = num_items, seed, {}

    def epoch(self, p):
        return p // self.num_items + 1

    def __getitem__(self, p):
        epoch = self.epoch(p)
        if epoch not in self.orders:
            if len(self.orders) > 2:  # streams are at most an epoch apart: keep the recent orders only
                self.orders.pop(min(self.orders))
            self.orders[epoch] = epoch_order(self.num_items, epoch, self.seed)
        return self.orders[epoch][p % self.num_items]


def _to_device(inputs, targets, device):
    """(B, W) CPU tensors -> the device (pinned and non-blocking on CUDA)."""
    if torch.device(device).type == "cuda":
        return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)


def _streams(task, micro_steps, resume_state, fixed, what):
    """(this rank's streams, S, the resume positions by stream or None) of a chat loader."""
    mine, num_streams = stream_ids(micro_steps), micro_steps * get_world_size()
    if len(task) < num_streams:
        raise ValueError(f"the mixture holds {len(task)} conversations, fewer than the {num_streams} micro-batches "
                         f"of a step (ranks x gradient accumulation)")
    if resume_state is None:
        return mine, num_streams, None
    if "positions" not in resume_state:
        raise ValueError(f"cannot resume the {what} loader from {resume_state}: it was saved by an older nanochat "
                         f"whose data order depended on the world size; start the stage again")
    check_resume(resume_state, fixed, what)
    return mine, num_streams, {j: resume_state["positions"][str(j)] for j in mine}


# -----------------------------------------------------------------------------
# mid-training: packed rows


def _packed_rows(tokenizer, pools, T, skip=0):
    """(row of T + 1 codes id * 2 + mask, pool index, rows used in that pool, rows made from the pool
    so far) over `pools`, an iterable of (pool index, conversations); the first pool's first `skip`
    rows are left out."""
    for n, (q, conversations) in enumerate(pools):
        docs = []
        for conversation in conversations:
            ids, mask = render_row(tokenizer, conversation, T + 1)
            docs.append([2 * i + m for i, m in zip(ids, mask)])  # one int per token: id and mask together
        made = 0
        for r, row in enumerate(pack_bos_bestfit(docs, T + 1), start=1):
            made += 1
            if n > 0 or r > skip:
                yield row, q, r, made
        if made == 0:
            yield None, q, 0, 0  # an empty pool: the caller decides whether it loops forever


def _rows_to_batch(rows):
    """B packed rows of (id, mask) codes -> (inputs, targets), each (B, T), on the CPU."""
    codes = torch.tensor(rows, dtype=torch.long)  # (B, T + 1)
    ids, mask = codes >> 1, codes & 1
    inputs = ids[:, :-1].contiguous()
    targets = torch.where(mask[:, 1:].bool(), ids[:, 1:], -1).contiguous()
    return inputs, targets


def mid_data_loader_with_state(tokenizer, task, B, T, device="cpu", resume_state=None, seed=0,
                               pool_size=DEFAULT_POOL_SIZE, micro_steps=1):
    """Yield (inputs, targets, state) forever: packed rows of the task's conversations, (B, T) int64,
    from this rank's micro_steps streams in turn (call it micro_steps times per optimizer step)."""
    assert B >= 1 and T >= 1 and pool_size >= 1, f"need B, T, pool_size >= 1, got {B}, {T}, {pool_size}"
    num_items = len(task)
    fixed = dict(streams=micro_steps * get_world_size(), num_items=num_items, pool_size=pool_size, seed=seed)
    mine, num_streams, starts = _streams(task, micro_steps, resume_state, fixed, "mid-training")
    order = _Positions(num_items, seed)
    log = setup_logging()

    def pools(j, q):
        """(q, conversations) of stream j's pools from pool q on: pool q holds its items q * pool_size, ..."""
        while True:
            first = (q * pool_size) * num_streams + j
            if q > 0 and order.epoch(first) > order.epoch(first - pool_size * num_streams):
                log.info(f"mid-training loader (stream {j}): starting epoch {order.epoch(first)}")
            yield q, [task[order[(q * pool_size + t) * num_streams + j]] for t in range(pool_size)]
            q += 1

    def rows(j, q, skip):
        empty = 0  # conversations in a row that filled no row: a whole epoch of them would loop forever
        for row, q, r, made in _packed_rows(tokenizer, pools(j, q), T, skip):
            if row is None:
                empty += pool_size
                if empty * num_streams >= max(num_items, pool_size * num_streams):
                    raise ValueError(f"the mixture's {num_items} conversations do not fill one row of {T + 1} "
                                     f"tokens; lower the sequence length or add data")
                continue
            empty = 0
            yield row, dict(pool=q, rows=r, epoch=order.epoch(((q + 1) * pool_size - 1) * num_streams + j))

    starts = starts or {j: dict(pool=0, rows=0, epoch=1) for j in mine}
    streams = [rows(j, starts[j]["pool"], starts[j]["rows"]) for j in mine]
    positions = {str(j): starts[j] for j in mine}

    def batches():  # a generator inside: the checks above fail at the call, not at the first batch
        while True:
            for j, stream in zip(mine, streams):
                batch = [next(stream) for _ in range(B)]
                positions[str(j)] = batch[-1][1]
                inputs, targets = _rows_to_batch([row for row, _ in batch])
                state = dict(fixed, epoch=positions[str(mine[0])]["epoch"], positions=dict(positions))
                yield (*_to_device(inputs, targets, device), state)
    return batches()


# -----------------------------------------------------------------------------
# SFT: one conversation per row, padded


MIN_BUCKET = 64  # the narrowest bucketed width


def bucket_width(longest, T):
    """The padded width of a batch whose longest row has `longest` (<= T) tokens, bucketed: the next
    power of two from MIN_BUCKET on, at most T. A compiled model (torch.compile, static shapes) then
    sees at most log2(T / 64) + 2 widths, each compiled once, instead of one per batch."""
    width = MIN_BUCKET
    while width < longest:
        width *= 2
    return min(width, T)


def _padded_batch(tokenizer, conversations, T, bucket=False):
    """Conversations -> (inputs, targets) (B, W) on the CPU: each cut to T + 1 tokens, padded to the
    longest (bucket: to bucket_width of it)."""
    rows = [to_inputs_targets(*render_row(tokenizer, c, T + 1)) for c in conversations]
    width = max(len(inputs) for inputs, _ in rows)  # <= T
    if bucket:
        width = bucket_width(width, T)
    pad = tokenizer.get_bos_token_id()
    inputs = torch.full((len(rows), width), pad, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, (x, y) in enumerate(rows):
        inputs[b, :len(x)] = torch.tensor(x, dtype=torch.long)
        targets[b, :len(y)] = torch.tensor(y, dtype=torch.long)
    return inputs, targets


def sft_data_loader_with_state(tokenizer, task, B, T, device="cpu", resume_state=None, seed=0, micro_steps=1,
                               bucket=False):
    """Yield (inputs, targets, state) forever: B conversations per batch, one per row, (B, W <= T) int64,
    from this rank's micro_steps streams in turn (call it micro_steps times per optimizer step);
    bucket: W is bucket_width of the longest row (for a compiled model)."""
    assert B >= 1 and T >= 1, f"need B, T >= 1, got {B}, {T}"
    num_items = len(task)
    fixed = dict(streams=micro_steps * get_world_size(), num_items=num_items, seed=seed)
    mine, num_streams, starts = _streams(task, micro_steps, resume_state, fixed, "SFT")
    order = _Positions(num_items, seed)
    log = setup_logging()
    positions = {str(j): (starts or {}).get(j, dict(index=0, epoch=1)) for j in mine}

    def batches():  # a generator inside: the checks above fail at the call, not at the first batch
        while True:
            for j in mine:
                index = positions[str(j)]["index"]
                conversations = []
                for i in range(index, index + B):
                    p = i * num_streams + j
                    if p % num_items < num_streams and p >= num_items:
                        log.info(f"SFT loader (stream {j}): used all of the mixture's conversations; starting epoch "
                                 f"{order.epoch(p)}")
                    conversations.append(task[order[p]])
                positions[str(j)] = dict(index=index + B, epoch=order.epoch((index + B - 1) * num_streams + j))
                inputs, targets = _padded_batch(tokenizer, conversations, T, bucket)
                state = dict(fixed, epoch=positions[str(mine[0])]["epoch"], positions=dict(positions))
                yield (*_to_device(inputs, targets, device), state)
    return batches()


# -----------------------------------------------------------------------------
# validation and the loss


def load_val_batches(tokenizer, task, B, T, max_batches, packed, device="cpu", pool_size=DEFAULT_POOL_SIZE,
                     micro_steps=1, bucket=False):
    """Up to max_batches (inputs, targets) of each of this rank's streams of `task` (stream j: items
    j, j + S, ... in order), each item read at most once; packed rows (mid-training) or padded ones
    (SFT). Returns (batches, short): short is True when some stream held fewer batches than asked."""
    mine, num_streams = stream_ids(micro_steps), micro_steps * get_world_size()
    batches, short = [], False
    for j in mine:
        share = [task[i] for i in range(j, len(task), num_streams)]
        taken = []
        if packed:
            pools = ((q, share[q * pool_size:(q + 1) * pool_size]) for q in range(math.ceil(len(share) / pool_size)))
            rows = []
            for row, _, _, _ in _packed_rows(tokenizer, pools, T):
                if row is None or len(taken) == max_batches:
                    continue
                rows.append(row)
                if len(rows) == B:
                    taken.append(_to_device(*_rows_to_batch(rows), device))
                    rows = []
        else:
            for start in range(0, min(len(share) - B + 1, max_batches * B), B):
                taken.append(_to_device(*_padded_batch(tokenizer, share[start:start + B], T, bucket), device))
        short = short or len(taken) < max_batches
        batches += taken
    if short:
        setup_logging().info(f"the validation mixture holds {len(batches)} batch(es) of {B} rows on rank "
                             f"{get_rank()}, fewer than the {max_batches * len(mine)} asked for: evaluating on those, "
                             f"each conversation at most once")
    if not batches:
        raise ValueError(f"the validation mixture ({len(task)} conversations) holds less than one batch of {B} rows "
                         f"for rank {get_rank()} of {get_world_size()}; lower the batch size or add validation data")
    return batches, short


def chat_loaders(rows, tokenizer, train_task, val_task, B, T, val_batches, device="cpu", resume_state=None, seed=0,
                 micro_steps=1, bucket=False):
    """(training loader, validation batches) of a chat stage: rows "packed" (mid-training) or
    "padded" (SFT), as tasks/registry.py's CHAT_MIXTURES says; val_batches: the most to load per
    stream (micro_steps streams per rank); bucket: padded widths bucketed (bucket_width)."""
    assert rows in ("packed", "padded"), f"rows are packed or padded, not {rows!r}"
    if rows == "packed":
        train = mid_data_loader_with_state(tokenizer, train_task, B, T, device=device, resume_state=resume_state,
                                           seed=seed, micro_steps=micro_steps)
    else:
        train = sft_data_loader_with_state(tokenizer, train_task, B, T, device=device, resume_state=resume_state,
                                           seed=seed, micro_steps=micro_steps, bucket=bucket)
    val, _ = load_val_batches(tokenizer, val_task, B, T, val_batches, packed=rows == "packed", device=device,
                              micro_steps=micro_steps, bucket=bucket)
    print0(f"validation: {len(val)} batch(es) of {B} {rows} rows on this rank, each conversation at most once "
           f"(asked for {val_batches} per micro-step)")
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
