#!/usr/bin/env bash
# One short run that proves the CUDA paths of this repository on a lent GPU machine (one H100/H200,
# PyTorch installed, no network), in at most ~8 minutes, on tiny synthetic data made here; every
# figure goes into one file, $GPU_CHECK_OUT (default $OUT/gpu_check.jsonl, else ./gpu_check.jsonl):
#   1. base_train d12, ~100 steps, torch.compile + bf16, --device-batch-size auto: MFU vs the bf16 peak
#   2. the auto micro-batch and the planner's memory estimate vs torch.cuda.max_memory_allocated at d20, d26
#   3. a few steps of mid_train, chat_sft and chat_rl (from the d12 base), chat_eval on a few items
#   4. Engine decode tok/s at 1 and 16 sequences; chat_web answering one request
# A step that fails is recorded ({"step": ..., "ok": false, "rc": ...}) and the next one still runs.
#
#   bash dev/gpu_check.sh                  # on the GPU machine, from the repository root
#   GPU_CHECK_CPU=1 bash dev/gpu_check.sh  # the same steps on CPU at toy sizes (proves the script, ~minutes)
#
# Wheels (the GPU machine has no network). Build them here, into dev/wheels/ (not committed):
#   uv build --wheel --out-dir dev/wheels                      # nanochat + the rustbpe extension (maturin)
#   python3 -m pip wheel --wheel-dir dev/wheels fastapi uvicorn tokenizers pyarrow pytest   # + their dependencies
# (pytest: tests/test_pipeline.py makes the data). Built here on 2026-12-02: the nanochat wheel is
# abi3 (CPython >= 3.10), linux_x86_64, 1.4 MB with rustbpe inside; the whole folder is 69 MB, 45 of them
# pyarrow: leave out what the machine already has (the device tool carries at most 64 MiB; pass the
# folder with carry ["dev/wheels"], or untracked in the tree). The machine's Python must be 3.11 for
# the cp311 wheels (pyarrow, pydantic_core, pyyaml) or pip wheel them for its version (--python-version).
# On the machine this script installs from it, offline, only what is not importable already:
#   pip install --no-index --find-links dev/wheels <missing>
set -uo pipefail
cd "$(dirname "$0")/.."
OUTFILE=${GPU_CHECK_OUT:-${OUT:-.}/gpu_check.jsonl}
mkdir -p "$(dirname "$OUTFILE")"
: > "$OUTFILE"
T_START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-480}  # stop starting steps after this (the lent machine's 8 minutes)

