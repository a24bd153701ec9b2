#!/usr/bin/env bash
# The reference nanochat run: a fresh 8xH100 node to a d20 chat model, report.md and the web UI.
# About 4 hours of the node (~$100 at ~$24/hour for 8xH100); the per-stage costs are below. These are
# estimates from the original nanochat on that hardware: this repository has not been timed on one yet.
#
#   bash speedrun.sh                                   # every stage, on all visible GPUs
#   screen -L -Logfile speedrun.log -S speedrun bash speedrun.sh   # the same, surviving a dropped ssh
#   RUN_RL=0 bash speedrun.sh                          # stop after SFT (RL is ~1 hour more)
#   WANDB_RUN=d20 bash speedrun.sh                     # log the training stages to wandb (`wandb login` first)
#   SPEEDRUN_TINY=1 NANOCHAT_DATA_DIR=... bash speedrun.sh   # every stage at toy size, CPU, 2 processes (CI)
#   PLAN=1 bash speedrun.sh                            # the plan only (scripts/plan_run.py): memory, time, cost
#   PLAN=1 PLAN_GPU=H100 NPROC=8 NANOCHAT_GPU_PRICE=3 bash speedrun.sh   # the same, for a node you do not have yet
#
# Environment
#   NANOCHAT_BASE_DIR   artifacts: tokenizer, checkpoints, results, report (default ~/.cache/nanochat)
#   NANOCHAT_DATA_DIR   an offline data mirror (README "Data, offline"): nothing is downloaded
#   NPROC               processes per node (default: every GPU nvidia-smi lists; 2 in tiny mode); NPROC_PER_NODE too
#   NNODES, NODE_RANK   nodes of a multi-node run and this node's rank (default 1 and 0; README "Many nodes")
#   MASTER_ADDR, MASTER_PORT   the rendezvous of a multi-node run: node 0's address, a free port (default 29500)
#   WANDB_RUN           wandb run name (default "dummy": no wandb)
#   RUN_RL              1 (default) runs RL on GSM8K and its eval; 0 skips them
#   FORCE               1 redoes every stage
#   NANOCHAT_GPU_PRICE  dollars per GPU-hour, for the cost line of the report
#
# Stages and re-runs. Each stage that succeeds leaves <base dir>/speedrun/<stage>.done holding its
# command line; a re-run skips a stage whose marker holds the same command, and runs it (and, since
# their inputs changed, every stage after it) otherwise. The first failing stage stops the script
# with its name; each stage's output is kept in <base dir>/speedrun/<stage>.log.
# The report's clock starts at the first run's `report reset` (a re-run keeps it, FORCE=1 restarts it).
set -euo pipefail
CALLER_DIR=$PWD  # gets the copy of report.md
cd "$(dirname "$0")"

TINY=${SPEEDRUN_TINY:-0}
RUN_RL=${RUN_RL:-1}
WANDB_RUN=${WANDB_RUN:-dummy}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}
export OMP_NUM_THREADS=1  # torchrun starts one process per GPU (or per core in tiny mode): no oversubscription

if [[ ${PLAN:-0} == 1 ]]; then  # each training stage's plan and the total: no set-up, no download, no training
    [[ -d .venv ]] || { echo "speedrun: PLAN=1 runs in the project's environment; make it first: uv sync" >&2; exit 1; }
    source .venv/bin/activate
    PLAN_ARGS=(--depth=20 --rl="$RUN_RL")  # the depth of the settings below
    [[ -z ${PLAN_GPU:-} ]] || PLAN_ARGS+=(--gpu="$PLAN_GPU")
    [[ -z ${NPROC:-} ]] || PLAN_ARGS+=(--num-gpus="$NPROC")
    exec python -m scripts.plan_run "${PLAN_ARGS[@]}"
fi

# -----------------------------------------------------------------------------
# set-up (~2 minutes on a fresh node): uv, a Rust toolchain for the tokenizer, the virtual environment

if ! command -v uv >/dev/null; then
    python3 -m pip install --user uv  # from PyPI
    export PATH="$HOME/.local/bin:$PATH"
fi
if [[ ! -d .venv || $TINY != 1 ]]; then  # tiny mode (CI) reuses the project's environment as it is
    if ! command -v cargo >/dev/null; then  # rustbpe is built from source by `uv sync`
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
        source "$HOME/.cargo/env"
    fi
    uv sync
fi
source .venv/bin/activate

if [[ $TINY == 1 ]]; then
    NPROC=${NPROC:-${NPROC_PER_NODE:-2}}
    DEVICE=(--device-type=cpu)
else
    NPROC=${NPROC:-${NPROC_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}}
    DEVICE=(--device-type=cuda)
    if [[ $NPROC -lt 1 ]]; then
        echo "speedrun: no GPU found (nvidia-smi -L lists none). Use runcpu.sh on a CPU machine, or SPEEDRUN_TINY=1." >&2
        exit 1
    fi
