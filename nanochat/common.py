"""
Shared plumbing for every stage: device detection, torch.distributed set-up, logging and paths.

One code path serves one process and many: under `torchrun` the environment variables
RANK / LOCAL_RANK / WORLD_SIZE are set and `compute_init` joins the process group (NCCL on CUDA,
gloo on CPU); without them it runs as rank 0 of a world of 1.

Artifacts (tokenizer, checkpoints, eval bundles, reports) live under `get_base_dir()`:
$NANOCHAT_BASE_DIR, or ~/.cache/nanochat. Input data is read from $NANOCHAT_DATA_DIR when it is
set (an offline mirror, laid out as described in the README), else downloaded into the base dir.
"""

import functools
import json
import logging
import os
import time
from contextlib import nullcontext
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


def compute_cleanup(together=False):
    """Leave the process group (a no-op in one process).

    together=True, at the normal end of a run, first waits for every rank: a rank that tore gloo
    down while another was still writing its outputs died with SIGABRT ("terminate called without an
    active exception") in CI. Error paths leave at once: the other ranks may never reach a barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# compute dtype and peak FLOP/s (for MFU)

# Dense bf16 tensor-core peak FLOP/s from the vendors' datasheets. Matched in order against
# torch.cuda.get_device_name(), so the more specific names come first.
GPU_BF16_PEAK_FLOPS = [
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),   # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165.2e12),
]
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
BF16_MIN_SPEEDUP = 1.3  # auto picks bf16 on CPU only when its matmuls are at least this much faster


def measure_matmul_flops(dtype=torch.float32, n=1024, seconds=0.5):
    """Best n x n x n matmul rate of this process's CPU threads in `dtype`, FLOP/s, over `seconds`.
    One product of a slow dtype (bf16 without AVX-512 BF16 runs ~100x slower than fp32) can take
    longer than `seconds`; the probe then stops after that one. The one CPU peak of the project:
    MFU in base_train and the other stages, model_bench and the dtype choice all use it."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (thread pool, kernel selection)
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        a @ b
        t1 = time.perf_counter()
        best = max(best, 2 * n ** 3 / (t1 - t0))
        if t1 > t_end:
            return best


AUTO_DTYPE_ENV = "NANOCHAT_AUTO_DTYPE"  # float32 | bfloat16: what --dtype auto decides on a CPU, unmeasured


def measure_bf16_speedup(rounds=3, n=512, seconds=0.1):
    """(best fp32 FLOP/s, best bf16 FLOP/s) of n x n matmuls on this CPU: `rounds` rounds, fp32 and
    bf16 interleaved (so a neighbour's load hits both alike), each the best of `seconds` of products."""
    fp32 = bf16 = 0.0
    for _ in range(rounds):
        fp32 = max(fp32, measure_matmul_flops(torch.float32, n=n, seconds=seconds))
        bf16 = max(bf16, measure_matmul_flops(torch.bfloat16, n=n, seconds=seconds))
    return fp32, bf16


def decide_compute_dtype(device_type, requested="auto"):
    """(dtype, why): the dtype the forward/backward matmuls run in, and a line that says how it was
    chosen. "float32" / "bfloat16" force it; "auto" -> bf16 on CUDA, fp32 on MPS, and on a CPU bf16
    only where its matmuls measure at least BF16_MIN_SPEEDUP x faster than fp32 (best of 3
    interleaved rounds each: CPUs with AVX-512 BF16 / AMX run it ~2x faster, CPUs without ~100x
    slower, so the margin is wide and a loaded machine does not flip it); under torch.distributed
    rank 0's measurement decides for every rank (call it on every rank). $NANOCHAT_AUTO_DTYPE
    (float32 | bfloat16) replaces the measurement: for tests, and for pinning a fleet of machines."""
    if requested not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {requested!r}")
    if requested != "auto":
        return getattr(torch, requested), f"--dtype {requested}"
    if device_type == "cuda":
        return torch.bfloat16, "auto: bf16 on CUDA"
    if device_type != "cpu":
        return torch.float32, f"auto: fp32 on {device_type}"
    forced = os.environ.get(AUTO_DTYPE_ENV)
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise ValueError(f"{AUTO_DTYPE_ENV}={forced!r} must be float32 or bfloat16 (or unset to measure)")
        return getattr(torch, forced), f"auto: {forced} from ${AUTO_DTYPE_ENV} (not measured)"
    fp32, bf16 = measure_bf16_speedup()
    use_bf16 = torch.tensor([float(bf16 >= BF16_MIN_SPEEDUP * fp32)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(use_bf16, src=0)  # rank 0's measurement for all: ranks must not compute in different dtypes
    dtype = torch.bfloat16 if use_bf16.item() else torch.float32
    return dtype, (f"auto: measured bf16 {bf16 / 1e9:.1f} vs fp32 {fp32 / 1e9:.1f} GFLOP/s = {bf16 / fp32:.2f}x "
                   f"(bf16 needs >= {BF16_MIN_SPEEDUP}x) -> {str(dtype).removeprefix('torch.')}")


def pick_compute_dtype(device_type, requested="auto"):
    """The dtype of decide_compute_dtype, without its explanation."""
    return decide_compute_dtype(device_type, requested)[0]


def autocast_ctx(device_type, dtype):
    """torch.autocast to dtype, or a no-op context for fp32 (the parameters are fp32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _cpu_peak(dtype):
    return measure_matmul_flops(dtype)


def get_peak_flops(device, dtype):
    """(peak FLOP/s of one device in `dtype`, or None; what it is) for MFU. GPUs: the bf16
    datasheet figure (fp32 on a GPU has no MFU here); CPU: the measured matmul rate of the dtype
    actually used; MPS: unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((flops for key, flops in GPU_BF16_PEAK_FLOPS if key in name), None)
        if peak is None or dtype != torch.bfloat16:
            return None, f"{name}: no {dtype} peak known, no MFU"
        return peak, f"{name} bf16 peak"
    if device.type == "cpu":
        what = str(dtype).removeprefix("torch.")
        return _cpu_peak(dtype), f"measured {what} matmul rate of {torch.get_num_threads()} CPU thread(s)"
    return None, f"{device.type}: no peak known, no MFU"
