"""
The run's scorecard: report.md, rendered from what every stage recorded through
nanochat.runlog.save_results (get_base_dir()/results/<name>.json). Stages never import this module;
it only reads their records, so deleting it leaves the pipeline intact.

    python -m nanochat.report reset                      # at the start of a run
    python -m nanochat.report generate                   # at its end
    python -m nanochat.report generate --gpu-price 2.50 --no-samples --copy-to /tmp

`reset` records the start time and the machine (git commit, GPUs, CPU, RAM, versions, code size)
in get_base_dir()/report/header.json; `generate` ignores results that finished before it. Without a
reset, the run starts at its first result and the machine is described as it is at generation.

`generate` writes get_base_dir()/report/report.md, with the loss curves copied beside it into
report_files/, and copies both into the working directory. The images are referenced relatively
(report_files/<name>_loss.svg): a relative link shows in every markdown viewer (GitHub, VS Code,
a browser extension) and survives moving the folder, while absolute file paths are blocked or
broken in most of them.

Sections: header, code size, one per stage in pipeline order (a stage without a record says "did
not run"), greedy sample replies of the final chat model, and a summary table (a column per model
BASE / MID / SFT / RL, a row per metric, a dash where a model has no value; each value with its
95% interval and item count where its record has them, "43.8 [23.1, 66.8] n=16"; for a d20 run, the
original's published d20 scores beside ours, REFERENCE_SCORES). The latest record per
(stage, source) is used. Sample replies come from the final model's records (extra["samples"], a
list of {"prompt", "reply"}) or, with --samples (default: when a chat checkpoint exists), from
loading that model and decoding greedily.

Cost = wall time x number of GPUs x price per GPU-hour (--gpu-price or $NANOCHAT_GPU_PRICE). It
counts the whole run from the reset, idle gaps included, and nothing before it (set-up, downloads).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from nanochat.common import atomic_write, get_base_dir
from nanochat.runlog import load_results
from nanochat.stats import fmt_estimate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_EXTENSIONS = (".py", ".rs", ".sh", ".md", ".toml", ".html", ".js", ".css")
# The prompts the final model answers in the report (greedy, so the replies are reproducible).
SAMPLE_PROMPTS = ["Who are you?", "What is the capital of France?", "Why is the sky blue?",
                  "If I have 3 apples and buy 5 more, how many do I have?"]
SAMPLE_MAX_TOKENS = 128
# (title, stage, source): source None takes the stage's latest record whatever it was trained from.
SECTIONS = [
    ("Tokenizer training", "tok_train", None),
    ("Tokenizer evaluation", "tok_eval", None),
    ("Base training", "base_train", None),
    ("Base loss", "base_loss", None),
    ("Base CORE", "base_eval", None),
    ("Mid-training", "mid_train", None),
    ("Chat evaluation after mid-training", "chat_eval", "mid"),
    ("SFT", "chat_sft", None),
    ("Chat evaluation after SFT", "chat_eval", "sft"),
    ("RL", "chat_rl", None),
    ("Chat evaluation after RL", "chat_eval", "rl"),
]
# The checkpoint source each training stage produces, in the order they run.
TRAINED = {"mid_train": "mid", "chat_sft": "sft", "chat_rl": "rl"}
SUMMARY_COLUMNS = ["BASE", "MID", "SFT", "RL"]
SUMMARY_ROWS = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]
SCORES = ("CORE", "ChatCORE")  # centred means, printed as numbers; the other rows are accuracies
# The original's published d20 speedrun scorecard (karpathy/nanochat README.md at commit 67d76b8, the
# example summary table of speedrun.sh, 3h51m on 8xH100): fractions as printed there, no item counts.
# Shown when the run's base model is REFERENCE_TAG.
REFERENCE_TAG = "d20"
REFERENCE_SOURCE = "karpathy/nanochat's README.md at commit 67d76b8, its speedrun.sh d20 report card"
REFERENCE_SCORES = {
    ("CORE", "BASE"): 0.2219,
    ("ARC-Challenge", "MID"): 0.2875, ("ARC-Challenge", "SFT"): 0.2807,
    ("ARC-Easy", "MID"): 0.3561, ("ARC-Easy", "SFT"): 0.3876,
    ("GSM8K", "MID"): 0.0250, ("GSM8K", "SFT"): 0.0455, ("GSM8K", "RL"): 0.0758,
    ("HumanEval", "MID"): 0.0671, ("HumanEval", "SFT"): 0.0854,
    ("MMLU", "MID"): 0.3111, ("MMLU", "SFT"): 0.3151,
    ("ChatCORE", "MID"): 0.0730, ("ChatCORE", "SFT"): 0.0884,
}


def report_dir():
    """get_base_dir()/report, created on first use."""
    path = os.path.join(get_base_dir(), "report")
    os.makedirs(path, exist_ok=True)
    return path


# -----------------------------------------------------------------------------
# the machine and the code

def _run(cmd):
    """stdout of a command run in the repository, or None when it fails (no git, not a checkout)."""
    try:
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def code_size():
    """Characters, lines, files and ~tokens of the project's code and docs, and uv.lock's packages."""
    listing = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"])
    if listing is None:  # not a git checkout: walk the tree, skipping hidden and build folders
        paths = []
        for root, dirs, files in os.walk(REPO_ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("target", "__pycache__")]
            paths += [os.path.relpath(os.path.join(root, f), REPO_ROOT) for f in files]
    else:
        paths = listing.split("\n")
    chars = lines = files = 0
    for path in sorted(set(p for p in paths if p.endswith(CODE_EXTENSIONS))):
        try:
            with open(os.path.join(REPO_ROOT, path), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:  # listed by git but deleted in the working tree
            continue
        chars, lines, files = chars + len(text), lines + text.count("\n"), files + 1
    try:
        with open(os.path.join(REPO_ROOT, "uv.lock")) as f:
            dependencies = sum(1 for line in f if line.strip() == "[[package]]")
    except OSError:
        dependencies = None
    return {"characters": chars, "lines": lines, "files": files, "tokens_approx": chars // 4,
            "dependencies": dependencies}


def machine_facts():
    """What the report's header says about the machine, the checkout and the software."""
    import torch

    commit = (_run(["git", "rev-parse", "HEAD"]) or "").strip() or None
    status = _run(["git", "status", "--porcelain"])
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gb": props.total_memory / 1024**3})
    ram = _ram_bytes()
    return {
        "git_commit": commit, "git_dirty": None if status is None else bool(status.strip()),
        "gpus": gpus, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "ram_gb": None if ram is None else ram / 1024**3,
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "mps": torch.backends.mps.is_available(), "code": code_size(),
    }


