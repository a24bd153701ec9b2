"""
Inference: a KV cache whose rows sit at their own positions, per-row sampling, streaming text,
and an engine that decodes many conversations at once (continuous batching), with calculator
tool use.

    engine = Engine(model, tokenizer, num_slots=16)        # 16 KV-cache rows ("slots")
    rid = engine.add_request(tokenizer.render_for_reply(messages), SamplingParams(max_tokens=256))
    while engine.has_work():
        for event in engine.step():   # TokenEvent(request_id, index, token, forced, text, finish_reason)
            ...
    completions = engine.generate_many(prompts, SamplingParams(max_tokens=64, n=4))   # offline batches

    # the original interface, as thin wrappers (one prompt, num_samples rows):
    for token_column, token_masks in engine.generate(prompt_ids, num_samples=4, max_tokens=64): ...
    results, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=64)

One step() is one forward pass over every decoding row (each at its own position, attending only
to its own filled keys), plus one padded prefill pass per group of similar-length new prompts.
A request's n samples share one prefill; its keys/values are copied into n rows. Finished rows
are dropped from the batch at once. Per request: temperature (0 = greedy), top-k, top-p, seed
(each sample has its own generator, so a seed reproduces whatever else is batched), max_tokens,
stop strings, n. The text of each event is a UTF-8-safe delta; a stop string never appears in it.

Tool use: when a row emits <|python_start|> expr <|python_end|>, the engine decodes expr, evaluates
it with `use_calculator`, and forces <|output_start|> result <|output_end|> into that row (mask 0)
before the model continues. An expression the calculator refuses forces nothing.

Not covered: prefix caching across requests, chunked prefill of very long prompts (a long prompt
is prefilled in one pass while the others wait for that step), preemption (a request waits until
its n slots are free), and speculative decoding.

The calculator (nanochat/calculator.py) is NOT a Python sandbox: an `ast` allow-list of arithmetic
and a few str methods, with size and time limits; its docstring says what it refuses.
"""

import codecs
import math
import random
import threading
from collections import deque
from dataclasses import dataclass

import torch

from nanochat.calculator import use_calculator
from nanochat.kv_cache import KVCache
from nanochat.sampling import is_greedy, sample_rows

# -----------------------------------------------------------------------------
# streaming text

class TextStream:
    """Token bytes in, text deltas out, for one sample.

    UTF-8 is decoded incrementally, so a character split over several tokens comes out whole once
    its last byte arrives (never as U+FFFD halves). With stop strings, text that could be the start
    of one is held back until it can no longer be; when a stop string appears, the text before it
    is the last delta and the stop string itself is never emitted.
    """

    def __init__(self, stop=()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._held = ""  # decoded, not yet emitted
        self.text = ""   # everything emitted so far

    def push(self, data, final=False):
        """data: bytes of the next token(s). Returns (delta, stopped)."""
        self._held += self._utf8.decode(data, final=final)
        held, cut, stopped = self._held, len(self._held), False
        for s in self._stop:
            i = held.find(s)
            if i != -1 and i < cut:
                cut, stopped = i, True
        if not stopped and not final:
            # hold back the longest tail that is a proper prefix of some stop string
            for s in self._stop:
                for n in range(min(len(s) - 1, len(held)), 0, -1):
                    if n > len(held) - cut:
                        if held.endswith(s[:n]):
                            cut = min(cut, len(held) - n)
                            break
        delta = held[:cut]
        self._held = "" if stopped else held[cut:]
        self.text += delta
        return delta, stopped

    def flush(self):
        """The sample ended: emit what was held (an incomplete character becomes U+FFFD)."""
        return self.push(b"", final=True)


# -----------------------------------------------------------------------------
# requests, events, results

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class SamplingParams:
    """How to sample one request. max_tokens: most tokens to generate per sample (forced tool
    output counts); temperature 0 is greedy; top_k None = off; top_p None = off (nucleus);
    seed None = drawn from torch's global generator at add_request; stop: strings that end a sample
    (not included in its text); n: independent samples of the same prompt."""
    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple = ()
    n: int = 1

    def __post_init__(self):
        def bad(name, want):
            raise ValueError(f"SamplingParams: {name}={getattr(self, name)!r}; {want}")

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        if not is_int(self.max_tokens) or self.max_tokens < 1:
            bad("max_tokens", "it must be an int >= 1")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            bad("temperature", "it must be a finite number >= 0 (0 = greedy)")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            bad("top_k", "it must be None (off) or an int >= 1")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float))
                                       or not 0.0 < self.top_p <= 1.0):
            bad("top_p", "it must be None (off) or a number in (0, 1]")
        if self.seed is not None and not is_int(self.seed):
            bad("seed", "it must be None or an int")
        if not is_int(self.n) or self.n < 1:
            bad("n", "it must be an int >= 1")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            bad("stop", "it must be a string or a list/tuple of non-empty strings")
        self.stop = tuple(stop)


