"""
Inference: a preallocated KV cache, sampling, and the generation loop with calculator tool use.

    engine = Engine(model, tokenizer)
    for token_column, token_masks in engine.generate(prompt_ids, num_samples=4, max_tokens=64):
        ...  # one new token per row and step; mask 1 = sampled by the model, 0 = forced by the engine
    results, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=64)

The prompt is prefilled once with batch 1; its keys/values are then broadcast into a cache of
num_samples rows, and all rows decode in parallel, one token per step.

Tool use: when a row emits <|python_start|> expr <|python_end|>, the engine decodes expr, evaluates
it with `use_calculator`, and forces <|output_start|> result <|output_end|> into that row (mask 0)
before the model continues. An expression the calculator refuses forces nothing.

The calculator is NOT a Python sandbox: it parses with `ast` and evaluates only an allow-list
(number literals with + - * / // % ** and unary +/-, string literals and a few str methods).
Names, attributes other than those methods, subscripts, comprehensions, lambdas and any other
call are refused. Every intermediate value is size-checked (ints up to 1024 bits, strings up
to 1000 characters) and the walk stops after a time limit, so no input can run for long.
"""

import ast
import math
import operator
import time
from collections import deque

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# the calculator tool

_MAX_EXPR_CHARS = 500
_MAX_INT_BITS = 1024
_MAX_STR_CHARS = 1000
_TIME_LIMIT_S = 0.05
_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARYOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# str methods that return a bounded value and touch nothing outside the string
_STR_METHODS = {"count", "find", "rfind", "startswith", "endswith", "lower", "upper", "strip",
                "lstrip", "rstrip", "replace", "isdigit", "isalpha"}


class _Refused(Exception):
    """The expression uses something outside the allow-list, or exceeds a limit."""


def _checked(value):
    """Enforce the size limits on every intermediate value."""
    t = type(value)
    if t is int and value.bit_length() > _MAX_INT_BITS:
        raise _Refused("integer too large")
    if t is float and not math.isfinite(value):
        raise _Refused("float overflow")
    if t is str and len(value) > _MAX_STR_CHARS:
        raise _Refused("string too long")
    if t not in (int, float, str, bool):
        raise _Refused(f"result of type {t.__name__}")  # e.g. complex from (-8) ** 0.5
    return value


def _number(value):
    if type(value) not in (int, float):  # type() rather than isinstance: bool is not a number here
        raise _Refused("arithmetic on a non-number")
    return value


def _eval(node, deadline):
    if time.monotonic() > deadline:
        raise _Refused("time limit")
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float, str):
            return _checked(node.value)
        raise _Refused(f"literal {node.value!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
        return _UNARYOPS[type(node.op)](_number(_eval(node.operand, deadline)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _number(_eval(node.left, deadline))
        b = _number(_eval(node.right, deadline))
        if isinstance(node.op, ast.Pow) and type(a) is int and type(b) is int and b > 0:
            # refuse before computing: the result has about b * bits(a) bits
            if abs(a) > 1 and b * a.bit_length() > _MAX_INT_BITS:
                raise _Refused("power too large")
        return _checked(_BINOPS[type(node.op)](a, b))
    if isinstance(node, ast.Call):
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr in _STR_METHODS) or node.keywords:
            raise _Refused("only calls of the allowed str methods")
        obj = _eval(func.value, deadline)
        if type(obj) is not str:
            raise _Refused("a str method called on a non-string")
        args = [_eval(arg, deadline) for arg in node.args]
        if any(type(arg) not in (int, str) for arg in args):
            raise _Refused("str method arguments must be strings or integers")
        return _checked(getattr(str, func.attr)(obj, *args))  # looked up on str itself, from the allow-list
    raise _Refused(f"{type(node).__name__} is not allowed")


def use_calculator(expr):
    """Evaluate a restricted arithmetic/string expression; the result as a string, or None when
    the expression is invalid, forbidden or too large. Never raises."""
    try:
        if not isinstance(expr, str) or len(expr) > _MAX_EXPR_CHARS:
            return None
        tree = ast.parse(expr.strip(), mode="eval")
        return str(_eval(tree.body, time.monotonic() + _TIME_LIMIT_S))
    except Exception:  # _Refused, SyntaxError, ZeroDivisionError, OverflowError, RecursionError, ...
        return None


# -----------------------------------------------------------------------------
# KV cache

class KVCache:
    """Keys and values of every layer, preallocated: k, v each (n_layer, B, H_kv, T_max, D).

    `pos` is the number of positions filled so far; the model reads it to place new tokens,
    and it advances after the last layer has inserted its keys/values for a forward pass.
    The storage is allocated on the first insert, with the dtype and device of the keys.
    """

    def __init__(self, batch_size, num_heads, seq_len, head_dim, num_layers):
        self.shape = (num_layers, batch_size, num_heads, seq_len, head_dim)
        self.k = None
        self.v = None
        self.pos = 0

    def reset(self):
        self.pos = 0

    def get_pos(self):
        return self.pos

    def _allocate(self, like):
        if self.k is None:
            self.k = torch.empty(self.shape, dtype=like.dtype, device=like.device)
            self.v = torch.empty(self.shape, dtype=like.dtype, device=like.device)

    def insert_kv(self, layer_idx, k, v):
        """k, v: (B, H_kv, T, D) of the new tokens -> this layer's (B, H_kv, pos + T, D) views."""
        self._allocate(k)
        t0, t1 = self.pos, self.pos + k.size(2)
        assert t1 <= self.shape[3], f"KV cache overflow: {t1} positions, capacity {self.shape[3]}"
        self.k[layer_idx, :, :, t0:t1] = k
        self.v[layer_idx, :, :, t0:t1] = v
        if layer_idx == self.shape[0] - 1:
            self.pos = t1
        return self.k[layer_idx, :, :, :t1], self.v[layer_idx, :, :, :t1]

    def prefill(self, other):
        """Start from another (filled) cache, e.g. a batch-1 prompt cache broadcast to B rows."""
        assert self.pos == 0, "prefill an empty cache"
        assert other.k is not None and other.pos <= self.shape[3], "the source cache is empty or too long"
        (L, B, H, _, D), (oL, oB, oH, _, oD) = self.shape, other.shape
        assert (L, H, D) == (oL, oH, oD), f"cache shapes differ: {self.shape} vs {other.shape}"
        assert oB in (1, B), "the source batch must be 1 or equal to this batch"
        self._allocate(other.k)
        T = other.pos
        self.k[:, :, :, :T] = other.k[:, :, :, :T]  # broadcasts over the batch dimension
        self.v[:, :, :, :T] = other.v[:, :, :, :T]
        self.pos = T


# -----------------------------------------------------------------------------
# sampling and generation

def sample_next_token(logits, rng, temperature=1.0, top_k=None):
    """logits (B, V) -> next token ids (B, 1). temperature 0 is greedy; top_k None or 0 is no top-k."""
    assert temperature >= 0.0, "temperature must be non-negative"
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if top_k:
        vals, idx = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)  # (B, k), no full sort
        probs = F.softmax(vals / temperature, dim=-1)
        return idx.gather(1, torch.multinomial(probs, 1, generator=rng))
    probs = F.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=rng)


