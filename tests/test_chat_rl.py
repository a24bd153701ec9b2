"""
scripts/chat_rl.py end to end on CPU, on a toy policy and the SpellingBee task made here (the tiny
tokenizer, a one-word word list; no data mirror, no network):

  - RL raises the mean reward of a policy that writes the right "#### <count>" answer only about a
    fifth of the time;
  - the reward reads the reply's own text only: a reply that stops at the calculator's output (the
    count, for most questions) earns 0;
  - the step's policy-gradient loss equals a naive recompute from the logged samples: -A log p summed
    over the sampled tokens only (the calculator's forced output excluded, the stop token included),
    divided by the number of sampled tokens; counting the forced tokens would give another loss;
  - `torchrun --nproc_per_node=2` (questions spread over ranks) matches one process;
  - a run killed between checkpoints (SIGKILL) or preempted (SIGTERM) and resumed with --resume
    reproduces the uninterrupted run's losses and rewards;
  - bad flags and missing or wrong inputs give a clear message and a non-zero exit.

The toy policy. With the blocks' output projections at zero (GPT.init_weights) every block is the
identity, so the logits at a position depend on the current token only: the model is a bigram table
logits[next] = lm_head[next] . norm(wte[prev]). Giving the few tokens that matter orthogonal
embeddings makes the table exact. The tokenizer is conftest's answer_tokenizer ("####" is one
token). The table: <|assistant_start|> -> <|python_start|>, "3" or "4" (P ~ 0.71, 0.29), - 2
<|python_end|>; the engine then forces <|output_start|> 1 (or 2) <|output_end|>; then the stop
<|assistant_end|> (P ~ 0.56: the reply ends at the tool's output) or "####" (P ~ 0.44); "####" ->
" " -> "0" (P ~ 0.72) or "1" (P ~ 0.28) -> <|assistant_end|>. Every SpellingBee question asks how many "a"s (usually the letter a, so the
count is 1) there are in the only word, "a". The reward is 1 only when the reply's own text ends in
"#### <count>" (the tool's "1" is no answer: a reply that stops at it earns 0), so the policy has to
learn to write "####" and then "1". Training moves the blocks off zero, and the model stops being a
pure bigram; that is fine.

    uv run pytest tests/test_chat_rl.py -q
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanochat.checkpoint_manager import load_model, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.task_eval import reply_text
from tasks.spellingbee import SpellingBee

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "d1"
COMMON = ["--task=spellingbee", "--device-type=cpu", "--dtype=float32", "--questions-per-step=4", "--num-samples=4",
          "--max-new-tokens=14", "--top-k=0", "--device-batch-size=6", "--init-lr-frac=1.0", "--warmdown-ratio=0.2",
          "--eval-items=4", "--eval-samples=4", "--run=dummy"]
RUN_FLAGS = ["--num-iterations=40", "--save-every=5", "--eval-every=20", "--log-samples=1"]


def toy_policy(tokenizer):
    """The bigram GPT described in the module docstring."""
    special = tokenizer.encode_special
    [three], [four], [minus], [two], [marker], [space], [zero], [one] = (
        tokenizer.encode(t) for t in ("3", "4", "-", "2", "####", " ", "0", "1"))
    # prev -> {next: logit before the soft-cap 15 tanh(x / 15)}; every other logit is ~0 (the head
    # starts at N(0, 0.001^2)). 14 -> 11.0 after the cap: P ~ 0.994 against the 364 other tokens;
    # 15 and 13 -> 11.4 and 10.5: P ~ 0.71 and 0.29; 14.5 and 14 -> 11.2 and 11.0: P ~ 0.56 and 0.44.
    end = special("<|assistant_end|>")
    table = {
        special("<|assistant_start|>"): {special("<|python_start|>"): 14.0},
        special("<|python_start|>"): {three: 15.0, four: 13.0},  # two tool outputs: the forced tokens differ
        three: {minus: 14.0},
        four: {minus: 14.0},
        minus: {two: 14.0},
        two: {special("<|python_end|>"): 14.0},
        special("<|output_start|>"): {one: 3.0},  # only forced tokens follow: their log p enters no loss
        special("<|output_end|>"): {end: 14.5, marker: 14.0},
        marker: {space: 14.0},
        space: {zero: 15.0, one: 13.0},
        zero: {end: 14.0},
        one: {end: 14.0},  # the forced "1" of the tool's output is followed by a forced <|output_end|>
    }
    C = 32
    config = GPTConfig(sequence_len=64, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2,
                       n_embd=C)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        for k, (prev, nexts) in enumerate(table.items()):
            model.transformer.wte.weight[prev] = 0.0
            model.transformer.wte.weight[prev, k] = math.sqrt(C)  # norm() of it is sqrt(C) e_k exactly
            for nxt, logit in nexts.items():
                model.lm_head.weight[nxt, k] = logit / math.sqrt(C)
    return model


def make_env(root, tokenizer, words="a\n"):
    """NANOCHAT_BASE_DIR (tokenizer, the toy policy as the sft checkpoint d1 at step 10) and
    NANOCHAT_DATA_DIR (words/words_alpha.txt) under root."""
    base, data = root / "base", root / "data"
    tokenizer.save(str(base / "tokenizer"))
    model = toy_policy(tokenizer)
    save_checkpoint(str(base / "chat_checkpoints" / TAG), 10, model.state_dict(), None,
                    {"model_config": model.config.__dict__, "step": 10})
    (data / "words").mkdir(parents=True)
    (data / "words" / "words_alpha.txt").write_text(words)
    return dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_DATA_DIR=str(data), OMP_NUM_THREADS="1",
                PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def env(tmp_path_factory, answer_tokenizer):
    return make_env(tmp_path_factory.mktemp("chat_rl"), answer_tokenizer)


def rl_cmd(*flags, nproc=1):
    if nproc == 1:
        return [sys.executable, "-m", "scripts.chat_rl", *COMMON, *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "scripts.chat_rl", "--", *COMMON, *flags]


def run_rl(env, *flags, nproc=1, check=True):
    out = subprocess.run(rl_cmd(*flags, nproc=nproc), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"chat_rl failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def run_dir(env):
    return os.path.join(env["NANOCHAT_BASE_DIR"], "rl_checkpoints", TAG)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_log(env):
    """({step: (loss, reward)}, {step: eval record}) of the run's log.jsonl."""
    records = read_jsonl(os.path.join(run_dir(env), "log.jsonl"))
    steps = {r["step"]: (r["loss"], r["reward"]) for r in records if "loss" in r}
    evals = {r["step"]: r for r in records if "pass@1" in r}
    return steps, evals


