"""
The plan of a training run before it spends money: parameters, tokens, steps, FLOPs, memory per GPU,
time at a stated MFU and cost, for the detected hardware or a GPU named by the user; and the search
for the largest micro-batch that fits (`--device-batch-size auto`).

    hw = resolve_hardware(gpu="H100", num_gpus=8)             # or detect_hardware(device, world_size)
    mem = memory_plan(config, device_batch_size=32, seq_len=2048, world_size=8, dtype=torch.bfloat16,
                      device_type="cuda", compiled=True)
    plan = stage_plan("base_train", config, tokens=9.5e9, steps=18_200, hardware=hw, memory=mem, mfu=0.40)
    print(format_plan(plan)); check_fits(plan, flag="--device-batch-size")   # PlanError if it does not fit
    B = search_device_batch(candidates(32), try_batch, agree=min_over_ranks)   # the auto micro-batch

Where the numbers come from:
- parameters: a GPT built on the meta device (the model's own numel; no memory, no data); the
  matmul parameters are all but the embedding (GPT.estimate_flops counts 6 FLOPs each per token).
- optimizer state, as nanochat/optim.py keeps it: AdamW's two fp32 moments of the embedding and the
  head, each parameter cut in world-size flat slices; Muon's fp32 momentum of the block matrices,
  each rank owning ceil(n / world) matrices of every same-shape bucket. Weights and gradients fp32,
  on every rank (the model is not sharded). bf16 autocast keeps a bf16 copy of every matmul weight.
- activations: the tensors autograd keeps for the backward, counted per layer from gpt.py in units
  of the width C per token (eager; torch.compile keeps fewer). fp32 (CPU): the norm output, rotated
  and normed q and k (2 + 2), v, the attention output and its reshaped copy, the residual after
  attention, the second norm, relu(h) and relu(h)^2 (4 + 4), the block output: 19 C floats per
  token. bf16 autocast: the same tensors in bf16, except the fp32 residuals, and the norm output
  cast to bf16 once per projection (q, k, v: three copies): 46 C bytes per token; compiled, an
  assumed 28 C (see activation_bytes_per_token), to be checked where a GPU is lent.
- the logits/loss buffer, per token and vocab entry: CPU fp32 (SoftcapCrossEntropy) keeps d loss /
  d logits (4 bytes) from the forward, makes one sweep block in it and a transposed copy (4 bytes)
  at the start of the backward; eager CUDA keeps the fp32 tanh and
  log-softmax outputs (8 bytes) and makes as much again in the backward; compiled, the bf16 logits
  (2 bytes, assumed: inductor recomputes the soft-cap and softmax in its fused backward).
The CPU figures are checked against measured peaks by scripts/plan_bench.py (dev/LOG.md); the CUDA
ones by dev/gpu_check.sh where a GPU is lent. NOT covered: allocator fragmentation beyond the
stated headroom, NCCL buffers, the evaluation and sampling passes (no autograd, smaller).
"""

import math
import os
from dataclasses import dataclass, field

import torch

HEADROOM = 0.90  # a plan fits when its peak is at most this fraction of a GPU's memory (allocator, CUDA context)
GB = 1e9
PLAN_VOCAB_SIZE = 32768  # scripts/tok_train.py's default: the vocab of a plan made before the tokenizer exists


class PlanError(ValueError):
    """A plan that cannot be made or would not fit: the message names the flag to change."""


@dataclass(frozen=True)
class GPU:
    name: str            # matched as a substring of torch.cuda.get_device_name(), in table order
    memory_gb: float     # datasheet GB (1e9 bytes; the cards hold ~6% more, which is headroom)
    bf16_tflops: float   # dense BF16 tensor-core peak (no 2:4 sparsity)
    fp32_tflops: float   # FP32 without tensor cores


