"""
The pretraining corpus: parquet shards `shard_NNNNN.parquet`, one document per row in a `text`
column. Shards sort by name; the last one is the validation split, all the others are training.

Where the shards live:
  - with NANOCHAT_DATA_DIR set (an offline mirror such as ../shared/data): $NANOCHAT_DATA_DIR/pretrain/
  - otherwise: get_base_dir()/base_data/ (~/.cache/nanochat/base_data by default)

Download the first N shards of the default public corpus (FineWeb-Edu, reshuffled, 1823 shards of
~100 MB of parquet each) into that folder:

    python -m nanochat.dataset -n 8                 # 7 train shards + 1 val shard
    python -m nanochat.dataset -n 240 -w 8          # enough for a d20 speedrun
    NANOCHAT_DATA_URL=http://mirror/dir python -m nanochat.dataset -n 8   # another server

Downloads run in a thread pool. Each shard streams into a hidden temporary file in the target
folder, which is renamed to its final name only once it is complete (as many bytes as the
Content-Length said) and pyarrow opens it as parquet with a `text` column; any failure deletes the
temporary file. Failed attempts are retried with exponential back-off.

Resume is per shard, not per byte: a retry (or a re-run of the command after a crash) starts the
shard from byte 0, and shards already in the folder are skipped without any request. A shard is
~100 MB, so at most one shard per worker is re-fetched after an interruption. NOT covered: a
process killed with SIGKILL cannot delete its temporary files; the next run deletes ones older
than ten minutes.

Reading: `parquets_iter_batched(split, start, step)` yields one list of texts per parquet row group.
Row groups are numbered across all shards of the split, and a reader with (start=rank,
step=world_size) takes every step-th of them, so the ranks together read each row group exactly once.
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

import pyarrow.parquet as pq

from nanochat.common import get_base_dir, get_data_dir

# The default corpus: FineWeb-Edu 100B, reshuffled and re-sharded for nanochat on the Hugging Face hub.
BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
NUM_PUBLIC_SHARDS = 1823  # shard_00000 .. shard_01822
TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 600  # a temp file untouched this long belongs to a dead download
CHUNK_BYTES = 1 << 20

DOWNLOAD_HINT = (
    "Download shards with `python -m nanochat.dataset -n 8` (the last shard is used for validation), "
    "or set NANOCHAT_DATA_DIR to a data mirror whose pretrain/ folder holds shard_NNNNN.parquet files "
    "(e.g. NANOCHAT_DATA_DIR=../shared/data)."
)


def shard_name(index):
    return f"shard_{index:05d}.parquet"


def default_data_dir():
    """The folder the shards are read from (and downloaded into)."""
    mirror = get_data_dir()
    if mirror is not None:
        return os.path.join(mirror, "pretrain")
    return os.path.join(get_base_dir(), "base_data")


# -----------------------------------------------------------------------------
# reading

def list_parquet_files(data_dir=None):
    """Sorted paths of the shards in data_dir (default: see default_data_dir). The last is validation."""
    data_dir = data_dir or default_data_dir()
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"the pretraining data folder {data_dir} does not exist. {DOWNLOAD_HINT}")
    # Temp files of downloads in flight are hidden and end in .tmp, so they never match.
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".parquet") and not n.startswith("."))
    if not names:
        raise FileNotFoundError(f"the pretraining data folder {data_dir} holds no .parquet shards. {DOWNLOAD_HINT}")
    return [os.path.join(data_dir, n) for n in names]


def split_files(split, data_dir=None):
    """The shard paths of one split: "train" = all but the last shard, "val" = the last one."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    paths = list_parquet_files(data_dir)
    if len(paths) < 2:
        raise ValueError(
            f"found {len(paths)} shard in {os.path.dirname(paths[0])}, but at least 2 are needed "
            f"(one or more for training, the last for validation). {DOWNLOAD_HINT}"
        )
    return paths[:-1] if split == "train" else paths[-1:]


