"""
Helpers of the multi-process tests (test_resume_world_size, test_multinode): tiny pretraining
shards, base_train flags of a 12-step run that saves at step 6, and the launches: one process,
torchrun --standalone with N processes, or two "nodes" of one process on torchrun's c10d rendezvous
at 127.0.0.1 (as speedrun.sh launches a multi-node run).

    write_pretrain(folder)                                  # 2 train shards of 3 row groups, 1 val shard
    out = launch("scripts.base_train", env, flags, nproc)   # nproc 1 or 2 (standalone); asserts success
    [(code, output), (code, output)] = two_nodes("scripts.chat_sft", [env0, env1], flags)
    envs = stage_envs(root, tokenizer)                      # {"base": env, "sft": env, "mid": env}
    folder, flag = run_folder(env, "sft", "one"), tag_flag(env, "sft", "one")   # a run's folder, its --model-tag
"""

import os
import random
import socket
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from chat_stage_fixtures import make_base_dir, stage_env, with_tag, write_mirror
from nanochat.checkpoint_manager import SOURCE_DIRS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T, STEPS, CUT = 2, 32, 12, 6
WORDS = "the model learns to predict the next token from text and then it answers questions politely".split()
BASE_FLAGS = ["--depth=1", "--aspect-ratio=32", "--head-dim=16", f"--max-seq-len={T}", f"--device-batch-size={B}",
              f"--total-batch-tokens={2 * B * T}", f"--eval-tokens={2 * B * T}", "--sample-every=-1", "--run=dummy",
              "--dtype=float32", f"--num-iterations={STEPS}", f"--save-every={CUT}", f"--eval-every={CUT}"]
CHAT_COMMON = ["--source=base", "--identity-size=20", "--spelling-size=10", "--dtype=float32", "--init-lr-frac=1.0",
               "--run=dummy", f"--num-iterations={STEPS}", f"--save-every={CUT}", f"--eval-every={CUT}"]
SFT_FLAGS = [*CHAT_COMMON, "--chat-size=-1", "--eval-rows=8", "--eval-tasks=", "--device-batch-size=1",
             "--total-batch-rows=2"]
MID_FLAGS = [*CHAT_COMMON, "--device-batch-size=1", "--total-batch-tokens=128", "--max-seq-len=64",
             "--eval-tokens=256"]
# fp32; 2 ranks and 1 process with 2 micro-steps differ only in the order of the gradient sums
# (tests/test_resume_world_size.py says why this bound)
TOL = dict(rel=1e-5, abs=1e-6)


def write_pretrain(folder, seed=0):
    """2 train shards of 3 row groups of documents of varied length, 1 val shard of 2 row groups."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for s, num_groups in enumerate([3, 3, 2]):
        with pq.ParquetWriter(folder / f"shard_{s:05d}.parquet", pa.schema([("text", pa.string())])) as writer:
            for _ in range(num_groups):
                texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 30))) + "." for _ in range(16)]
                writer.write_table(pa.table({"text": texts}))


def launch(module, env, flags, nproc=1):
    """Run `module` on nproc processes (torchrun --standalone when nproc > 1); asserts it succeeded."""
    cmd = [sys.executable, "-m", module, *flags] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module,
        "--", *flags]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{module} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(module, envs, flags):
    """Run `module` as 2 nodes x 1 process (envs: node 0's and node 1's environment); [(exit status, output)]."""
    port = free_port()
    procs = []
    for node, env in enumerate(envs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               f"--rdzv-id=test{port}", "-m", module, "--", *flags]
        log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a node that is not read never blocks
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
    results = []
    for proc, log in procs:
        code = proc.wait(timeout=600)
        log.seek(0)
        results.append((code, log.read()))
        log.close()
    return results


def stage_envs(root, tokenizer):
    """Environments under root: base_train's (tokenizer, tiny shards) and the chat stages' (a tiny mirror
    and a d1 base model): {"base": env, "sft": env, "mid": env}."""
    tokenizer.save(str(root / "base" / "tokenizer"))
    write_pretrain(root / "data" / "pretrain")
    base = dict(os.environ, NANOCHAT_BASE_DIR=str(root / "base"), NANOCHAT_DATA_DIR=str(root / "data"),
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    chat = stage_env(make_base_dir(root / "chat_base", tokenizer), write_mirror(root / "chat_data"))
    return dict(base=base, sft=chat, mid=chat)


def run_folder(env, stage, name):
    """The run folder of run `name` of a stage ("base", "sft", "mid"): its model tag is <stage>_<name>."""
    return os.path.join(env["NANOCHAT_BASE_DIR"], SOURCE_DIRS[stage], f"{stage}_{name}")


def tag_flag(env, stage, name):
    """--model-tag=<stage>_<name>; for a chat stage the tiny base model is linked under that tag first."""
    return f"--model-tag={stage}_{name}" if stage == "base" else with_tag(env, f"{stage}_{name}")