# -----------------------------------------------------------------------------
# environment: this tree's code, the wheels for what the machine lacks

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && PY=.venv/bin/python
missing=$($PY - <<'EOF'
import importlib.util
print(" ".join(p for m, p in [("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("rustbpe", "nanochat"),
      ("tokenizers", "tokenizers"), ("pyarrow", "pyarrow"), ("pytest", "pytest")] if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n $missing ]]; then
    echo "[gpu_check] installing from dev/wheels: $missing"
    $PY -m pip install --no-index --find-links dev/wheels $missing || { echo "[gpu_check] no wheels for: $missing (see the top of this file)" >&2; exit 1; }
fi

WORK=$(mktemp -d)
export NANOCHAT_BASE_DIR=$WORK/base NANOCHAT_DATA_DIR=$WORK/data PYTHONUNBUFFERED=1
if [[ ${GPU_CHECK_CPU:-0} == 1 ]]; then
    DEV=(--device-type=cpu); DEPTH=2; PLAN_B=8; export NANOCHAT_AUTO_DTYPE=float32 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    BASE=(--depth=2 --max-seq-len=128 --total-batch-tokens=1024 --num-iterations=5 --no-compile --dtype=float32
          --device-batch-size=auto)
    MEM=(--depths=1,2 --seq-len=128 --vocab=1024 --rows=8)
    MID=(--num-iterations=3 --device-batch-size=2 --total-batch-tokens=512)
    SFT=(--num-iterations=3 --device-batch-size=2 --total-batch-rows=4)
else
    DEV=(--device-type=cuda); DEPTH=12; PLAN_B=32
    BASE=(--depth=12 --max-seq-len=2048 --total-batch-tokens=131072 --num-iterations=100 --compile --dtype=bfloat16
          --device-batch-size=auto)
    MEM=(--depths=20,26)
    MID=(--num-iterations=5 --total-batch-tokens=65536)
    SFT=(--num-iterations=5 --total-batch-rows=16)
fi
TAG=d$DEPTH
COMMON=(--eval-every=-1 --save-every=-1 --run=dummy)

# step NAME TIMEOUT_S COMMAND...: run it with a time limit, record ok/rc/seconds, keep its output
step() {
    local name=$1 limit=$2; shift 2
    if (( SECONDS - T_START > BUDGET )); then
        echo "{\"step\": \"$name\", \"ok\": false, \"skipped\": \"over the ${BUDGET}s budget\"}" >> "$OUTFILE"
        return
    fi
    echo "[gpu_check] $name: $*"
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
    tail -n 5 "$WORK/$name.log"
    echo "{\"step\": \"$name\", \"ok\": $([[ $rc == 0 ]] && echo true || echo false), \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$OUTFILE"
    if [[ $rc != 0 ]]; then
        echo "[gpu_check] $name FAILED (exit $rc); its last lines:" >&2
        tail -n 30 "$WORK/$name.log" >&2
        mkdir -p "$(dirname "$OUTFILE")/gpu_check_logs" && cp "$WORK/$name.log" "$(dirname "$OUTFILE")/gpu_check_logs/"
    fi
}

$PY - <<EOF >> "$OUTFILE"
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps(dict(step="machine", torch=torch.__version__, cuda=torch.version.cuda,
                      gpu=torch.cuda.get_device_name(0) if cuda else None, gpus=torch.cuda.device_count())))
EOF

# -----------------------------------------------------------------------------
# data, tokenizer, the plan

step data 60 $PY dev/gpu_check.py data "$NANOCHAT_DATA_DIR"
step tok_train 120 $PY -m scripts.tok_train --max-chars=2000000 --vocab-size=1024
# the plan at an explicit micro-batch (no search: the run below measures it), compared with the run's MFU
step plan 60 $PY -m scripts.base_train --dry-run "${BASE[@]}" --device-batch-size=$PLAN_B "${DEV[@]}" --run=dummy
grep -E "^(plan of|  memory|  time|--device-batch-size)" "$WORK/plan.log" | $PY -c 'import json,sys; print(json.dumps(dict(step="plan_d12", lines=sys.stdin.read().splitlines())))' >> "$OUTFILE"

# -----------------------------------------------------------------------------
# base_train d12 (compile, bf16, auto micro-batch), then the auto batch and memory at d20/d26

step base_train 240 $PY -m scripts.base_train "${BASE[@]}" "${DEV[@]}" "${COMMON[@]}" --eval-tokens=65536 --sample-every=-1
grep -E "device-batch-size auto|device batch size|compile|^final" "$WORK/base_train.log" | head -20 \
    | $PY -c 'import json,sys; print(json.dumps(dict(step="base_train_lines", lines=sys.stdin.read().splitlines())))' >> "$OUTFILE"
step memory 150 $PY dev/gpu_check.py memory "$OUTFILE" "${MEM[@]}" "${DEV[@]}"

# -----------------------------------------------------------------------------
# post-training, a few steps each, evaluation, inference, serving

step mid_train 90 $PY -m scripts.mid_train --model-tag=$TAG "${MID[@]}" "${DEV[@]}" "${COMMON[@]}" --eval-tokens=4096 \
    --identity-size=20 --spelling-size=20
step chat_sft 90 $PY -m scripts.chat_sft --model-tag=$TAG "${SFT[@]}" "${DEV[@]}" "${COMMON[@]}" --chat-size=20 \
    --identity-size=20 --spelling-size=10 --eval-rows=4 --eval-tasks=ARC-Easy --eval-metrics-every=-1 --eval-items=2
step chat_rl 90 $PY -m scripts.chat_rl --model-tag=$TAG --questions-per-step=2 --num-samples=2 --max-new-tokens=16 \
    --device-batch-size=2 --num-iterations=2 --eval-items=2 --eval-samples=2 --log-samples=-1 "${DEV[@]}" \
    --eval-every=-1 --run=dummy
step chat_eval 90 $PY -m scripts.chat_eval -i sft --model-tag=$TAG -a ARC-Easy,GSM8K --eval-items=4 --max-new-tokens=16 \
    --batch-size=4 "${DEV[@]}"
step decode 90 $PY dev/gpu_check.py decode "$OUTFILE" --tag=$TAG "${DEV[@]}"
step chat_web 120 $PY dev/gpu_check.py web "$OUTFILE" --tag=$TAG "${DEV[@]}"
$PY dev/gpu_check.py collect "$OUTFILE" > /dev/null
echo "{\"step\": \"total\", \"seconds\": $((SECONDS - T_START))}" >> "$OUTFILE"
echo "[gpu_check] done in $((SECONDS - T_START))s: $OUTFILE"
rm -rf "$WORK"