class _Row:
    """Per-row decoding state: tool-call tracking and tokens waiting to be forced."""

    def __init__(self):
        self.forced = deque()
        self.in_python = False
        self.expr_tokens = []
        self.completed = False


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        """Stream num_samples continuations of `tokens` (a list of ids).

        Yields, per step, (token_column, token_masks): lists of num_samples ints, the new token of
        each row and whether it was sampled (1) or forced by the tool (0). A row is finished once
        it yields <|assistant_end|> or <|bos|>; the stream ends when every row is finished, after
        max_tokens steps, or when the context (config.sequence_len, if max_tokens is None) is full.
        Rows that finished early keep receiving tokens in later columns; consumers ignore them.
        """
        assert isinstance(tokens, list) and len(tokens) > 0 and isinstance(tokens[0], int), \
            "tokens must be a non-empty list of ints"
        model, tok = self.model, self.tokenizer
        cfg = model.config
        device = model.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)

        special = tok.encode_special
        python_start, python_end = special("<|python_start|>"), special("<|python_end|>")
        output_start, output_end = special("<|output_start|>"), special("<|output_end|>")
        stop_tokens = (special("<|assistant_end|>"), special("<|bos|>"))

        if max_tokens is None:
            max_tokens = max(cfg.sequence_len - len(tokens), 0)
        capacity = len(tokens) + max_tokens
        if capacity > model.cos.size(1):
            raise ValueError(f"prompt ({len(tokens)}) + max_tokens ({max_tokens}) exceeds the model's "
                             f"{model.cos.size(1)} rotary positions; ask for fewer tokens")
        if max_tokens == 0:
            return

        head_dim = cfg.n_embd // cfg.n_head
        # 1) prefill the prompt once, with batch 1
        kv_prompt = KVCache(1, cfg.n_kv_head, len(tokens), head_dim, cfg.n_layer)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        logits = model(ids, kv_cache=kv_prompt)[:, -1, :]  # (1, V)
        logits = logits.expand(num_samples, -1)             # (B, V), a view
        # 2) broadcast the prompt's keys/values into the decoding cache of num_samples rows
        kv = KVCache(num_samples, cfg.n_kv_head, capacity, head_dim, cfg.n_layer)
        kv.prefill(kv_prompt)
        del kv_prompt

        rows = [_Row() for _ in range(num_samples)]
        for step in range(max_tokens):
            next_ids = sample_next_token(logits, rng, temperature, top_k)  # (B, 1)
            sampled = next_ids[:, 0].tolist()  # the one host sync per step
            any_forced = False
            token_column, token_masks = [], []
            for row, token in zip(rows, sampled):
                is_forced = bool(row.forced)
                if is_forced:
                    token = row.forced.popleft()
                    any_forced = True
                token_column.append(token)
                token_masks.append(0 if is_forced else 1)
                if token in stop_tokens:
                    row.completed = True
                if token == python_start:
                    row.in_python, row.expr_tokens = True, []
                elif token == python_end and row.in_python:
                    row.in_python = False
                    result = use_calculator(tok.decode(row.expr_tokens))
                    if result is not None:
                        row.forced.extend([output_start, *tok.encode(result), output_end])
                elif row.in_python:
                    row.expr_tokens.append(token)
            yield token_column, token_masks
            if step == max_tokens - 1 or all(row.completed for row in rows):
                return
            if any_forced:
                next_ids = torch.tensor(token_column, dtype=torch.long, device=device).view(-1, 1)
            logits = model(next_ids, kv_cache=kv)[:, -1, :]  # (B, V)

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Run `generate` to the end. Returns (results, masks): per row the prompt followed by the
        generated tokens, up to and excluding the stop token; masks are 0 over the prompt and
        forced tokens, 1 over sampled ones."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        stop_tokens = (self.tokenizer.encode_special("<|assistant_end|>"), self.tokenizer.encode_special("<|bos|>"))
        completed = [False] * num_samples
        for token_column, token_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(token_column, token_masks)):
                if completed[i]:
                    continue
                if token in stop_tokens:
                    completed[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
            if all(completed):
                break
        return results, masks
