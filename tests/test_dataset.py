"""
Tests for nanochat/dataset.py: shard download against a test-owned HTTP server on 127.0.0.1
(retries, interrupted and corrupt bodies, skipping, CLI), and the train/val reader with its rank stride.

    uv run pytest tests/test_dataset.py -q

Everything runs on tiny parquet files written here; no network, no shared data.
"""

import collections
import io
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset
from nanochat.dataset import DownloadError, download_shards, list_parquet_files, parquets_iter_batched

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parquet_bytes(texts, row_group_size=4):
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=row_group_size)
    return buf.getvalue()


def make_shards(num_shards, docs_per_shard=10):
    """{name: parquet bytes}; every document names its shard and row, so mix-ups are visible."""
    return {dataset.shard_name(s): parquet_bytes([f"shard {s} doc {i} " * 50 for i in range(docs_per_shard)])
            for s in range(num_shards)}


class ShardServer:
    """Serves shard files over HTTP; per shard, a queue of one-off misbehaviours and an optional
    misbehaviour that applies to every request. Counts the requests per shard."""

    def __init__(self, files):
        self.files = files
        self.plans = collections.defaultdict(list)  # name -> actions for the next requests, in order
        self.always = {}  # name -> action for every request
        self.requests = collections.Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests[name] += 1
                plan = server.plans[name]
                action = plan.pop(0) if plan else server.always.get(name, "ok")
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                if action == "500":
                    self.send_error(500)
                    return
                if action == "corrupt":
                    body = b"<html>this is not parquet</html>" * 64
                self.send_response(200)
                if action != "truncate_nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if action in ("truncate", "truncate_nolength"):
                    # Half the body, then hang up: the client sees a short read.
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif action == "stall":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    time.sleep(1.0)  # longer than the client's socket timeout
                    self.close_connection = True
                else:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ShardServer(make_shards(3))
    yield srv
    srv.close()


def fast_download(num_shards, srv, data_dir, **kw):
    """download_shards with a tiny back-off; returns the log lines."""
    lines = []
    kw = {"workers": 2, "retries": 3, "backoff": 0.001, "timeout": 5.0, **kw}
    download_shards(num_shards, base_url=srv.url, data_dir=str(data_dir), log=lines.append, **kw)
    return lines


def folder_contents(path):
    return sorted(os.listdir(path))


# -----------------------------------------------------------------------------
# downloading

def test_full_download(server, tmp_path):
    lines = fast_download(3, server, tmp_path)
    assert folder_contents(tmp_path) == [dataset.shard_name(i) for i in range(3)]  # no temp files left
    for name, body in server.files.items():
        assert (tmp_path / name).read_bytes() == body
        assert server.requests[name] == 1
    assert any("3/3" in line and "MB/s" in line for line in lines)


@pytest.mark.parametrize("failure", ["500", "truncate", "truncate_nolength", "corrupt", "stall"])
def test_one_failure_then_retry_succeeds(server, tmp_path, failure):
    server.plans["shard_00001.parquet"] = [failure]
    lines = fast_download(3, server, tmp_path, timeout=0.3)
    assert server.requests["shard_00001.parquet"] == 2
    assert (tmp_path / "shard_00001.parquet").read_bytes() == server.files["shard_00001.parquet"]
    assert folder_contents(tmp_path) == [dataset.shard_name(i) for i in range(3)]
    assert any("shard_00001.parquet: attempt 1 failed" in line for line in lines)


@pytest.mark.parametrize("failure,cause", [
    ("truncate", "connection closed after"),
    ("truncate_nolength", "not a readable parquet"),
    ("corrupt", "not a readable parquet"),
    ("500", "HTTP 500"),
])
def test_persistent_failure_leaves_no_partial_file_and_names_shard(server, tmp_path, failure, cause):
    server.always["shard_00001.parquet"] = failure
    with pytest.raises(DownloadError) as info:
        fast_download(3, server, tmp_path, retries=2)
    message = str(info.value)
    assert "shard_00001.parquet" in message
    assert f"{server.url}/shard_00001.parquet" in message
    assert cause in message
    assert "re-run" in message  # says what to do
    assert server.requests["shard_00001.parquet"] == 3  # 1 attempt + 2 retries
    # The other shards are complete, the failing one left nothing behind (no temp file either).
    assert folder_contents(tmp_path) == ["shard_00000.parquet", "shard_00002.parquet"]


def test_missing_shard_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match=r"shard_00003\.parquet.*HTTP 404"):
        fast_download(4, server, tmp_path)
    assert server.requests["shard_00003.parquet"] == 1
    assert "shard_00003.parquet" not in folder_contents(tmp_path)


def test_existing_shards_are_skipped(server, tmp_path):
    # A different, valid file already in place must be kept as is and not fetched again.
    local = parquet_bytes(["already here"])
    (tmp_path / "shard_00000.parquet").write_bytes(local)
    lines = fast_download(3, server, tmp_path)
    assert server.requests["shard_00000.parquet"] == 0
    assert (tmp_path / "shard_00000.parquet").read_bytes() == local
    assert server.requests["shard_00001.parquet"] == server.requests["shard_00002.parquet"] == 1
    assert any("shard_00000.parquet skipped" in line for line in lines)
    # A second run fetches nothing.
    fast_download(3, server, tmp_path)
    assert sum(server.requests.values()) == 2