# Dense peaks: NVIDIA's datasheets give "with sparsity" figures, twice the dense ones; these are the
# dense halves. More specific names come first (matching is by substring).
KNOWN_GPUS = (
    GPU("H200", 141, 989, 67),         # H200 datasheet (SXM): 141 GB HBM3e, BF16 1,979 TFLOPS sparse, FP32 67
    GPU("H100 NVL", 94, 835, 60),      # H100 datasheet, NVL column: 94 GB, BF16 1,671 sparse, FP32 60
    GPU("H100 PCIe", 80, 756, 51),     # H100 datasheet, PCIe column: 80 GB, BF16 1,513 sparse, FP32 51
    GPU("H100", 80, 989, 67),          # H100 datasheet, SXM column: 80 GB, BF16 1,979 sparse, FP32 67
    GPU("A100 80GB", 80, 312, 19.5),   # A100 datasheet: BF16 624 sparse, FP32 19.5
    GPU("A100", 40, 312, 19.5),        # A100 40GB (the name without a size is the 40 GB part)
    GPU("A10G", 24, 70, 31.2),         # AWS-only part, no NVIDIA datasheet: AWS G5 spec, 24 GB, ~70 BF16 dense
    GPU("L40S", 48, 362, 91.6),        # L40S datasheet: BF16 733 sparse, FP32 91.6
    GPU("L4", 24, 121, 30.3),          # L4 datasheet: BF16 242 sparse, FP32 30.3
    GPU("RTX 4090", 24, 165.2, 82.6),  # Ada whitepaper: BF16 with FP32 accumulate 330.3 sparse, FP32 82.6
    GPU("RTX 3090", 24, 71, 35.6),     # Ampere GA102 whitepaper: BF16 with FP32 accumulate 142 sparse, FP32 35.6
)
MEMORY_ENV, PEAK_ENV, PRICE_ENV = "NANOCHAT_GPU_MEMORY_GB", "NANOCHAT_GPU_PEAK_TFLOPS", "NANOCHAT_GPU_PRICE"


def known_gpu(name):
    """The table's entry whose name is in `name` (case-insensitive), or None."""
    key = name.lower().replace("-", " ")
    return next((g for g in KNOWN_GPUS if g.name.lower() in key), None)


@dataclass(frozen=True)
class Hardware:
    name: str
    count: int              # GPUs (or CPU processes) of the run
    memory_bytes: float     # per device
    peak_flops: float       # per device, in the compute dtype
    price: float | None     # $ per GPU-hour, None: unknown
    why: str                # where the figures come from


def _env_float(name):
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise PlanError(f"${name}={value!r} is not a number") from None


def resolve_hardware(gpu, num_gpus, memory_gb=None, peak_tflops=None, dtype=torch.bfloat16):
    """Hardware of a GPU named by the user: the table's figures, or --gpu-memory-gb and
    --gpu-peak-tflops (or $NANOCHAT_GPU_MEMORY_GB / $NANOCHAT_GPU_PEAK_TFLOPS) for one it does not
    know; never a guess. Given figures override the table's."""
    memory_gb = memory_gb or _env_float(MEMORY_ENV)
    peak_tflops = peak_tflops or _env_float(PEAK_ENV)
    entry = known_gpu(gpu)
    if entry is None and (memory_gb is None or peak_tflops is None):
        raise PlanError(f"GPU {gpu!r} is not in nanochat/plan.py's table ({', '.join(g.name for g in KNOWN_GPUS)}). "
                        f"Give its memory and its dense {'bf16' if dtype == torch.bfloat16 else 'fp32'} peak from its "
                        f"datasheet: --gpu-memory-gb GB --gpu-peak-tflops TFLOPS (or ${MEMORY_ENV}, ${PEAK_ENV})")
    if num_gpus is None or num_gpus < 1:
        raise PlanError(f"--num-gpus must be >= 1 for a plan of {gpu!r}, got {num_gpus}")
    peak = peak_tflops * 1e12 if peak_tflops else (entry.bf16_tflops if dtype == torch.bfloat16 else entry.fp32_tflops) * 1e12
    memory = (memory_gb or entry.memory_gb) * GB
    why = f"{entry.name} datasheet" if entry and not (memory_gb or peak_tflops) else "given memory/peak"
    return Hardware(entry.name if entry else gpu, num_gpus, memory, peak, _env_float(PRICE_ENV), why)


