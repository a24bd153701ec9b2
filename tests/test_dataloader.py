"""
Tests of nanochat/dataloader.py on a tiny corpus written by the tests (no data mirror, no network).

Each expectation is recomputed from the documents themselves, encoded one at a time with
Tokenizer.encode (the loader uses the threaded batch encoder): the concat rows are the documents'
token stream cut into rows; BOS rows are whole documents, each starting with <|bos|>, only the last
one of a row cropped, no document used twice. Two ranks are simulated by setting the rank and world
size the loader sees (the row-group striding of nanochat.dataset), without a process group; so are
several ranks with micro-steps, whose streams must give the same batches at every world size and
resume at another one.

    uv run pytest tests/test_dataloader.py -q
"""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import nanochat.dataloader as dataloader
from nanochat.checkpoint_manager import join_loader_states
from nanochat.dataloader import pack_bos_bestfit, tokenizing_distributed_data_loader_with_state

WORDS = "alpha beta gamma delta river stone light cloud green quick model token seven twelve".split()


def write_shards(folder, shards):
    """shards: list (one per shard) of lists (one per row group) of texts."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, groups in enumerate(shards):
        with pq.ParquetWriter(folder / f"shard_{s:05d}.parquet", pa.schema([("text", pa.string())])) as writer:
            for texts in groups:
                writer.write_table(pa.table({"text": texts}))


def make_docs(rng, n, max_words=40):
    """n distinct documents of 1..max_words words (the index makes each one unique)."""
    return [f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, max_words))) for i in range(n)]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """3 train shards with row groups of varied sizes + 1 val shard; returns the train row groups in order."""
    rng = random.Random(0)
    train = [[make_docs(rng, n) for n in sizes] for sizes in ([7, 5], [9], [4, 6, 8])]
    # make the documents unique across the whole corpus
    train = [[[f"s{s}g{g} {t}" for t in group] for g, group in enumerate(shard)] for s, shard in enumerate(train)]
    write_shards(tmp_path / "data" / "pretrain", train + [[make_docs(rng, 6)]])
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "data"))
    return [group for shard in train for group in shard]


def encode_docs(tokenizer, texts):
    bos = tokenizer.get_bos_token_id()
    return [[bos] + tokenizer.encode(t) for t in texts]


def take_rows(loader, n):
    """n batches of a B=1 loader -> list of (row of T + 1 ids, state)."""
    out = []
    for _ in range(n):
        inputs, targets, state = next(loader)
        assert inputs.shape == targets.shape and inputs.dtype == torch.long
        assert torch.equal(inputs[0, 1:], targets[0, :-1]), "targets must be the inputs shifted by one"
        out.append((inputs[0].tolist() + targets[0, -1:].tolist(), state))
    return out


def set_rank(monkeypatch, rank, world_size):
    monkeypatch.setattr(dataloader, "get_rank", lambda: rank)
    monkeypatch.setattr(dataloader, "get_world_size", lambda: world_size)


def expected_concat_rows(tokenizer, groups, T):
    """Per row group: its documents' tokens concatenated, cut into rows of T + 1, the tail dropped."""
    rows = []
    for texts in groups:
        stream = [t for doc in encode_docs(tokenizer, texts) for t in doc]
        rows += [stream[i:i + T + 1] for i in range(0, len(stream) - T, T + 1)]
    return rows


def expected_bos_rows(tokenizer, groups, T):
    """Per row group: the best-fit packing of its documents (encoded one at a time)."""
    return [row for texts in groups for row in pack_bos_bestfit(encode_docs(tokenizer, texts), T + 1)]


def check_bos_rows(rows, docs, T):
    """Every row = whole documents + a prefix of one more. docs[i] starts with the marker -(i + 1)
    in place of BOS (the packer only looks at lengths), so even a one-token piece names its document.
    Returns the indices of the documents used."""
    used = []
    for row in rows:
        assert len(row) == T + 1 and row[0] < 0, "every row must begin at a document start"
        starts = [i for i, t in enumerate(row) if t < 0] + [len(row)]
        pieces = [row[a:b] for a, b in zip(starts, starts[1:])]
        for k, piece in enumerate(pieces):
            i = -piece[0] - 1
            if k < len(pieces) - 1:
                assert piece == docs[i], "only the last document of a row may be cropped"
            else:
                assert piece == docs[i][:len(piece)], "the last piece of a row must be the start of a document"
            used.append(i)
    assert len(used) == len(set(used)), "a document was used twice"
    return used