# -----------------------------------------------------------------------------
# formatting

def fmt_duration(seconds):
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def fmt_value(value):
    """A metric or config value for a table cell."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        if abs(value) >= 1e4 and value == int(value):
            text = f"{value:,.0f}"
        else:
            text = f"{value:,.2f}" if abs(value) >= 100 else f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 100 else text[:97] + "..."


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_metric(name, value, stage, interval=None):
    """A metric with its 95% interval and item count when its record has one (interval: an
    extra["intervals"] entry, nanochat.stats.interval_record): chat-eval accuracies in percent
    ("43.8 [23.1, 66.8] n=16"), scores as numbers; without one, chat-eval accuracies as "43.75%",
    everything else as fmt_value."""
    percent = stage == "chat_eval" and name not in SCORES
    if interval is not None and _is_number(value):
        return fmt_estimate(value, (interval["low"], interval["high"]), interval["n"], percent=percent)
    if percent and _is_number(value):
        return f"{100 * value:.2f}%"
    return fmt_value(value)


def record_intervals(record):
    """{metric: interval record} of a results record (extra["intervals"], written by chat_eval and base_eval)."""
    intervals = ((record or {}).get("extra") or {}).get("intervals")
    return intervals if isinstance(intervals, dict) else {}


def _fmt_time(t):
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


# -----------------------------------------------------------------------------
# records

def latest_records(records, header):
    """{(stage, source): record}: the latest record of each pair, among those finished after the
    reset (all of them when there was no reset)."""
    since = header.get("started_at") if header.get("reset") else None
    latest = {}
    for r in records:
        if since is not None and r.get("finished_at", 0) < since:
            continue
        key = (r.get("stage"), r.get("source"))
        if key not in latest or r.get("finished_at", 0) >= latest[key].get("finished_at", 0):
            latest[key] = r
    return latest


def find_record(latest, stage, source=None):
    """The latest record of a stage (with that source, if one is given), or None."""
    found = [r for (s, src), r in latest.items() if s == stage and (source is None or src == source)]
    return max(found, key=lambda r: r.get("finished_at", 0)) if found else None


def final_chat_source(latest):
    """The chat model the run ended with: the last of mid, sft, rl that a stage trained, or None."""
    for stage in reversed(list(TRAINED)):
        if find_record(latest, stage):
            return TRAINED[stage]
    return None


def recorded_samples(record):
    """[(prompt, reply)] from a record's extra["samples"]: [{"prompt", "reply"}] or {prompt: reply}."""
    samples = ((record or {}).get("extra") or {}).get("samples")
    if isinstance(samples, dict):
        return [(str(p), str(r)) for p, r in samples.items()]
    if not isinstance(samples, list):
        return []
    pairs = []
    for s in samples:
        if isinstance(s, dict):
            reply = next((s[k] for k in ("reply", "completion", "response", "text") if k in s), "")
            pairs.append((s.get("prompt"), str(reply)))
        else:
            pairs.append((None, str(s)))
    return pairs


