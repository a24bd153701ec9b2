"""
The whole pipeline end to end at toy size: `SPEEDRUN_TINY=1 bash speedrun.sh` on a data mirror this
test writes (tiny pretraining shards, chat/, gsm8k/, arc/, mmlu/, humaneval/, words/, core/ in the
layout of ../shared/data/MANIFEST.md), then:
  - every stage left its checkpoint (base, mid, sft, rl) and its marker;
  - report.md has every section, and the summary table real values where the run measured them;
  - a re-run skips every stage;
  - scripts.chat_web serves the final model to the OpenAI client.
What it does NOT prove: that the reference settings fit an 8xH100 node or reach the quoted scores.
About 5 minutes on 2 idle cores; part of the default suite (CI), since it is the only check that the
scripts, chained as a user runs them, still fit together.
"""

import json
import os
import random
import re
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the model learns to predict the next token from text and then it answers questions politely and "
         "correctly a small cat sat on red mat while water flows down hill under bright sun every day").split()
SPELLING_WORDS = ["strawberry", "banana", "mississippi", "cat", "letter", "bookkeeper", "rhythm", "aardvark"]


# -----------------------------------------------------------------------------
# a tiny data mirror

def _phrase(rng, lo=2, hi=6):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(lo, hi)))


def _parquet(path, rows, row_group_size=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def write_mirror(root, seed=0):
    rng = random.Random(seed)
    for shard in range(4):  # the last shard is the validation split
        docs = []
        for _ in range(160):
            sentences = [_phrase(rng, 4, 12).capitalize() + "." for _ in range(rng.randrange(3, 12))]
            if rng.random() < 0.2:
                a, b = rng.randrange(100), rng.randrange(100)
                sentences.append(f"{a} + {b} = {a + b}.")
            docs.append({"text": " ".join(sentences)})
        _parquet(os.path.join(root, "pretrain", f"shard_{shard:05d}.parquet"), docs, row_group_size=32)
    for split in ("train", "test"):
        chats = []
        for _ in range(40):
            p = _phrase(rng)
            chats.append({"messages": [{"role": "user", "content": f"Repeat: {p}"},
                                       {"role": "assistant", "content": p}], "source": "tiny"})
        _parquet(os.path.join(root, "chat", f"{split}.parquet"), chats)
        math_rows = []
        for _ in range(20):
            a, b = rng.randrange(1, 50), rng.randrange(1, 50)
            math_rows.append({"question": f"What is {a} + {b}?",
                              "answer": f"{a}+{b} = <<{a}+{b}={a + b}>>{a + b}.\n#### {a + b}"})
        _parquet(os.path.join(root, "gsm8k", "main", f"{split}.parquet"), math_rows)
    for subset in ("ARC-Easy", "ARC-Challenge"):
        for split in ("train", "validation", "test"):
            rows = []
            for k in range(8):
                choices = [_phrase(rng, 1, 3) for _ in range(4)]
                rows.append({"id": f"{subset}_{split}_{k}", "question": f"Which one is {choices[k % 4]}?",
                             "choices": {"text": choices, "label": list("ABCD")}, "answerKey": "ABCD"[k % 4]})
            _parquet(os.path.join(root, "arc", subset, f"{split}.parquet"), rows)
    for split in ("dev", "validation", "test"):
        rows = [{"question": f"Pick {_phrase(rng, 1, 2)}.", "subject": "tiny_subject",
                 "choices": [_phrase(rng, 1, 2) for _ in range(4)], "answer": k % 4} for k in range(8)]
        _parquet(os.path.join(root, "mmlu", "all", f"{split}.parquet"), rows)
    humaneval = [{"task_id": f"HumanEval/{k}", "prompt": f"def add{k}(a, b):\n    \"\"\"Add two numbers.\"\"\"\n",
                  "canonical_solution": "    return a + b\n", "entry_point": f"add{k}",
                  "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"} for k in range(4)]
    _parquet(os.path.join(root, "humaneval", "test.parquet"), humaneval)
    os.makedirs(os.path.join(root, "words"))
    with open(os.path.join(root, "words", "words_alpha.txt"), "wb") as f:
        f.write("".join(w + "\r\n" for w in SPELLING_WORDS).encode())
    core = os.path.join(root, "core")
    os.makedirs(os.path.join(core, "eval_data", "tiny"))
    with open(os.path.join(core, "core.yaml"), "w") as f:
        f.write("icl_tasks:\n"
                "- label: tiny_mc\n  dataset_uri: tiny/mc.jsonl\n  num_fewshot: [1]\n"
                "  icl_task_type: multiple_choice\n  continuation_delimiter: \" \"\n"
                "- label: tiny_lm\n  dataset_uri: tiny/lm.jsonl\n  num_fewshot: [0]\n"
                "  icl_task_type: language_modeling\n  continuation_delimiter: \" \"\n")
    with open(os.path.join(core, "eval_meta_data.csv"), "w") as f:
        f.write("Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
                "tiny_mc,tiny,multiple choice,1,6,25,,a tiny task\ntiny_lm,tiny,language modeling,0,6,0,,a tiny task\n")
    with open(os.path.join(core, "eval_data", "tiny", "mc.jsonl"), "w") as f:
        for _ in range(6):
            choices = [_phrase(rng, 1, 3) for _ in range(4)]
            f.write(json.dumps({"query": _phrase(rng), "choices": choices, "gold": rng.randrange(4)}) + "\n")
    with open(os.path.join(core, "eval_data", "tiny", "lm.jsonl"), "w") as f:
        for _ in range(6):
            f.write(json.dumps({"context": _phrase(rng), "continuation": rng.choice(WORDS)}) + "\n")
    return root


# -----------------------------------------------------------------------------
# the run

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    data, base, cwd = tmp / "data", tmp / "base", tmp / "cwd"
    write_mirror(str(data))
    cwd.mkdir()
    env = dict(os.environ, SPEEDRUN_TINY="1", NANOCHAT_DATA_DIR=str(data), NANOCHAT_BASE_DIR=str(base),
               PYTHONUNBUFFERED="1")
    for var in ("FORCE", "RUN_RL", "NPROC", "WANDB_RUN"):
        env.pop(var, None)
    t0 = time.time()
    out = subprocess.run(["bash", os.path.join(REPO, "speedrun.sh")], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, f"speedrun failed:\n{out.stdout[-6000:]}\n{out.stderr[-4000:]}"
    print(f"tiny speedrun: {time.time() - t0:.0f}s")
    return {"base": base, "cwd": cwd, "env": env, "stdout": out.stdout}


def test_every_stage_left_its_checkpoint(tiny_run):
    from nanochat.checkpoint_manager import SOURCE_DIRS, list_steps

    for source in ("base", "mid", "sft", "rl"):
        folder = tiny_run["base"] / SOURCE_DIRS[source] / "d2"
        assert list_steps(str(folder)), f"no {source} checkpoint in {folder}"
    markers = sorted(p.stem for p in (tiny_run["base"] / "speedrun").glob("*.done"))
    assert markers == sorted(["report_reset", "tok_train", "tok_eval", "base_train", "base_loss", "base_eval",
                              "mid_train", "chat_eval_mid", "chat_sft", "chat_eval_sft", "chat_rl", "chat_eval_rl"])
    assert (tiny_run["base"] / "tokenizer" / "token_bytes.pt").is_file()


def test_report_has_every_section_and_real_values(tiny_run):
    from nanochat import report

    text = (tiny_run["cwd"] / "report.md").read_text()
    assert text == (tiny_run["base"] / "report" / "report.md").read_text()
    for title, _, _ in report.SECTIONS:
        assert f"\n## {title}\n" in text, title
        body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert "did not run" not in body, f"{title} did not run"
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tiny_run["cwd"] / ref).is_file(), ref
    summary = text.split("## Summary", 1)[1]
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5:
            rows[cells[0]] = cells[1:]
    # every score with its 95% interval and item count ("43.8 [23.1, 66.8] n=16"), the interval around it
    estimate = re.compile(r"^(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\] n=(\d+)$")

    def is_estimate(cell):
        m = estimate.match(cell)
        return bool(m) and float(m[2]) <= float(m[1]) <= float(m[3]) and int(m[4]) > 0

    assert is_estimate(rows["CORE"][0]), rows["CORE"]
    for metric in ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"):
        assert rows[metric][0] == "-" and all(is_estimate(c) for c in rows[metric][1:]), (metric, rows[metric])
    assert "**Who are you?**" in text.split("## Samples of the final model", 1)[1]


def test_rerun_skips_every_stage(tiny_run):
    out = subprocess.run(["bash", os.path.join(REPO, "speedrun.sh")], cwd=tiny_run["cwd"], env=tiny_run["env"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ran = re.findall(r"\[speedrun\] (\w+): done in", out.stdout)
    assert ran == [], f"re-run redid {ran}"
    assert out.stdout.count("skipped") == 12


def test_chat_server_answers_an_openai_client(tiny_run):
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "-i", "rl", "--port", str(port),
                               "--device-type", "cpu", "--num-slots", "2"], cwd=REPO, env=tiny_run["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
        deadline = time.time() + 120
        while True:
            try:
                reply = client.chat.completions.create(model="nanochat", max_tokens=8, temperature=0.0,
                                                       messages=[{"role": "user", "content": "Who are you?"}])
                break
            except Exception:  # the server is still loading: connection refused
                assert server.poll() is None, f"chat_web exited:\n{server.stdout.read()[-3000:]}"
                assert time.time() < deadline, "chat_web did not answer within 120 s"
                time.sleep(1)
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens >= 1
    finally:
        server.terminate()
        server.wait(timeout=30)
