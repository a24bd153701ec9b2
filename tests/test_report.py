"""
nanochat/report.py on synthetic results: every section is rendered, the summary table holds the
recorded values and dashes exactly where nothing was measured, a stage without a record says "did
not run", loss curves are copied and referenced relatively (in the report folder and in the copy),
reset hides older results, the latest record per (stage, source) wins, the cost follows the GPUs and
the price, and the sample replies of a real (tiny) chat checkpoint equal a naive greedy decode.
"""

import json
import os
import re
import time

import pytest
import torch

from nanochat import report
from nanochat.checkpoint_manager import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.stats import bootstrap_centered_mean, interval_record
from nanochat.task_eval import chatcore, score_intervals


@pytest.fixture
def base(tmp_path, monkeypatch):
    path = tmp_path / "base"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(path))
    monkeypatch.delenv("NANOCHAT_GPU_PRICE", raising=False)
    return path


def write_result(base, name, stage, finished_at, wall=60.0, source=None, metrics=None, config=None,
                 artifacts=None, extra=None, model_tag="d4"):
    """A results record as nanochat.runlog.save_results writes it, with chosen times."""
    os.makedirs(base / "results", exist_ok=True)
    record = dict(stage=stage, name=name, source=source, model_tag=model_tag, step=100,
                  started_at=finished_at - wall, finished_at=finished_at, wall_time_s=wall,
                  config=config or {}, metrics=metrics or {}, artifacts=artifacts or {}, extra=extra or {})
    (base / "results" / f"{name}.json").write_text(json.dumps(record))


