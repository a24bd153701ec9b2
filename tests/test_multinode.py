"""
Many nodes on torchrun's own rendezvous (issue 16 item 4), simulated on one machine: two "nodes" of
one process each, two torchrun invocations with --nnodes 2 --node-rank 0/1 and a c10d rendezvous at
127.0.0.1:<free port> (tests/world_fixtures.py), as speedrun.sh launches them with NNODES > 1.
  - shared filesystem: base_train, chat_sft (and mid_train, slow) on two nodes give the losses of
    one process with two micro-batches: tests/test_resume_world_size.py, whose 2-process runs are
    these two-node runs (one set of runs for both items);
  - node-local disks (each node its own NANOCHAT_BASE_DIR, each holding the data and the tokenizer):
    refused by every rank at start-up, naming the nodes that do not see global rank 0's folder,
    leaving nothing behind (this file);
  - speedrun.sh builds the multi-node torchrun line from NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
    and NPROC_PER_NODE (this file, with torchrun replaced by a recorder).

    uv run pytest tests/test_multinode.py -q
"""

import os
import subprocess

from nanochat.checkpoint_manager import SOURCE_DIRS
from world_fixtures import BASE_FLAGS, REPO, two_nodes, write_pretrain


def test_node_local_disks_are_refused_clearly(tmp_path, tiny_tokenizer):
    envs = []
    for node in range(2):  # each "node" its own disk, with its own copy of the data and the tokenizer
        root = tmp_path / f"node{node}"
        tiny_tokenizer.save(str(root / "base" / "tokenizer"))
        write_pretrain(root / "data" / "pretrain")
        envs.append(dict(os.environ, NANOCHAT_BASE_DIR=str(root / "base"), NANOCHAT_DATA_DIR=str(root / "data"),
                         OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    results = two_nodes("scripts.base_train", envs, [*BASE_FLAGS, "--model-tag=local"])
    for code, output in results:
        assert code != 0, output[-3000:]
    assert "the nodes 1 " in results[0][1] and "do not see NANOCHAT_BASE_DIR" in results[0][1], results[0][1][-3000:]
    for _, output in results:  # torchrun prints its own traceback of the failed child; ours has none
        assert os.path.join(REPO, "nanochat") not in output and os.path.join(REPO, "scripts") not in output, output
    for env in envs:  # nothing half-made: no run folder, no probe file left behind
        assert not os.path.exists(os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS["base"], "local"))
        assert not [n for n in os.listdir(env["NANOCHAT_BASE_DIR"]) if n.startswith(".shared_probe")]


def test_speedrun_builds_the_multi_node_launch(tmp_path):
    """SPEEDRUN_TINY=1 bash speedrun.sh on one node, and on node 0 and node 1 of 2, in a copy of the script with a
    no-op virtual environment and torchrun, python and nvidia-smi that record their calls instead of
    running: the launch lines, and which node runs which stage."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "activate").write_text("")
    for name in ("speedrun.sh", "scripts/stage.sh"):
        (tree / name).write_text(open(os.path.join(REPO, name)).read())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("torchrun", "python"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n')
        (bin_dir / name).chmod(0o755)
    for nnodes, node in ((1, 0), (2, 0), (2, 1)):
        calls = tmp_path / f"calls{nnodes}{node}.log"
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(calls), SPEEDRUN_TINY="1",
                   NANOCHAT_BASE_DIR=str(tmp_path / f"base{nnodes}"), NANOCHAT_DATA_DIR=str(tmp_path / "data"),
                   NNODES=str(nnodes), NODE_RANK=str(node), MASTER_ADDR="10.0.0.5", MASTER_PORT="29555",
                   NPROC_PER_NODE="4", RUN_RL="0")
        out = subprocess.run(["bash", str(tree / "speedrun.sh")], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        lines = calls.read_text().splitlines()
        launches = [c for c in lines if c.startswith("torchrun")]
        assert len(launches) == 7, launches  # base_train, base_loss, base_eval, mid, its eval, sft, its eval
        launch = ("torchrun --standalone --nproc_per_node=4 " if nnodes == 1 else
                  f"torchrun --nnodes=2 --node-rank={node} --nproc-per-node=4 --rdzv-backend=c10d "
                  f"--rdzv-endpoint=10.0.0.5:29555 ")
        assert all(c.startswith(launch) for c in launches), launches
        singles = [c.split()[2] for c in lines if c.startswith("python -m")]
        if node == 0:  # node 0 runs the single-process stages on the shared filesystem, and the report
            assert singles == ["nanochat.report", "scripts.tok_train", "scripts.tok_eval", "nanochat.report"], singles
        else:
            assert singles == [] and "node 0 writes the report" in out.stdout, lines
    # each node keeps its own stage markers; only node 0's are in the usual place
    assert os.path.isfile(tmp_path / "base2" / "speedrun" / "base_train.done")
    assert os.path.isfile(tmp_path / "base2" / "speedrun" / "node1" / "base_train.done")