def test_concat_rows_are_the_token_stream(corpus, tiny_tokenizer):
    T = 16
    expected = expected_concat_rows(tiny_tokenizer, corpus, T)
    loader = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, T, "train", packing="concat")
    rows = take_rows(loader, len(expected) + 3)
    assert [r for r, _ in rows[:len(expected)]] == expected
    # past the last row group the second epoch starts over with the same rows
    assert rows[len(expected) - 1][1]["epoch"] == 1 and rows[len(expected)][1]["epoch"] == 2
    assert [r for r, _ in rows[len(expected):]] == expected[:3]


def test_batches_have_the_requested_shape(corpus, tiny_tokenizer):
    loader = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 3, 8, "val", packing="bos")
    inputs, targets, state = next(loader)
    assert inputs.shape == (3, 8) and targets.shape == (3, 8)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    position = {"epoch": 1, "shard": 0, "row_group": 0, "rows": 3, "k": 0}
    assert state["positions"] == {"0": position} and state["streams"] == 1 and state["epoch"] == 1


@pytest.mark.parametrize("T", [8, 24, 60])
def test_bos_rows_hold_whole_documents(T):
    rng = random.Random(T)
    for _ in range(20):
        docs = [[-(i + 1)] + [1000 + i] * rng.randrange(0, 3 * T) for i in range(rng.randrange(1, 30))]
        rows = list(pack_bos_bestfit(docs, T + 1))
        used = check_bos_rows(rows, docs, T)
        unused = set(range(len(docs))) - set(used)
        assert sum(len(docs[i]) for i in unused) < T + 1, "the unused documents could fill one more row"


def test_loader_bos_rows_are_the_best_fit_of_each_row_group(corpus, tiny_tokenizer):
    T = 12
    expected = expected_bos_rows(tiny_tokenizer, corpus, T)
    loader = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, T, "train", packing="bos")
    rows = take_rows(loader, len(expected) + 1)
    assert [r for r, _ in rows[:len(expected)]] == expected
    assert all(r[0] == tiny_tokenizer.get_bos_token_id() for r, _ in rows)
    assert rows[-1][1]["epoch"] == 2


def test_bos_best_fit_takes_the_longest_document_that_fits():
    B = 99  # any id: the packer only looks at lengths
    docs = [[B] * 5, [B, 1, 1], [B, 2, 2, 2, 2, 2, 2], [B, 3, 3, 3, 3], [B] + [4] * 20]
    rows = list(pack_bos_bestfit(docs, 10))
    # row 1: the longest that fits 10 is the 7-token doc, then the 3-token one fills the 3 left.
    # row 2: two 5-token docs (of equal length the later one first), 10 exactly.
    # row 3: only the 21-token doc is left and nothing fits: it is cropped to 10.
    assert rows == [docs[2] + docs[1], docs[3] + docs[0], docs[4][:10]]


def test_two_ranks_split_the_documents_without_overlap_or_loss(corpus, tiny_tokenizer, monkeypatch):
    T = 12
    for packing, expected_rows in (("concat", expected_concat_rows), ("bos", expected_bos_rows)):
        groups_read = []
        for rank in (0, 1):
            set_rank(monkeypatch, rank, 2)
            expected = expected_rows(tiny_tokenizer, corpus[rank::2], T)
            loader = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, T, "train", packing=packing)
            rows = take_rows(loader, len(expected))
            assert [r for r, _ in rows] == expected
            groups_read.append({(s["positions"][str(rank)]["shard"], s["positions"][str(rank)]["row_group"])
                                for _, s in rows})
        # every row group is read by exactly one of the two ranks
        assert not groups_read[0] & groups_read[1]
        assert groups_read[0] | groups_read[1] == {(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)}


