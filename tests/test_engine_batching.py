"""
Tests of the engine's continuous batching (nanochat/engine.py: Engine.add_request / step /
cancel / generate_many, SamplingParams, TextStream).

Covered: greedy results of requests with different prompt lengths that join mid-stream and leave
early equal each request run alone and a naive full recompute; per-request seeds reproduce
whatever else is in the batch; n samples; cancellation frees slots without touching the others;
stop tokens, stop strings (never leaked into the text, also when split over tokens) and the
finish reasons; a slot that fills up ends with "length"; UTF-8 characters split over tokens;
the calculator tool through the new API; add_request from another thread; input validation.
Not covered here: CUDA (bf16 cache under autocast) and speed (scripts/infer_bench.py).

    uv run pytest tests/test_engine_batching.py -q
"""

import threading

import pytest
import torch

from nanochat.engine import Completion, Engine, SamplingParams, TextStream, TokenEvent
from test_engine import PROMPT_TEXT, naive_greedy, random_model, scripted_model, tool_script


def prompts_of(tok, lengths, seed=0):
    """Prompts of the given lengths: <|bos|> followed by pieces of the test sentence, shifted."""
    base = tok.encode(PROMPT_TEXT * 4)
    return [[tok.get_bos_token_id()] + base[(seed + 3 * i) % 7:][:n - 1] for i, n in enumerate(lengths)]


def run_alone(model, tok, prompt, params, **engine_kw):
    return Engine(model, tok, **engine_kw).generate_many([prompt], params)[0]


def drain(engine, events_by_request=None):
    """Step until idle; collect events per (request id, index)."""
    out = {} if events_by_request is None else events_by_request
    while engine.has_work():
        for e in engine.step():
            out.setdefault((e.request_id, e.index), []).append(e)
    return out


def test_continuous_batching_greedy_matches_alone_and_naive_recompute(tiny_tokenizer):
    """Requests of different prompt lengths and token budgets: some queued at the start, some
    joining while others decode, some leaving early; each gets exactly its solo greedy result,
    which is the naive full recompute."""
    tok = tiny_tokenizer
    model = random_model(tok, n_kv_head=2)
    lengths = [3, 17, 9, 30, 1, 12]
    budgets = [25, 6, 14, 9, 20, 11]
    prompts = prompts_of(tok, lengths)
    engine = Engine(model, tok, num_slots=4)
    rids, events, joins = {}, {}, {0: [0, 1, 2], 2: [3], 5: [4, 5]}  # step -> requests added before it
    step = 0
    while step == 0 or engine.has_work():
        for i in joins.get(step, []):
            rids[i] = engine.add_request(prompts[i], SamplingParams(max_tokens=budgets[i]))
        assert engine.num_active() <= 4
        for e in engine.step():
            events.setdefault(e.request_id, []).append(e)
        step += 1
    for i, prompt in enumerate(prompts):
        tokens = [e.token for e in events[rids[i]]]
        assert tokens == naive_greedy(model, prompt, budgets[i]), f"request {i}"
        assert tokens == run_alone(model, tok, prompt, SamplingParams(max_tokens=budgets[i]))[0].tokens
        assert [e.finish_reason for e in events[rids[i]]] == [None] * (budgets[i] - 1) + ["length"]
        assert all(e.index == 0 and not e.forced for e in events[rids[i]])
    assert engine.num_active() == 0 and engine.num_waiting() == 0


def test_generate_many_returns_completions_in_order(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok)
    prompts = prompts_of(tok, [4, 20, 7])
    params = [SamplingParams(max_tokens=m) for m in (5, 9, 3)]
    out = Engine(model, tok, num_slots=2).generate_many(prompts, params)  # 3 requests, 2 slots: one waits
    for prompt, p, (c,) in zip(prompts, params, out):
        assert isinstance(c, Completion)
        assert c.tokens == naive_greedy(model, prompt, p.max_tokens)
        assert c.masks == [1] * p.max_tokens and c.finish_reason == "length"
        assert c.text == tok.decode(c.tokens)