def final_samples(latest, final):
    """The samples recorded by the stage that trained the final model, or by its chat eval."""
    if final is None:
        return []
    stage = next(s for s, src in TRAINED.items() if src == final)
    return recorded_samples(find_record(latest, stage)) or recorded_samples(find_record(latest, "chat_eval", final))


def generate_samples(source, model_tag=None, step=None, prompts=None, max_tokens=None):
    """[(prompt, reply)]: greedy replies of a chat checkpoint to the prompts (default SAMPLE_PROMPTS),
    at most max_tokens each (default SAMPLE_MAX_TOKENS), on the default device, in one batch."""
    import torch

    from nanochat.checkpoint_manager import load_model
    from nanochat.common import autodetect_device_type
    from nanochat.engine import Engine, SamplingParams

    model, tokenizer, _ = load_model(source, torch.device(autodetect_device_type()), "eval", model_tag, step)
    prompts = prompts or SAMPLE_PROMPTS
    ids = [tokenizer.render_for_reply([{"role": "user", "content": p}]) for p in prompts]
    budget = max_tokens or SAMPLE_MAX_TOKENS
    params = [SamplingParams(max_tokens=max(1, min(budget, model.config.sequence_len - len(x))), temperature=0.0)
              for x in ids]
    completions = Engine(model, tokenizer, num_slots=len(prompts)).generate_many(ids, params)
    return [(p, c[0].text.strip()) for p, c in zip(prompts, completions)]


# -----------------------------------------------------------------------------
# rendering