def test_stale_temp_files_are_removed_fresh_ones_kept(server, tmp_path):
    stale = tmp_path / ".shard_00000.parquet.abc.tmp"
    fresh = tmp_path / ".shard_00001.parquet.def.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 2 * dataset.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    fast_download(1, server, tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # might be another process's download in flight
    assert list_parquet_files(str(tmp_path)) == [str(tmp_path / "shard_00000.parquet")]


def test_base_url_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATA_URL", server.url)
    download_shards(2, data_dir=str(tmp_path), backoff=0.001, log=lambda *a: None)
    assert folder_contents(tmp_path) == ["shard_00000.parquet", "shard_00001.parquet"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least|>= 1"):
        download_shards(0, base_url="http://127.0.0.1:9", log=lambda *a: None)
    with pytest.raises(ValueError, match="1823 shards"):
        download_shards(5000, base_url=dataset.BASE_URL, log=lambda *a: None)


def test_cli_downloads_and_reports_failure(server, tmp_path):
    # One subprocess (it imports torch through nanochat.common: seconds) covers success and failure.
    out = tmp_path / "shards"
    server.always["shard_00002.parquet"] = "500"
    proc = subprocess.run(
        [sys.executable, "-m", "nanochat.dataset", "-n", "3", "-w", "2", "--base-url", server.url,
         "--data-dir", str(out), "--retries", "1", "--backoff", "0.001"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert folder_contents(out) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert "MB/s" in proc.stdout
    assert f"{server.url}/shard_00002.parquet" in proc.stderr and "HTTP 500" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert server.requests["shard_00002.parquet"] == 2


# -----------------------------------------------------------------------------
# reading

def write_corpus(folder, groups_per_shard, rows_per_group=3):
    """Shards with the given numbers of row groups; returns, per shard, its list of row groups."""
    os.makedirs(folder, exist_ok=True)
    shards = []
    for s, num_groups in enumerate(groups_per_shard):
        groups = [[f"s{s} g{g} r{r}" for r in range(rows_per_group)] for g in range(num_groups)]
        (folder / dataset.shard_name(s)).write_bytes(
            parquet_bytes([t for grp in groups for t in grp], row_group_size=rows_per_group))
        shards.append(groups)
    return shards


def test_train_val_split(tmp_path):
    shards = write_corpus(tmp_path, [4, 2, 3])
    assert pq.ParquetFile(tmp_path / "shard_00000.parquet").num_row_groups == 4  # the fixture is what we think
    train = list(parquets_iter_batched("train", data_dir=str(tmp_path)))
    val = list(parquets_iter_batched("val", data_dir=str(tmp_path)))
    assert train == shards[0] + shards[1]
    assert val == shards[2]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_rank_stride_reads_every_row_group_once(tmp_path, world_size):
    shards = write_corpus(tmp_path, [5, 1, 3, 2])
    expected = [tuple(g) for groups in shards[:-1] for g in groups]  # 9 train row groups
    per_rank = [[tuple(b) for b in parquets_iter_batched("train", start=r, step=world_size, data_dir=str(tmp_path))]
                for r in range(world_size)]
    seen = [b for batches in per_rank for b in batches]
    assert sorted(seen) == sorted(expected)  # every row group exactly once
    # The stride runs across shards, so ranks differ by at most one row group even with small shards.
    counts = [len(b) for b in per_rank]
    assert max(counts) - min(counts) <= 1
    # Rank r gets global row groups r, r + W, r + 2W, ... in order.
    for r, batches in enumerate(per_rank):
        assert batches == expected[r::world_size]


def test_bad_reader_arguments(tmp_path):
    write_corpus(tmp_path, [1, 1])
    with pytest.raises(ValueError, match="split"):
        next(parquets_iter_batched("test", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="start"):
        next(parquets_iter_batched("train", start=2, step=2, data_dir=str(tmp_path)))


def test_data_dir_from_environment(tmp_path, monkeypatch):
    shards = write_corpus(tmp_path / "mirror" / "pretrain", [2, 1])
    (tmp_path / "mirror" / "pretrain" / "doc_sources.tsv.gz").write_bytes(b"not a shard")
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path / "mirror"))
    assert list_parquet_files() == [str(tmp_path / "mirror" / "pretrain" / dataset.shard_name(i)) for i in range(2)]
    assert list(parquets_iter_batched("val")) == shards[1]


def test_base_dir_layout_without_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOCHAT_DATA_DIR", raising=False)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    shards = write_corpus(tmp_path / "base_data", [1, 1, 1])
    assert list(parquets_iter_batched("train")) == shards[0] + shards[1]


def test_missing_folder_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATA_DIR", str(tmp_path))  # exists, but has no pretrain/ inside
    with pytest.raises(FileNotFoundError) as info:
        list_parquet_files()
    message = str(info.value)
    assert str(tmp_path / "pretrain") in message
    assert "python -m nanochat.dataset -n 8" in message and "NANOCHAT_DATA_DIR" in message


def test_empty_folder_and_single_shard_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .parquet shards"):
        next(parquets_iter_batched("train", data_dir=str(tmp_path)))
    write_corpus(tmp_path, [2])
    with pytest.raises(ValueError, match="at least 2"):
        next(parquets_iter_batched("train", data_dir=str(tmp_path)))
