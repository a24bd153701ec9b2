"""
The pretraining data loader: parquet shards -> tokens -> (inputs, targets) batches on the device.

The data order does not depend on the world size. A split's parquet row groups, numbered across
its shards as nanochat.dataset numbers them, repeat forever: global row group k is row group k % G
of epoch k // G + 1 (G row groups in the split). They are dealt to the S = world size x gradient
accumulation micro-batch slots of an optimizer step (S = --total-batch-tokens / (B x T), fixed by
the run's flags): stream j reads global row groups j, j + S, j + 2S, ... and the step's micro-batch
j is the next B rows of stream j. Rank r runs streams r, r + W, r + 2W, ... (W ranks), one per
micro-step, so 1 process with 2 micro-steps and 2 ranks with 1 each see the same S = 2 batches in
every step. The documents of one row group are tokenized together with the tokenizer's threaded
batch encoder, each one prefixed with <|bos|>, and packed into rows of T + 1 tokens; a batch is B
rows, inputs = row[:-1] and targets = row[1:], both (B, T) int64 on the device (pinned memory +
non-blocking copies on CUDA).

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

Resuming exactly, at any world size. Packing never looks past the current row group, and what is
left of a row group after its last full row (less than one row of tokens) is dropped. The position
of a stream after any batch is therefore fully described by

    {"k": k, "rows": r, "epoch": e, "shard": s, "row_group": g}

(r rows of global row group k, which is row group g of shard s in epoch e, were used), and a stream
started there re-reads and re-packs that one row group, skips its first r rows and goes on. A
rank's state is {"positions": {"<j>": position of stream j, for its streams}, "streams": S, ...};
save_training_state joins the ranks' positions into one state of all S streams, which is the same
whatever the world size. A loader started with resume_state=that state takes its own streams'
positions: it yields exactly the batches that the uninterrupted run yields after that step, at any
world size W that divides S (so a run of 2 ranks resumes on 1 with 2 micro-steps, and 8 GPUs on 4).
Refused with the reason: another number of streams (another --device-batch-size for the same total
batch), another split listing (shard names, rows, row groups: the data changed) or packing, and
states saved by the older, per-rank layout. Shard indices count the split's shards (see
nanochat.dataset.split_files).

Evaluation batches (load_eval_batches) are the first batches of the split read as one stream, dealt
to the ranks in turn: the same tokens at every world size and gradient accumulation.

After the split's last row group a new epoch begins, from the first row group again, and a log line
says so (each stream crosses it on its own). NOT covered: a resumed run must see the same shard
files (checked by their listing, not their contents) and the same tokenizer.
"""

import bisect
import hashlib
import itertools
import json
import math
import os

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


def _row_groups(split):
    """(paths, [(shard, row group)] in nanochat.dataset's order, fingerprint of the split's files)."""
    paths = split_files(split)
    files = [pq.ParquetFile(path) for path in paths]
    groups = [(s, g) for s, f in enumerate(files) for g in range(f.num_row_groups)]
    listing = [(os.path.basename(path), f.metadata.num_rows, f.num_row_groups) for path, f in zip(paths, files)]
    return paths, groups, hashlib.sha1(json.dumps(listing).encode()).hexdigest()[:16]


def stream_ids(micro_steps):
    """The streams of this rank, in the order of its micro-steps: stream m * world_size + rank at
    micro-step m (so at one micro-step per rank, stream r is rank r's, as before streams existed)."""
    assert micro_steps >= 1, f"need micro_steps >= 1, got {micro_steps}"
    rank, world_size = get_rank(), get_world_size()
    return [m * world_size + rank for m in range(micro_steps)]


def check_resume(resume_state, expected, what):
    """A resume position must come from a loader of the same data and the same number of streams."""
    for key, value in expected.items():
        if resume_state.get(key) != value:
            why = {"streams": "micro-batches per optimizer step (world size x gradient accumulation) differ: keep "
                              "--device-batch-size and the total batch of the run, any world size that divides them "
                              "works"}.get(key, "the data or the run's flags changed")
            raise ValueError(f"cannot resume the {what} loader: it was saved with {key}={resume_state.get(key)!r}, now "
                             f"{key}={value!r} ({why}); resume with the run's own flags and data")


def _stream_rows(tokenizer, paths, groups, stream, num_streams, T, pack, bos, threads, k, skip, split, one_pass):
    """(row of T + 1 ids, position after it) of one stream: global row groups k, k + num_streams, ...
    (global row group k is row group k % G of epoch k // G + 1), the first `skip` rows of k skipped.
    one_pass: stop at the end of the split's first pass instead of going on forever."""
    G = len(groups)
    cycle = G // math.gcd(G, num_streams)  # the distinct row groups this stream comes back to
    empty = 0  # row groups in a row that gave no row: a whole cycle of them would loop forever
    log = setup_logging()
    while not (one_pass and k >= G):
        if k % G == 0 and k > 0:
            log.info(f"data loader ({split}, stream {stream}): read all {G} row groups; starting epoch {k // G + 1}")
        shard, row_group = groups[k % G]
        docs = tokenizer.encode(_read_texts(paths[shard], row_group), prepend=bos, num_threads=threads)
        made = 0
        for r, row in enumerate(pack(docs, T + 1), start=1):
            made += 1
            if r > skip:
                yield row, {"epoch": k // G + 1, "shard": shard, "row_group": row_group, "rows": r, "k": k}
        empty = 0 if made else empty + 1
        if empty >= cycle:
            raise ValueError(f"each of the {cycle} row group(s) of the {split} split that stream {stream} reads holds "
                             f"fewer than {T + 1} tokens, one row, so the split holds less than one batch; lower the "
                             f"sequence length or add data")
        k, skip = k + num_streams, 0


def _to_device(tokens, device):
    """(B, T + 1) rows -> inputs, targets (B, T) on the device (pinned, non-blocking on CUDA)."""
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T) each
    if torch.device(device).type == "cuda":
        return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)  # CPU (a no-op) or MPS