@dataclass
class TokenEvent:
    """One token of one sample. index: which of the request's n samples; forced: written by the
    engine (tool output), not sampled; text: the UTF-8-safe text delta ("" for special tokens and
    while text is held back); finish_reason: "stop" | "length" | "cancelled" on the sample's last
    event, else None. A cancelled sample's last event has token -1 (no token)."""
    request_id: int
    index: int
    token: int
    forced: bool
    text: str
    finish_reason: str | None = None


@dataclass
class Completion:
    """A finished sample. tokens: generated, the stop token excluded (the tokens of a stop string
    are included; text stops before it); masks: 1 sampled, 0 forced; finish_reason as TokenEvent."""
    tokens: list
    masks: list
    text: str
    finish_reason: str


class _Request:
    def __init__(self, rid, prompt, params, seed, want_text):
        self.id, self.prompt, self.params, self.seed = rid, prompt, params, seed
        self.want_text = want_text
        self.completions = [None] * params.n  # filled as samples finish
        self.unfinished = params.n


class _Sample:
    """One sample of a request while it decodes: its cache row, its last token (the input of the
    next forward pass), tool state, text stream and generator."""

    def __init__(self, request, index, limit):
        self.request, self.index, self.limit = request, index, limit
        p = request.params
        self.temperature, self.top_k, self.top_p = p.temperature, p.top_k, p.top_p
        self.rng = random.Random(f"{request.seed}/{index}")  # str seeds hash deterministically
        self.text = TextStream(p.stop) if request.want_text else None
        self.tokens, self.masks = [], []
        self.last = None
        self.forced = deque()
        self.in_python = False
        self.expr_tokens = []
        self.finish_reason = None


# -----------------------------------------------------------------------------
# the engine

PASS_OVERHEAD_TOKENS = 32  # prefill cost model: one extra forward pass costs about as much as this many padded tokens


def prefill_groups(lengths, overhead=PASS_OVERHEAD_TOKENS):
    """Split prompts, sorted by length, into consecutive groups, one padded forward pass each,
    minimising sum(group size * longest in group + overhead) by dynamic programming: one pass
    for similar lengths, several when padding short prompts to a long one would cost more.
    lengths: ascending. Returns lists of indices into lengths."""
    m = len(lengths)
    assert all(a <= b for a, b in zip(lengths, lengths[1:])), "lengths must be sorted"
    best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)  # best[j]: cost of the first j prompts
    for j in range(1, m + 1):
        for i in range(j):  # the last group is prompts i..j-1, padded to lengths[j - 1]
            cost = best[i] + (j - i) * lengths[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], m
    while j > 0:
        groups.append(list(range(cut[j], j)))
        j = cut[j]
    return groups[::-1]