def test_per_request_seed_reproduces_whatever_else_is_batched(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok, head_std=0.05)  # near-uniform: sampling is really random
    prompt = prompts_of(tok, [10])[0]
    p = SamplingParams(max_tokens=20, temperature=1.0, seed=1234, n=3)
    alone = run_alone(model, tok, prompt, p)
    # the same request among others: greedy, other temperatures, top-k, top-p, other seeds
    others = [SamplingParams(max_tokens=8, temperature=0.0), SamplingParams(max_tokens=30, temperature=0.7, seed=5),
              SamplingParams(max_tokens=12, temperature=1.3, top_k=5, seed=9),
              SamplingParams(max_tokens=15, temperature=1.0, top_p=0.5, seed=11)]
    prompts = prompts_of(tok, [3, 25, 8, 14], seed=2)
    out = Engine(model, tok, num_slots=8).generate_many(prompts[:2] + [prompt] + prompts[2:],
                                                        others[:2] + [p] + others[2:])
    assert [c.tokens for c in out[2]] == [c.tokens for c in alone]
    assert len({tuple(c.tokens) for c in alone}) == 3, "the n samples are independent"
    different_seed = run_alone(model, tok, prompt, SamplingParams(max_tokens=20, temperature=1.0, seed=1235, n=3))
    assert [c.tokens for c in different_seed] != [c.tokens for c in alone]
    # seed None: drawn from torch's global generator
    torch.manual_seed(0)
    a = run_alone(model, tok, prompt, SamplingParams(max_tokens=10, temperature=1.0))
    torch.manual_seed(0)
    b = run_alone(model, tok, prompt, SamplingParams(max_tokens=10, temperature=1.0))
    assert a[0].tokens == b[0].tokens


def test_top_k_and_top_p_restrict_the_choices(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok, head_std=0.05)
    prompt = prompts_of(tok, [6])[0]
    for params, check in ((SamplingParams(max_tokens=12, temperature=2.0, top_k=4, seed=1, n=2), "k"),
                          (SamplingParams(max_tokens=12, temperature=1.0, top_p=0.05, seed=2, n=2), "p"),
                          (SamplingParams(max_tokens=12, temperature=5.0, top_k=1, seed=3), "greedy")):
        for c in run_alone(model, tok, prompt, params):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.tokens]))[0, len(prompt) - 1:-1]  # (steps, V)
            for step, token in enumerate(c.tokens):
                z = logits[step] / params.temperature
                if check == "k":
                    assert token in torch.topk(z, 4).indices.tolist()
                elif check == "greedy":
                    assert token == int(z.argmax())
                else:  # the nucleus: the smallest top set whose mass reaches p
                    probs, order = z.softmax(-1).sort(descending=True)
                    keep = int(((probs.cumsum(0) - probs) < 0.05).sum())
                    assert token in order[:keep].tolist()


def test_n_samples_greedy_all_equal_the_single_result(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok, n_kv_head=1)
    prompt = prompts_of(tok, [13])[0]
    out = run_alone(model, tok, prompt, SamplingParams(max_tokens=15, n=4), num_slots=4)
    assert [c.tokens for c in out] == [naive_greedy(model, prompt, 15)] * 4


@pytest.mark.parametrize("temperature", [1e-45, 5e-324, 5e-5])
def test_tiny_temperatures_decode_as_greedy(tiny_tokenizer, temperature):
    # issue 18 item 8: logits / 1e-45 overflowed to inf and the reply was garbage; below
    # sampling.GREEDY_BELOW the engine takes its greedy path, the same tokens as temperature 0
    tok = tiny_tokenizer
    model = random_model(tok)
    prompt = prompts_of(tok, [9])[0]
    out = run_alone(model, tok, prompt, SamplingParams(max_tokens=12, temperature=temperature, seed=1, n=2), num_slots=2)
    assert [c.tokens for c in out] == [naive_greedy(model, prompt, 12)] * 2