fi
# One node: torchrun --standalone. Several nodes (NNODES > 1): run this script on every node with the
# same NNODES, MASTER_ADDR and MASTER_PORT and its own NODE_RANK (0 .. NNODES-1); torchrun's c10d
# rendezvous at MASTER_ADDR:MASTER_PORT joins them (README "Many nodes"). NANOCHAT_BASE_DIR must be
# on a filesystem every node mounts (the training stages refuse node-local disks, naming the node).
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
if [[ $NNODES -gt 1 ]]; then
    if [[ -z ${MASTER_ADDR:-} ]]; then
        echo "speedrun: NNODES=$NNODES needs MASTER_ADDR (the address of node 0, reachable from every node)" >&2
        exit 1
    fi
    # join_timeout: the other nodes wait at the first rendezvous while node 0 downloads and trains the tokenizer
    TORCHRUN=(torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC" --rdzv-backend=c10d
              --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id="${RDZV_ID:-nanochat}"
              --rdzv-conf=join_timeout="${RDZV_JOIN_TIMEOUT:-7200}")
else
    TORCHRUN=(torchrun --standalone --nproc_per_node="$NPROC")
fi

STAGE_LABEL=speedrun
source scripts/stage.sh  # stage NAME OUTPUT COMMAND...: run it unless it already succeeded (see the top)

# -----------------------------------------------------------------------------
# settings: the reference run, and the tiny one that proves this script on a CPU

DEPTH=20
if [[ $TINY == 1 ]]; then
    DEPTH=2
    TOK=(--max-chars=2000000 --vocab-size=1024)
    TOK_EVAL=(--val-docs=50 --reference-timeout=2)
    BASE=(--depth=2 --max-seq-len=128 --device-batch-size=4 --total-batch-tokens=1024 --num-iterations=10
          --eval-every=-1 --eval-tokens=2048 --sample-every=-1)
    BASE_LOSS=(--device-batch-size=4 --eval-tokens=2048 --max-new-tokens=8)
    CORE=(--eval-items=4)
    MID=(--num-iterations=4 --device-batch-size=2 --total-batch-tokens=512 --eval-every=-1 --eval-tokens=1024
         --identity-size=20 --spelling-size=20)
    SFT=(--num-iterations=4 --device-batch-size=2 --total-batch-rows=4 --chat-size=20 --identity-size=20
         --spelling-size=10 --eval-every=-1 --eval-rows=4 --eval-tasks=ARC-Easy --eval-metrics-every=-1
         --eval-items=2)
    RL=(--questions-per-step=2 --num-samples=2 --max-new-tokens=16 --device-batch-size=2 --num-iterations=2
        --eval-every=-1 --eval-items=2 --eval-samples=2 --log-samples=-1)
    CHAT_EVAL=(--eval-items=4 --max-new-tokens=16 --batch-size=4)
else
    TOK=(--max-chars=2000000000)      # 2B characters of the first shards, vocab 32768
    TOK_EVAL=(--val-docs=1000)
    BASE=(--depth=$DEPTH --run="$WANDB_RUN")   # Chinchilla horizon: 20 tokens per parameter
    BASE_LOSS=(--device-batch-size=32)
    CORE=()                           # all 22 tasks, every item
    MID=(--run="$WANDB_RUN")
    SFT=(--run="$WANDB_RUN")
    RL=(--run="$WANDB_RUN")
    CHAT_EVAL=(--max-new-tokens=512)  # every item of every task
fi
TAG=d$DEPTH  # the run folder of every training stage: base_checkpoints/$TAG, mid_checkpoints/$TAG, ...

# -----------------------------------------------------------------------------
# the report's clock and header (GPUs, commit, code size)

stage0 report_reset "$NANOCHAT_BASE_DIR/report/header.json" python -m nanochat.report reset

# -----------------------------------------------------------------------------
# pretraining data: the first shards now (the tokenizer needs ~2B characters), the rest in the
# background while the tokenizer trains. A mirror (NANOCHAT_DATA_DIR) needs no download.

