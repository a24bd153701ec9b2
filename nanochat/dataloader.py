"""
The pretraining data loader: parquet shards -> tokens -> (inputs, targets) batches on the device.

Each rank reads its own share of a split's parquet row groups, numbered across the split's shards
as nanochat.dataset numbers them (row group k belongs to rank k % world_size). The documents of one
row group are tokenized together with the tokenizer's threaded batch encoder, each one prefixed with
<|bos|>, and packed into rows of T + 1 tokens; a batch is B rows, inputs = row[:-1] and
targets = row[1:], both (B, T) int64 on the device (pinned memory + non-blocking copies on CUDA).

Packing (the `packing` argument):
  "bos"    BOS-aligned best fit. Every row begins at the start of a document. A row is filled with
           whole documents from the row group's pool, each time the longest one that still fits;
           when none fits, the shortest one is cropped to fill the row exactly and the rest of it
           is dropped. So only the last document of a row is ever cropped.
  "concat" The documents' tokens concatenated into one stream and cut into consecutive rows
           (documents cross row boundaries; the token between two rows is never a target).
The default, "bos", won a same-compute comparison on ../shared/data (2026-11-23; depth 2, vocab
4096, T = 512, 60 steps of 4096 tokens, the same 32768 val tokens for both models):
    val bpb                 on BOS-packed val rows   on concat val rows
    trained with "bos"             2.271                  2.265
    trained with "concat"          2.462                  2.405
Its cost: on that corpus (median document 535 tokens, mean 1754, vocab 32768) BOS rows hold only
~19% of the tokens at T = 512 (~51% at T = 2048): the rest of each cropped document is dropped,
so an epoch is ~5x shorter than with concat. One seed, one tiny scale: worth re-measuring at scale.

Resuming exactly. Packing never looks past the current row group, and what is left of a row group
after its last full row (less than one row of tokens) is dropped. The position after any batch is
therefore fully described by

    state = {"epoch": e, "shard": s, "row_group": g, "rows": r}

(r rows of row group g of shard s were used, in epoch e, counted from 1), and a loader started with
resume_state=state re-reads and re-packs that one row group, skips its first r rows and goes on: it
yields exactly the batches that the uninterrupted loader yields after that batch. Shard indices
count the split's shards (see nanochat.dataset.split_files). Resuming with another world size is
refused (the row groups would be dealt differently).

After the split's last row group a new epoch begins, from the first row group again, and a log line
says so. NOT covered: a resumed run must see the same shard files and the same tokenizer.
"""

import bisect
import itertools

import pyarrow.parquet as pq
import torch

from nanochat.common import get_rank, get_world_size, setup_logging
from nanochat.dataset import split_files

PACKINGS = ("bos", "concat")
DEFAULT_PACKING = "bos"


def pack_bos_bestfit(docs, row_len):
    """Yield rows of exactly row_len tokens from docs (lists of ids, each starting with BOS).

    Every row starts at a document start; the longest document that fits is taken whole, and only
    when none fits is the shortest one cropped to close the row. A last, unfinished row is dropped.
    """
    pool = sorted(docs, key=len)  # stable: documents of equal length keep their order
    lengths = [len(d) for d in pool]
    while pool:
        row = []
        while len(row) < row_len:
            if not pool:
                return  # the pool ran dry mid-row: drop the partial row
            space = row_len - len(row)
            i = bisect.bisect_right(lengths, space) - 1  # the longest document with len <= space
            if i >= 0:
                row.extend(pool.pop(i))
            else:  # every document is longer than the space left: crop the shortest (least waste)
                i = 0
                row.extend(pool.pop(i)[:space])
            lengths.pop(i)
        yield row


def pack_concat(docs, row_len):
    """Yield consecutive rows of row_len tokens of the concatenated docs; the tail is dropped."""
    stream = list(itertools.chain.from_iterable(docs))
    for start in range(0, len(stream) - row_len + 1, row_len):
        yield stream[start:start + row_len]


def _read_texts(path, row_group):
    """The documents of one row group; a null text (a missing value in the column) is skipped, as
    scripts/tok_train.py skips it: there is nothing to learn from it."""
    texts = pq.ParquetFile(path).read_row_group(row_group, columns=["text"]).column("text").to_pylist()
    return [t for t in texts if t is not None]


