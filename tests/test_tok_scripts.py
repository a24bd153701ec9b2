"""
End-to-end tests of scripts/tok_train.py and scripts/tok_eval.py on a tiny corpus made here
(a NANOCHAT_DATA_DIR with pretrain/shard_00000.parquet for training and shard_00001.parquet for
validation), plus their error paths.

    uv run pytest tests/test_tok_scripts.py -q

The two happy paths run the scripts as subprocesses (as a user would); the error paths call
main() in-process, which checks the same exit codes and messages without paying for a new
interpreter each time.
"""

import json
import os
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_SIZE = 512
MAX_CHARS = 100_000
DOC_CAP = 500


def tiny_corpus(num_docs, seed):
    """Documents of made-up words, numbers, punctuation and some non-ASCII: enough pairs for 512 tokens."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "tor", "pha", "qui", "zen", "ür", "é", "ð", "東", "京"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    docs = []
    for _ in range(num_docs):
        n = rng.randint(50, 250)
        parts = [rng.choice(words) if rng.random() > 0.1 else str(rng.randint(0, 99999)) for _ in range(n)]
        docs.append(" ".join(parts).capitalize() + ". " + rng.choice(["Fin!", "(end)", "— done"]))
    return docs


def write_shard(path, docs, row_group_size=100):
    pq.write_table(pa.table({"text": docs}), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(data dir, base dir, train docs, val docs)."""
    root = tmp_path_factory.mktemp("tok_scripts")
    pretrain = root / "data" / "pretrain"
    pretrain.mkdir(parents=True)
    train_docs, val_docs = tiny_corpus(400, seed=0), tiny_corpus(60, seed=1)
    write_shard(pretrain / "shard_00000.parquet", train_docs)
    write_shard(pretrain / "shard_00001.parquet", val_docs)
    return root / "data", root / "base", train_docs, val_docs


def script_env(data_dir, base_dir, **extra):
    return {**os.environ, "NANOCHAT_DATA_DIR": str(data_dir), "NANOCHAT_BASE_DIR": str(base_dir), **extra}


def run_script(module, args, env):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def trained(corpus):
    """Run tok_train once for the module: (tokenizer dir, its stdout)."""
    data_dir, base_dir, _, _ = corpus
    out = run_script("scripts.tok_train", ["--vocab-size", str(VOCAB_SIZE), "--max-chars", str(MAX_CHARS),
                                           "--doc-cap", str(DOC_CAP)], script_env(data_dir, base_dir))
    return base_dir / "tokenizer", out


def test_tok_train_saves_a_working_tokenizer(trained):
    import torch

    from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

    tokenizer_dir, out = trained
    assert (tokenizer_dir / "token_bytes.pt").is_file()
    tok = Tokenizer.from_directory(tokenizer_dir)
    assert tok.get_vocab_size() == VOCAB_SIZE
    for text in ["Kalomi 12345 sutor. Fin!", "unseen words: hello, wörld ✓ 東京", ""]:
        assert tok.decode(tok.encode(text)) == text
    token_bytes = torch.load(tokenizer_dir / "token_bytes.pt", weights_only=True)
    assert token_bytes.shape == (VOCAB_SIZE,)
    assert int((token_bytes == 0).sum()) == len(SPECIAL_TOKENS)
    # The summary reports what was used: exactly --max-chars (the corpus holds more after the cap).
    assert f"characters          {MAX_CHARS:,}" in out
    assert "MB/s" in out and f"vocab size          {VOCAB_SIZE:,}" in out


def test_tok_train_writes_tokenizer_json(trained):
    import tokenizers

    from nanochat.tokenizer import Tokenizer

    tokenizer_dir, _ = trained
    tok = Tokenizer.from_directory(tokenizer_dir)
    hf = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    for text in ["Kalomi 12345 sutor. Fin!", "unseen <|bos|> words: hello, wörld ✓ 東京", ""]:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_document_stream_crops_and_stops(corpus, monkeypatch):
    from scripts.tok_train import DocumentStream

    data_dir, _, train_docs, val_docs = corpus
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(data_dir))
    stream = DocumentStream(max_chars=MAX_CHARS, doc_cap=DOC_CAP)
    docs = list(stream)
    assert sum(len(d) for d in docs) == MAX_CHARS == stream.chars
    assert all(len(d) <= DOC_CAP for d in docs)
    # Training documents, in order, each a prefix of the original (never a validation document).
    assert all(original.startswith(d) for d, original in zip(docs, train_docs))
    assert stream.docs == len(docs) < len(train_docs)
    # With more budget than text, it yields all training text, capped, and stops.
    everything = list(DocumentStream(max_chars=10**9, doc_cap=DOC_CAP))
    assert everything == [d[:DOC_CAP] for d in train_docs]