class Engine:
    """Continuous batching over a fixed set of KV-cache rows ("slots").

        engine = Engine(model, tokenizer, num_slots=16)
        rid = engine.add_request(prompt_ids, SamplingParams(max_tokens=64, temperature=0.8, seed=1))
        while engine.has_work():
            for event in engine.step(): ...   # TokenEvent per sample and step
        completions = engine.generate_many(prompts, SamplingParams(max_tokens=64))

    Each slot holds one sample: its prompt and generated tokens, up to max_seq_len positions
    (default: the model's sequence_len). step() first advances every decoding sample by one
    token in one forward pass, rows at their own positions; finished samples give their slots
    back at once (the last row moves into the hole, so the decoding rows stay 0..n-1 and cost
    nothing once they are done); then it admits waiting requests, first come first served, while
    their n samples fit in the free slots: their prompts are prefilled in padded forward passes
    of similar lengths (prefill_groups), each prompt once, its keys/values copied to the slots of
    its other samples, and their first tokens sampled. A sample ends on <|assistant_end|> or <|bos|> ("stop", token not kept), a stop
    string ("stop"), max_tokens or a full slot ("length": prompt + tokens never exceed the slot),
    or cancel() ("cancelled").

    add_request, cancel and the counters may be called from any thread while one thread runs
    step(); step() itself, generate_many and generate are not re-entrant.
    """

    def __init__(self, model, tokenizer, num_slots=16, max_seq_len=None):
        if not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"Engine: num_slots={num_slots!r} must be an int >= 1")
        capacity = model.config.sequence_len if max_seq_len is None else max_seq_len
        if not isinstance(capacity, int) or not 2 <= capacity <= model.cos.size(1):
            raise ValueError(f"Engine: max_seq_len={max_seq_len!r} must be an int in [2, {model.cos.size(1)}] "
                             f"(the model's rotary positions)")
        self.model, self.tokenizer = model, tokenizer
        self.num_slots, self.max_seq_len = num_slots, capacity
        special = tokenizer.encode_special
        self._stop_tokens = {special("<|assistant_end|>"), special("<|bos|>")}
        self._python_start, self._python_end = special("<|python_start|>"), special("<|python_end|>")
        self._output_start, self._output_end = special("<|output_start|>"), special("<|output_end|>")
        self._token_bytes = None  # id -> bytes, built on first use
        self._cache = None        # KVCache(num_slots, ...), allocated at the first prefill
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting = deque()   # _Request, in arrival order
        self._cancelled = set()   # request ids to cancel at the next step
        self._active = []         # _Sample in cache row order: self._active[r] decodes in row r

    # -- the thread-safe front -------------------------------------------------

    def add_request(self, prompt_ids, params=None):
        """Queue a request; it joins at the next step(). Returns its id. Thread-safe."""
        return self._submit(prompt_ids, params, want_text=True).id

    def cancel(self, request_id):
        """End a request's samples at the next step (finish_reason "cancelled"), freeing their slots.
        Unknown or finished ids are ignored. Thread-safe."""
        with self._lock:
            self._cancelled.add(request_id)

    def has_work(self):
        with self._lock:
            return bool(self._waiting) or bool(self._active)

    def num_active(self):
        """Samples decoding (slots in use)."""
        return len(self._active)

    def num_waiting(self):
        """Requests queued, not yet admitted."""
        with self._lock:
            return len(self._waiting)

    def _check_prompt(self, prompt_ids, params):
        """The user-boundary checks of a request; returns the prompt as a list of ints."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.tolist()
        if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
            raise ValueError("prompt_ids must be a non-empty list of token ids")
        V = self.model.config.vocab_size
        for t in prompt_ids:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < V:
                raise ValueError(f"prompt_ids must be token ids in [0, {V}); found {t!r}")
        if len(prompt_ids) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens, but a slot holds {self.max_seq_len} "
                             f"(Engine max_seq_len) and needs room for at least one new token; shorten the prompt")
        if params.n > self.num_slots:
            raise ValueError(f"n={params.n} samples need as many slots, and the engine has num_slots={self.num_slots}")
        return list(prompt_ids)

    def _submit(self, prompt_ids, params, want_text):
        params = SamplingParams() if params is None else params
        prompt = self._check_prompt(prompt_ids, params)
        # seed None: drawn here, from torch's global generator (so torch.manual_seed reproduces it)
        seed = params.seed if params.seed is not None else int(torch.randint(2 ** 62, (1,)).item())
        with self._lock:
            request = _Request(self._next_id, prompt, params, seed, want_text)
            self._next_id += 1
            self._waiting.append(request)
        return request

    # -- the step --------------------------------------------------------------

    @torch.inference_mode()
    def step(self):
        """Advance every decoding sample by one token and admit waiting requests.
        Returns the TokenEvents of this step."""
        events = []
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                still = deque()
                for request in self._waiting:
                    if request.id in cancelled:
                        for i in range(request.params.n):
                            events.append(self._end_unstarted(request, i))
                    else:
                        still.append(request)
                self._waiting = still
        if cancelled:
            for sample in self._active:
                if sample.request.id in cancelled:
                    events.append(self._finish(sample, -1, False, "cancelled"))
            self._compact()
        # 1) one token for every decoding sample, in one forward pass
        if self._active:
            B = len(self._active)
            idx = torch.tensor([[s.last] for s in self._active], dtype=torch.long, device=self.model.get_device())
            logits = self.model.forward_last(idx, self._cache.rows(0, B), softcap=False)  # (B, V), before the cap
            events += self._advance(self._active, logits)
            self._compact()
        # 2) admit waiting requests into the free slots and prefill them
        admitted = self._admit()
        if admitted:
            events += self._prefill(admitted)
            self._compact()
        return events

    def _admit(self, max_prefill_tokens=16384):
        """Pop the waiting requests that fit, first come first served; at least one if it fits,
        and while the padded prefill batch stays under max_prefill_tokens."""
        free = self.num_slots - len(self._active)
        admitted, longest = [], 0
        with self._lock:
            while self._waiting and self._waiting[0].params.n <= free:
                request = self._waiting[0]
                longest_next = max(longest, len(request.prompt))
                if admitted and (len(admitted) + 1) * longest_next > max_prefill_tokens:
                    break
                admitted.append(self._waiting.popleft())
                free -= request.params.n
                longest = longest_next
        return admitted

    def _prefill(self, requests):
        """Prefill each request's prompt once into the free rows from len(self._active) on: the
        prompts sorted by length and split into padded passes of similar lengths
        (prefill_groups); then copy each prompt to the rows of its other samples, and sample
        every sample's first token."""
        model = self.model
        device = model.get_device()
        if self._cache is None:
            cfg = model.config
            self._cache = KVCache(self.num_slots, cfg.n_kv_head, self.max_seq_len, cfg.n_embd // cfg.n_head, cfg.n_layer)
            self._cache.allocate(self._cache_dtype(device), device)
        lens = [len(r.prompt) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: lens[i])
        row, first_row, logits_of = len(self._active), {}, {}
        for group in prefill_groups([lens[i] for i in order]):
            members = [order[j] for j in group]
            T = max(lens[i] for i in members)
            idx = torch.zeros(len(members), T, dtype=torch.long)  # right-padded prompts (B, T)
            for b, i in enumerate(members):
                idx[b, :lens[i]] = torch.tensor(requests[i].prompt)
            rows = self._cache.rows(row, row + len(members))
            rows.lengths.zero_()
            counts = [lens[i] for i in members]
            logits = model.forward_last(idx.to(device), rows, num_tokens=None if min(counts) == T else counts,
                                        softcap=False)  # (B, V), before the cap
            for b, i in enumerate(members):
                first_row[i], logits_of[i] = row + b, logits[b]
            row += len(members)
        # sample 0 of request i decodes in first_row[i]; the other samples in the rows after them
        samples, sample_logits = [], []
        for i, r in enumerate(requests):
            limit = min(r.params.max_tokens, self.max_seq_len - lens[i])
            for j in range(r.params.n):
                if j == 0:
                    target = first_row[i]
                else:
                    target, row = row, row + 1
                    self._cache.copy_row(first_row[i], target)
                samples.append((target, _Sample(r, j, limit)))
                sample_logits.append(logits_of[i])
        self._active.extend([None] * len(samples))
        for target, sample in samples:
            self._active[target] = sample
        return self._advance([s for _, s in samples], torch.stack(sample_logits))

    def _cache_dtype(self, device):
        # under autocast (CUDA bf16), the keys come out in the autocast dtype
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.model.lm_head.weight.dtype

    def _advance(self, samples, logits):
        """Choose each sample's next token (forced, greedy or sampled) from the logits (B, V)
        before the soft-cap, and update its state; returns the events. Greedy takes the argmax of
        these (the cap is increasing: the same token, unless fp32 rounding in the cap's saturated
        range merges two near-equal logits, where this picks the truly larger); sampled rows get
        the cap applied first, as their distribution is the capped one."""
        forced = [bool(s.forced) for s in samples]
        choice = [s.forced.popleft() if f else None for s, f in zip(samples, forced)]
        greedy = [i for i, s in enumerate(samples) if not forced[i] and is_greedy(s.temperature)]
        sampled = [i for i, s in enumerate(samples) if not forced[i] and not is_greedy(s.temperature)]
        if greedy:
            sub = logits if len(greedy) == len(samples) else logits[torch.tensor(greedy, device=logits.device)]
            for i, t in zip(greedy, sub.argmax(dim=-1).tolist()):  # the one host sync of a greedy step
                choice[i] = t
        # plain and filtered (top-k / top-p) rows are sampled apart: how a row is sampled must
        # depend on its own parameters only, for its seed to reproduce in any batch
        plain = [i for i in sampled if samples[i].top_k is None and samples[i].top_p is None]
        filtered = [i for i in sampled if samples[i].top_k is not None or samples[i].top_p is not None]
        for rows in (plain, filtered):
            if not rows:
                continue
            sub = logits if len(rows) == len(samples) else logits[torch.tensor(rows, device=logits.device)]
            group = [samples[i] for i in rows]
            sub = self.model.softcap(sub)  # in place: a copy, or all of logits when no other row needs them
            picks = sample_rows(sub, [s.temperature for s in group], [s.top_k for s in group],
                                [s.top_p for s in group], [s.rng.random() for s in group])
            for i, t in zip(rows, picks.tolist()):
                choice[i] = t
        return [self._push(s, t, f) for s, t, f in zip(samples, choice, forced)]

    def _push(self, s, token, forced):
        """Append one token to a sample: stop checks, tool state, text. Returns its event."""
        if not forced and token in self._stop_tokens:
            return self._finish(s, token, False, "stop")  # the stop token is not kept
        s.tokens.append(token)
        s.masks.append(0 if forced else 1)
        s.last = token
        # the calculator tool: <|python_start|> expr <|python_end|> -> forced <|output_start|> result <|output_end|>
        if token == self._python_start:
            s.in_python, s.expr_tokens = True, []
        elif token == self._python_end and s.in_python:
            s.in_python = False
            result = use_calculator(self.tokenizer.decode(s.expr_tokens))
            if result is not None:
                s.forced.extend([self._output_start, *self.tokenizer.encode(result), self._output_end])
        elif s.in_python:
            s.expr_tokens.append(token)
        delta, stopped = ("", False) if s.text is None else s.text.push(self._bytes_of(token))
        if stopped:  # a stop string: the text before it is the last delta
            return self._finish(s, token, forced, "stop", delta, flush=False)
        if len(s.tokens) >= s.limit:
            return self._finish(s, token, forced, "length", delta)
        return TokenEvent(s.request.id, s.index, token, forced, delta)

    def _finish(self, s, token, forced, reason, delta="", flush=True):
        """End a sample: flush its held text (unless cancelled), record its Completion."""
        if s.text is not None and flush and reason != "cancelled":
            delta += s.text.flush()[0]
        s.finish_reason = reason
        request = s.request
        request.completions[s.index] = Completion(s.tokens, s.masks, s.text.text if s.text is not None else "", reason)
        request.unfinished -= 1
        return TokenEvent(request.id, s.index, token, forced, delta, reason)

    def _end_unstarted(self, request, index):
        request.completions[index] = Completion([], [], "", "cancelled")
        request.unfinished -= 1
        return TokenEvent(request.id, index, -1, False, "", "cancelled")

    def _compact(self):
        """Drop finished samples; the last rows move into the holes, so rows 0..n-1 stay dense."""
        active = self._active
        n = sum(1 for s in active if s.finish_reason is None)
        if n == len(active):
            return
        holes = [r for r in range(n) if active[r].finish_reason is not None]
        movers = [r for r in range(n, len(active)) if active[r].finish_reason is None]
        assert len(holes) == len(movers), "every hole below n gets one mover from above"
        for dst, src in zip(holes, movers):
            self._cache.copy_row(src, dst)
            active[dst] = active[src]
        del active[n:]

    def _bytes_of(self, token):
        if self._token_bytes is None:
            table = [b""] * self.tokenizer.get_vocab_size()  # special tokens: no text
            for piece, rank in self.tokenizer.get_mergeable_ranks().items():
                table[rank] = piece  # id == rank (nanochat/tokenizer.py)
            self._token_bytes = table
        return self._token_bytes[token] if 0 <= token < len(self._token_bytes) else b""

    # -- whole generations -----------------------------------------------------

    def generate_many(self, prompts, params=None):
        """Run the engine until every prompt is done. params: one SamplingParams for all prompts,
        or a list, one per prompt. Returns per prompt its n Completions, in order. The engine must
        be idle (no other requests): the events of this loop are not handed to anyone else."""
        if self.has_work():
            raise RuntimeError("generate_many needs an idle engine; another caller's requests are queued or running")
        if not isinstance(prompts, (list, tuple)):
            raise ValueError("prompts must be a list of token-id lists")
        if params is None or isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts; give one, or one per prompt")
        for i, (prompt, p) in enumerate(zip(prompts, params)):  # validate all before queueing any
            try:
                self._check_prompt(prompt, p if p is not None else SamplingParams())
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        requests = [self._submit(prompt, p, want_text=True) for prompt, p in zip(prompts, params)]
        while any(r.unfinished for r in requests):
            self.step()
        return [r.completions for r in requests]

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        """Stream num_samples continuations of `tokens` (a list of ids), the original interface.

        Yields, per step, (token_column, token_masks): lists of num_samples ints, the new token of
        each row and whether it was sampled (1) or forced by the tool (0). A row is finished once
        it yields <|assistant_end|> or <|bos|>; the stream ends when every row is finished, after
        max_tokens steps, or when the context (config.sequence_len, if max_tokens is None) is full.
        A row that finished early repeats its stop token (mask 0) in later columns; consumers
        ignore it. Runs on a private engine of num_samples slots sized to prompt + max_tokens, so
        it does not disturb this engine's requests.
        """
        assert isinstance(tokens, list) and len(tokens) > 0 and isinstance(tokens[0], int), \
            "tokens must be a non-empty list of ints"
        rotary = self.model.cos.size(1)
        if max_tokens is None:
            max_tokens = max(self.model.config.sequence_len - len(tokens), 0)
        if len(tokens) + max_tokens > rotary:
            raise ValueError(f"prompt ({len(tokens)}) + max_tokens ({max_tokens}) exceeds the model's "
                             f"{rotary} rotary positions; ask for fewer tokens")
        if max_tokens == 0:
            return
        engine = Engine(self.model, self.tokenizer, num_slots=num_samples, max_seq_len=len(tokens) + max_tokens)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k or None, seed=seed,
                                n=num_samples)
        request = engine._submit(tokens, params, want_text=False)
        column, masks = [None] * num_samples, [0] * num_samples
        while request.unfinished:
            for event in engine.step():
                column[event.index], masks[event.index] = event.token, 0 if event.forced else 1
            yield list(column), list(masks)
            masks = [0] * num_samples  # a finished row repeats its last token, mask 0

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Run `generate` to the end. Returns (results, masks): per row the prompt followed by the
        generated tokens, up to and excluding the stop token; masks are 0 over the prompt and
        forced tokens, 1 over sampled ones."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        stop_tokens = self._stop_tokens
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