@pytest.fixture(scope="module")
def whole_run(env):
    """The uninterrupted run: its log (steps, evals) and samples, copied before other runs reuse the folder."""
    out = run_rl(env, *RUN_FLAGS)
    steps, evals = read_log(env)
    samples = read_jsonl(os.path.join(run_dir(env), "samples.jsonl"))
    with open(os.path.join(run_dir(env), "summary.json")) as f:
        summary = json.load(f)
    return dict(steps=steps, evals=evals, samples=samples, summary=summary, stdout=out.stdout)


# -----------------------------------------------------------------------------
# learning and the loss

def test_rl_raises_the_reward_and_writes_its_outputs(env, whole_run):
    steps, evals = whole_run["steps"], whole_run["evals"]
    assert sorted(steps) == list(range(40)) and sorted(evals) == [0, 20, 40]
    rewards = [steps[s][1] for s in range(40)]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-10:]) / 10  # it learns within a few steps
    assert first < 0.7 and last > first + 0.25, f"the mean reward did not rise: {rewards}"
    assert evals[40]["pass@1"] > evals[0]["pass@1"] and 0 <= evals[40]["pass@1"] <= evals[40]["pass@4"] <= 1
    assert "| reward " in whole_run["stdout"] and "eta" in whole_run["stdout"]
    summary = whole_run["summary"]
    assert summary["step"] == 40 and summary["final_eval"]["pass@1"] == evals[40]["pass@1"]
    assert os.path.exists(os.path.join(run_dir(env), "loss.svg"))
    with open(os.path.join(env["NANOCHAT_BASE_DIR"], "results", f"chat_rl_{TAG}.json")) as f:
        results = json.load(f)
    assert results["stage"] == "chat_rl" and results["source"] == "sft" and results["step"] == 40
    assert results["metrics"]["pass@4"] == evals[40]["pass@4"]
    intervals = results["extra"]["intervals"]  # 95%, over the questions (report.md shows them)
    assert set(intervals) == {"pass@1", "pass@4"}
    for name, interval in intervals.items():
        assert interval["n"] == evals[40]["eval_questions"] and interval["low"] <= evals[40][name] <= interval["high"]
        assert interval["high"] - interval["low"] > 0 or evals[40][name] in (0.0, 1.0)


