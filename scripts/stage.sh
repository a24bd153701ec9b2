# The stage() function of speedrun.sh and runcpu.sh, sourced by both (not a script to run).
#
#   STAGE_LABEL=speedrun; source scripts/stage.sh   # markers and logs in $NANOCHAT_BASE_DIR/speedrun/
#   stage NAME OUTPUT COMMAND...
#
# Runs COMMAND unless it already succeeded: a stage that succeeds leaves
# $NANOCHAT_BASE_DIR/$STAGE_LABEL/NAME.done holding its command line, and a re-run skips it while the
# marker holds the same command and OUTPUT exists. OUTPUT ("-": none) is the folder or file the stage
# makes: a redo deletes it first, so that no checkpoint of an earlier run (a later step) is picked up
# downstream. Once one stage runs, every later one runs too (their inputs changed); FORCE=1 redoes
# all. The first failing stage stops the calling script with its name; each stage's output is kept
# in $NANOCHAT_BASE_DIR/$STAGE_LABEL/NAME.log.
#
# Several nodes (NODE_RANK set and > 0, the same base dir on a shared filesystem): node 0 keeps the
# markers and logs above and alone deletes a stage's OUTPUT; node N keeps its own in
# $STAGE_LABEL/node<N>/ and decides on its markers alone (a torchrun stage ends on every node or on
# none). `stage0 ...` is a stage that node 0 alone runs (tokenizer, data, report): the other nodes
# skip it and wait for it at the next torchrun rendezvous.

if [[ ${NODE_RANK:-0} != 0 ]]; then STAGE_LABEL="$STAGE_LABEL/node$NODE_RANK"; fi
mkdir -p "$NANOCHAT_BASE_DIR/$STAGE_LABEL"
redo=${FORCE:-0}
stage() {
    local name=$1 output=$2; shift 2
    local marker="$NANOCHAT_BASE_DIR/$STAGE_LABEL/$name.done" log="$NANOCHAT_BASE_DIR/$STAGE_LABEL/$name.log"
    local cmd; cmd=$(printf '%q ' "$@")
    [[ ${NODE_RANK:-0} == 0 ]] || output=-  # node 0 owns the outputs (and deletes them for a redo)
    if [[ $redo != 1 && -f $marker && "$(cat "$marker")" == "$cmd" && ( $output == - || -e $output ) ]]; then
        echo "[$STAGE_LABEL] $name: done before, skipped (FORCE=1 redoes it)"
        return
    fi
    redo=1
    rm -f "$marker"
    [[ $output == - ]] || rm -rf "$output"
    echo "[$STAGE_LABEL] $name: $cmd"
    local t0=$SECONDS
    if "$@" 2>&1 | tee "$log"; then
        echo "$cmd" > "$marker"
        echo "[$STAGE_LABEL] $name: done in $((SECONDS - t0))s"
    else
        local rc=${PIPESTATUS[0]}
        echo "[$STAGE_LABEL] FAILED at stage $name (exit status $rc); its output is in $log" >&2
        exit 1
    fi
}

stage0() {
    if [[ ${NODE_RANK:-0} == 0 ]]; then
        stage "$@"
    else
        echo "[$STAGE_LABEL] $1: on node 0 only"
    fi
}