def write_svg(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><text>{label}</text></svg>\n')
    return str(path)


def summary_rows(text):
    """{metric: [BASE, MID, SFT, RL cells]} from the report's summary table (the first after text's
    "## Summary", if any; the published reference's table comes after ours)."""
    section = text.split("## Summary", 1)[-1].split("The reference: the scores published", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in report.SUMMARY_ROWS:
            rows[cells[0]] = cells[1:]
    return rows


def section(text, title):
    """The body of one '## title' section."""
    body = text.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def full_run(base, t0):
    """Every stage but RL (and its eval), with loss curves for the training stages."""
    runs = base / "runs"
    write_result(base, "tok_train", "tok_train", t0 + 10, metrics={"vocab_size": 32768, "train_time_s": 55.5},
                 config={"max_chars": 2_000_000_000, "vocab_size": 32768}, model_tag=None)
    write_result(base, "tok_eval", "tok_eval", t0 + 20, metrics={"val_bytes_per_token": 4.81}, model_tag=None)
    write_result(base, "base_train_d4", "base_train", t0 + 30, wall=3600, metrics={"val_bpb": 0.8123, "mfu": 0.41},
                 config={"depth": 4, "device_batch_size": 8, "run": None, "nested": {"a": 1}},
                 artifacts={"loss_curve": write_svg(runs / "base" / "loss.svg", "base")})
    write_result(base, "base_loss_d4", "base_loss", t0 + 40, source="base", metrics={"train_bpb": 0.8, "val_bpb": 0.81},
                 extra={"samples": [{"prompt": "The capital of France is", "reply": " Paris."}]})
    write_result(base, "base_eval_d4", "base_eval", t0 + 50, source="base", metrics={"CORE": 0.1234, "copa": 0.5})
    write_result(base, "mid_train_d4", "mid_train", t0 + 60, source="base", metrics={"val_bpb": 0.5},
                 artifacts={"loss_curve": write_svg(runs / "mid" / "loss.svg", "mid")})
    write_result(base, "chat_eval_mid_d4", "chat_eval", t0 + 70, source="mid",
                 metrics={"ARC-Easy": 0.3512, "ARC-Challenge": 0.2801, "MMLU": 0.3, "GSM8K": 0.02,
                          "HumanEval": 0.061, "SpellingBee": 0.5, "ChatCORE": 0.0712})
    write_result(base, "chat_sft_d4", "chat_sft", t0 + 80, source="mid", metrics={"val_loss": 1.23},
                 artifacts={"loss_curve": write_svg(runs / "sft" / "loss.svg", "sft")},
                 extra={"samples": [{"prompt": "Who are you?", "reply": "I am nanochat, a small model."}]})
    write_result(base, "chat_eval_sft_d4", "chat_eval", t0 + 90, source="sft",
                 metrics={"ARC-Easy": 0.4, "MMLU": 0.31, "ChatCORE": 0.09})  # some tasks not run


def test_generate_renders_every_section_and_the_summary(base, tmp_path):
    report.reset()
    full_run(base, time.time() + 1)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = report.generate(samples=False, copy_to=str(cwd))
    text = open(path).read()

    for title, _, _ in report.SECTIONS:
        assert f"\n## {title}\n" in text, title
    for heading in ("# nanochat report", "## Code", "## Samples of the final model", "## Summary"):
        assert heading in text
    for fact in ("Date:", "Git commit:", "GPUs:", "CPU:", "RAM:", "torch", "Wall time:", "Estimated cost:",
                 "Characters:", "Lines:", "Files:", "Tokens (approx., characters / 4):", "uv.lock"):
        assert fact in text, fact

    assert section(text, "RL").strip() == "did not run"
    assert section(text, "Chat evaluation after RL").strip() == "did not run"
    assert "Did not run: RL." in text
    rows = summary_rows(text)
    assert rows == {
        "CORE": ["0.1234", "-", "-", "-"],
        "ARC-Easy": ["-", "35.12%", "40.00%", "-"],
        "ARC-Challenge": ["-", "28.01%", "-", "-"],
        "MMLU": ["-", "30.00%", "31.00%", "-"],
        "GSM8K": ["-", "2.00%", "-", "-"],
        "HumanEval": ["-", "6.10%", "-", "-"],
        "SpellingBee": ["-", "50.00%", "-", "-"],
        "ChatCORE": ["-", "0.0712", "0.0900", "-"],
    }
    # stage sections: metrics (chat-eval accuracies as percentages), config collapsed, samples, wall time
    assert "| val_bpb | 0.8123 |" in section(text, "Base training")
    assert "wall time 1h 00m 00s" in section(text, "Base training")
    assert "<details><summary>config</summary>" in section(text, "Base training")
    assert "- depth: `4`" in section(text, "Base training")
    assert "run:" not in section(text, "Base training") and "nested" not in section(text, "Base training")
    assert "| ARC-Easy | 35.12% |" in section(text, "Chat evaluation after mid-training")
    assert "Paris." in section(text, "Base loss")
    # the final model is the SFT model (RL did not run); its recorded samples are used
    samples = section(text, "Samples of the final model")
    assert "sft model" in samples and "**Who are you?**" in samples and "I am nanochat" in samples

    # images: copied beside both copies of the report and referenced relatively
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(refs) == ["report_files/base_train_d4_loss.svg", "report_files/chat_sft_d4_loss.svg",
                            "report_files/mid_train_d4_loss.svg"]
    assert (cwd / "report.md").read_text() == text
    for ref in refs:
        for folder in (os.path.dirname(path), str(cwd)):
            assert os.path.isfile(os.path.join(folder, ref)), (folder, ref)
    assert "mid" in (cwd / "report_files" / "mid_train_d4_loss.svg").read_text()


def test_reset_ignores_older_results_and_latest_record_wins(base, tmp_path):
    now = time.time()
    write_result(base, "base_eval_old", "base_eval", now - 100, source="base", metrics={"CORE": 0.9})
    write_result(base, "chat_sft_old", "chat_sft", now - 90, source="mid", metrics={"val_loss": 9.0})
    report.reset()
    write_result(base, "chat_eval_sft_a", "chat_eval", now + 10, source="sft", metrics={"MMLU": 0.25})
    write_result(base, "chat_eval_sft_b", "chat_eval", now + 20, source="sft", metrics={"MMLU": 0.5})
    text = open(report.generate(samples=False, copy_to=str(tmp_path))).read()
    assert "0.9" not in summary_rows(text)["CORE"][0]
    assert summary_rows(text)["CORE"] == ["-", "-", "-", "-"]
    assert summary_rows(text)["MMLU"] == ["-", "-", "50.00%", "-"]
    assert section(text, "Base CORE").strip() == "did not run"
    assert section(text, "SFT").strip() == "did not run"
    assert "no chat model was trained in this run" in section(text, "Samples of the final model")
    # without the reset the older records count again
    os.remove(base / "report" / "header.json")
    text = open(report.generate(samples=False, copy_to=str(tmp_path))).read()
    assert summary_rows(text)["CORE"] == ["0.9000", "-", "-", "-"]
    assert "No `python -m nanochat.report reset` was run" in text


def chat_eval_extra(counts):
    """A chat_eval record's metrics and extra from {task: (correct, total, baseline)}, through the real
    task_eval.score_intervals (Wilson per task, the seeded bootstrap for ChatCORE)."""
    results = {name: dict(correct=k, total=n, baseline=b, accuracy=k / n, centered=(k / n - b) / (1 - b))
               for name, (k, n, b) in counts.items()}
    metrics = {**{name: r["accuracy"] for name, r in results.items()}, "ChatCORE": chatcore(results)}
    return metrics, {"tasks": results, "intervals": score_intervals(results)}


def test_summary_shows_intervals_and_item_counts(base, tmp_path, capsys):
    """runcpu.sh's scale (16 items per chat task): 7 of 16 on ARC-Easy reads 43.8 with an interval of
    [23.1, 66.8], wide enough to hold chance (25%), so a reader sees it is not a result."""
    t0 = time.time()
    report.reset()
    write_result(base, "base_train_d20", "base_train", t0 + 10, model_tag="d20")
    core_tasks = [(30, 100, 0.25), (12, 50, 0.0), (55, 100, 0.5)]
    core = sum((k / n - b) / (1 - b) for k, n, b in core_tasks) / 3
    core_interval = bootstrap_centered_mean(core_tasks)
    write_result(base, "base_eval_d20", "base_eval", t0 + 20, source="base", model_tag="d20",
                 metrics={"CORE": core}, extra={"intervals": {"CORE": interval_record(*core_interval, 250, "bootstrap")}})
    for t, source, counts in ((30, "mid", {"ARC-Easy": (7, 16, 0.25), "GSM8K": (0, 16, 0.0), "SpellingBee": (16, 16, 0.0)}),
                              (40, "sft", {"ARC-Easy": (1, 16, 0.25), "GSM8K": (1, 16, 0.0)})):
        metrics, extra = chat_eval_extra(counts)
        write_result(base, f"chat_eval_{source}_d20", "chat_eval", t0 + t, source=source, model_tag="d20",
                     metrics=metrics, extra=extra)
    text = open(report.generate(samples=False, copy_to=str(tmp_path))).read()
    rows = summary_rows(text)
    assert rows["ARC-Easy"][1:3] == ["43.8 [23.1, 66.8] n=16", "6.2 [1.1, 28.3] n=16"]
    assert rows["GSM8K"][1] == "0.0 [0.0, 19.4] n=16" and rows["SpellingBee"][1] == "100.0 [80.6, 100.0] n=16"
    assert rows["CORE"][0] == f"{core:.4f} [{core_interval[0]:.4f}, {core_interval[1]:.4f}] n=250"
    mid_core = bootstrap_centered_mean([(7, 16, 0.25), (0, 16, 0.0), (16, 16, 0.0)])
    assert rows["ChatCORE"][1].endswith(f"[{mid_core[0]:.4f}, {mid_core[1]:.4f}] n=48")
    assert rows["MMLU"] == ["-", "-", "-", "-"]
    assert "| ARC-Easy | 43.8 [23.1, 66.8] n=16 |" in section(text, "Chat evaluation after mid-training")
    # a d20 run (speedrun.sh's) has the original's published scores beside it, in the same layout
    published = summary_rows(text.split("The reference: the scores published in", 1)[1].split("| stage |")[0])
    assert published["CORE"] == ["0.2219", "-", "-", "-"] and published["GSM8K"] == ["-", "2.50%", "4.55%", "7.58%"]
    assert published["ChatCORE"] == ["-", "0.0730", "0.0884", "-"] and published["SpellingBee"] == ["-"] * 4
    with capsys.disabled():  # the table, for whoever runs this test with -s
        print("\n" + text.split("## Summary\n", 1)[1].split("| stage |", 1)[0])


def test_the_reference_is_shown_for_a_d20_run_only(base, tmp_path):
    report.reset()
    write_result(base, "base_train_d4", "base_train", time.time() + 1, model_tag="d4")
    text = open(report.generate(samples=False, copy_to=str(tmp_path))).read()
    assert "The reference" not in text and "karpathy/nanochat" not in text


def header_with_gpus(base, n_gpus, started_at):
    facts = report.machine_facts()
    facts["gpus"] = [{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6}] * n_gpus
    os.makedirs(base / "report", exist_ok=True)
    (base / "report" / "header.json").write_text(json.dumps({"reset": True, "started_at": started_at, "facts": facts}))


def test_cost_from_gpu_hours_and_price(base, tmp_path):
    t0 = time.time()
    header_with_gpus(base, 8, t0)
    write_result(base, "base_train_d20", "base_train", t0 + 3600)
    text = open(report.generate(gpu_price=2.0, samples=False, copy_to=str(tmp_path))).read()
    assert "8 x NVIDIA H100 80GB HBM3 (80 GiB)" in text
    assert "Wall time: 1h 00m 00s" in text
    assert "Estimated cost: $16.00 (8.00 GPU-hours at $2.00/GPU-hour)" in text
    text = open(report.generate(samples=False, copy_to=str(tmp_path))).read()
    assert "8.00 GPU-hours; no price given" in text
    header_with_gpus(base, 0, t0)
    text = open(report.generate(gpu_price=2.0, samples=False, copy_to=str(tmp_path))).read()
    assert "Estimated cost: n/a (no GPU)" in text


def test_cli_rejects_a_bad_price(base, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_GPU_PRICE", "cheap")
    with pytest.raises(SystemExit):
        report.main(["generate", "--no-samples"])
    assert "NANOCHAT_GPU_PRICE='cheap' is not a number" in capsys.readouterr().err


def naive_greedy(model, tokenizer, ids, max_tokens):
    """Reference: full recompute of the sequence at every step, argmax, stop at <|assistant_end|>."""
    stop = tokenizer.encode_special("<|assistant_end|>")
    out = list(ids)
    with torch.no_grad():
        for _ in range(max_tokens):
            token = int(model(torch.tensor([out]))[0, -1].argmax())
            if token == stop or token == tokenizer.get_bos_token_id():
                break
            out.append(token)
    return tokenizer.decode(out[len(ids):]).strip()


def test_samples_generated_from_the_chat_checkpoint(base, tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(report, "SAMPLE_MAX_TOKENS", 8)
    tiny_tokenizer.save(str(base / "tokenizer"))
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=64, vocab_size=tiny_tokenizer.get_vocab_size(), n_layer=2, n_head=2,
                       n_kv_head=1, n_embd=32)
    model = GPT(config)
    model.init_weights()
    model.eval()
    save_checkpoint(str(base / "chat_checkpoints" / "d2"), 7, model.state_dict(), None,
                    {"model_config": config.__dict__})
    report.reset()
    write_result(base, "chat_sft_d2", "chat_sft", time.time() + 1, source="base", model_tag="d2")

    pairs = report.generate_samples("sft", "d2", prompts=["Who are you?"], max_tokens=12)
    ids = tiny_tokenizer.render_for_completion([{"role": "user", "content": "Who are you?"},
                                                {"role": "assistant", "content": ""}])
    assert pairs == [("Who are you?", naive_greedy(model, tiny_tokenizer, ids, 12))]

    text = open(report.generate(copy_to=str(tmp_path))).read()  # samples default on: a chat checkpoint exists
    samples = section(text, "Samples of the final model")
    for prompt in report.SAMPLE_PROMPTS:
        assert f"**{prompt}**" in samples