def test_the_reward_is_the_replys_own_answer(env, whole_run, answer_tokenizer, monkeypatch):
    """Replies that stop right at the tool's output earn 0, also where it printed the count (a
    last-number fallback paid them); a reply that writes "#### <n>" earns 1 exactly when n is the count."""
    monkeypatch.setenv("NANOCHAT_DATA_DIR", env["NANOCHAT_DATA_DIR"])
    task = SpellingBee(size=10_000, split="train")
    tok = answer_tokenizer
    [marker], [space] = tok.encode("####"), tok.encode(" ")
    at_tool, answered = [], []
    for s in whole_run["samples"]:
        count = task[s["question"]]["word"].count(task[s["question"]]["letter"])
        forced = [i for i, m in enumerate(s["masks"]) if m == 0]  # the engine ran a tool call
        tail = s["tokens"][forced[-1] + 1:] if forced else None  # the text after the last tool output
        if s["finish_reason"] == "stop" and tail == []:
            at_tool.append((s["reward"], float(tok.decode(s["tokens"][-2:-1]) == str(count))))
        elif s["finish_reason"] == "stop" and tail is not None and tail[:2] == [marker, space] and len(tail) == 3:
            answered.append((s["reward"], float(tok.decode(tail[2:]) == str(count))))
    # the first update all but ends stopping at the tool; step 0 alone has 4 such replies that printed the count
    assert sum(printed for _, printed in at_tool) >= 3, f"too few replies stop at a tool output of the count: {at_tool}"
    assert all(reward == 0 for reward, _ in at_tool), at_tool
    assert len(answered) >= 100 and {right for _, right in answered} == {0.0, 1.0}
    assert all(reward == right for reward, right in answered), answered


