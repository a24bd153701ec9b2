"""
Tests of nanochat/chat_data.py against a reference renderer written in the test (chat_stage_fixtures):
  - the loss mask covers exactly the assistant's tokens (tool outputs excluded) in every mixture
    component: smoltalk-like chat, GSM8K-like with python tool calls and outputs, ARC-like MC,
    identity, spelling — in packed (mid) rows and in padded (SFT) rows;
  - exact resume of both loaders, across epoch boundaries;
  - truncation of an over-long conversation (SFT) and a row with no trained target;
  - validation reads each item at most once and says when it is short;
  - the batches of a step do not depend on the world size (1 x 4, 2 x 2, 4 x 1 micro-batches), and a
    state saved at one world size resumes at another;
  - the validation loss and bpb against a naive recompute.
Run: uv run pytest tests/test_chat_data.py -q
"""

import math
import os

import pytest
import torch

from chat_stage_fixtures import reference_render, write_mirror
import nanochat.chat_data as chat_data
import nanochat.dataloader as dataloader
from nanochat.chat_data import epoch_order, load_val_batches, mid_data_loader_with_state, sft_data_loader_with_state
from nanochat.checkpoint_manager import join_loader_states
from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import evaluate_loss_bpb
from tasks.arc import ARC
from tasks.common import Task, TaskMixture
from tasks.gsm8k import GSM8K
from tasks.identity import Identity
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee


class ListTask(Task):
    """A fixed list of conversations as a Task."""

    def __init__(self, conversations, **kwargs):
        super().__init__(**kwargs)
        self.conversations = list(conversations)

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """{name: task} of every mixture component, from a tiny mirror."""
    root = write_mirror(tmp_path_factory.mktemp("chat_data") / "data")
    old = os.environ.get("NANOCHAT_DATA_DIR")
    os.environ["NANOCHAT_DATA_DIR"] = root
    try:
        tasks = {"chat": SmolTalk("train"), "gsm8k": GSM8K("main", "train"), "arc": ARC("ARC-Easy", "train"),
                 "identity": Identity(size=12, seed=0), "spellingbee": SpellingBee(size=8),
                 "simplespelling": SimpleSpelling(size=8)}
    finally:
        if old is None:
            del os.environ["NANOCHAT_DATA_DIR"]
        else:
            os.environ["NANOCHAT_DATA_DIR"] = old
    return tasks


def expected_targets(ids, trained):
    """What a row of ids with its reference mask must give: (inputs, targets)."""
    return ids[:-1], [t if m else -1 for t, m in zip(ids[1:], trained[1:])]


def test_reference_agrees_with_the_expected_text(components, tiny_tokenizer):
    # the reference's trained tokens decode to the assistant's text and python calls, never tool outputs
    for name, task in components.items():
        for conversation in task:
            ids, trained = reference_render(tiny_tokenizer, conversation)
            text = tiny_tokenizer.decode([i for i, t in zip(ids, trained) if t])
            for message in conversation["messages"]:
                parts = message["content"] if isinstance(message["content"], list) else []
                for part in parts:
                    if part["type"] == "python_output":
                        assert "<|output_start|>" not in text
            assert text.endswith("<|assistant_end|>"), name