def test_cancel_frees_the_slot_and_leaves_the_others_alone(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok)
    prompts = prompts_of(tok, [5, 11, 8])
    engine = Engine(model, tok, num_slots=3)
    keep_a = engine.add_request(prompts[0], SamplingParams(max_tokens=20))
    victim = engine.add_request(prompts[1], SamplingParams(max_tokens=50, n=2, temperature=1.0, seed=3))
    waiting = engine.add_request(prompts[2], SamplingParams(max_tokens=12))  # no slot for it yet
    events = {}
    for _ in range(4):
        for e in engine.step():
            events.setdefault((e.request_id, e.index), []).append(e)
    assert engine.num_active() == 3 and engine.num_waiting() == 1
    engine.cancel(victim)
    engine.cancel(12345)  # unknown ids are ignored
    drain(engine, events)
    for i in (0, 1):
        ev = events[(victim, i)]
        assert ev[-1].finish_reason == "cancelled" and ev[-1].token == -1
        assert len(ev) == 5 and all(e.finish_reason is None for e in ev[:-1])
    assert [e.token for e in events[(keep_a, 0)]] == naive_greedy(model, prompts[0], 20)
    # the waiting request got a freed slot and its solo result
    assert [e.token for e in events[(waiting, 0)]] == naive_greedy(model, prompts[2], 12)
    # cancelling a request that is still waiting ends it without running it
    engine = Engine(model, tok, num_slots=1)
    engine.add_request(prompts[0], SamplingParams(max_tokens=5))
    queued = engine.add_request(prompts[1], SamplingParams(max_tokens=5, n=1))
    engine.cancel(queued)
    ev = drain(engine)
    assert [(e.token, e.finish_reason) for e in ev[(queued, 0)]] == [(-1, "cancelled")]


def test_finished_rows_free_their_slots_at_once(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok)
    engine = Engine(model, tok, num_slots=3)
    for n, m in zip((1, 1, 1), (2, 5, 9)):
        engine.add_request(prompts_of(tok, [6])[0], SamplingParams(max_tokens=m, n=n))
    active = []
    while engine.has_work():
        engine.step()
        active.append(engine.num_active())
    assert active == [3, 2, 2, 2, 1, 1, 1, 1, 0]


def test_stop_token_and_tool_call_through_the_new_api(tiny_tokenizer):
    tok = tiny_tokenizer
    sp = tok.encode_special
    chain, successor = tool_script(tok, "2+3")
    engine = Engine(scripted_model(tok, successor), tok, num_slots=2)
    rid = engine.add_request([sp("<|bos|>")], SamplingParams(max_tokens=30, n=2))
    events = drain(engine)
    emitted = chain[1:-1]
    forced = [sp("<|output_start|>"), *tok.encode("5"), sp("<|output_end|>")]
    for i in (0, 1):
        ev = events[(rid, i)]
        assert [e.token for e in ev] == emitted + forced + [sp("<|assistant_end|>")]
        assert [e.forced for e in ev] == [False] * len(emitted) + [True] * len(forced) + [False]
        assert ev[-1].finish_reason == "stop"
        assert "".join(e.text for e in ev) == "2+35"  # special tokens have no text
    (a, b), = Engine(scripted_model(tok, successor), tok).generate_many([[sp("<|bos|>")]], SamplingParams(max_tokens=30, n=2))
    assert a.tokens == emitted + forced  # the stop token is not kept
    assert a.masks == [1] * len(emitted) + [0] * len(forced)
    assert a == b and a.finish_reason == "stop"


