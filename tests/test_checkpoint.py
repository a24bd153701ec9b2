"""
Tests of nanochat/checkpoint_manager.py: round trip, latest step, keep-last, atomicity (a save that
raises, and a process killed in the middle of a save), clear errors, and load_model end to end with a
tiny GPT and a tiny tokenizer under NANOCHAT_BASE_DIR, the training state (one optimizer file, the
older per-rank layout refused). The multi-rank save (each rank its optimizer shard) is exercised by
the torchrun test in tests/test_optim.py, the training state at other world sizes by
tests/test_resume_world_size.py.

    uv run pytest tests/test_checkpoint.py
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.checkpoint_manager import (CheckpointError, latest_step, leftover_dirs, list_steps, load_checkpoint,
                                         load_model, save_checkpoint)
from nanochat.gpt import GPT, GPTConfig


def tiny_gpt(vocab_size=64, n_layer=2, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=16, vocab_size=vocab_size, n_layer=n_layer, n_head=2, n_kv_head=1, n_embd=16)
    model = GPT(config)
    model.init_weights()
    return model, config


def trained_state(model):
    """Model and optimizer states after two real steps (so that every optimizer holds state)."""
    optimizers = model.setup_optimizers()
    x = torch.randint(0, model.config.vocab_size, (2, 9))
    for _ in range(2):
        model(x[:, :-1].contiguous(), x[:, 1:].contiguous()).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    return optimizers


def meta_for(config, step):
    return {"model_config": config.__dict__, "user_config": {"depth": config.n_layer, "lr": 0.02},
            "step": step, "loop_state": {"min_val_bpb": 1.5}, "dataloader_state": {"pq_idx": 3, "rg_idx": 7}}


def assert_same_state(a, b):
    """Equal nested structures of tensors / numbers / strings."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_round_trip_and_latest_step(tmp_path):
    model, config = tiny_gpt()
    optimizers = trained_state(model)
    ckpt = str(tmp_path / "ckpt")
    for step in (5, 20, 100):
        save_checkpoint(ckpt, step, model.state_dict(), [o.state_dict() for o in optimizers], meta_for(config, step))
    assert sorted(os.listdir(ckpt)) == ["000005", "000020", "000100"]
    assert sorted(os.listdir(os.path.join(ckpt, "000020"))) == ["meta_000020.json", "model_000020.pt",
                                                                "optim_000020_rank0.pt"]
    assert latest_step(ckpt) == 100 and list_steps(ckpt) == [5, 20, 100]

    model_state, optim_states, meta = load_checkpoint(ckpt, step=20, load_optimizer=True)
    assert_same_state(model_state, model.state_dict())
    assert_same_state(optim_states, [o.state_dict() for o in optimizers])
    assert meta == json.loads(json.dumps(meta_for(config, 20)))
    _, optim_states, meta = load_checkpoint(ckpt)  # default: the latest step, no optimizer
    assert optim_states is None and meta["step"] == 100


def test_keep_last_deletes_older_steps(tmp_path):
    ckpt = str(tmp_path)
    for step in range(1, 6):
        save_checkpoint(ckpt, step, {"w": torch.ones(2) * step}, None, {"step": step}, keep_last=2)
    assert list_steps(ckpt) == [4, 5]
    assert load_checkpoint(ckpt)[0]["w"][0] == 5


def test_resaving_a_step_replaces_it(tmp_path):
    save_checkpoint(str(tmp_path), 3, {"w": torch.zeros(2)}, None, {"v": 1})
    save_checkpoint(str(tmp_path), 3, {"w": torch.ones(2)}, None, {"v": 2})
    model_state, _, meta = load_checkpoint(str(tmp_path), 3)
    assert meta["v"] == 2 and model_state["w"].sum() == 2 and leftover_dirs(str(tmp_path)) == []