@pytest.mark.parametrize("name", ["chat", "gsm8k", "arc", "identity", "spellingbee", "simplespelling"])
def test_sft_mask_is_exactly_the_assistant_tokens(components, tiny_tokenizer, name):
    task = components[name]
    T = 4096  # nothing is cut
    loader = sft_data_loader_with_state(tiny_tokenizer, task, 2, T, seed=3)
    order = epoch_order(len(task), 1, 3)
    for k in range(len(task) // 2):
        inputs, targets, state = next(loader)
        for b in range(2):
            ids, trained = reference_render(tiny_tokenizer, task[order[2 * k + b]])
            x, y = expected_targets(ids, trained)
            n = len(x)
            assert inputs[b, :n].tolist() == x and targets[b, :n].tolist() == y
            assert (targets[b, n:] == -1).all()  # padding is never a target
    if name in ("gsm8k", "spellingbee"):  # the python outputs are there in the inputs, never as targets
        out_start = tiny_tokenizer.encode_special("<|output_start|>")
        py_start = tiny_tokenizer.encode_special("<|python_start|>")
        assert (inputs == out_start).any() and not (targets == out_start).any()
        assert (targets == py_start).any()


@pytest.mark.parametrize("name", ["chat", "gsm8k", "arc", "identity", "spellingbee", "simplespelling"])
def test_mid_mask_is_exactly_the_assistant_tokens(components, tiny_tokenizer, name):
    task = components[name]
    T = 48
    references = [reference_render(tiny_tokenizer, c) for c in task]
    bos = tiny_tokenizer.get_bos_token_id()
    loader = mid_data_loader_with_state(tiny_tokenizer, task, 2, T, seed=0, pool_size=8)
    seen = 0
    for _ in range(4):
        inputs, targets, _ = next(loader)
        assert inputs.shape == targets.shape == (2, T)
        for b in range(2):
            row = inputs[b].tolist()
            starts = [t for t, i in enumerate(row) if i == bos]
            assert starts[0] == 0, "every row starts at a conversation start"
            for s, e in zip(starts, starts[1:] + [T]):
                # the segment is a whole conversation, or the row's last one cropped: find it by its tokens
                seg, last = row[s:e], e == T
                matches = [(ids, trained) for ids, trained in references
                           if ids[:len(seg)] == seg and (last or len(ids) == len(seg))]
                assert matches, f"row segment {seg[:20]} is not a rendered conversation"
                ids, trained = matches[0]
                for t in range(s, min(e, T)):
                    j = t - s + 1  # the target of position t is token j of the conversation
                    expected = ids[j] if j < len(ids) and trained[j] else -1
                    assert targets[b, t].item() == expected
                seen += 1
    assert seen >= 8


def test_mid_mask_of_a_mixture_with_tool_outputs(components, tiny_tokenizer):
    mixture = TaskMixture(list(components.values()), seed=1)
    out_start = tiny_tokenizer.encode_special("<|output_start|>")
    out_end = tiny_tokenizer.encode_special("<|output_end|>")
    loader = mid_data_loader_with_state(tiny_tokenizer, mixture, 2, 64, pool_size=16)
    found = 0
    for _ in range(10):
        inputs, targets, _ = next(loader)
        # inside <|output_start|> ... <|output_end|> (both included) nothing is a target
        for b in range(2):
            inside = False
            row = inputs[b].tolist()
            for t in range(1, 64):
                token = row[t] if t < 64 else None
                if token == out_start:
                    inside, found = True, found + 1
                if inside:
                    assert targets[b, t - 1].item() == -1
                if token == out_end:
                    inside = False
    assert found > 0


def collect(loader, n):
    return [next(loader) for _ in range(n)]


def same_batches(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["mid", "sft"])
def test_exact_resume_across_epochs(components, tiny_tokenizer, kind):
    task = TaskMixture([components["chat"], components["arc"], components["gsm8k"]], seed=0)  # 44 items
    if kind == "mid":
        make = lambda state: mid_data_loader_with_state(tiny_tokenizer, task, 2, 32, resume_state=state, seed=5,
                                                        pool_size=8)
    else:
        make = lambda state: sft_data_loader_with_state(tiny_tokenizer, task, 3, 32, resume_state=state, seed=5)
    whole = collect(make(None), 60)
    assert whole[-1][2]["epoch"] >= 2, "the test must cross an epoch boundary"
    for k in (0, 7, 13, 29, 44):
        resumed = collect(make(whole[k][2]), 60 - k - 1)
        assert same_batches(resumed, whole[k + 1:]), f"resuming after batch {k} gives other batches"
    epochs = [b[2]["epoch"] for b in whole]
    assert epochs == sorted(epochs)


def test_resume_with_other_settings_is_refused(components, tiny_tokenizer):
    task = components["chat"]
    _, _, state = next(sft_data_loader_with_state(tiny_tokenizer, task, 2, 32))
    with pytest.raises(ValueError, match="num_items"):
        next(sft_data_loader_with_state(tiny_tokenizer, components["arc"], 2, 32, resume_state=state))
    _, _, state = next(mid_data_loader_with_state(tiny_tokenizer, task, 2, 32, pool_size=8))
    with pytest.raises(ValueError, match="pool_size"):
        next(mid_data_loader_with_state(tiny_tokenizer, task, 2, 32, resume_state=state, pool_size=4))


def test_sft_truncates_long_conversations_and_keeps_going(tiny_tokenizer):
    long_user = " ".join(["the model learns"] * 60)
    conversations = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
        {"messages": [{"role": "user", "content": "tell"}, {"role": "assistant", "content": long_user}]},
        {"messages": [{"role": "user", "content": long_user}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "bye"}]},
    ]
    task, T = ListTask(conversations), 16
    loader = sft_data_loader_with_state(tiny_tokenizer, task, 1, T, seed=0)
    orders = epoch_order(4, 1, 0) + epoch_order(4, 2, 0)  # each epoch in its own order
    for k in range(8):  # two epochs: every conversation, long or short, gives a row
        inputs, targets, _ = next(loader)
        item = orders[k]
        ids, trained = reference_render(tiny_tokenizer, conversations[item])
        x, y = expected_targets(ids[:T + 1], trained[:T + 1])
        assert inputs.shape[1] == len(x) <= T
        assert inputs[0].tolist() == x and targets[0].tolist() == y
        if item == 2:
            assert (targets == -1).all(), "a prompt longer than T leaves nothing to train on"
        if item == 1:
            assert inputs.shape[1] == T and (targets >= 0).sum() > 0
    # a batch of a long and a short conversation is padded to T, not beyond
    inputs, targets, _ = next(sft_data_loader_with_state(tiny_tokenizer, ListTask(conversations[:2]), 2, T))
    assert inputs.shape == (2, T)