def detect_hardware(device, world_size, dtype, memory_gb=None, peak_tflops=None, need_peak=True):
    """Hardware of this process's device: a CUDA GPU's real memory and the table's peak (a name the
    table does not know: asks, as resolve_hardware, when need_peak; else no time estimate); a CPU's
    physical memory and measured matmul rate."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = memory_gb * GB if memory_gb else props.total_memory
        try:
            hw = resolve_hardware(props.name, world_size, memory / GB, peak_tflops, dtype)
            peak, why = hw.peak_flops, f"peak: {'given' if peak_tflops else 'the table'}"
        except PlanError:
            if need_peak:
                raise
            peak, why = None, "peak unknown (--gpu-peak-tflops)"
        return Hardware(props.name, world_size, memory, peak, _env_float(PRICE_ENV), f"{why}, memory of the device")
    from nanochat.common import get_peak_flops
    memory = memory_gb * GB if memory_gb else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    peak, what = get_peak_flops(device, dtype)
    if peak_tflops:
        peak, what = peak_tflops * 1e12, "given peak"
    if peak is None:
        raise PlanError(f"{device.type}: no peak FLOP/s known; give --gpu-peak-tflops")
    # the processes of a CPU run share one machine's memory
    return Hardware(f"{device.type} ({torch.get_num_threads()} threads)", world_size, memory / world_size, peak,
                    _env_float(PRICE_ENV), f"{what}; physical memory / {world_size} process(es)")


# -----------------------------------------------------------------------------
# the model's numbers

def base_config(depth, vocab_size, seq_len=2048, aspect_ratio=64, head_dim=128):
    """base_train's model from its one dial: width = depth x aspect ratio rounded up to whole heads."""
    from nanochat.gpt import GPTConfig
    n_embd = -(-depth * aspect_ratio // head_dim) * head_dim
    n_head = n_embd // head_dim
    return GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head, n_kv_head=n_head,
                     n_embd=n_embd)


def meta_model(config):
    """The GPT of `config` on the meta device: shapes and counts without memory."""
    from nanochat.gpt import GPT
    with torch.device("meta"):
        return GPT(config)


@dataclass
class Memory:
    """Bytes per device at the peak of a training step (the end of the forward, the backward's start)."""
    weights: float
    gradients: float
    optimizer: float
    weight_copies: float   # bf16 autocast's cached copies of the matmul weights
    activations: float
    logits: float          # the logits/loss buffer held from the forward
    forward_transient: float   # made and freed within the forward (CPU: one sweep block of the loss)
    backward_transient: float  # made at the backward's start, while everything is still held (the logits' gradient)
    device_batch_size: int
    accumulating: bool = False  # gradient accumulation: the gradients exist during the later micro-steps
    parts: dict = field(default_factory=dict)

    @property
    def held(self):
        return self.activations + self.logits

    @property
    def transient(self):
        """The step's peak above weights, optimizer state and weight copies, less what is held."""
        if self.accumulating:
            return self.gradients + max(self.forward_transient, self.backward_transient)
        return max(self.forward_transient, self.backward_transient, self.gradients - self.held)

    @property
    def total(self):
        """The step's peak: at the forward's end or the backward's start (everything held, plus the
        larger of the forward's last and the backward's first temporaries), or at the backward's end
        (every gradient made, the activations freed as it went; where the weights outweigh the
        activations). With gradient accumulation the later micro-steps run with every gradient there.
        Measured on CPU by scripts/plan_bench.py: dev/LOG.md."""
        return self.weights + self.optimizer + self.weight_copies + self.held + self.transient


def activation_bytes_per_token(config, dtype, compiled=False):
    """Bytes autograd keeps per token for the backward (see the module docstring), logits excluded."""
    C, L, H = config.n_embd, config.n_layer, config.n_head
    small = (4 + H) * 4 * L  # per layer: the norms' rstd and the attention's log-sum-exp, fp32
    if dtype == torch.bfloat16 and compiled:
        # assumed: inductor keeps the matmul inputs (norm output once, q, k, v, attention output, second
        # norm, c_fc output: 2 + 6 + 2 + 2 + 8 bytes) and the fp32 residuals (8), recomputing the rest
        return L * 28 * C + 14 * C + small
    if dtype == torch.bfloat16:
        return L * 46 * C + 14 * C + small  # + embedding output, first residual, final norm (fp32) and its bf16 copy
    return 4 * (L * 19 * C + 3 * C) + small  # + embedding output, first residual, final norm


def logits_bytes_per_token(config, device_type, dtype, compiled):
    """(held from the forward, made on top in the backward) per token."""
    V = config.vocab_size
    if device_type == "cpu" and dtype == torch.float32:
        # SoftcapCrossEntropy: d loss / d logits, computed in the forward; the backward's dzT.t() @ W
        # copies it once more (measured: the step's peak is the held bytes + 4 V per token)
        return 4 * V, 4 * V
    if compiled:
        return 2 * V, 4 * V  # assumed: inductor keeps the bf16 logits and recomputes the rest (dev/gpu_check.sh measures)
    return 8 * V, 8 * V