def test_final_checkpoint_loads_as_rl(env, whole_run, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", env["NANOCHAT_BASE_DIR"])
    model, _, meta = load_model("rl", "cpu", "eval")
    assert meta["step"] == 40 and meta["source"] == "sft" and meta["source_step"] == 10
    source, _, _ = load_model("sft", "cpu", "eval")
    assert any((a != b).any() for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_loss_is_over_sampled_tokens_only(env, whole_run, answer_tokenizer, monkeypatch):
    """Step 0's logged loss against a naive recompute from its logged samples with the source model."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", env["NANOCHAT_BASE_DIR"])
    monkeypatch.setenv("NANOCHAT_DATA_DIR", env["NANOCHAT_DATA_DIR"])
    model, tokenizer, _ = load_model("sft", "cpu", "eval")
    task = SpellingBee(size=10_000, split="train")  # items depend on the index only, not on the size
    samples = [s for s in whole_run["samples"] if s["step"] == 0]
    assert len(samples) == 16
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    groups = {}
    for s in samples:
        groups.setdefault(s["question"], []).append(s)
    assert len(groups) == 4 and all(len(g) == 4 for g in groups.values())

    loss, wrong_loss, n_sampled, n_all = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for question, group in groups.items():
            conversation = task[question]
            rewards = [task.reward(conversation, reply_text(tokenizer, s["tokens"])) for s in group]
            assert rewards == [s["reward"] for s in group]
            mean = sum(rewards) / len(rewards)
            prompt = tokenizer.render_for_completion(conversation)
            for s, r in zip(group, rewards):
                assert s["advantage"] == pytest.approx(r - mean)
                stop = [assistant_end] if s["finish_reason"] == "stop" else []
                ids = prompt + s["tokens"] + stop
                sampled = [0] * len(prompt) + s["masks"] + [1] * len(stop)
                logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).double()[0], dim=-1)
                token_logp = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]  # (T - 1,)
                in_reply = torch.tensor([0] * (len(prompt) - 1) + [1] * (len(ids) - len(prompt)), dtype=torch.bool)
                is_sampled = torch.tensor(sampled[1:], dtype=torch.bool)
                loss -= (r - mean) * token_logp[is_sampled].sum().item()
                wrong_loss -= (r - mean) * token_logp[in_reply].sum().item()
                n_sampled += int(is_sampled.sum())
                n_all += int(in_reply.sum())
    forced = [s for s in samples if 0 in s["masks"] and s["advantage"] != 0]
    assert forced, "no sample with a tool output and a non-zero advantage: the test would not test the mask"
    assert n_sampled < n_all
    logged = whole_run["steps"][0][0]
    assert logged == pytest.approx(loss / n_sampled, rel=1e-4, abs=1e-6)
    assert abs(wrong_loss / n_all - logged) > 1e-3, "counting forced tokens would give the same loss"


@pytest.mark.slow  # torchrun and gloo on a loaded 2-core machine: minutes
def test_two_ranks_match_one_process(tmp_path, answer_tokenizer):
    """Step 0 (the same samples, the loss split over ranks) and step 1 (after the same update).
    Later steps drift apart on this toy: Adam turns rounding-level differences of near-zero
    gradients (eps 1e-10) into full-size updates, and near-uniform junk samples then flip."""
    env = make_env(tmp_path, answer_tokenizer)
    flags = ["--num-iterations=2", "--save-every=0", "--eval-every=-1", "--eval-items=0", "--log-samples=-1"]
    run_rl(env, *flags)
    single, _ = read_log(env)
    out = run_rl(env, *flags, nproc=2)
    ddp, _ = read_log(env)
    assert sorted(single) == sorted(ddp) == list(range(2)), out.stdout[-2000:]
    for s in range(2):
        assert ddp[s][1] == single[s][1], f"step {s}: rewards differ, so the samples did: {ddp[s]} vs {single[s]}"
        assert ddp[s][0] == pytest.approx(single[s][0], rel=1e-4, abs=1e-6), f"step {s}: {ddp[s]} vs {single[s]}"


def test_a_step_whose_advantages_are_all_zero_leaves_the_weights_bitwise(tmp_path, answer_tokenizer, monkeypatch):
    """At a temperature this low the toy policy always calls 3-2 and stops at its output (the logit gaps
    are >= 0.24, so any other choice has probability < e^-240): every sample of a question gets the same reward, every
    advantage is 0, and each step's optimizer step must be skipped. With weight decay an AdamW/Muon
    step on zero gradients would still shrink the weights (and momentum would move them)."""
    env = make_env(tmp_path, answer_tokenizer)
    out = run_rl(env, "--num-iterations=3", "--temperature=0.001", "--weight-decay=0.1", "--save-every=3",
                 "--eval-items=0", "--log-samples=-1")
    assert out.stdout.count("optimizer step skipped") == 3, out.stdout[-3000:]
    records = read_jsonl(os.path.join(run_dir(env), "log.jsonl"))
    assert [r["skipped_update"] for r in records if "loss" in r] == [True] * 3
    assert all(r["active_completions"] == 0 and r["loss"] == 0.0 for r in records if "loss" in r)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", env["NANOCHAT_BASE_DIR"])
    trained, _, meta = load_model("rl", "cpu", "eval")
    assert meta["step"] == 3
    source, _, _ = load_model("sft", "cpu", "eval")
    for (name, a), b in zip(trained.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), f"{name} moved on steps with nothing to learn"


# -----------------------------------------------------------------------------
# resume

def interrupt(env, sig, after_step=12):
    """Start the run and send it `sig` once its log shows a step >= after_step; its exit status and output."""
    log = os.path.join(run_dir(env), "log.jsonl")
    proc = subprocess.Popen(rl_cmd(*RUN_FLAGS), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log):
            with open(log) as f:
                if any(json.loads(line).get("step", -1) >= after_step for line in f if line.endswith("\n")):
                    proc.send_signal(sig)
                    break
        time.sleep(0.01)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_exactly(tmp_path, answer_tokenizer, whole_run, sig):
    env = make_env(tmp_path, answer_tokenizer)  # the same inputs as whole_run's, in a fresh folder
    code, output = interrupt(env, sig)
    steps, _ = read_log(env)
    assert max(steps) < 39, "the run finished before it was interrupted; the test did not test anything"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # a clean exit after saving the step it was on
        assert code == 0 and "stopped on SIGTERM" in output, output[-3000:]
        assert os.path.isdir(os.path.join(run_dir(env), f"{max(steps) + 1:06d}"))
    run_rl(env, *RUN_FLAGS, "--resume")
    steps, evals = read_log(env)
    assert steps == whole_run["steps"], "the resumed run's losses or rewards differ from the uninterrupted run's"
    assert {s: e["pass@1"] for s, e in evals.items()} == {s: e["pass@1"] for s, e in whole_run["evals"].items()}
    samples = read_jsonl(os.path.join(run_dir(env), "samples.jsonl"))
    assert [(s["step"], s["tokens"]) for s in samples] == [(s["step"], s["tokens"]) for s in whole_run["samples"]]


# -----------------------------------------------------------------------------
# errors

def break_source(base):
    """Replace the sft checkpoint by one whose meta has no model config (not a model checkpoint)."""
    step_dir = base / "chat_checkpoints" / TAG / "000010"
    meta = step_dir / "meta_000010.json"
    meta.write_text(json.dumps({"step": 10}))


@pytest.mark.parametrize("flags, change, message", [
    (["--num-samples=1"], None, "--num-samples must be at least 2"),
    (["--source=mid"], None, "cannot load the mid model"),
    (["--model-tag=d7"], None, "no model tag 'd7'"),
    (["--resume"], None, "--resume"),
    (["--task=gsm8k"], None, "cannot load the gsm8k task"),
    ([], "no_model_config", "has no 'model_config'"),
    (["--questions-per-step=3"], "two_ranks", "--questions-per-step=3 must be a positive multiple of the number of "
                                              "ranks (2)"),
])
def test_bad_flags_and_inputs_give_clear_errors(tmp_path, answer_tokenizer, flags, change, message):
    env = make_env(tmp_path, answer_tokenizer)
    if change == "no_model_config":
        break_source(tmp_path / "base")
    elif change == "two_ranks":  # torchrun's environment: the flags are checked before any process group
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    out = run_rl(env, "--num-iterations=2", *flags, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