@pytest.mark.parametrize("packed", [True, False])
def test_validation_reads_each_item_at_most_once(components, tiny_tokenizer, packed, caplog):
    task = components["chat"]  # 24 conversations
    bos = tiny_tokenizer.get_bos_token_id()
    batches, short = load_val_batches(tiny_tokenizer, task, 2, 64, max_batches=1000, packed=packed)
    assert short
    if packed:  # a <|bos|> starts each conversation (a packed row has no padding)
        conversation_starts = sum(int((inputs == bos).sum()) for inputs, _ in batches)
        assert 0 < conversation_starts <= len(task)
    else:  # one conversation per row; the padding is <|bos|> too, so compare the rows without it
        assert len(batches) == len(task) // 2
        rows = [tuple(inputs[b][inputs[b] != bos].tolist()) for inputs, _ in batches for b in range(2)]
        assert len(set(rows)) == len(rows)
    few, short = load_val_batches(tiny_tokenizer, task, 2, 64, max_batches=2, packed=packed)
    assert not short and len(few) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(few, batches))
    with pytest.raises(ValueError, match="less than one batch"):
        load_val_batches(tiny_tokenizer, ListTask(task[:1]), 2, 64, max_batches=2, packed=packed)


def test_chat_loss_and_bpb_match_a_naive_recompute(components, tiny_tokenizer):
    torch.manual_seed(0)
    V = tiny_tokenizer.get_vocab_size()
    model = GPT(GPTConfig(sequence_len=64, vocab_size=V, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    for p in model.parameters():
        p.data += 0.3 * torch.randn_like(p)
    token_bytes = tiny_tokenizer.token_bytes()
    batches, _ = load_val_batches(tiny_tokenizer, components["gsm8k"], 2, 64, max_batches=3, packed=False)
    nats = count = byte_nats = nbytes = 0.0
    with torch.no_grad():
        for inputs, targets in batches:
            logp = torch.log_softmax(model(inputs).double(), dim=-1)
            for b in range(inputs.size(0)):
                for t in range(inputs.size(1)):
                    y = targets[b, t].item()
                    if y >= 0:
                        nats -= logp[b, t, y].item()
                        count += 1
                        if token_bytes[y] > 0:
                            byte_nats -= logp[b, t, y].item()
                            nbytes += token_bytes[y].item()
    loss, bpb = evaluate_loss_bpb(model, batches, token_bytes)
    assert loss == pytest.approx(nats / count, rel=1e-5)
    assert bpb == pytest.approx(byte_nats / (math.log(2) * nbytes), rel=1e-5)


# -----------------------------------------------------------------------------
# ranks (the loaders end to end under torchrun: tests/test_chat_sft.py, 2 ranks == 1 process)

def set_rank(monkeypatch, rank, world_size):
    for module in (chat_data, dataloader):
        monkeypatch.setattr(module, "get_rank", lambda: rank)
        monkeypatch.setattr(module, "get_world_size", lambda: world_size)


def steps_of(make, world_size, micro_steps, num_steps, monkeypatch):
    """[(the step's batches in stream order, each rank's state after the step)] of num_steps steps."""
    loaders = []
    for rank in range(world_size):
        set_rank(monkeypatch, rank, world_size)
        loaders.append(make(micro_steps))
    steps = []
    for _ in range(num_steps):
        by_stream, states = {}, []
        for rank, loader in enumerate(loaders):
            set_rank(monkeypatch, rank, world_size)
            for m in range(micro_steps):
                inputs, targets, state = next(loader)
                by_stream[m * world_size + rank] = (inputs, targets)
            states.append(state)
        steps.append(([by_stream[j] for j in sorted(by_stream)], states))
    return steps


def same_steps(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                                    for (sa, _), (sb, _) in zip(a, b) for x, y in zip(sa, sb))


@pytest.mark.parametrize("kind", ["mid", "sft"])
def test_the_data_order_does_not_depend_on_the_world_size(components, tiny_tokenizer, kind, monkeypatch):
    """4 micro-batches per step as 1 rank x 4, 2 x 2 and 4 x 1: the same batches in every step, across
    epochs; saved at one world size, resumed at another: the batches that follow."""
    task = TaskMixture([components["chat"], components["arc"], components["gsm8k"]], seed=0)  # 44 items

    def loader(resume_state=None):
        if kind == "mid":
            return lambda micro_steps: mid_data_loader_with_state(tiny_tokenizer, task, 2, 32, seed=5, pool_size=4,
                                                                  micro_steps=micro_steps, resume_state=resume_state)
        return lambda micro_steps: sft_data_loader_with_state(tiny_tokenizer, task, 3, 32, seed=5,
                                                              micro_steps=micro_steps, resume_state=resume_state)

    n = 12
    whole = steps_of(loader(), 1, 4, n, monkeypatch)
    epochs = [position["epoch"] for position in whole[-1][1][0]["positions"].values()]
    assert max(epochs) >= 2, f"the test must cross an epoch boundary: {epochs}"
    for world_size in (2, 4):
        assert same_steps(steps_of(loader(), world_size, 4 // world_size, n, monkeypatch), whole)
    for saved_world, resumed_world, cut in ((2, 1, 3), (1, 2, 7), (4, 2, 10)):
        before = steps_of(loader(), saved_world, 4 // saved_world, cut, monkeypatch)
        state = join_loader_states(before[-1][1])
        assert state == join_loader_states(whole[cut - 1][1])
        after = steps_of(loader(state), resumed_world, 4 // resumed_world, n - cut, monkeypatch)
        assert same_steps(after, whole[cut:]), f"{saved_world} -> {resumed_world} ranks after step {cut}"
    set_rank(monkeypatch, 0, 1)
    with pytest.raises(ValueError, match="streams=4, now streams=2"):  # another --device-batch-size
        loader(join_loader_states(whole[0][1]))(2)


def test_epoch_orders():
    assert sorted(epoch_order(50, 1, 4)) == list(range(50))
    assert epoch_order(50, 1, 4) != epoch_order(50, 2, 4)  # a fresh order each epoch
    assert epoch_order(50, 1, 4) == epoch_order(50, 1, 4)