def render_header(header, latest, gpu_price):
    facts, started_at = header["facts"], header.get("started_at")
    if started_at is None and latest:
        started_at = min(r.get("started_at", r.get("finished_at", 0)) for r in latest.values())
    ends = [r["finished_at"] for r in latest.values() if "finished_at" in r]
    wall = max(ends) - started_at if ends and started_at is not None else None
    gpus = facts.get("gpus") or []
    lines = ["# nanochat report", ""]
    if not header.get("reset"):
        lines += ["No `python -m nanochat.report reset` was run: the run is taken to start at its first "
                  "result, and the machine is described as it is now.", ""]
    commit = facts.get("git_commit") or "unknown (not a git checkout)"
    dirty = {True: " (uncommitted changes)", False: " (clean)"}.get(facts.get("git_dirty"), "")
    if gpus:
        counts = {}
        for g in gpus:
            key = (g["name"], round(g["memory_gb"]))
            counts[key] = counts.get(key, 0) + 1
        gpu_text = ", ".join(f"{n} x {name} ({mem} GiB)" for (name, mem), n in counts.items())
    else:
        gpu_text = "none" + (" (Apple MPS)" if facts.get("mps") else "")
    if not gpus:
        cost = "n/a (no GPU)"
    elif wall is None:
        cost = "n/a (no results yet)"
    else:
        gpu_hours = wall / 3600 * len(gpus)
        cost = (f"${gpu_hours * gpu_price:,.2f} ({gpu_hours:.2f} GPU-hours at ${gpu_price:.2f}/GPU-hour)"
                if gpu_price is not None else
                f"{gpu_hours:.2f} GPU-hours; no price given (--gpu-price or NANOCHAT_GPU_PRICE)")
    ram = facts.get("ram_gb")
    lines += [
        f"- Date: {_fmt_time(started_at) if started_at else 'n/a'}",
        f"- Git commit: `{commit}`{dirty}",
        f"- GPUs: {gpu_text}",
        f"- CPU: {facts.get('cpu')} ({facts.get('cpu_count')} logical cores)",
        f"- RAM: {'n/a' if ram is None else f'{ram:.1f} GiB'}",
        f"- Python {facts.get('python')}, torch {facts.get('torch')}, CUDA {facts.get('cuda') or 'n/a'}"
        f" ({facts.get('platform')})",
        f"- Wall time: {fmt_duration(wall)} (from the reset to the last result)",
        f"- Estimated cost: {cost}",
        "",
    ]
    code = facts.get("code") or {}
    if code:
        lines += ["## Code", "",
                  f"- Files: {code['files']:,} ({', '.join(CODE_EXTENSIONS)})",
                  f"- Lines: {code['lines']:,}",
                  f"- Characters: {code['characters']:,}",
                  f"- Tokens (approx., characters / 4): {code['tokens_approx']:,}",
                  f"- Dependencies (packages in uv.lock, direct and transitive): {code['dependencies']}", ""]
    return lines


def render_section(title, stage, record, out_dir):
    """Markdown lines of one stage; copies its loss curve into out_dir/report_files/."""
    lines = [f"## {title}", ""]
    if record is None:
        return lines + ["did not run", ""]
    facts = [f"wall time {fmt_duration(record.get('wall_time_s'))}"]
    for key in ("model_tag", "step", "source"):
        if record.get(key) is not None:
            facts.append(f"{key.replace('_', ' ')} {record[key]}")
    if record.get("finished_at"):
        facts.append(f"finished {_fmt_time(record['finished_at'])}")
    lines += ["- " + ", ".join(facts) + f" (`results/{record.get('name')}.json`)", ""]
    metrics = record.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        intervals = record_intervals(record)
        lines += [f"| {fmt_value(k)} | {fmt_metric(k, v, stage, intervals.get(k))} |" for k, v in metrics.items()]
        lines.append("")
    curve = (record.get("artifacts") or {}).get("loss_curve")
    if curve:
        if os.path.isfile(curve):
            name = f"{record.get('name') or stage}_loss.svg"
            os.makedirs(os.path.join(out_dir, "report_files"), exist_ok=True)
            shutil.copyfile(curve, os.path.join(out_dir, "report_files", name))
            lines += [f"![{title} loss curve](report_files/{name})", ""]
        else:
            lines += [f"(loss curve {curve} is missing)", ""]
    samples = recorded_samples(record)
    if samples:
        lines += ["<details><summary>samples</summary>", ""]
        lines += [f"- {fmt_value(p) + ' → ' if p else ''}{fmt_value(r)}" for p, r in samples]
        lines += ["", "</details>", ""]
    config = {k: v for k, v in (record.get("config") or {}).items()
              if v is not None and not isinstance(v, (dict, list))}
    if config:
        lines += ["<details><summary>config</summary>", ""]
        lines += [f"- {k}: `{fmt_value(v)}`" for k, v in config.items()]
        lines += ["", "</details>", ""]
    return lines


def summary_table(latest):
    """{(metric, column): (value, interval record or None)} from base_eval and chat_eval records;
    absent where not measured."""
    cells = {}
    for column in SUMMARY_COLUMNS:
        records = [find_record(latest, "chat_eval", column.lower())]
        if column == "BASE":
            records.append(find_record(latest, "base_eval", "base"))
        for record in records:
            intervals = record_intervals(record)
            for metric, value in ((record or {}).get("metrics") or {}).items():
                if metric in SUMMARY_ROWS and _is_number(value):
                    cells[(metric, column)] = (value, intervals.get(metric))
    return cells


