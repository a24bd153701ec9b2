"""
Tests of nanochat/engine.py: greedy decoding through the KV cache against a naive loop that
recomputes the whole sequence each step (MHA, GQA, MQA; one and several samples), seeded sampling,
top-k, stopping, tool use with output forcing (on a model whose weights are set so that it emits
a chosen token sequence), and the calculator's allow-list.

    uv run pytest tests/test_engine.py -q
"""

import time

import pytest
import torch

from nanochat.calculator import use_calculator
from nanochat.engine import Engine
from nanochat.sampling import sample_next_token
from nanochat.gpt import GPT, GPTConfig


def random_model(tokenizer, n_head=4, n_kv_head=4, n_embd=32, n_layer=2, seed=0, head_std=0.3):
    """A tiny GPT over the tokenizer's vocabulary with every weight random (projections included).
    The head rows of the special tokens are zero: their logits are exactly 0 while the largest of
    the other logits is positive, so greedy decoding never emits them (no stop, no tool call)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=128, vocab_size=tokenizer.get_vocab_size(), n_layer=n_layer, n_head=n_head,
                    n_kv_head=n_kv_head, n_embd=n_embd)
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.normal_(0.0, proj.in_features ** -0.5)
        model.lm_head.weight.normal_(0.0, head_std)
        for name in tokenizer.get_special_tokens():
            model.lm_head.weight[tokenizer.encode_special(name)] = 0.0
    return model.eval()


def naive_greedy(model, tokens, n):
    """Greedy decoding by recomputing the full sequence each step, no cache."""
    seq = list(tokens)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0, -1]
            seq.append(int(logits.argmax()))
    return seq[len(tokens):]


def collect(engine, tokens, **kwargs):
    """Run the stream; returns per-row token lists and mask lists."""
    rows, masks = None, None
    for column, mask in engine.generate(tokens, **kwargs):
        if rows is None:
            rows, masks = [[] for _ in column], [[] for _ in column]
        for i, (t, m) in enumerate(zip(column, mask)):
            rows[i].append(t)
            masks[i].append(m)
    return rows, masks


PROMPT_TEXT = "The model learns to predict the next token"


@pytest.mark.parametrize("n_kv_head,num_samples", [(4, 1), (2, 1), (1, 1), (2, 3)])
def test_greedy_engine_matches_naive_recompute(tiny_tokenizer, n_kv_head, num_samples):
    model = random_model(tiny_tokenizer, n_kv_head=n_kv_head)
    prompt = tiny_tokenizer.encode(PROMPT_TEXT, prepend=tiny_tokenizer.get_bos_token_id())
    expected = naive_greedy(model, prompt, 40)
    rows, masks = collect(Engine(model, tiny_tokenizer), prompt, num_samples=num_samples, max_tokens=40, temperature=0.0)
    assert len(rows) == num_samples
    for row, mask in zip(rows, masks):
        assert row == expected  # every row identical under greedy, and equal to the recompute
        assert mask == [1] * 40
    # top_k=1 with any temperature is greedy too
    rows_k1, _ = collect(Engine(model, tiny_tokenizer), prompt, num_samples=num_samples, max_tokens=40,
                         temperature=1.0, top_k=1, seed=7)
    assert rows_k1 == [expected] * num_samples


def test_sampling_is_seeded(tiny_tokenizer):
    model = random_model(tiny_tokenizer, head_std=0.05)  # near-uniform predictions: high entropy
    engine = Engine(model, tiny_tokenizer)
    prompt = tiny_tokenizer.encode(PROMPT_TEXT)
    kw = dict(num_samples=4, max_tokens=20, temperature=1.0)
    a, _ = collect(engine, prompt, seed=123, **kw)
    b, _ = collect(engine, prompt, seed=123, **kw)
    c, _ = collect(engine, prompt, seed=124, **kw)
    assert a == b
    assert a != c
    assert len({tuple(r) for r in a}) > 1, "the rows of one call must be sampled independently"


def test_top_k_samples_only_among_the_k_best(tiny_tokenizer):
    model = random_model(tiny_tokenizer, head_std=0.05)
    prompt = tiny_tokenizer.encode(PROMPT_TEXT)
    rows, _ = collect(Engine(model, tiny_tokenizer), prompt, num_samples=2, max_tokens=15, temperature=2.0, top_k=5, seed=3)
    with torch.no_grad():
        for row in rows:
            logits = model(torch.tensor([prompt + row]))[0]  # (T, V)
            for step, token in enumerate(row):
                allowed = torch.topk(logits[len(prompt) - 1 + step], 5).indices.tolist()
                assert token in allowed


def test_sample_next_token_modes():
    rng = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0], [5.0, 0.0, 0.0, 4.9]])
    assert sample_next_token(logits, rng, temperature=0.0).view(-1).tolist() == [1, 0]
    assert sample_next_token(logits, rng, temperature=1.0, top_k=1).view(-1).tolist() == [1, 0]
    for top_k in (None, 0, 10):  # None/0 = no top-k; k beyond the vocabulary is clamped
        out = sample_next_token(logits, rng, temperature=1.0, top_k=top_k)
        assert out.shape == (2, 1) and out.dtype == torch.long
    # top_k=2 can only return the two largest of each row
    picks = {tuple(sample_next_token(logits, rng, 5.0, top_k=2).view(-1).tolist()) for _ in range(50)}
    assert all(a in (1, 2) and b in (0, 3) for a, b in picks)


def scripted_model(tokenizer, successor):
    """A GPT whose greedy next token is successor[current token], by construction: the blocks are
    the identity (zero output projections), each scripted token embeds as its own basis vector
    e_i, and the head maps e_i to a large logit for its successor (0 for every other token)."""
    keys = list(successor)
    assert len(set(keys)) == len(keys)
    C = 16
    assert len(keys) <= C
    cfg = GPTConfig(sequence_len=64, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=1, n_embd=C)
    torch.manual_seed(0)  # the other weights do not reach the logits; seeded all the same
    model = GPT(cfg)
    model.init_weights()  # c_proj = 0: every block is the identity
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.lm_head.weight.zero_()
        for i, token in enumerate(keys):
            model.transformer.wte.weight[token, i] = 1.0  # after RMSNorm: sqrt(C) * e_i
            model.lm_head.weight[successor[token], i] = 10.0 / C ** 0.5  # logit 15*tanh(10/15) ~ 8.7
    return model.eval()


def tool_script(tokenizer, expr):
    sp = tokenizer.encode_special
    expr_ids = tokenizer.encode(expr)
    chain = [sp("<|bos|>"), sp("<|python_start|>"), *expr_ids, sp("<|python_end|>"), sp("<|assistant_end|>")]
    assert len(set(chain)) == len(chain), "the scripted chain must not repeat a token"
    successor = dict(zip(chain[:-1], chain[1:]))
    successor[sp("<|output_end|>")] = sp("<|assistant_end|>")  # after the tool output, the model stops
    return chain, successor


@pytest.mark.parametrize("num_samples", [1, 2])
def test_tool_call_output_is_forced(tiny_tokenizer, num_samples):
    tok = tiny_tokenizer
    sp = tok.encode_special
    chain, successor = tool_script(tok, "2+3")
    engine = Engine(scripted_model(tok, successor), tok)
    rows, masks = collect(engine, [sp("<|bos|>")], num_samples=num_samples, max_tokens=30, temperature=0.0)
    emitted = chain[1:-1]  # <|python_start|> 2 + 3 <|python_end|>, sampled
    forced = [sp("<|output_start|>"), *tok.encode("5"), sp("<|output_end|>")]
    for row, mask in zip(rows, masks):
        assert row == emitted + forced + [sp("<|assistant_end|>")]
        assert mask == [1] * len(emitted) + [0] * len(forced) + [1]
    # the non-streaming helper: prompt + everything up to (not including) the stop token
    results, result_masks = engine.generate_batch([sp("<|bos|>")], num_samples=num_samples, max_tokens=30, temperature=0.0)
    assert results == [[sp("<|bos|>")] + emitted + forced] * num_samples
    assert result_masks == [[0] + [1] * len(emitted) + [0] * len(forced)] * num_samples


def test_invalid_tool_call_forces_nothing(tiny_tokenizer):
    tok = tiny_tokenizer
    sp = tok.encode_special
    chain, successor = tool_script(tok, "2+")  # a syntax error: no output, generation goes on
    engine = Engine(scripted_model(tok, successor), tok)
    rows, masks = collect(engine, [sp("<|bos|>")], max_tokens=30, temperature=0.0)
    assert rows == [chain[1:]]
    assert masks == [[1] * (len(chain) - 1)]


def test_stops_at_max_tokens_and_context(tiny_tokenizer):
    model = random_model(tiny_tokenizer)
    engine = Engine(model, tiny_tokenizer)
    prompt = tiny_tokenizer.encode(PROMPT_TEXT)
    rows, _ = collect(engine, prompt, max_tokens=7, temperature=0.0)
    assert len(rows[0]) == 7
    assert list(engine.generate(prompt, max_tokens=0)) == []
    # max_tokens=None: until the context (sequence_len) is full
    rows, _ = collect(engine, prompt, temperature=0.0)
    assert len(prompt) + len(rows[0]) == model.config.sequence_len
    with pytest.raises(ValueError, match="rotary positions"):
        next(engine.generate(prompt, max_tokens=10 * model.config.sequence_len))


@pytest.mark.parametrize("expr", ["2+3", "2 + 3*4", "(7 - 2) ** 3", "10 / 4", "7 // 2", "-7 % 3", "2 ** -2",
                                  "1.5 * (2 - 0.25)", "2 ** 100", "-(3)", "12345679 * 9"])
def test_calculator_arithmetic_matches_python(expr):
    assert use_calculator(expr) == str(eval(expr))


@pytest.mark.parametrize("expr, shown", [("48/2", "24"), ("0.2*50", "10"), ("80/100*10", "8"), ("7/2", "3.5"),
                                         ("0.1+0.2", "0.3"), ("-6/3", "-2"), ("1/3", "0.333333333333"),
                                         ("2.0**70", str(2**70)), ("1e-20*3", "3e-20"), ("3*4", "12")])
def test_calculator_prints_results_as_the_training_data_does(expr, shown):
    # GSM8K's annotations read <<48/2=24>>: the model learns "24", so the tool must not say "24.0"
    assert use_calculator(expr) == shown


def test_calculator_string_methods():
    assert use_calculator('"strawberry".count("r")') == "3"
    assert use_calculator("'strawberry'.count('r') + 1") == "4"
    assert use_calculator("'Hello'.upper()") == "HELLO"
    assert use_calculator("'banana'.find('n')") == "2"


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')", "().__class__", "().__class__.__bases__[0].__subclasses__()",
    "'abc'.__len__()", "(1).real", "x", "x + 1", "lambda: 1", "(lambda: 1)()", "open('f')", "print(1)",
    "[1, 2]", "{'a': 1}", "1 if 1 else 2", "'a' * 10", "'a' + 'b'", "True + 1", "2 ** 10 ** 10", "9 ** 99999",
    "10 ** 400", "(-8) ** 0.5", "1e308 * 10", "1 / 0", "2 +", "", "'abc'.join(['a'])", "'a'.replace('a', 'b' * 3)",
    "'x'.count(y)", "a.count('r')", "len('abc')", "2; 3", "import os", "'abc'.count('a', key=1)",
])
def test_calculator_refuses_without_raising(expr):
    t0 = time.perf_counter()
    assert use_calculator(expr) is None
    assert time.perf_counter() - t0 < 1.0


def test_calculator_bounds_repeated_growth():
    # each replace multiplies the length by 10; the size limit stops it before it gets large
    expr = "'aaaaaaaaaa'" + ".replace('a', 'aaaaaaaaaa')" * 8
    assert use_calculator(expr) is None
    assert use_calculator(None) is None
    assert use_calculator("1" * 600) is None  # too long an expression