def parquets_iter_batched(split, start=0, step=1, data_dir=None):
    """Yield the documents of a split, one list of strings per parquet row group, in shard order.

    Row groups are numbered 0, 1, 2, ... across all shards of the split; this reader yields the
    ones whose number is start, start + step, start + 2*step, ... Readers with start = rank and
    step = world_size therefore cover every row group exactly once between them.
    One pass over the split; the caller loops for more epochs.
    """
    if not (isinstance(step, int) and step >= 1 and isinstance(start, int) and 0 <= start < step):
        raise ValueError(f"need integers 0 <= start < step, got start={start!r}, step={step!r}")
    group_index = 0  # global row-group number across the shards of the split
    for path in split_files(split, data_dir):
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise ValueError(f"{path} has no 'text' column (columns: {pf.schema_arrow.names})")
        num_groups = pf.num_row_groups
        # The first row group of this shard that belongs to this reader.
        first = (start - group_index) % step
        for rg in range(first, num_groups, step):
            yield pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
        group_index += num_groups


# -----------------------------------------------------------------------------
# downloading

class DownloadError(RuntimeError):
    """One or more shards could not be downloaded; the message names each shard, URL and cause."""


class _Cancelled(Exception):
    pass


class _Progress:
    """Thread-safe counters for the progress lines (shards done / total, MB and MB/s)."""

    def __init__(self, total, log):
        self.total, self.log = total, log
        self.done = 0
        self.bytes = 0
        self.t0 = time.time()
        self.lock = threading.Lock()

    def add_bytes(self, n):
        with self.lock:
            self.bytes += n

    def shard_done(self, name, status):
        with self.lock:
            self.done += 1
            dt = max(time.time() - self.t0, 1e-9)
            mb = self.bytes / 1e6
            self.log(f"[{self.done:>{len(str(self.total))}}/{self.total}] {name} {status:<10} "
                     f"| {mb:,.1f} MB in {dt:.1f}s, {mb / dt:.1f} MB/s")


def _check_parquet(path):
    """Raise ValueError unless path is a parquet file with a `text` column."""
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a truncated or foreign file
        raise ValueError(f"the downloaded body is not a readable parquet file ({e})") from e
    if "text" not in names:
        raise ValueError(f"the downloaded parquet file has no 'text' column (columns: {names})")


