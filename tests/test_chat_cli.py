"""
Tests of scripts/chat_cli.py, run as a real process on the tiny checkpoints of tests/chat_fixtures.py:
a one-shot prompt and a piped multi-turn chat give exactly the engine's greedy replies (so /clear
really forgets and the second turn really sees the first), calculator calls are shown apart from
the text, Ctrl-C stops a reply without leaving, and a bad checkpoint is a message, not a traceback.

    uv run pytest tests/test_chat_cli.py -q
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from nanochat.engine import Engine, SamplingParams
from tests.chat_fixtures import (PIECES, RANDOM_TAG, REPO, SCRIPTED_TAG, TOOL_EXPR, TOOL_RESULT, chat_tokenizer,
                                 make_chat_base, random_chat_model, server_env)

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def base(tiny_tokenizer, tmp_path_factory):
    return make_chat_base(tmp_path_factory.mktemp("chat_cli"), tiny_tokenizer)


@pytest.fixture(scope="module")
def reference(tiny_tokenizer):
    tok = chat_tokenizer(tiny_tokenizer)
    engine = Engine(random_chat_model(tok)[0].eval(), tok, num_slots=1)

    def run(messages):
        prompt = tok.render_for_reply(messages)
        return engine.generate_many([prompt], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))[0][0].text
    return run


def cli(base, *flags, stdin=b"", timeout=300):
    cmd = [sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", "--temperature", "0", *flags]
    p = subprocess.run(cmd, cwd=REPO, env=server_env(base), input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()  # bytes decoded as is: no newline translation


def test_one_shot_prompt_matches_the_engine(base, reference):
    rc, out, err = cli(base, "--model-tag", RANDOM_TAG, "--max-tokens", str(MAX_TOKENS), "-p", "Hello there")
    assert rc == 0, err
    assert "--max-tokens is deprecated" in err and "--max-new-tokens" in err  # the old name still works
    assert out == reference([{"role": "user", "content": "Hello there"}]) + " [max tokens reached]\n"


def test_piped_chat_keeps_turns_and_clears(base, reference):
    stdin = b"Hello there\nAnd then?\n/clear\nAnd then?\n/bogus\n/quit\nnever read\n"
    rc, out, err = cli(base, "--model-tag", RANDOM_TAG, "--max-new-tokens", str(MAX_TOKENS), stdin=stdin)
    assert rc == 0, err
    first = reference([{"role": "user", "content": "Hello there"}])
    second = reference([{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                        {"role": "user", "content": "And then?"}])
    fresh = reference([{"role": "user", "content": "And then?"}])
    assert second != fresh  # the reference can tell a continued chat from a new one
    expected = (f"you> Hello there\nnanochat> {first} [max tokens reached]\n"
                f"you> And then?\nnanochat> {second} [max tokens reached]\n"
                "[new conversation]\n"
                f"you> And then?\nnanochat> {fresh} [max tokens reached]\n"
                "[unknown command /bogus; the commands are /clear and /quit]\n")
    assert out.endswith(expected), out
    assert "never read" not in out


def test_tool_calls_are_shown_apart(base):
    rc, out, err = cli(base, "--model-tag", SCRIPTED_TAG, "-p", "What is six times seven?")
    assert rc == 0, err
    assert out == f"{PIECES[0]}[calc {TOOL_EXPR} = {TOOL_RESULT}]{PIECES[1]}{PIECES[2]}\n"


def test_ctrl_c_stops_the_reply_and_keeps_the_chat(base):
    cmd = [sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", "--model-tag", RANDOM_TAG,
           "--max-new-tokens", "4000", "--temperature", "0"]
    p = subprocess.Popen(cmd, cwd=REPO, env=server_env(base), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out = bytearray()
    reader = threading.Thread(target=lambda: [out.extend(b) for b in iter(lambda: p.stdout.read1(4096), b"")], daemon=True)
    reader.start()
    try:
        p.stdin.write(b"Write forever\n")
        p.stdin.flush()
        deadline = time.time() + 300
        while b"nanochat> " not in out or len(out) < out.find(b"nanochat> ") + 20:  # a few tokens in
            assert time.time() < deadline and p.poll() is None, bytes(out)
            time.sleep(0.01)
        p.send_signal(signal.SIGINT)
        deadline = time.time() + 60
        while b"[stopped]" not in out:
            assert time.time() < deadline and p.poll() is None, bytes(out)
            time.sleep(0.01)
        p.stdin.write(b"/clear\n/quit\n")  # still chatting after the stop
        p.stdin.flush()
        assert p.wait(60) == 0, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(5)
    text = bytes(out).decode()
    assert "[max tokens reached]" not in text and text.rstrip().endswith("[new conversation]")


def test_missing_checkpoint_is_a_message(base, tmp_path):
    env = {**server_env(str(tmp_path)), "NANOCHAT_BASE_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", "-p", "hi"], cwd=REPO, env=env,
                       capture_output=True, timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 1 and "cannot load the sft checkpoint" in err and "Traceback" not in err, err
    rc, _, err = cli(base, "--top-k", "500", "-p", "hi")
    assert rc == 2 and "--top-k must be in [0, 200]" in err
    assert os.path.isdir(base)


@pytest.mark.parametrize("lang", ["C.UTF-8", "C"])
def test_invalid_utf8_on_stdin_is_replaced_not_fatal(base, lang):
    # issue 18 item 15: `printf 'hi \xff\n' | chat_cli` (and LANG=C) died with a UnicodeError
    cmd = [sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", "--temperature", "0",
           "--model-tag", RANDOM_TAG, "--max-new-tokens", str(MAX_TOKENS)]
    env = {**server_env(base), "LANG": lang, "LC_ALL": lang, "PYTHONIOENCODING": ""}
    env.pop("PYTHONUTF8", None)
    p = subprocess.run(cmd, cwd=REPO, env=env, input=b"hi \xff\nok \xe2\x82\n/quit\n", capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = p.stdout.decode(errors="replace")
    assert out.count("nanochat>") == 2 and "Traceback" not in p.stderr.decode(errors="replace"), out