@pytest.mark.parametrize("packing", ["bos", "concat"])
def test_resume_from_state_continues_exactly(corpus, tiny_tokenizer, packing, monkeypatch):
    B, T = 2, 10
    for world_size, rank in ((1, 0), (2, 1)):
        set_rank(monkeypatch, rank, world_size)
        loader = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, B, T, "train", packing=packing)
        batches = [next(loader)]
        while batches[-1][2]["epoch"] == 1:  # run past the epoch boundary, then a few more
            batches.append(next(loader))
        batches += [next(loader) for _ in range(8)]
        n = len(batches)
        for k in sorted({0, 1, 5, n // 3, n // 2, n - 12, n - 9}):
            resumed = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, B, T, "train", packing=packing,
                                                                    resume_state=batches[k][2])
            for j in range(k + 1, min(k + 8, len(batches))):
                inputs, targets, state = next(resumed)
                assert torch.equal(inputs, batches[j][0]) and torch.equal(targets, batches[j][1])
                assert state == batches[j][2]


def steps_of(make, world_size, micro_steps, num_steps, monkeypatch):
    """[(the step's batches in stream order, each rank's state after the step)] of num_steps steps."""
    loaders = []
    for rank in range(world_size):
        set_rank(monkeypatch, rank, world_size)
        loaders.append(make(micro_steps))
    steps = []
    for _ in range(num_steps):
        by_stream, states = {}, []
        for rank, loader in enumerate(loaders):
            set_rank(monkeypatch, rank, world_size)
            for m in range(micro_steps):
                inputs, targets, state = next(loader)
                by_stream[m * world_size + rank] = (inputs, targets)
            states.append(state)
        steps.append(([by_stream[j] for j in sorted(by_stream)], states))
    return steps


def same_steps(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for (sa, _), (sb, _) in zip(a, b)
               for x, y in zip(sa, sb)) and len(a) == len(b)


@pytest.mark.parametrize("packing", ["bos", "concat"])
def test_the_data_order_does_not_depend_on_the_world_size(corpus, tiny_tokenizer, packing, monkeypatch):
    """4 micro-batches per step: 1 rank x 4, 2 x 2 and 4 x 1 see the same batches in every step, across
    an epoch boundary; a run saved at one world size resumes at another with the batches that follow."""
    def loader(resume_state=None):
        return lambda micro_steps: tokenizing_distributed_data_loader_with_state(
            tiny_tokenizer, 1, 32, "train", packing=packing, micro_steps=micro_steps, resume_state=resume_state)

    n = 40
    whole = steps_of(loader(), 1, 4, n, monkeypatch)
    epochs = [position["epoch"] for position in whole[-1][1][0]["positions"].values()]
    assert max(epochs) >= 2, f"the test must cross an epoch boundary: {epochs}"
    for world_size in (2, 4):
        assert same_steps(steps_of(loader(), world_size, 4 // world_size, n, monkeypatch), whole)
    for saved_world, resumed_world, cut in ((2, 1, 5), (1, 2, 17), (4, 2, 29)):
        before = steps_of(loader(), saved_world, 4 // saved_world, cut, monkeypatch)
        state = join_loader_states(before[-1][1])
        assert state == join_loader_states(whole[cut - 1][1])  # the saved state is the same at every world size
        after = steps_of(loader(state), resumed_world, 4 // resumed_world, n - cut, monkeypatch)
        assert same_steps(after, whole[cut:]), f"{saved_world} -> {resumed_world} ranks after step {cut}"


def test_resume_with_other_streams_or_data_is_refused(corpus, tiny_tokenizer, monkeypatch, tmp_path):
    state = next(tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 8, "train", packing="bos"))[2]
    set_rank(monkeypatch, 1, 2)  # 2 streams now, 1 then: another --device-batch-size for the same total batch
    with pytest.raises(ValueError, match="streams=1, now streams=2"):
        tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 8, "train", resume_state=state)
    set_rank(monkeypatch, 0, 1)
    with pytest.raises(ValueError, match="packing"):
        tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 8, "train", resume_state=state,
                                                      packing="concat")
    with pytest.raises(ValueError, match="older nanochat"):  # a state of the per-rank layout
        tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 8, "train", resume_state={
            "epoch": 1, "shard": 0, "row_group": 0, "rows": 1})
    rng = random.Random(5)  # the same number of row groups, other documents in them
    write_shards(tmp_path / "other" / "pretrain", [[make_docs(rng, 8), make_docs(rng, 6)], [make_docs(rng, 9)],
                                                   [make_docs(rng, 3), make_docs(rng, 4), make_docs(rng, 2)],
                                                   [make_docs(rng, 6)]])
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "other"))
    with pytest.raises(ValueError, match="data"):
        tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 8, "train", resume_state=state)