@pytest.mark.parametrize("fail_on", ["optim_", "model_", "meta_", "rename"])
def test_failed_save_leaves_previous_step_loadable(tmp_path, monkeypatch, fail_on, caplog):
    ckpt = str(tmp_path)
    save_checkpoint(ckpt, 1, {"w": torch.ones(3)}, [{"s": 1}], {"step": 1})

    real_write, real_rename = cm._write, os.rename

    def failing_write(path, write_fn):
        if os.path.basename(path).startswith(fail_on):
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError("disk full (simulated)")
        real_write(path, write_fn)

    def failing_rename(src, dst):
        raise OSError("crash before rename (simulated)")

    monkeypatch.setattr(cm, "_write", failing_write)
    if fail_on == "rename":
        monkeypatch.setattr(cm.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(ckpt, 2, {"w": torch.zeros(3)}, [{"s": 2}], {"step": 2})
    monkeypatch.setattr(cm, "_write", real_write)
    monkeypatch.setattr(cm.os, "rename", real_rename)

    assert list_steps(ckpt) == [1] and leftover_dirs(ckpt) == [".tmp_000002"]
    with caplog.at_level("WARNING", logger="nanochat"):
        model_state, optim_state, meta = load_checkpoint(ckpt, load_optimizer=True)
    assert meta == {"step": 1} and optim_state == [{"s": 1}] and torch.equal(model_state["w"], torch.ones(3))
    assert ".tmp_000002" in caplog.text  # the half folder is reported, not loaded
    # the next save of that step clears the leftover and succeeds
    save_checkpoint(ckpt, 2, {"w": torch.zeros(3)}, [{"s": 2}], {"step": 2})
    assert list_steps(ckpt) == [1, 2] and leftover_dirs(ckpt) == []


# A real crash: the process is SIGKILLed (no exception handlers, no cleanup) in the middle of writing
# the model file of step 2, or just before the rename that publishes it.
CRASH_SCRIPT = r"""
import os, signal, sys, torch
from nanochat import checkpoint_manager as cm
ckpt, where = sys.argv[1], sys.argv[2]
state = {"w": torch.arange(100000.0)}
cm.save_checkpoint(ckpt, 1, state, [{"s": 1}], {"step": 1})
real_write, real_rename = cm._write, os.rename
def write(path, write_fn):
    if where == "model" and os.path.basename(path).startswith("model_"):
        with open(path, "wb") as f:
            torch.save(state, f)
            f.truncate(f.tell() // 2)  # half of the file is on disk when the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, write_fn)
def rename(src, dst):
    if where == "rename":
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)
cm._write, cm.os.rename = write, rename
cm.save_checkpoint(ckpt, 2, state, [{"s": 2}], {"step": 2})
"""


@pytest.mark.parametrize("where", ["model", "rename"])
def test_killed_save_leaves_previous_step_loadable(tmp_path, where):
    ckpt = str(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, ckpt, where], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert latest_step(ckpt) == 1 and leftover_dirs(ckpt) == [".tmp_000002"]
    model_state, optim_state, meta = load_checkpoint(ckpt, load_optimizer=True)
    assert meta["step"] == 1 and optim_state == [{"s": 1}] and torch.equal(model_state["w"], torch.arange(100000.0))


def test_errors_name_the_path_and_what_is_there(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        latest_step(str(tmp_path))

    ckpt = str(tmp_path / "ckpt")
    for step in (10, 20):
        save_checkpoint(ckpt, step, {"w": torch.ones(4)}, [{"s": step}], {"step": step})
    with pytest.raises(FileNotFoundError, match=r"step 15 .*available steps: \[10, 20\]"):
        load_checkpoint(ckpt, step=15)
    with pytest.raises(FileNotFoundError, match=r"rank 1 .*optim_000020_rank0.pt"):
        load_checkpoint(ckpt, step=20, load_optimizer=True, rank=1)

    model_file = os.path.join(ckpt, "000020", "model_000020.pt")
    with open(model_file, "r+b") as f:
        f.truncate(os.path.getsize(model_file) // 2)
    with pytest.raises(CheckpointError, match=r"model_000020\.pt.*corrupt.*\[10, 20\]"):
        load_checkpoint(ckpt)
    with open(os.path.join(ckpt, "000010", "meta_000010.json"), "w") as f:
        f.write('{"step": ')
    with pytest.raises(CheckpointError, match=r"meta_000010\.json"):
        load_checkpoint(ckpt, step=10)
    # a step folder without its meta (deleted by hand) is not a complete checkpoint
    os.remove(os.path.join(ckpt, "000010", "meta_000010.json"))
    assert list_steps(ckpt) == [20]


def test_meta_must_be_json_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(str(tmp_path / "ckpt"), 1, {}, None, {"dtype": torch.float32})
    assert not os.path.exists(tmp_path / "ckpt")


# -----------------------------------------------------------------------------
# load_model end to end

def save_model(base, tag, step, model, config, compiled=False):
    state = model.state_dict()
    if compiled:  # what a torch.compile'd model's state_dict looks like
        state = {"_orig_mod." + k: v for k, v in state.items()}
    save_checkpoint(os.path.join(base, "base_checkpoints", tag), step, state, None, meta_for(config, step))


def test_load_model_end_to_end(tmp_path, monkeypatch, tiny_tokenizer):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    tiny_tokenizer.save(str(tmp_path / "tokenizer"))
    vocab = tiny_tokenizer.get_vocab_size()
    small, small_config = tiny_gpt(vocab, n_layer=2, seed=1)
    big, big_config = tiny_gpt(vocab, n_layer=10, seed=2)
    save_model(str(tmp_path), "d2", 5, small, small_config)
    save_model(str(tmp_path), "d10", 7, big, big_config, compiled=True)  # "d10" < "d2" as strings

    ids = torch.tensor([tiny_tokenizer.encode("the model learns", prepend=tiny_tokenizer.get_bos_token_id())])
    model, tokenizer, meta = load_model("base", "cpu", "eval")
    assert meta["model_config"]["n_layer"] == 10 and meta["step"] == 7 and not model.training
    assert tokenizer.get_vocab_size() == vocab
    with torch.no_grad():
        torch.testing.assert_close(model(ids), big.eval()(ids), rtol=0, atol=0)

    model, _, meta = load_model("base", "cpu", "train", model_tag="d2", step=5)
    assert model.training and meta["model_config"]["n_layer"] == 2
    with torch.no_grad():
        torch.testing.assert_close(model(ids), small.eval()(ids), rtol=0, atol=0)

    with pytest.raises(FileNotFoundError, match=r"'d7'.*d10.*d2"):
        load_model("base", "cpu", "eval", model_tag="d7")
    with pytest.raises(FileNotFoundError, match="chat_checkpoints"):
        load_model("sft", "cpu", "eval")
    with pytest.raises(ValueError, match="base"):
        load_model("pretrain", "cpu", "eval")
    with pytest.raises(ValueError, match="phase"):
        load_model("base", "cpu", "inference")
    save_checkpoint(str(tmp_path / "base_checkpoints" / "d2"), 6, small.state_dict(), None, {"step": 6})
    with pytest.raises(CheckpointError, match="model_config"):
        load_model("base", "cpu", "eval", model_tag="d2")


def test_training_state_round_trip_and_older_layout_refused(tmp_path):
    """save_training_state writes one world-size independent optimizer file (at world size 1 the full
    state is the optimizers' own state_dict); load_training_state restores model and optimizers so
    that the next step is bitwise the uninterrupted one's; a state of the older per-rank layout is
    refused with what to do."""
    from nanochat.checkpoint_manager import load_training_state, save_training_state

    model, config = tiny_gpt()
    optimizers = trained_state(model)
    for opt in optimizers:
        assert_same_state(opt.full_state_dict(), opt.state_dict())
    run = str(tmp_path / "run")
    data_state = {"positions": {"0": {"k": 3, "rows": 1}}, "streams": 1}
    save_training_state(run, 2, model, optimizers, meta_for(config, 2), data_state)
    assert sorted(os.listdir(os.path.join(run, "000002"))) == ["meta_000002.json", "model_000002.pt", "optim_000002.pt"]
    fresh, _ = tiny_gpt(seed=1)
    fresh_optimizers = fresh.setup_optimizers()
    step, state, meta = load_training_state(run, fresh, fresh_optimizers, "cpu", config.__dict__)
    assert step == 2 and state == data_state and meta["world_size"] == 1
    x = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    for m, opts in ((model, optimizers), (fresh, fresh_optimizers)):
        m(x[:, :-1].contiguous(), x[:, 1:].contiguous()).backward()
        for opt in opts:
            opt.step()
    assert_same_state(fresh.state_dict(), model.state_dict())
    with pytest.raises(CheckpointError, match="model config"):
        load_training_state(run, fresh, fresh_optimizers, "cpu", dict(config.__dict__, n_embd=32))
    old = str(tmp_path / "old")  # the older layout: per-rank optimizer files and per-rank loader states
    save_checkpoint(old, 4, model.state_dict(), [o.state_dict() for o in optimizers],
                    dict(meta_for(config, 4), loader_states=[{"epoch": 1, "shard": 0, "row_group": 0, "rows": 2}]))
    with pytest.raises(CheckpointError, match="older nanochat.*start the stage again"):
        load_training_state(old, fresh, fresh_optimizers, "cpu", config.__dict__)