def tokenizing_distributed_data_loader_with_state(tokenizer, B, T, split, packing=DEFAULT_PACKING, device="cpu",
                                                   resume_state=None, tokenizer_threads=None):
    """Yield (inputs, targets, state) forever: inputs/targets (B, T) int64 on `device`.

    state: the loader's position after this batch (see the module docstring); pass it back as
    resume_state to continue right after this batch.
    tokenizer_threads: threads of the batch encoder (None: one per core).
    """
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    assert B >= 1 and T >= 1, f"need B >= 1 and T >= 1, got B={B}, T={T}"
    rank, world_size = get_rank(), get_world_size()
    paths = split_files(split)
    # All (shard, row group) pairs of the split, in the order nanochat.dataset numbers them.
    groups = [(s, g) for s, path in enumerate(paths) for g in range(pq.ParquetFile(path).num_row_groups)]
    mine = groups[rank::world_size]
    if not mine:
        raise ValueError(f"the {split} split has {len(groups)} parquet row groups, fewer than the {world_size} "
                         f"ranks; use fewer ranks or more shards")

    epoch, index, skip = 1, 0, 0
    if resume_state is not None:
        position = (resume_state["shard"], resume_state["row_group"])
        if position not in mine:
            raise ValueError(f"cannot resume the {split} loader at shard {position[0]}, row group {position[1]}: "
                             f"it is not one of rank {rank}'s row groups at world size {world_size} "
                             f"(was the run saved with another number of ranks or other shards?)")
        epoch, index, skip = resume_state["epoch"], mine.index(position), resume_state["rows"]

    bos = tokenizer.get_bos_token_id()
    pack = pack_bos_bestfit if packing == "bos" else pack_concat
    use_cuda = torch.device(device).type == "cuda"
    log = setup_logging()

    def rows():
        """(row of T + 1 ids, state after it), forever."""
        nonlocal epoch, index, skip
        rows_this_pass = 0  # a whole pass without one row would loop forever: it is an error instead
        while True:
            shard, row_group = mine[index]
            texts = _read_texts(paths[shard], row_group)
            docs = tokenizer.encode(texts, prepend=bos, num_threads=tokenizer_threads)
            for r, row in enumerate(pack(docs, T + 1), start=1):
                rows_this_pass += 1
                if r > skip:
                    yield row, {"epoch": epoch, "shard": shard, "row_group": row_group, "rows": r}
            skip = 0
            index += 1
            if index == len(mine):
                if rows_this_pass == 0:
                    raise ValueError(f"each of rank {rank}'s {len(mine)} row group(s) of the {split} split holds "
                                     f"fewer than {T + 1} tokens, one row, so the split holds less than one batch "
                                     f"of {B} x {T} tokens; lower the sequence length or add data")
                rows_this_pass = 0
                index, epoch = 0, epoch + 1
                log.info(f"data loader ({split}, rank {rank}): read all {len(mine)} of its row groups; "
                         f"starting epoch {epoch}")

    row_stream = rows()
    while True:
        batch = [next(row_stream) for _ in range(B)]
        state = batch[-1][1]
        tokens = torch.tensor([row for row, _ in batch], dtype=torch.long)  # (B, T + 1)
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T) each
        if use_cuda:
            inputs = inputs.pin_memory().to(device, non_blocking=True)
            targets = targets.pin_memory().to(device, non_blocking=True)
        else:  # CPU (a no-op) or MPS
            inputs, targets = inputs.to(device), targets.to(device)
        yield inputs, targets, state


def load_eval_batches(tokenizer, B, T, split, max_batches, packing=DEFAULT_PACKING, device="cpu"):
    """Up to max_batches (inputs, targets) batches of this rank's share of `split`, tokenized once and
    kept, so that every evaluation of a run scores the same tokens without re-reading the shards.
    Each token is read at most once: when the split holds fewer batches than asked, the batches of
    one pass are returned and a log line says so. Returns (batches, whether the split was cut short)."""
    batches, short = [], False
    for inputs, targets, state in tokenizing_distributed_data_loader_with_state(
            tokenizer, B, T, split, packing=packing, device=device):
        if state["epoch"] > 1:  # this batch reaches into a second pass over the split
            short = True
            break
        batches.append((inputs, targets))
        if len(batches) == max_batches:
            break
    if short:
        setup_logging().info(f"the {split} split holds {len(batches)} batch(es) of {B} x {T} tokens on rank "
                             f"{get_rank()}, fewer than the {max_batches} asked for: evaluating on those, each token once")
    if not batches:
        raise ValueError(f"the {split} split holds less than one batch of {B} x {T} tokens for rank {get_rank()}; "
                         f"lower the batch size or the sequence length, or add data")
    return batches, short


def tokenizing_distributed_data_loader(*args, **kwargs):
    """The same batches without the state: yields (inputs, targets)."""
    for inputs, targets, _ in tokenizing_distributed_data_loader_with_state(*args, **kwargs):
        yield inputs, targets