def fmt_summary_cell(metric, cell):
    """A summary cell: (value, interval record or None) -> "43.8 [23.1, 66.8] n=16", or the value alone."""
    if cell is None:
        return "-"
    value, interval = cell
    if interval is not None:
        return fmt_estimate(value, (interval["low"], interval["high"]), interval["n"], percent=metric not in SCORES)
    return f"{value:.4f}" if metric in SCORES else f"{100 * value:.2f}%"


def summary_grid(cell_text):
    """The summary's markdown table: a row per SUMMARY_ROWS metric, cell_text(metric, column) in each cell."""
    lines = ["| metric | " + " | ".join(SUMMARY_COLUMNS) + " |", "|---|" + "---:|" * len(SUMMARY_COLUMNS)]
    lines += [f"| {m} | " + " | ".join(cell_text(m, c) for c in SUMMARY_COLUMNS) + " |" for m in SUMMARY_ROWS]
    return lines + [""]


def render_summary(latest):
    cells = summary_table(latest)
    lines = ["## Summary", ""] + summary_grid(lambda m, c: fmt_summary_cell(m, cells.get((m, c))))
    lines += ["Accuracies in percent, CORE and ChatCORE as centred scores (0 = chance, 1 = perfect), on the "
              "item caps each eval was run with (see its config); each with its 95% interval [low, high] and "
              "item count n (Wilson for an accuracy, a seeded bootstrap over each task's items for CORE and "
              "ChatCORE; nanochat/stats.py). Values whose intervals overlap may differ by noise alone.", ""]
    base = find_record(latest, "base_train")
    if base is not None and base.get("model_tag") == REFERENCE_TAG:  # speedrun.sh's model: the published one
        def published(m, c):
            v = REFERENCE_SCORES.get((m, c))
            return "-" if v is None else f"{v:.4f}" if m in SCORES else f"{100 * v:.2f}%"
        lines += [f"The reference: the scores published in {REFERENCE_SOURCE} (its own task code and "
                  "evaluation settings; no item counts or intervals given there):", ""] + summary_grid(published)
    trained_by = {"BASE": "base_train", **{src.upper(): stage for stage, src in TRAINED.items()}}
    missing = [c for c in SUMMARY_COLUMNS if not find_record(latest, trained_by[c])]
    if missing:
        lines += [f"Did not run: {', '.join(missing)}.", ""]
    timings = []
    for title, stage, source in SECTIONS:
        record = find_record(latest, stage, source)
        if record:
            timings.append((title, record.get("wall_time_s")))
    if timings:
        lines += ["| stage | wall time |", "|---|---:|"]
        lines += [f"| {title} | {fmt_duration(t)} |" for title, t in timings]
        lines.append("")
    return lines


def render_report(header, records, out_dir, gpu_price=None, samples=None):
    """The markdown text of the report; loss curves are copied into out_dir/report_files/.
    samples: [(prompt, reply)] of the final model, or None to use what its records hold."""
    latest = latest_records(records, header)
    lines = render_header(header, latest, gpu_price)
    for title, stage, source in SECTIONS:
        lines += render_section(title, stage, find_record(latest, stage, source), out_dir)
    final = final_chat_source(latest)
    lines += ["## Samples of the final model", ""]
    if samples is None:
        samples = final_samples(latest, final)
    if not final:
        lines += ["no chat model was trained in this run", ""]
    elif not samples:
        lines += [f"no samples: the {final} model's records hold none and none were generated (--samples)", ""]
    else:
        lines += [f"Greedy replies of the {final} model.", ""]
        for prompt, reply in samples:
            quoted = "> " + (reply or "(empty)").replace("\n", "\n> ")
            lines += [f"**{prompt or '(prompt not recorded)'}**", "", quoted, ""]
    lines += render_summary(latest)
    return "\n".join(lines).rstrip() + "\n"


# -----------------------------------------------------------------------------
# commands

