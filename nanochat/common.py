"""
Shared plumbing for every stage: device detection, torch.distributed set-up, logging and paths.

One code path serves one process and many: under `torchrun` the environment variables
RANK / LOCAL_RANK / WORLD_SIZE are set and `compute_init` joins the process group (NCCL on CUDA,
gloo on CPU); without them it runs as rank 0 of a world of 1.

Artifacts (tokenizer, checkpoints, eval bundles, reports) live under `get_base_dir()`:
$NANOCHAT_BASE_DIR, or ~/.cache/nanochat. Input data is read from $NANOCHAT_DATA_DIR when it is
set (an offline mirror, laid out as described in the README), else downloaded into the base dir.
"""

import json
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger("nanochat")


def setup_logging(level=logging.INFO):
    """Log to stderr with a timestamp and the rank (only once per process)."""
    if logger.handlers:
        return logger
    handler = logging.StreamHandler()
    rank = os.environ.get("RANK", "0")
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def get_base_dir():
    """The folder that holds every artifact of a run; created on first use."""
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base, exist_ok=True)
    return base


def get_data_dir():
    """The offline data mirror ($NANOCHAT_DATA_DIR), or None to download into the base dir."""
    data_dir = os.environ.get("NANOCHAT_DATA_DIR")
    if not data_dir:
        return None
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"NANOCHAT_DATA_DIR={data_dir!r} is not a folder. Point it at a data mirror "
            f"(e.g. ../shared/data) or unset it to download from the hub."
        )
    return data_dir


def atomic_write(path, write_fn, mode="w"):
    """Write a file through write_fn(file) into a temporary name beside it, flush it to disk, then
    rename it over `path`: a reader (or a crash) sees the old file or the new one, never half."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def iter_jsonl(path):
    """(line number, record) for each non-blank line of a JSONL file; a line that is not JSON
    raises ValueError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from None


# -----------------------------------------------------------------------------
# distributed

def is_ddp():
    """True when launched by torchrun (or anything else that sets RANK)."""
    return int(os.environ.get("RANK", -1)) != -1


def get_dist_info():
    """(is_ddp, rank, local_rank, world_size) from torchrun's environment."""
    if is_ddp():
        for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            assert var in os.environ, f"torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; {var} is missing"
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def print0(*args, **kwargs):
    """print, on rank 0 only."""
    if get_rank() == 0 and int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


def autodetect_device_type():
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class ComputeInfo:
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def device_type(self):
        return self.device.type

    @property
    def master(self):
        return self.rank == 0


def compute_init(device_type="", seed=42):
    """Pick the device, seed the generators and (under torchrun) join the process group.

    device_type: "cuda" | "mps" | "cpu", or "" to autodetect.
    """
    device_type = device_type or autodetect_device_type()
    if device_type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device type {device_type!r} is not one of cuda, mps, cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device-type=cuda was asked for, but torch sees no CUDA device")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device-type=mps was asked for, but torch sees no MPS device")

    torch.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
        torch.set_float32_matmul_precision("high")  # tf32 for any fp32 matmul left outside autocast

    ddp, rank, local_rank, world_size = get_dist_info()
    if ddp and device_type == "mps":
        raise RuntimeError("torch.distributed does not run on MPS; use one process or CPU (gloo)")
    if ddp:
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            device = torch.device("cpu")
            dist.init_process_group(backend="gloo")
        dist.barrier()
    else:
        device = torch.device(device_type)
    if rank == 0:
        setup_logging().info(f"compute: {device_type}, world size {world_size}")
    return ComputeInfo(ddp, rank, local_rank, world_size, device)


def compute_cleanup():
    """Leave the process group (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DummyWandb:
    """Stands in for a wandb run when logging is off: every call does nothing."""

    def log(self, *args, **kwargs):
        pass

    def finish(self):
        pass