def test_bad_packing_is_refused(corpus, tiny_tokenizer):
    with pytest.raises(ValueError, match="packing"):
        next(tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 8, "train", packing="zip"))


def test_null_texts_are_skipped_as_tok_train_skips_them(tmp_path, tiny_tokenizer, monkeypatch):
    # a null in the text column: the loader skips it (it used to raise in encode); tok_train skips it too
    texts = ["alpha beta gamma", None, "delta river stone", None, "light cloud green quick"]
    write_shards(tmp_path / "data" / "pretrain", [[texts], [["model token seven twelve"]]])
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "data"))
    loader = tokenizing_distributed_data_loader_with_state(tiny_tokenizer, 1, 4, "train", packing="concat")
    rows = take_rows(loader, 2)
    stream = [t for doc in encode_docs(tiny_tokenizer, [t for t in texts if t is not None]) for t in doc]
    assert [row for row, _ in rows] == [stream[i:i + 5] for i in range(0, 10, 5)]


def test_eval_batches_read_each_token_once(corpus, tiny_tokenizer):
    # the val shard (one row group of 6 short documents) holds fewer batches than asked: one pass only
    batches, short = dataloader.load_eval_batches(tiny_tokenizer, 1, 8, "val", 1000, packing="concat")
    assert short and 0 < len(batches) < 1000
    again, _ = dataloader.load_eval_batches(tiny_tokenizer, 1, 8, "val", len(batches), packing="concat")
    assert [torch.equal(a[0], b[0]) for a, b in zip(batches, again)] == [True] * len(batches)
    with pytest.raises(ValueError, match="less than one batch"):  # rows, but fewer than one batch in a pass
        dataloader.load_eval_batches(tiny_tokenizer, 1000, 8, "val", 10, packing="concat")
    with pytest.raises(ValueError, match="less than one batch"):  # not even one row: the loader itself says so
        dataloader.load_eval_batches(tiny_tokenizer, 64, 512, "val", 10, packing="concat")


@pytest.mark.parametrize("packing", ["bos", "concat"])
def test_a_split_shorter_than_one_row_is_an_error_not_a_hang(corpus, tiny_tokenizer, packing):
    # every row group holds fewer tokens than one row: the loader used to re-read the split forever
    loader = dataloader.tokenizing_distributed_data_loader(tiny_tokenizer, 1, 100_000, "train", packing=packing)
    with pytest.raises(ValueError, match="fewer than 100001 tokens"):
        next(loader)


def test_eval_batches_are_the_same_tokens_at_every_world_size(corpus, tiny_tokenizer, monkeypatch):
    # 4 batches on 1 rank == batches 0, 2 on rank 0 and 1, 3 on rank 1 of 2: base_loss and a base_train
    # of any world size and gradient accumulation score the same tokens
    whole, _ = dataloader.load_eval_batches(tiny_tokenizer, 1, 8, "train", 4, packing="concat")
    shares = []
    for rank in (0, 1):
        set_rank(monkeypatch, rank, 2)
        shares.append(dataloader.load_eval_batches(tiny_tokenizer, 1, 8, "train", 2, packing="concat")[0])
    assert len(whole) == 4 and [len(share) for share in shares] == [2, 2]
    for i, (inputs, targets) in enumerate(whole):
        assert torch.equal(inputs, shares[i % 2][i // 2][0]) and torch.equal(targets, shares[i % 2][i // 2][1])