def reset():
    """Start a new report: record the time and the machine; clear the previous report's files."""
    out = report_dir()
    shutil.rmtree(os.path.join(out, "report_files"), ignore_errors=True)
    if os.path.exists(os.path.join(out, "report.md")):
        os.remove(os.path.join(out, "report.md"))
    header = {"reset": True, "started_at": time.time(), "facts": machine_facts()}
    atomic_write(os.path.join(out, "header.json"), lambda f: f.write(json.dumps(header, indent=2) + "\n"))
    return header


def load_header():
    """The header recorded by reset, or one describing the machine now (reset False)."""
    path = os.path.join(report_dir(), "header.json")
    if not os.path.isfile(path):
        return {"reset": False, "started_at": None, "facts": machine_facts()}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); run `python -m nanochat.report reset` again") from None


def chat_checkpoint_exists():
    from nanochat.checkpoint_manager import SOURCE_DIRS
    return any(os.path.isdir(os.path.join(get_base_dir(), SOURCE_DIRS[s])) for s in TRAINED.values())


def generate(gpu_price=None, samples=None, copy_to=None):
    """Write report.md into the report folder and copy it (with report_files/) to copy_to
    (default: the working directory). samples: True / False / None (= when a chat checkpoint exists);
    generation is skipped when the final model's records already hold samples.
    Returns the path of the report in the report folder."""
    header, records, out = load_header(), load_results(), report_dir()
    latest = latest_records(records, header)
    final = final_chat_source(latest)
    if samples is None:
        samples = chat_checkpoint_exists()
    pairs = None
    if samples and final and not final_samples(latest, final):
        stage = next(s for s, src in TRAINED.items() if src == final)
        try:
            pairs = generate_samples(final, find_record(latest, stage).get("model_tag"))
        except (OSError, RuntimeError, ValueError) as e:  # a missing or broken checkpoint: say so
            pairs = [(None, f"could not generate samples from the {final} model: {e}")]
    text = render_report(header, records, out, gpu_price, pairs)
    path = os.path.join(out, "report.md")
    atomic_write(path, lambda f: f.write(text))
    copy_to = os.path.abspath(copy_to or os.getcwd())
    if copy_to != os.path.abspath(out):
        shutil.copyfile(path, os.path.join(copy_to, "report.md"))
        if os.path.isdir(os.path.join(out, "report_files")):
            shutil.copytree(os.path.join(out, "report_files"), os.path.join(copy_to, "report_files"),
                            dirs_exist_ok=True)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanochat.report", description="Write the run's report.md.")
    parser.add_argument("command", choices=["reset", "generate"], help="reset: start a new report; generate: write it")
    parser.add_argument("--gpu-price", type=float, default=None,
                        help="dollars per GPU-hour for the cost estimate (default: $NANOCHAT_GPU_PRICE)")
    parser.add_argument("--samples", action=argparse.BooleanOptionalAction, default=None,
                        help="generate sample replies of the final chat model (default: when a chat checkpoint exists)")
    parser.add_argument("--copy-to", default=None,
                        help="folder that gets a copy of report.md and report_files/ (default: the working directory)")
    args = parser.parse_args(argv)
    price = args.gpu_price
    if price is None and os.environ.get("NANOCHAT_GPU_PRICE"):
        try:
            price = float(os.environ["NANOCHAT_GPU_PRICE"])
        except ValueError:
            parser.error(f"NANOCHAT_GPU_PRICE={os.environ['NANOCHAT_GPU_PRICE']!r} is not a number (dollars per GPU-hour)")
    if price is not None and price < 0:
        parser.error(f"--gpu-price {price} is negative")
    if args.command == "reset":
        reset()
        print(f"report reset: {os.path.join(report_dir(), 'header.json')}")
    else:
        if args.copy_to and not os.path.isdir(args.copy_to):
            parser.error(f"--copy-to {args.copy_to!r} is not a folder")
        path = generate(price, args.samples, args.copy_to)
        print(f"report written: {path} (copied to {os.path.join(args.copy_to or os.getcwd(), 'report.md')})")


if __name__ == "__main__":
    sys.exit(main())