def optimizer_bytes(model, world_size):
    """Bytes of optimizer state on one rank, as nanochat/optim.py shards it: {"adamw": ..., "muon": ...}."""
    optimizers = model.setup_optimizers()
    adamw, muon = optimizers
    adam = sum(2 * 4 * math.ceil(p.numel() / world_size) for g in adamw.param_groups for p in g["params"])
    buckets = {}
    for g in muon.param_groups:
        for p in g["params"]:
            buckets.setdefault(tuple(p.shape), []).append(p)
    mu = sum(4 * math.ceil(len(ps) / world_size) * ps[0].numel() for ps in buckets.values())
    return dict(adamw=adam, muon=mu)


def memory_plan(config, device_batch_size, seq_len, world_size, dtype, device_type, compiled, model=None,
                grad_accum=1):
    """Memory per device of one training step at micro-batch (device_batch_size, seq_len), made of
    grad_accum micro-steps."""
    model = model or meta_model(config)
    total = model.num_params()
    matmul = total - model.transformer.wte.weight.numel()
    opt = optimizer_bytes(model, world_size)
    N = device_batch_size * seq_len
    held, extra = logits_bytes_per_token(config, device_type, dtype, compiled)
    forward_transient = 0
    if device_type == "cpu" and dtype == torch.float32:
        from nanochat.gpt import SWEEP_BLOCK_ELEMENTS
        forward_transient = 4 * min(config.vocab_size * N, SWEEP_BLOCK_ELEMENTS)  # one sweep block of the loss
    backward_transient = N * extra
    return Memory(weights=4 * total, gradients=4 * total, optimizer=opt["adamw"] + opt["muon"],
                  weight_copies=2 * matmul if dtype == torch.bfloat16 else 0,
                  activations=N * activation_bytes_per_token(config, dtype, compiled), logits=N * held,
                  forward_transient=forward_transient, backward_transient=backward_transient,
                  device_batch_size=device_batch_size, accumulating=grad_accum > 1, parts=opt)


# -----------------------------------------------------------------------------
# a stage's plan

DEFAULT_MFU = 0.40  # of the dense bf16 peak: what a well-tuned eager+compile run of this size reaches on H100s (assumed)


@dataclass
class StagePlan:
    stage: str
    params: int
    matmul_params: int
    tokens: float
    steps: int
    flops: float
    hardware: Hardware
    memory: Memory | None
    mfu: float
    note: str = ""

    @property
    def seconds(self):
        if not self.hardware.peak_flops:
            return None
        return self.flops / (self.hardware.count * self.hardware.peak_flops * self.mfu)

    @property
    def cost(self):
        if self.hardware.price is None or self.seconds is None:
            return None
        return self.seconds / 3600 * self.hardware.count * self.hardware.price

    @property
    def fits(self):
        return self.memory is None or self.memory.total <= HEADROOM * self.hardware.memory_bytes


def stage_plan(stage, config, tokens, steps, hardware, memory, mfu=DEFAULT_MFU, flops_per_token=None, note=""):
    """The plan of one stage: `tokens` trained over `steps` optimizer steps at FLOPs per token of
    GPT.estimate_flops (or `flops_per_token`, e.g. RL's sampling and training together)."""
    model = meta_model(config)
    total = model.num_params()
    fpt = flops_per_token if flops_per_token is not None else model.estimate_flops()
    return StagePlan(stage, total, total - model.transformer.wte.weight.numel(), tokens, steps, fpt * tokens,
                     hardware, memory, mfu, note)


RL_MFU = 0.01  # assumed (not measured): RL's time is mostly decoding small batches, bound by memory bandwidth


def rl_plan(tokens, model, kv_bytes):
    """start()'s plan arguments of chat_rl: `tokens` sampled and trained on (upper bound: every
    completion at full length), 2 FLOPs per matmul parameter to sample + the training step's."""
    matmul = model.num_params() - model.transformer.wte.weight.numel()
    return dict(tokens=tokens, flops_per_token=model.estimate_flops() + 2 * matmul, mfu=RL_MFU,
                note=f"tokens at full completion length (an upper bound); MFU {RL_MFU:.0%} assumed (decoding); the "
                     f"engine's KV cache ({fmt_bytes(kv_bytes)}) is not in the memory above")


def fmt_bytes(b):
    return f"{b / 2 ** 30:.2f} GiB" if b >= 2 ** 30 else f"{b / 2 ** 20:.1f} MiB"