def test_stop_strings_end_the_sample_and_never_leak(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok)
    prompt = prompts_of(tok, [9])[0]
    full = run_alone(model, tok, prompt, SamplingParams(max_tokens=40))[0]
    text = full.text
    assert len(text) > 30
    for start, width in ((12, 5), (20, 1), (3, 9)):
        stop = text[start:start + width]
        expect = text[:text.find(stop)]
        engine = Engine(model, tok)
        rid = engine.add_request(prompt, SamplingParams(max_tokens=40, stop=("never-there", stop)))
        events = drain(engine)[(rid, 0)]
        streamed = ""
        for e in events:
            streamed += e.text
            assert stop not in streamed
        assert streamed == expect
        assert events[-1].finish_reason == "stop"
        c = Engine(model, tok).generate_many([prompt], SamplingParams(max_tokens=40, stop=stop))[0][0]
        assert c.text == expect and c.finish_reason == "stop"
        assert c.tokens == full.tokens[:len(c.tokens)] and tok.decode(c.tokens).startswith(expect + stop)


def test_text_stream_holds_back_possible_stop_strings():
    ts = TextStream(stop=("END", "##"))
    outs = [ts.push(piece.encode()) for piece in ("abc E", "N", "x #", "y", " E", "ND tail")]
    assert outs == [("abc ", False), ("", False), ("ENx ", False), ("#y", False), (" ", False), ("", True)]
    assert ts.text == "abc ENx #y "
    ts = TextStream(stop=("END",))
    assert ts.push(b"fin E") == ("fin ", False)
    assert ts.flush() == ("E", False) and ts.text == "fin E"  # the sample ended: held text is released


def test_text_stream_utf8_split_over_tokens():
    ts = TextStream()
    data = "a日é🙂".encode()  # 1 + 3 + 2 + 4 bytes
    deltas = [ts.push(data[i:i + 1])[0] for i in range(len(data))]
    assert deltas == ["a", "", "", "日", "", "é", "", "", "", "🙂"]
    assert TextStream().push(b"\xe6\x97")[0] == ""
    ts = TextStream()
    ts.push(b"ok \xe6\x97")
    assert ts.flush()[0] == "\ufffd" and ts.text == "ok \ufffd"  # an incomplete character at the end


def test_engine_never_emits_half_a_character(tiny_tokenizer):
    """A model scripted to emit the three single-byte tokens of 日 (ids 0..255 are the bytes)."""
    tok = tiny_tokenizer
    sp = tok.encode_special
    b = list("日".encode())  # [230, 151, 165]
    chain = [sp("<|bos|>"), *b, ord("!"), sp("<|assistant_end|>")]
    engine = Engine(scripted_model(tok, dict(zip(chain[:-1], chain[1:]))), tok)
    rid = engine.add_request([sp("<|bos|>")], SamplingParams(max_tokens=10))
    events = drain(engine)[(rid, 0)]
    assert [e.token for e in events] == chain[1:]
    assert [e.text for e in events] == ["", "", "日", "!", ""]
    assert [e.finish_reason for e in events][-1] == "stop"


def test_capacity_limits(tiny_tokenizer):
    tok = tiny_tokenizer
    model = random_model(tok)
    engine = Engine(model, tok, num_slots=2, max_seq_len=32)
    with pytest.raises(ValueError, match="slot holds 32"):
        engine.add_request(list(range(1, 33)), SamplingParams())
    with pytest.raises(ValueError, match="num_slots=2"):
        engine.add_request([1, 2], SamplingParams(n=3))
    with pytest.raises(ValueError, match="non-empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([1, 10 ** 6], SamplingParams())
    with pytest.raises(ValueError, match="max_seq_len"):
        Engine(model, tok, max_seq_len=10 * model.config.sequence_len + 1)
    # prompt + max_tokens beyond the slot: a clean stop at the slot's end, never a wrap
    prompt = prompts_of(tok, [25])[0]
    c = engine.generate_many([prompt], SamplingParams(max_tokens=100))[0][0]
    assert c.finish_reason == "length" and len(prompt) + len(c.tokens) == 32
    assert c.tokens == naive_greedy(model, prompt, 32 - 25)
    c = engine.generate_many([list(range(1, 32))], SamplingParams(max_tokens=100))[0][0]
    assert len(c.tokens) == 1 and c.finish_reason == "length"


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_tokens=0), "max_tokens"), (dict(temperature=-1), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(seed=1.5), "seed"), (dict(n=0), "n="), (dict(stop=[""]), "stop"),
    (dict(stop=[3]), "stop"),
])
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)
    assert SamplingParams(stop="x").stop == ("x",)


