#!/usr/bin/env bash
# The whole nanochat pipeline, small, on a laptop or a 2-core box (CPU, or Apple MPS when present):
# tokenizer, a d2 base model, mid-training, SFT, RL, every eval, report.md, then the chat UI.
# 15-23 minutes on 2 idle cores (measured, fresh clone, on two CPUs); the model is tiny and mostly babbles, but it knows who it is.
#
#   NANOCHAT_DATA_DIR=../shared/data bash runcpu.sh    # with an offline data mirror (no downloads)
#   bash runcpu.sh                                      # downloads 4 pretraining shards (~400 MB) first
#   NO_UI=1 bash runcpu.sh                              # stop after report.md (CI)
#   PORT=8080 bash runcpu.sh                            # serve the UI on another port (default 8000)
#
# Environment: NANOCHAT_BASE_DIR (artifacts, default ~/.cache/nanochat), NANOCHAT_DATA_DIR, PORT,
# NO_UI, FORCE (1 redoes every stage). As in speedrun.sh, a stage that succeeded leaves
# <base dir>/runcpu/<stage>.done holding its command, and a re-run skips it while the command and
# its output are unchanged (a changed stage is redone, and so is every stage after it). The first
# failing stage stops the script with its name; each stage's output is in <base dir>/runcpu/<stage>.log.
# The stages run one process each and pick their device themselves (cuda > mps > cpu).
set -euo pipefail
CALLER_DIR=$PWD  # gets the copy of report.md
cd "$(dirname "$0")"

PORT=${PORT:-8000}
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}

# -----------------------------------------------------------------------------
# set-up: uv (from PyPI), a Rust toolchain for the tokenizer, the virtual environment (~2 min when fresh)

if ! command -v uv >/dev/null; then
    python3 -m pip install --user uv
    export PATH="$HOME/.local/bin:$PATH"
fi
if ! command -v cargo >/dev/null && [[ ! -d .venv ]]; then  # rustbpe is built from source by `uv sync`
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    source "$HOME/.cargo/env"
fi
uv sync --inexact  # --inexact: leave alone packages installed into .venv by hand
source .venv/bin/activate

STAGE_LABEL=runcpu
source scripts/stage.sh  # stage NAME OUTPUT COMMAND...: run it unless it already succeeded
B=$NANOCHAT_BASE_DIR
TAG=d2

stage report_reset "$B/report/header.json" python -m nanochat.report reset
if [[ -z ${NANOCHAT_DATA_DIR:-} ]]; then  # 3 training shards + the validation shard
    stage data - python -m nanochat.dataset -n 4
fi

# tokenizer (~1 min): 100M characters, vocab 8192. At this size a 32768 vocab would make the head most of
# the FLOPs; 8192 trains ~2x more tokens per second for ~10% fewer bytes per token.
stage tok_train "$B/tokenizer" python -m scripts.tok_train --max-chars=100000000 --vocab-size=8192
stage tok_eval - python -m scripts.tok_eval --val-docs=200

# base model (~11 min): depth 2, width 256 (2 heads of 128), context 512, 4K tokens a step, the lr
# decaying over the last half, for 10 minutes of training (the lr schedule spans that budget;
# evaluation is not counted). On 2 cores this beats depth 4 with 8K-token steps and a 20% warm-down
# (the config before issue 19) at the same wall clock; scripts/base_bench.py measures it, dev/LOG.md has the sweeps.
stage base_train "$B/base_checkpoints/$TAG" python -m scripts.base_train --depth=2 --aspect-ratio=128 \
    --max-seq-len=512 --device-batch-size=8 --total-batch-tokens=4096 --warmdown-ratio=0.5 \
    --max-train-minutes=10 --eval-every=-1 --eval-tokens=65536 --sample-every=-1
stage base_loss - python -m scripts.base_loss --model-tag=$TAG --device-batch-size=8 --eval-tokens=65536 \
    --max-new-tokens=16
stage base_eval - python -m scripts.base_eval --model-tag=$TAG --eval-items=8  # CORE on 8 items per task

# mid-training (~4 min) and SFT (~4 min): the identity conversations (tasks/identity.py) are made a
# large share of both mixtures, so that this small a model learns who it is.
stage mid_train "$B/mid_checkpoints/$TAG" python -m scripts.mid_train --model-tag=$TAG --device-batch-size=8 \
    --total-batch-tokens=8192 --num-iterations=60 --identity-size=3000 --spelling-size=1000 --eval-every=-1 \
    --eval-tokens=16384
stage chat_eval_mid - python -m scripts.chat_eval -i mid --model-tag=$TAG --eval-items=16 --max-new-tokens=96
stage chat_sft "$B/chat_checkpoints/$TAG" python -m scripts.chat_sft --model-tag=$TAG --device-batch-size=4 \
    --total-batch-rows=16 --num-iterations=100 --chat-size=1000 --identity-size=3000 --spelling-size=300 \
    --eval-every=-1 --eval-rows=64 --eval-tasks=ARC-Easy --eval-metrics-every=-1 --eval-items=32
stage chat_eval_sft - python -m scripts.chat_eval -i sft --model-tag=$TAG --eval-items=16 --max-new-tokens=96

# RL (~3 min) on the spelling task: GSM8K's reward is ~always 0 for a model this small, so every
# advantage would be 0 and nothing would be learned; counting letters gives it some signal.
stage chat_rl "$B/rl_checkpoints/$TAG" python -m scripts.chat_rl --model-tag=$TAG --task=spellingbee \
    --questions-per-step=4 --num-samples=4 --max-new-tokens=64 --device-batch-size=8 --num-iterations=15 \
    --eval-every=-1 --eval-items=16 --eval-samples=2 --log-samples=-1
stage chat_eval_rl - python -m scripts.chat_eval -i rl --model-tag=$TAG --eval-items=16 --max-new-tokens=96

python -m nanochat.report generate --copy-to "$CALLER_DIR"

# -----------------------------------------------------------------------------
# the chat UI (Ctrl-C stops it)

if [[ ${NO_UI:-0} == 1 ]]; then
    echo "[runcpu] finished: report.md. Chat with: python -m scripts.chat_web -i rl --model-tag $TAG --port $PORT"
    exit 0
fi
echo "[runcpu] finished: report.md. Chat UI at http://127.0.0.1:$PORT (Ctrl-C stops it)"
exec python -m scripts.chat_web -i rl --model-tag $TAG --port "$PORT" --num-slots 4