def fmt_time(s):
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def format_plan(p):
    """The plan as lines of text."""
    hw = p.hardware
    peak = f"{hw.peak_flops / 1e12:.4g} TFLOP/s" if hw.peak_flops else "unknown"
    lines = [f"plan of {p.stage} on {hw.count} x {hw.name} ({hw.why}): {fmt_bytes(hw.memory_bytes)}, peak {peak} each"]
    lines.append(f"  parameters {p.params:,} (matmul {p.matmul_params:,}) | tokens {p.tokens:,.0f} | steps {p.steps:,} "
                 f"| FLOPs {p.flops:.4g}")
    if p.memory is not None:
        m = p.memory
        lines.append(f"  memory per device at micro-batch {m.device_batch_size}: weights {fmt_bytes(m.weights)} + "
                     f"optimizer {fmt_bytes(m.optimizer)} (Muon momentum {fmt_bytes(m.parts['muon'])}, AdamW moments "
                     f"{fmt_bytes(m.parts['adamw'])}, sharded over {hw.count}) + bf16 weight copies "
                     f"{fmt_bytes(m.weight_copies)} + activations {fmt_bytes(m.activations)} + logits/loss "
                     f"{fmt_bytes(m.logits)} + gradients (all: {fmt_bytes(m.gradients)}) and temporaries at the peak "
                     f"{fmt_bytes(m.transient)}{' (accumulating)' if m.accumulating else ''} = "
                     f"{fmt_bytes(m.total)} of {fmt_bytes(hw.memory_bytes)} "
                     f"({'fits' if p.fits else 'DOES NOT FIT'} within {HEADROOM:.0%})")
    cost, seconds = p.cost, p.seconds
    lines.append(f"  time at MFU {p.mfu:.0%}: {fmt_time(seconds) if seconds is not None else 'unknown'} | cost: " +
                 (f"${cost:,.2f} at ${hw.price:g}/GPU-hour" if cost is not None else f"set ${PRICE_ENV} ($/GPU-hour)"))
    if p.note:
        lines.append(f"  note: {p.note}")
    return "\n".join(lines)


def check_fits(plan, flag="--device-batch-size", what="the micro-batch"):
    """PlanError naming `flag` when the plan does not fit the device's memory."""
    if plan.fits:
        return
    m, hw = plan.memory, plan.hardware
    raise PlanError(f"{plan.stage} does not fit: {fmt_bytes(m.total)} per device at {what} {m.device_batch_size}, "
                    f"{hw.name} has {fmt_bytes(hw.memory_bytes)} (x {HEADROOM:.0%} usable). Lower {flag} "
                    f"(or --device-batch-size auto), or add GPUs (the optimizer state is sharded), or lower --depth")


def largest_fitting(candidate_sizes, plan_at):
    """The largest candidate whose plan_at(b).fits, else None (the planner's view of auto)."""
    return next((b for b in candidate_sizes if plan_at(b).fits), None)


# -----------------------------------------------------------------------------
# --device-batch-size auto

def candidates(rows_per_rank):
    """Micro-batch sizes to try, largest first: the powers of two that divide the rows of one rank's
    optimizer step, so that gradient accumulation (rows_per_rank // b micro-steps) is exact."""
    assert rows_per_rank >= 1, f"a rank's optimizer step has at least one row, got {rows_per_rank}"
    sizes, b = [], 1
    while rows_per_rank % b == 0 and b <= rows_per_rank:
        sizes.append(b)
        b *= 2
    return sizes[::-1]


def is_out_of_memory(e):
    """CUDA's OutOfMemoryError or the CPU allocator's refusal (a RuntimeError), also where another
    error wraps it (torch.compile re-raises errors of its generated code as its own)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in str(e) or \
                (isinstance(e, RuntimeError) and "can't allocate memory" in str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def search_device_batch(candidate_sizes, try_batch, agree=None, log=print):
    """The largest size for which try_batch(b) runs without running out of memory on every rank.
    try_batch(b) runs one real step at micro-batch b (and undoes it); agree(ok) -> bool is True when
    every rank's ok is (None: one process). Returns None when even the smallest does not fit."""
    for b in candidate_sizes:
        try:
            try_batch(b)
            ok = True
        except Exception as e:  # only out-of-memory backs off; any other error is a bug and goes up
            if not is_out_of_memory(e):
                raise
            ok = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the failed try allocated goes back before the next
        everyone = ok if agree is None else agree(ok)
        log(f"device batch size {b}: {'fits' if everyone else 'out of memory' + ('' if not ok else ' on another rank')}")
        if everyone:
            return b
    return None
