"""
scripts/chat_eval.py end to end: a tiny chat checkpoint and a tiny data mirror made here, evaluated
as a subprocess; the categorical accuracy it reports must equal an in-process reference, and its
results record (nanochat.runlog) must hold the metrics it prints.
"""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.checkpoint_manager import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.stats import bootstrap_centered_mean, fmt_estimate, wilson_interval
from nanochat.task_eval import evaluate_categorical

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("chat_eval")
    base, data = root / "base", root / "data"
    tiny_tokenizer.save(str(base / "tokenizer"))
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=256, vocab_size=tiny_tokenizer.get_vocab_size(), n_layer=2, n_head=2,
                       n_kv_head=1, n_embd=32)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():  # random (not zero) output projections, so the letters' logits differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(str(base / "chat_checkpoints" / "d2"), 10, model.state_dict(), None,
                    {"model_config": config.__dict__, "step": 10})
    arc = [{"id": f"q{i}", "question": f"Which number is {i}?",
            "choices": {"text": ["one", "two", "three", "four"], "label": ["A", "B", "C", "D"]},
            "answerKey": "ABCD"[i % 4]} for i in range(6)]
    write_parquet(str(data / "arc" / "ARC-Easy" / "test.parquet"), arc)
    gsm = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
           for i in range(3)]
    write_parquet(str(data / "gsm8k" / "main" / "test.parquet"), gsm)
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_DATA_DIR=str(data), OMP_NUM_THREADS="1")
    return model.eval(), env, base


def run_chat_eval(env, *flags):
    return subprocess.run([sys.executable, "-m", "scripts.chat_eval", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_chat_eval_end_to_end(chat_setup, tiny_tokenizer, monkeypatch):
    model, env, base = chat_setup
    proc = run_chat_eval(env, "-i", "sft", "-a", "ARC-Easy,GSM8K", "--eval-items", "5",
                         "--max-new-tokens", "8", "--device-type", "cpu", "--dtype", "float32")  # as the reference below
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ChatCORE (over 2 of 6 tasks)" in proc.stdout
    printed = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line: the metrics as JSON
    # one results record per (source, model, step), through nanochat.runlog
    with open(base / "results" / "chat_eval_sft_d2_000010.json") as f:
        record = json.load(f)
    assert (record["stage"], record["source"], record["model_tag"], record["step"]) == ("chat_eval", "sft", "d2", 10)
    assert record["metrics"] == printed and set(printed) == {"ARC-Easy", "GSM8K", "ChatCORE"}
    tasks = record["extra"]["tasks"]
    assert tasks["ARC-Easy"]["total"] == 5 and tasks["GSM8K"]["total"] == 3
    assert record["config"]["eval_items"] == 5
    assert printed["ChatCORE"] == pytest.approx((tasks["ARC-Easy"]["centered"] + printed["GSM8K"]) / 2)
    # every accuracy with its item count and 95% interval: Wilson per task, a seeded bootstrap for ChatCORE
    intervals = record["extra"]["intervals"]
    for name in ("ARC-Easy", "GSM8K"):
        r = tasks[name]
        assert (intervals[name]["low"], intervals[name]["high"]) == wilson_interval(r["correct"], r["total"])
        assert fmt_estimate(r["accuracy"], wilson_interval(r["correct"], r["total"]), r["total"]) in proc.stdout
    counts = [(tasks[name]["correct"], tasks[name]["total"], tasks[name]["baseline"]) for name in ("ARC-Easy", "GSM8K")]
    assert (intervals["ChatCORE"]["low"], intervals["ChatCORE"]["high"]) == bootstrap_centered_mean(counts)
    assert intervals["ChatCORE"]["n"] == 8
    assert fmt_estimate(printed["ChatCORE"], bootstrap_centered_mean(counts), 8, percent=False) in proc.stdout

    # the same accuracy in-process, from the same weights and data, on the reference path
    monkeypatch.setenv("NANOCHAT_DATA_DIR", env["NANOCHAT_DATA_DIR"])
    from tasks.arc import ARC
    correct, total = evaluate_categorical(model, tiny_tokenizer, ARC("ARC-Easy", "test"), max_items=5, fast=False)
    assert (tasks["ARC-Easy"]["correct"], total) == (correct, 5)
    assert printed["ARC-Easy"] == correct / 5  # accuracies are fractions


def test_chat_eval_bad_input_gives_clear_errors(chat_setup):
    _, env, _ = chat_setup
    proc = run_chat_eval(env, "-i", "sft", "-a", "ARC-Easy,Trivia")
    assert proc.returncode != 0 and "unknown task" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_chat_eval(env, "-i", "sft", "--max-per-task", "0")  # the old name still works, and says the new one
    assert proc.returncode != 0 and "--eval-items must be" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_chat_eval(env, "-i", "rl", "--device-type", "cpu")
    assert proc.returncode == 1 and "cannot load the rl checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