def test_add_request_from_another_thread(tiny_tokenizer):
    """A producer thread adds requests (with pauses) while this thread runs step(); every request
    completes with its solo greedy result."""
    tok = tiny_tokenizer
    model = random_model(tok)
    prompts = prompts_of(tok, [4, 9, 15, 2, 7, 11, 5, 13])
    engine = Engine(model, tok, num_slots=3)
    rids, done_adding = {}, threading.Event()

    def producer():
        for i, p in enumerate(prompts):
            rids[i] = engine.add_request(p, SamplingParams(max_tokens=6 + i))
            threading.Event().wait(0.002)
        done_adding.set()

    thread = threading.Thread(target=producer)
    thread.start()
    events = {}
    while not done_adding.is_set() or engine.has_work():
        for e in engine.step():
            events.setdefault(e.request_id, []).append(e.token)
    thread.join()
    assert len(set(rids.values())) == len(prompts)
    for i, p in enumerate(prompts):
        assert events[rids[i]] == naive_greedy(model, p, 6 + i)


def test_token_event_fields():
    e = TokenEvent(request_id=1, index=0, token=5, forced=False, text="x")
    assert e.finish_reason is None


def test_prefill_groups_minimise_the_cost_model():
    """The dynamic programme against a brute force over every split of small sorted lists."""
    import itertools
    import random

    from nanochat.engine import prefill_groups

    def cost(groups, lengths, overhead):
        return sum(len(g) * lengths[g[-1]] + overhead for g in groups)

    rng = random.Random(0)
    for _ in range(40):
        lengths = sorted(rng.randrange(1, 300) for _ in range(rng.randrange(1, 8)))
        overhead = rng.choice([0, 32, 500])
        groups = prefill_groups(lengths, overhead)
        assert [i for g in groups for i in g] == list(range(len(lengths)))
        best = min(cost([list(range(a, b)) for a, b in zip((0,) + cuts, cuts + (len(lengths),))], lengths, overhead)
                   for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k))
        assert cost(groups, lengths, overhead) == best
    assert prefill_groups([5, 5, 6, 6]) == [[0, 1, 2, 3]]  # similar lengths: one pass
    assert len(prefill_groups([2, 3, 400, 410])) == 2       # short ones are not padded to 400


def test_many_joins_with_samples_and_mixed_params(tiny_tokenizer):
    """n > 1 requests of different lengths admitted in one step (several prefill groups, extra
    sample rows after them), mixed with greedy single requests: greedy ones match the naive
    recompute, the sampled ones their solo runs."""
    tok = tiny_tokenizer
    model = random_model(tok, head_std=0.1)
    prompts = prompts_of(tok, [2, 40, 3, 38, 20])
    params = [SamplingParams(max_tokens=7), SamplingParams(max_tokens=9, temperature=0.9, seed=1, n=3),
              SamplingParams(max_tokens=5, n=2), SamplingParams(max_tokens=11, temperature=1.1, top_k=20, seed=2, n=2),
              SamplingParams(max_tokens=6)]
    out = Engine(model, tok, num_slots=9).generate_many(prompts, params)
    for prompt, p, cs in zip(prompts, params, out):
        assert len(cs) == p.n
        if p.temperature == 0:
            assert [c.tokens for c in cs] == [naive_greedy(model, prompt, p.max_tokens)] * p.n
        else:
            assert [c.tokens for c in cs] == [c.tokens for c in run_alone(model, tok, prompt, p)]