def tokenizing_distributed_data_loader_with_state(tokenizer, B, T, split, packing=DEFAULT_PACKING, device="cpu",
                                                   resume_state=None, tokenizer_threads=None, micro_steps=1):
    """Yield (inputs, targets, state) forever: inputs/targets (B, T) int64 on `device`, from this rank's
    streams in turn (micro_steps of them: call it micro_steps times per optimizer step).

    state: the position after this batch (see the module docstring), this rank's streams only;
    nanochat.checkpoint_manager joins the ranks' states into the run's. Pass a run's joined state (or
    this loader's own) back as resume_state to continue right after it, at any world size with the
    same number of streams. tokenizer_threads: threads of the batch encoder (None: one per core).
    """
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    assert B >= 1 and T >= 1, f"need B >= 1 and T >= 1, got B={B}, T={T}"
    mine = stream_ids(micro_steps)
    num_streams = micro_steps * get_world_size()
    paths, groups, fingerprint = _row_groups(split)
    if len(groups) < num_streams:
        raise ValueError(f"the {split} split has {len(groups)} parquet row groups, fewer than the {num_streams} "
                         f"micro-batches of a step (ranks x gradient accumulation); use more shards or a larger "
                         f"--device-batch-size")
    fixed = dict(split=split, packing=packing, streams=num_streams, row_groups=len(groups), data=fingerprint)
    starts = {j: (j, 0) for j in mine}  # (global row group, rows of it already used)
    if resume_state is not None:
        if "positions" not in resume_state:
            raise ValueError(f"cannot resume the {split} loader from {resume_state}: it was saved by an older nanochat "
                             f"whose data order depended on the world size; start the stage again")
        check_resume(resume_state, fixed, f"{split} data")
        starts = {j: (resume_state["positions"][str(j)]["k"], resume_state["positions"][str(j)]["rows"]) for j in mine}
    bos = tokenizer.get_bos_token_id()
    pack = pack_bos_bestfit if packing == "bos" else pack_concat
    streams = [_stream_rows(tokenizer, paths, groups, j, num_streams, T, pack, bos, tokenizer_threads, *starts[j],
                            split, one_pass=False) for j in mine]
    positions = {str(j): dict(k=starts[j][0], rows=starts[j][1], epoch=starts[j][0] // len(groups) + 1) for j in mine}

    def batches():  # a generator inside: the checks above fail at the call, not at the first batch
        while True:
            for j, stream in zip(mine, streams):
                batch = [next(stream) for _ in range(B)]
                positions[str(j)] = batch[-1][1]
                tokens = torch.tensor([row for row, _ in batch], dtype=torch.long)  # (B, T + 1)
                state = dict(fixed, epoch=positions[str(mine[0])]["epoch"], positions=dict(positions))
                yield (*_to_device(tokens, device), state)
    return batches()


def load_eval_batches(tokenizer, B, T, split, max_batches, packing=DEFAULT_PACKING, device="cpu"):
    """This rank's share of the first max_batches x world size batches of `split` read as one stream
    (its row groups in order, one pass): batches rank, rank + W, ... (W ranks). Tokenized once and
    kept, so that every evaluation of a run scores the same tokens without re-reading the shards; the
    same tokens at every world size and number of micro-steps (every rank reads the prefix, keeps its
    share). Each token is read at most once: when the split holds fewer batches than asked, those of
    one pass are taken and a log line says so. Returns (batches, whether the split was cut short)."""
    rank, world_size = get_rank(), get_world_size()
    paths, groups, _ = _row_groups(split)
    pack = pack_bos_bestfit if packing == "bos" else pack_concat
    rows = _stream_rows(tokenizer, paths, groups, 0, 1, T, pack, tokenizer.get_bos_token_id(), None, 0, 0, split,
                        one_pass=True)
    batches, short = [], False
    for i in range(max_batches * world_size):
        batch = list(itertools.islice(rows, B))
        if len(batch) < B:
            short = True
            break
        if i % world_size == rank:
            batches.append(_to_device(torch.tensor([row for row, _ in batch], dtype=torch.long), device))
    if short:
        setup_logging().info(f"the {split} split holds {len(batches)} batch(es) of {B} x {T} tokens on rank "
                             f"{rank}, fewer than the {max_batches} asked for: evaluating on those, each token once")
    if not batches:
        raise ValueError(f"the {split} split holds less than one batch of {B} x {T} tokens for rank {rank}; "
                         f"lower the batch size or the sequence length, or add data")
    return batches, short


def tokenizing_distributed_data_loader(*args, **kwargs):
    """The same batches without the state: yields (inputs, targets)."""
    for inputs, targets, _ in tokenizing_distributed_data_loader_with_state(*args, **kwargs):
        yield inputs, targets