def test_tok_eval_table_without_network(corpus, trained, tmp_path):
    from nanochat.tokenizer import Tokenizer
    from scripts.tok_eval import SAMPLES

    data_dir, base_dir, _, val_docs = corpus
    # No network, deterministically: an empty tiktoken cache and a proxy that refuses connections.
    env = script_env(data_dir, base_dir, TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"),
                     HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="")
    out = run_script("scripts.tok_eval", ["--reference-timeout", "20"], env)
    assert "gpt2: tiktoken 'gpt2' could NOT be loaded" in out
    assert "gpt4: tiktoken 'cl100k_base' could NOT be loaded" in out
    assert "not compared (could not be loaded, see above): gpt2 (gpt2), gpt4 (cl100k_base)" in out
    for kind in list(SAMPLES) + ["val"]:
        assert any(line.startswith(kind) for line in out.splitlines()), f"no row for {kind}"

    # The JSON line agrees with our tokenizer measured here.
    result = json.loads(out.strip().splitlines()[-1])
    tok = Tokenizer.from_directory(trained[0])
    for kind, text in SAMPLES.items():
        assert result["bytes_per_token"][kind]["ours"] == pytest.approx(len(text.encode()) / len(tok.encode(text)), abs=1e-3)
    val_bytes = sum(len(d.encode()) for d in val_docs)
    val_tokens = sum(len(ids) for ids in tok.encode(val_docs))
    assert result["bytes_per_token"]["val"]["ours"] == pytest.approx(val_bytes / val_tokens, abs=1e-3)
    assert set(result["bytes_per_token"]["val"]) == {"ours"}


# -----------------------------------------------------------------------------
# error paths (in-process: main() exits with a message, never a traceback)

def run_main(module_main, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with pytest.raises(SystemExit) as info:
        module_main()
    return info.value.code


def test_tok_train_rejects_tiny_vocab(corpus, monkeypatch, capsys):
    from scripts.tok_train import main

    data_dir, base_dir, _, _ = corpus
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(data_dir))
    code = run_main(main, ["--vocab-size", "10"], monkeypatch)
    assert code == 2
    err = capsys.readouterr().err
    assert "--vocab-size 10 is too small" in err and "at least 265" in err


def test_tok_train_without_data_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    from scripts.tok_train import main

    (tmp_path / "data" / "pretrain").mkdir(parents=True)
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    code = run_main(main, ["--vocab-size", "512"], monkeypatch)
    assert "python -m nanochat.dataset -n 8" in str(code) and str(tmp_path / "data" / "pretrain") in str(code)
    assert not (tmp_path / "base" / "tokenizer").exists()


def test_tok_eval_without_tokenizer_says_how_to_train(tmp_path, monkeypatch):
    from scripts.tok_eval import main

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    code = run_main(main, [], monkeypatch)
    assert "tok_eval: error" in str(code) and "scripts.tok_train" in str(code)


def test_tok_eval_reference_columns(corpus, trained, monkeypatch, capsys):
    # The GPT-2/GPT-4 files cannot be downloaded here, so the reference is a real tiktoken Encoding
    # built from OUR ranks and pattern: its column must then match ours token for token.
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    import scripts.tok_eval as tok_eval
    from nanochat.tokenizer import Tokenizer

    data_dir, base_dir, _, _ = corpus
    tokenizer_dir = trained[0]
    pattern = Tokenizer.from_directory(tokenizer_dir).get_pattern()
    same = tiktoken.Encoding("same-as-ours", pat_str=pattern,
                             mergeable_ranks=load_tiktoken_bpe(str(tokenizer_dir / "tokenizer.bpe")), special_tokens={})
    monkeypatch.setattr(tok_eval, "load_reference", lambda name, timeout: (same, None))
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base_dir))
    monkeypatch.setattr(sys, "argv", ["tok_eval"])
    tok_eval.main()
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["not_loaded"] == []
    for kind, per_tokenizer in result["bytes_per_token"].items():
        assert per_tokenizer["gpt2"] == per_tokenizer["gpt4"] == per_tokenizer["ours"], kind
    assert "gpt2 tok" in out and "gpt4 tok" in out and "+0.0%" in out