def _retryable(err):
    """HTTP 4xx (other than timeout / rate limit) will not change on retry; everything else may."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code in (408, 429)
    return True


def _fetch_once(url, path, data_dir, timeout, progress, cancel):
    """One attempt: stream url into a temp file, check it, rename it to path. No temp file survives."""
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            request = urllib.request.Request(url, headers={"User-Agent": "nanochat-dataset"})
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                received = 0
                while True:
                    if cancel.is_set():
                        raise _Cancelled()
                    chunk = resp.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    progress.add_bytes(len(chunk))
            # http.client returns a short body silently when the server closes early: check the length.
            if expected is not None and received != int(expected):
                raise ConnectionError(f"connection closed after {received:,} of {int(expected):,} bytes")
        _check_parquet(tmp)
        os.replace(tmp, path)  # atomic: the shard appears complete or not at all
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _download_shard(index, base_url, data_dir, retries, backoff, timeout, progress, cancel):
    """Download one shard with retries; return "skipped" or "downloaded", raise DownloadError on failure."""
    name = shard_name(index)
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
        progress.shard_done(name, "skipped")
        return "skipped"
    url = f"{base_url.rstrip('/')}/{name}"
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, path, data_dir, timeout, progress, cancel)
            progress.shard_done(name, "downloaded")
            return "downloaded"
        except _Cancelled:
            raise
        except Exception as e:
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # it holds the error response's open connection
                detail = f"HTTP {e.code} {e.reason}"
            else:
                detail = f"{type(e).__name__}: {e}"
            if attempt == retries or not _retryable(e):
                raise DownloadError(f"{name} from {url} failed after {attempt + 1} attempt(s): {detail}") from e
            wait = backoff * 2 ** attempt
            progress.log(f"{name}: attempt {attempt + 1} failed ({detail}); retrying in {wait:.3g}s")
            # Sleep in a cancellable way so Ctrl-C does not wait out a long back-off.
            if cancel.wait(wait):
                raise _Cancelled()
    raise AssertionError("unreachable: the loop returns or raises")


def _remove_stale_temp_files(data_dir):
    now = time.time()
    for n in os.listdir(data_dir):
        if not (n.startswith(".shard_") and n.endswith(TEMP_SUFFIX)):
            continue
        p = os.path.join(data_dir, n)
        try:
            if now - os.path.getmtime(p) > STALE_TEMP_SECONDS:
                os.remove(p)
        except FileNotFoundError:  # its own download finished or cleaned up meanwhile
            pass


def download_shards(num_shards, base_url=None, data_dir=None, workers=4, retries=5, backoff=2.0,
                    timeout=60.0, log=print):
    """Download shard_00000 .. shard_{num_shards-1} into data_dir; return their paths.

    base_url: the folder URL holding the shards (default $NANOCHAT_DATA_URL, else the public corpus).
    retries: extra attempts per shard; attempt k+1 waits backoff * 2**k seconds after attempt k fails.
    Raises DownloadError naming every shard that still failed after its retries (the others are kept).
    """
    base_url = base_url or os.environ.get("NANOCHAT_DATA_URL") or BASE_URL
    if num_shards == -1 and base_url == BASE_URL:
        num_shards = NUM_PUBLIC_SHARDS
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"number of shards must be >= 1 (or -1 for all of the default corpus), got {num_shards!r}")
    if base_url == BASE_URL and num_shards > NUM_PUBLIC_SHARDS:
        raise ValueError(f"the default corpus has {NUM_PUBLIC_SHARDS} shards; asked for {num_shards}")
    if workers < 1 or retries < 0 or backoff < 0:
        raise ValueError(f"need workers >= 1, retries >= 0, backoff >= 0; got {workers}, {retries}, {backoff}")
    data_dir = data_dir or default_data_dir()
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the data folder {data_dir} ({e}); pass another folder with --data-dir") from e
    if not os.access(data_dir, os.W_OK):
        raise DownloadError(f"the data folder {data_dir} is not writable; pass another folder with --data-dir "
                            f"(or unset NANOCHAT_DATA_DIR to download into the base dir)")
    _remove_stale_temp_files(data_dir)

    log(f"downloading {num_shards} shard(s) from {base_url} into {data_dir} with {workers} worker(s)")
    progress = _Progress(num_shards, log)
    cancel = threading.Event()
    failures = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_download_shard, i, base_url, data_dir, retries, backoff, timeout, progress, cancel)
                   for i in range(num_shards)]
        try:
            for fut in as_completed(futures):
                try:
                    fut.result()
                except DownloadError as e:
                    failures.append(str(e))
        except BaseException:
            # Ctrl-C (or a bug): stop the workers at their next chunk; each deletes its own temp file.
            cancel.set()
            for fut in futures:
                fut.cancel()
            raise
    if failures:
        raise DownloadError(
            f"{len(failures)} of {num_shards} shard(s) failed:\n  " + "\n  ".join(sorted(failures)) +
            "\nCheck the URL and your network, then re-run the same command: finished shards are kept "
            "and skipped (or pass --base-url / set NANOCHAT_DATA_URL to use another server)."
        )
    dt = time.time() - progress.t0
    log(f"done: {num_shards} shard(s) in {data_dir}, {progress.bytes / 1e6:,.1f} MB fetched in {dt:.1f}s")
    return [os.path.join(data_dir, shard_name(i)) for i in range(num_shards)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Download the first N pretraining shards (parquet).")
    parser.add_argument("-n", "--num-shards", type=int, required=True,
                        help=f"how many shards to download, from shard_00000 (-1 = all {NUM_PUBLIC_SHARDS} of the default corpus)")
    parser.add_argument("-w", "--workers", type=int, default=4, help="parallel downloads (threads)")
    parser.add_argument("--base-url", default=None,
                        help=f"folder URL holding shard_NNNNN.parquet (default: $NANOCHAT_DATA_URL, else {BASE_URL})")
    parser.add_argument("--retries", type=int, default=5, help="extra attempts per shard after a failure")
    parser.add_argument("--backoff", type=float, default=2.0,
                        help="seconds before the first retry; doubles after every failed attempt")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds per request")
    parser.add_argument("--data-dir", default=None,
                        help="target folder (default: $NANOCHAT_DATA_DIR/pretrain, else <base dir>/base_data)")
    args = parser.parse_args()
    try:
        download_shards(args.num_shards, base_url=args.base_url, data_dir=args.data_dir, workers=args.workers,
                        retries=args.retries, backoff=args.backoff, timeout=args.timeout)
    except (DownloadError, ValueError, FileNotFoundError) as e:
        sys.exit(f"nanochat.dataset: error: {e}")
    except KeyboardInterrupt:
        sys.exit("nanochat.dataset: interrupted; finished shards are kept, re-run the command to continue")