DOWNLOAD_PID=
if [[ -z ${NANOCHAT_DATA_DIR:-} ]]; then
    # Shards for the Chinchilla horizon of base_train: 20 tokens per parameter. The parameter count
    # is the model's own (the width base_train derives from --depth, a vocab of 32768); a FineWeb-Edu
    # shard holds ~250M characters and a 32768 vocab gives ~4.6 characters per token; BOS-aligned
    # packing drops the cropped ends of documents, so take 30% more (dev/LOG.md: measure at scale).
    NUM_SHARDS=$(python - "$DEPTH" <<'EOF'
import math, sys, torch
from nanochat.gpt import GPT, GPTConfig
depth = int(sys.argv[1])
n_embd = -(-depth * 64 // 128) * 128  # as scripts/base_train.py: depth x 64, rounded up to heads of 128
with torch.device("meta"):
    params = GPT(GPTConfig(sequence_len=2048, vocab_size=32768, n_layer=depth, n_head=n_embd // 128,
                           n_kv_head=n_embd // 128, n_embd=n_embd)).num_params()
chars = 20 * params * 4.6 * 1.3
print(min(1823, math.ceil(chars / 250e6) + 1))  # + the validation shard; 1823 shards exist
EOF
)
    echo "[speedrun] d$DEPTH needs $NUM_SHARDS shards (~100 MB each)"
    stage0 data_first - python -m nanochat.dataset -n 8
    if [[ $NODE_RANK == 0 ]]; then
        python -m nanochat.dataset -n "$NUM_SHARDS" > "$NANOCHAT_BASE_DIR/speedrun/data_rest.log" 2>&1 &
        DOWNLOAD_PID=$!
    fi
fi

# -----------------------------------------------------------------------------
# tokenizer (~2 minutes, CPU): BPE on 2B characters; eval prints bytes/token vs GPT-2 and GPT-4
# (look for ~4.6 bytes/token on the validation shard, close to GPT-4's on English text)

stage0 tok_train "$NANOCHAT_BASE_DIR/tokenizer" python -m scripts.tok_train "${TOK[@]}"
stage0 tok_eval - python -m scripts.tok_eval "${TOK_EVAL[@]}"

# -----------------------------------------------------------------------------
# base model (the bulk: ~3 hours on 8xH100, not measured here): d20 = width 1280, 477M parameters,
# 9.5B tokens (20 per parameter). Watch MFU in the step lines and val bpb falling in
# <base dir>/base_checkpoints/d20/loss.svg.

if [[ -n $DOWNLOAD_PID ]]; then
    echo "[speedrun] waiting for the pretraining shards (log: $NANOCHAT_BASE_DIR/speedrun/data_rest.log)"
    wait "$DOWNLOAD_PID" || { echo "[speedrun] FAILED at stage data_rest; see its log" >&2; exit 1; }
fi
stage base_train "$NANOCHAT_BASE_DIR/base_checkpoints/$TAG" "${TORCHRUN[@]}" -m scripts.base_train -- "${BASE[@]}" "${DEVICE[@]}"
# bits per byte on train and val (they should be close: no overfitting at 20 tokens/param) + samples
stage base_loss - "${TORCHRUN[@]}" -m scripts.base_loss -- --model-tag="$TAG" "${BASE_LOSS[@]}" "${DEVICE[@]}"
# CORE (22 in-context tasks, every item): GPT-2 (1.5B) scores ~0.26 on the DCLM bundle
stage base_eval - "${TORCHRUN[@]}" -m scripts.base_eval -- --model-tag="$TAG" "${CORE[@]}" "${DEVICE[@]}"

# -----------------------------------------------------------------------------
# mid-training (~10 minutes): conversations, identity, multiple choice, tool use; then its eval

stage mid_train "$NANOCHAT_BASE_DIR/mid_checkpoints/$TAG" "${TORCHRUN[@]}" -m scripts.mid_train -- --model-tag="$TAG" "${MID[@]}" "${DEVICE[@]}"
stage chat_eval_mid - "${TORCHRUN[@]}" -m scripts.chat_eval -- -i mid --model-tag="$TAG" "${CHAT_EVAL[@]}" "${DEVICE[@]}"

# -----------------------------------------------------------------------------
# SFT (~10 minutes): one pass over the curated chat mixture; then its eval (ChatCORE should rise)

stage chat_sft "$NANOCHAT_BASE_DIR/chat_checkpoints/$TAG" "${TORCHRUN[@]}" -m scripts.chat_sft -- --model-tag="$TAG" "${SFT[@]}" "${DEVICE[@]}"
stage chat_eval_sft - "${TORCHRUN[@]}" -m scripts.chat_eval -- -i sft --model-tag="$TAG" "${CHAT_EVAL[@]}" "${DEVICE[@]}"

# -----------------------------------------------------------------------------
# RL on GSM8K (~1 hour): watch pass@1 in rl_checkpoints/d20/loss.svg; then its eval (GSM8K rises)

FINAL=sft
if [[ $RUN_RL == 1 ]]; then
    stage chat_rl "$NANOCHAT_BASE_DIR/rl_checkpoints/$TAG" "${TORCHRUN[@]}" -m scripts.chat_rl -- --model-tag="$TAG" "${RL[@]}" "${DEVICE[@]}"
    stage chat_eval_rl - "${TORCHRUN[@]}" -m scripts.chat_eval -- -i rl --model-tag="$TAG" "${CHAT_EVAL[@]}" "${DEVICE[@]}"
    FINAL=rl
fi

# -----------------------------------------------------------------------------
# the report (always rewritten): report.md and report_files/ in <base dir>/report/ and where you ran this

if [[ $NODE_RANK != 0 ]]; then
    echo "[speedrun] node $NODE_RANK: finished; node 0 writes the report"
    exit 0
fi
python -m nanochat.report generate --copy-to "$CALLER_DIR"
echo
echo "[speedrun] finished: report.md. Talk to the model:"
if [[ $TINY == 1 ]]; then SERVE=(--device-type cpu); else SERVE=(--num-gpus "$NPROC"); fi
echo "    source .venv/bin/activate && python -m scripts.chat_web -i $FINAL --model-tag $TAG ${SERVE[*]} --host 0.0.0.0"
echo "  then open http://<this machine>:8000 (add --api-key to keep strangers out)"
