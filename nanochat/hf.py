"""
The Hugging Face format: a nanochat model as a folder that transformers' native NanoChatForCausalLM
(model_type "nanochat", transformers >= 5) loads with no trust_remote_code and no nanochat installed,
and such a folder read back into our GPT, Tokenizer and meta (what load_model returns).

    export(model, tokenizer, out_dir, provenance, report_md=None)   # scripts/export_hf.py
    model, tokenizer, meta = load_hf(folder, device, "eval")         # checkpoint_manager.load_model(hf_path=...)

The folder:
    config.json              NanoChatConfig, every field our model depends on written out (eps, RoPE
                             base, soft-cap, kv heads, context, special ids), plus "nanochat": where
                             it came from (source, model tag, step)
    model.safetensors        the weights under transformers' names (weight_names), in the dtype given
    tokenizer.json           Tokenizer.export_hf: our ids exactly; the special tokens spelled with
                             fullwidth bars (tokenizer.HF_SPECIAL_TOKENS) so "<|bos|>" in text stays text
    tokenizer_config.json    the special tokens and a chat_template that renders a conversation token
                             for token as Tokenizer.render_for_reply (system message merged into the
                             first user turn, tool-call parts, the generation prompt)
    generation_config.json   stop on <|assistant_end|> (and <|bos|>), as our Engine does
    README.md                the model card (with the run's report.md summary table, if there is one)

The mapping, checked against transformers' modeling_nanochat.py: the same parameter-free RMSNorm
(also right after the embedding), q/k RMS-normalised after the rotation, the same rotation (HF's
rotate_half is [x2, -x1], so q*cos + rotate_half(q)*sin = [x1 cos + x2 sin, x2 cos - x1 sin], our
apply_rotary_emb), GQA with query head h on kv head h // (H/Hkv), ReLU^2 MLP, untied head and
softcap * tanh(logits / softcap). Our F.rms_norm uses eps = torch.finfo(float32).eps, which the
export writes as rms_norm_eps. Anything of a model that this mapping does not cover (another
module, a bias, a config field, a weight) makes the export refuse, naming it; an import refuses a
config our GPT cannot express (another activation, MLP width, soft-cap, RoPE) in the same way.
Import accepts transformers' own converter output (convert_nanochat_checkpoints.py, save_pretrained):
bf16 weights (cast to fp32), rms_norm_eps 1e-6 (ours is fixed; the difference is a relative 5e-7 on
unit-scale activations, printed as a note), a tokenizer.json with the plain "<|bos|>" spellings, and
sharded safetensors. Not covered: pytorch_model.bin folders (only safetensors are read).

Tests: tests/test_hf.py
"""

import json
import os
from dataclasses import asdict, fields

import torch

from nanochat.common import atomic_write, logger
from nanochat.tokenizer import HF_SPECIAL_TOKENS, META_FILE, SPECIAL_TOKENS, Tokenizer, _bytes_to_unicode

CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILE, TOKENIZER_CONFIG, GENERATION_CONFIG, CARD_FILE = \
    "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"
# our parameter name inside a block -> transformers' (modeling_nanochat.py)
BLOCK_NAMES = {"attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj",
               "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
GPT_CONFIG_FIELDS = {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd"}  # all mapped below
NORM_EPS = torch.finfo(torch.float32).eps  # F.rms_norm's default eps for our fp32 activations
MAX_IMPORT_EPS = 1e-5  # ours is fixed: a larger rms_norm_eps is refused, not silently replaced
HF_HINT = "export one with `python -m scripts.export_hf` (or transformers' convert_nanochat_checkpoints.py)"


class HFFormatError(ValueError):
    """A model or folder that the nanochat <-> Hugging Face mapping cannot express exactly."""


def weight_names(n_layer):
    """{our state_dict key: transformers' key} for a GPT of n_layer blocks."""
    names = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
    for i in range(n_layer):
        for ours, theirs in BLOCK_NAMES.items():
            names[f"transformer.h.{i}.{ours}.weight"] = f"model.layers.{i}.{theirs}.weight"
    return names


# -----------------------------------------------------------------------------
# export

def check_exportable(model):
    """Raise HFFormatError naming the first feature of `model` that NanoChatForCausalLM cannot express."""
    from nanochat.gpt import GPT, MLP, Block, CausalSelfAttention

    extra = sorted({f.name for f in fields(model.config)} - GPT_CONFIG_FIELDS)
    if extra:
        raise HFFormatError(f"GPTConfig field(s) {extra} have no counterpart in transformers' NanoChatConfig; "
                            f"this model cannot be exported to the native nanochat class")
    known = (GPT, Block, CausalSelfAttention, MLP, torch.nn.ModuleDict, torch.nn.ModuleList, torch.nn.Embedding,
             torch.nn.Linear)
    for name, module in model.named_modules():
        if type(module) not in known:  # a subclass may compute something else
            raise HFFormatError(f"module {name or 'model'} ({type(module).__name__}) has no counterpart in "
                                f"transformers' NanoChatForCausalLM")
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            raise HFFormatError(f"{name} has a bias; NanoChatForCausalLM's MLP has none and its attention biases "
                                f"are all or nothing")
    unmapped = sorted(set(model.state_dict()) - set(weight_names(model.config.n_layer)))
    if unmapped:
        raise HFFormatError(f"weights {unmapped[:5]} have no counterpart in transformers' NanoChatForCausalLM")
    c_fc = {m.mlp.c_fc.weight.shape for m in model.transformer.h}
    if len(c_fc) != 1:
        raise HFFormatError(f"the MLP width differs between blocks ({sorted(c_fc)}); NanoChatConfig has one")


def hf_config(model, tokenizer, provenance=None, dtype=torch.float32):
    """config.json as a dict: every NanoChatConfig field our model depends on, written out."""
    from importlib.metadata import PackageNotFoundError, version

    from nanochat.gpt import ROTARY_BASE, SOFTCAP

    cfg = model.config
    sp = tokenizer.encode_special
    try:
        written_for = version("transformers")
    except PackageNotFoundError:
        written_for = "5.0.0"  # the first release with NanoChatForCausalLM
    return {
        "architectures": ["NanoChatForCausalLM"], "model_type": "nanochat",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd,
        "intermediate_size": model.transformer.h[0].mlp.c_fc.weight.shape[0],
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.n_embd // cfg.n_head,
        "max_position_embeddings": cfg.sequence_len, "hidden_act": "relu2", "rms_norm_eps": NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(ROTARY_BASE)},
        "final_logit_softcapping": SOFTCAP, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "use_cache": True, "initializer_range": 0.02,
        "bos_token_id": sp("<|bos|>"), "eos_token_id": sp("<|assistant_end|>"),
        "pad_token_id": None,  # not bos: an embedding's padding_idx gets no gradient, and bos is trained
        "dtype": str(dtype).removeprefix("torch."), "transformers_version": written_for,
        "nanochat": provenance or {},
    }


def hf_state_dict(model, dtype=torch.float32):
    """Our weights under transformers' names, contiguous CPU tensors in `dtype`."""
    names = weight_names(model.config.n_layer)
    return {names[k]: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}


def _text_check(var):
    """Jinja: refuse content holding a special token's export spelling (it would encode as that token)."""
    return ("{%- for t in SPECIALS -%}{%- if t in " + var + " -%}{{ raise_exception('message content holds ' ~ t ~ "
            "', a special token of this tokenizer; it cannot be sent as text') }}{%- endif -%}{%- endfor -%}")


def chat_template():
    """The Jinja chat template: renders exactly Tokenizer.render_for_reply (with add_generation_prompt)
    and render_conversation's ids (without). Content is a str, or for the assistant a list of parts
    {"type": "text" | "python" | "python_output", "text": ...}; a user's list of text parts is joined."""
    S = dict(zip(SPECIAL_TOKENS, HF_SPECIAL_TOKENS))
    specials = "[" + ", ".join(repr(t) for t in HF_SPECIAL_TOKENS) + "]"
    flat = ("{%- macro flat(c) -%}{%- if c is string -%}{{ c }}{%- else -%}{%- for p in c -%}"
            "{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- else -%}"
            "{{ raise_exception('a ' ~ p['type'] ~ ' part is only allowed in an assistant message') }}"
            "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}")
    text = "{%- macro text(s) -%}" + _text_check("s") + "{{ s }}{%- endmacro -%}"
    return (
        "{%- set SPECIALS = " + specials + " -%}" + flat + text +
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- if messages|length < 2 or messages[1]['role'] != 'user' -%}"
        "{{ raise_exception('a system message must be followed by a user message (it is merged into it)') }}"
        "{%- endif -%}"
        "{%- set msgs = [{'role': 'user', 'content': flat(messages[0]['content']) ~ '\\n\\n' ~ "
        "flat(messages[1]['content'])}] + messages[2:] -%}"
        "{%- else -%}{%- set msgs = messages -%}{%- endif -%}"
        + S["<|bos|>"] +
        "{%- for m in msgs -%}"
        "{%- if m['role'] not in ['user', 'assistant'] or (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('roles must alternate user, assistant, user, ... and only the first may be system; "
        "message ' ~ loop.index0 ~ ' is ' ~ m['role']) }}{%- endif -%}"
        "{%- if m['role'] == 'user' -%}" + S["<|user_start|>"] + "{{ text(flat(m['content'])) }}" + S["<|user_end|>"] +
        "{%- else -%}" + S["<|assistant_start|>"] +
        "{%- if m['content'] is string -%}{{ text(m['content']) }}{%- else -%}{%- for p in m['content'] -%}"
        "{%- if p['type'] == 'text' -%}{{ text(p['text']) }}"
        "{%- elif p['type'] == 'python' -%}" + S["<|python_start|>"] + "{{ text(p['text']) }}" + S["<|python_end|>"] +
        "{%- elif p['type'] == 'python_output' -%}" + S["<|output_start|>"] + "{{ text(p['text']) }}" +
        S["<|output_end|>"] +
        "{%- else -%}{{ raise_exception('part type ' ~ p['type'] ~ ' is not text, python or python_output') }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}" + S["<|assistant_end|>"] +
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + S["<|assistant_start|>"] + "{%- endif -%}"
    )


def tokenizer_config(tokenizer, model_max_length):
    """tokenizer_config.json as a dict (PreTrainedTokenizerFast over tokenizer.json)."""
    S = dict(zip(SPECIAL_TOKENS, HF_SPECIAL_TOKENS))
    named = {S["<|bos|>"], S["<|assistant_end|>"]}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
        "bos_token": S["<|bos|>"], "eos_token": S["<|assistant_end|>"], "pad_token": S["<|assistant_end|>"],
        "additional_special_tokens": [t for t in HF_SPECIAL_TOKENS if t not in named],
        "clean_up_tokenization_spaces": False, "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": chat_template(),
    }


def write_tokenizer(tokenizer, out_dir, model_max_length):
    """tokenizer.json and tokenizer_config.json into out_dir."""
    tokenizer.export_hf(out_dir)
    config = tokenizer_config(tokenizer, model_max_length)
    atomic_write(os.path.join(out_dir, TOKENIZER_CONFIG), lambda f: json.dump(config, f, indent=2))


def report_summary(report_md):
    """The "## Summary" section of a run's report.md (its text, without the heading), or None."""
    if not report_md or not os.path.isfile(report_md):
        return None
    lines, section = open(report_md, encoding="utf-8").read().splitlines(), None
    for line in lines:
        if line.startswith("## "):
            if section is not None:
                break
            section = [] if line.strip() == "## Summary" else None
        elif section is not None:
            section.append(line)
    return "\n".join(section).strip() if section else None


def model_card(model, tokenizer, provenance, summary=None, training=None):
    """README.md: what the model is, how it was trained (training: the stage's flags, from the
    checkpoint's meta), its scores, how to load and chat with it."""
    cfg, src = model.config, provenance or {}
    stage = {"base": "pretraining only (a base model: it continues text)", "mid": "pretraining + mid-training",
             "sft": "pretraining + mid-training + chat SFT", "rl": "pretraining + mid-training + SFT + RL on GSM8K"}
    S = dict(zip(SPECIAL_TOKENS, HF_SPECIAL_TOKENS))
    base = src.get("source") == "base"
    if base:  # a base model continues text; tok(text) puts <|bos|> first, as in pretraining
        use = ['ids = tok("The capital of France is", return_tensors="pt")',
               "out = model.generate(**ids, max_new_tokens=64, do_sample=False)",
               "print(tok.decode(out[0], skip_special_tokens=True))"]
    else:
        use = ['messages = [{"role": "user", "content": "Who are you?"}]',
               'ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
               "out = model.generate(**ids, max_new_tokens=128, do_sample=False)",
               'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))']
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [nanochat]", "---", "",
        f"# nanochat {src.get('source', '')} {src.get('model_tag', '')}".rstrip(), "",
        f"A {model.num_params() / 1e6:.1f}M-parameter {'language' if base else 'chat'} model trained from scratch "
        f"with nanochat: "
        f"{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} query heads and {cfg.n_kv_head} key/value heads, "
        f"context {cfg.sequence_len} tokens, vocabulary {tokenizer.get_vocab_size()} (model rows {cfg.vocab_size}).",
        f"Stage: {stage.get(src.get('source'), src.get('source', 'unknown'))}; checkpoint step {src.get('step', '?')}.",
        "It runs on transformers' native `NanoChatForCausalLM` (no `trust_remote_code`).", "",
        *(["## Training", "", "The flags of the stage that wrote this checkpoint:", "", "```json",
            json.dumps(training, indent=1, sort_keys=True, default=str), "```", ""] if training else []),
        "## Scores", "",
        summary or "No report.md was found for this run (`python -m nanochat.report generate` writes one).", "",
        "## Use it", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'PATH = "path/to/this/folder"  # or its hub id',
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        *use, "```", "",
        "A system message is merged into the first user message (the model was trained that way). "
        "`generate` stops at the end of the assistant's turn (generation_config.json). "
        "Serve it with `transformers serve`, vLLM or any tool that reads this folder; or with nanochat's own "
        "`python -m scripts.chat_web --hf-path PATH`, an OpenAI-compatible server (Open WebUI can point at it).", "",
        "## Tokenizer", "",
        f"Byte-level BPE, ids identical to nanochat's. The special tokens are spelled `{S['<|bos|>']}`, "
        f"`{S['<|assistant_end|>']}`, ... (fullwidth bars): the text `<|bos|>` in a prompt is ordinary text, so a "
        "user cannot inject chat control tokens. `tok(text)` puts the bos token first (`add_special_tokens=False` "
        "leaves it out); the chat template writes the control tokens itself.", "",
        "## The calculator tool", "",
        f"nanochat's engine gives the model a calculator: the model writes `{S['<|python_start|>']}expression"
        f"{S['<|python_end|>']}` and the engine evaluates it and inserts `{S['<|output_start|>']}result"
        f"{S['<|output_end|>']}`. A plain transformers `generate` runs no tool: it just emits the tool-call tokens "
        "and then keeps generating on its own, so any result after them is the model's guess, not a computation "
        "(with `skip_special_tokens=True` the expression shows as plain text). nanochat's chat_cli and chat_web "
        "(`--hf-path`) run the tool.", "",
    ]
    return "\n".join(lines)


def export(model, tokenizer, out_dir, provenance=None, report_md=None, dtype=torch.float32, training=None):
    """Write the Hugging Face folder (module docstring) for `model` and `tokenizer` into out_dir.
    provenance: {source, model_tag, step} (config.json and the card); training: the stage's flags (the card)."""
    from safetensors.torch import save_file

    check_exportable(model)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise HFFormatError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                            f"{model.config.vocab_size} rows: they do not belong together")
    os.makedirs(out_dir, exist_ok=True)
    config = hf_config(model, tokenizer, provenance, dtype)
    atomic_write(os.path.join(out_dir, CONFIG_FILE), lambda f: json.dump(config, f, indent=2))
    tensors = hf_state_dict(model, dtype)
    path, tmp = os.path.join(out_dir, WEIGHTS_FILE), os.path.join(out_dir, f".{WEIGHTS_FILE}.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})  # written beside, then renamed: never a torn file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; the folder is meant to be shared
    os.replace(tmp, path)
    write_tokenizer(tokenizer, out_dir, model.config.sequence_len)
    sp = tokenizer.encode_special
    generation = {"bos_token_id": sp("<|bos|>"), "eos_token_id": [sp("<|assistant_end|>"), sp("<|bos|>")],
                  "pad_token_id": sp("<|assistant_end|>"), "do_sample": False}
    atomic_write(os.path.join(out_dir, GENERATION_CONFIG), lambda f: json.dump(generation, f, indent=2))
    card = model_card(model, tokenizer, provenance, report_summary(report_md), training)
    atomic_write(os.path.join(out_dir, CARD_FILE), lambda f: f.write(card))
    return out_dir


# -----------------------------------------------------------------------------
# import

def _need(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        listing = sorted(os.listdir(folder)) if os.path.isdir(folder) else "(the folder does not exist)"
        raise FileNotFoundError(f"{path} is missing (the folder holds: {listing}); {HF_HINT}")
    return path


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise HFFormatError(f"cannot read {path} as JSON ({e}); {HF_HINT}") from None


def read_config(folder):
    """config.json -> (GPTConfig, notes): refuses, naming the field, what our GPT cannot express."""
    from nanochat.gpt import ROTARY_BASE, SOFTCAP, GPTConfig

    path = _need(folder, CONFIG_FILE)
    c = _read_json(path)
    if c.get("model_type") != "nanochat":
        raise HFFormatError(f"{path}: model_type {c.get('model_type')!r} (architectures {c.get('architectures')}) "
                            f"is not 'nanochat'; only NanoChatForCausalLM folders can be loaded")
    try:
        H, C = int(c["num_attention_heads"]), int(c["hidden_size"])
        config = GPTConfig(sequence_len=int(c.get("max_position_embeddings", 2048)), vocab_size=int(c["vocab_size"]),
                           n_layer=int(c["num_hidden_layers"]), n_head=H,
                           n_kv_head=int(c.get("num_key_value_heads") or H), n_embd=C)
    except (KeyError, TypeError, ValueError) as e:
        raise HFFormatError(f"{path}: a required field is missing or not a number ({e!r})") from None
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    checks = [
        ("hidden_act", c.get("hidden_act", "relu2"), "relu2"),
        ("intermediate_size", c.get("intermediate_size"), 4 * C),
        ("final_logit_softcapping", c.get("final_logit_softcapping", 15.0), SOFTCAP),
        ("rope_parameters.rope_type", rope.get("rope_type", rope.get("type", "default")), "default"),
        ("rope_theta", float(theta), float(ROTARY_BASE)),
        ("attention_bias", bool(c.get("attention_bias", False)), False),
        ("head_dim", c.get("head_dim") or C // H, C // H),
    ]
    for name, value, ours in checks:
        if value != ours:
            raise HFFormatError(f"{path}: {name} = {value!r}, but nanochat's GPT has {ours!r} (fixed in nanochat/gpt.py); "
                                f"this model cannot be loaded into it")
    notes = []
    eps = float(c.get("rms_norm_eps", 1e-6))
    if eps > MAX_IMPORT_EPS:
        raise HFFormatError(f"{path}: rms_norm_eps = {eps:g}, but nanochat's RMSNorm uses {NORM_EPS:g}; above "
                            f"{MAX_IMPORT_EPS:g} the model would compute something else")
    if eps != NORM_EPS:
        notes.append(f"rms_norm_eps {eps:g} is read as nanochat's {NORM_EPS:.3g} (a relative change below "
                     f"{eps:.1g} on unit-scale activations)")
    tied = bool(c.get("tie_word_embeddings", False))
    return config, notes, tied, c


def read_state_dict(folder, n_layer, tied=False):
    """The weights of a folder (model.safetensors, or shards listed by model.safetensors.index.json)
    under our names, as stored (dtype included)."""
    from safetensors.torch import load_file

    index = os.path.join(folder, WEIGHTS_INDEX)
    if os.path.isfile(index):
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        files = [_need(folder, s) for s in shards]
    else:
        files = [_need(folder, WEIGHTS_FILE)]
    theirs = {}
    for path in files:
        try:
            theirs.update(load_file(path))
        except Exception as e:  # safetensors raises its own error types for a torn file
            raise HFFormatError(f"cannot read {path} ({type(e).__name__}: {e}); the file is corrupt or truncated") from None
    names = weight_names(n_layer)
    if tied and "lm_head.weight" not in theirs:
        theirs["lm_head.weight"] = theirs.get("model.embed_tokens.weight")
    unknown = sorted(set(theirs) - set(names.values()))
    missing = sorted(set(names.values()) - {k for k, v in theirs.items() if v is not None})
    if unknown or missing:
        raise HFFormatError(f"the weights in {folder} do not fit a {n_layer}-layer nanochat model: "
                            f"missing {missing[:5]}, unexpected {unknown[:5]}")
    return {ours: theirs[hf] for ours, hf in names.items()}


def read_tokenizer(folder):
    """tokenizer.json -> our Tokenizer, if it is a byte-level BPE whose ids are tiktoken ranks (ours,
    or one converted from tiktoken) with the nine special tokens after the merged ones."""
    from tokenizers import Tokenizer as HFTokenizer

    path = _need(folder, TOKENIZER_FILE)
    spec = _read_json(path)
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise HFFormatError(f"{path}: not a byte-level BPE tokenizer (model type {model.get('type')!r})")
    char_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    # some converters list the added tokens in the BPE vocab too: they are not merged tokens
    vocab = sorted(((s, i) for s, i in model["vocab"].items() if i not in added.values()), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise HFFormatError(f"{path}: the BPE ids are not 0..{len(vocab) - 1} without gaps")
    try:
        mergeable = [bytes(char_byte[ch] for ch in s) for s, _ in vocab]
    except KeyError:
        raise HFFormatError(f"{path}: the vocabulary is not byte-level (GPT-2 byte-to-character alphabet)") from None
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    pattern = next((p.get("pattern", {}).get("Regex") for p in steps if p.get("type") == "Split"), None)
    if pattern is None:
        raise HFFormatError(f"{path}: no Split(Regex) pre-tokenizer, so the split pattern is unknown")
    n = len(mergeable)
    for i, (name, hf_name) in enumerate(zip(SPECIAL_TOKENS, HF_SPECIAL_TOKENS)):
        got = added.get(hf_name, added.get(name))
        if got != n + i:
            raise HFFormatError(f"{path}: special token {name} has id {got}, expected {n + i} (right after the "
                                f"{n} BPE tokens, in nanochat's order)")
    try:
        tok = Tokenizer(mergeable, pattern)
    except ValueError as e:
        raise HFFormatError(f"{path}: {e}") from None
    # the merges of a tokenizer.json may rank pairs otherwise than tiktoken does: check on text
    hf = HFTokenizer.from_file(path)
    probe = ["Hello world! It's 2025: 3.14159 x 1000000 = ?\n\n  indented\tcode() {}",
             "naïve café, Größe, 東京, Привет, مرحبا 🙂👍🏽", tok.decode(list(range(256, n)))]
    for text in probe:
        if hf.encode(text, add_special_tokens=False).ids != tok.encode(text):
            raise HFFormatError(f"{path}: its BPE does not give tiktoken-style ids (merge order != id order), which "
                                f"nanochat's tokenizer needs")
    return tok


def load_hf(folder, device, phase):
    """(model, tokenizer, meta) from a Hugging Face nanochat folder; meta as load_model's
    (model_config, model_tag, step: the export's, else d<n_layer> and 0) plus hf_path, hf_provenance
    (config.json's "nanochat") and hf_notes. The weights are cast to fp32 (our parameters' dtype)."""
    from nanochat.gpt import GPT

    if phase not in ("train", "eval"):
        raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--hf-path {folder} is not a folder; {HF_HINT}")
    config, notes, tied, raw = read_config(folder)
    tokenizer = read_tokenizer(folder)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise HFFormatError(f"{folder}: tokenizer.json has {tokenizer.get_vocab_size()} tokens but config.json's "
                            f"vocab_size is {config.vocab_size}: the tokenizer does not belong to this model")
    state = read_state_dict(folder, config.n_layer, tied)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # the rotary tables; every weight is overwritten next
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise HFFormatError(f"the weights in {folder} do not fit GPT({config}) built from its config.json: {e}") from None
    for note in notes:
        logger.info(f"{folder}: {note}")
    model.train() if phase == "train" else model.eval()
    provenance = raw.get("nanochat") if isinstance(raw.get("nanochat"), dict) else {}
    meta = {"model_config": asdict(config), "model_tag": provenance.get("model_tag") or f"d{config.n_layer}",
            "step": int(provenance.get("step") or 0), "hf_path": folder, "hf_provenance": provenance, "hf_notes": notes}
    return model, tokenizer, meta


def adopt_tokenizer(tokenizer, base_dir, master=True):
    """A training stage that starts from an HF folder: its tokenizer becomes base_dir/tokenizer (what the
    later stages and get_token_bytes load; rank 0 writes it), or must equal the one already there.
    Returns a line saying which. Every rank calls it (a barrier under torch.distributed)."""
    import torch.distributed as dist

    tokenizer_dir = os.path.join(base_dir, "tokenizer")
    exists = os.path.isfile(os.path.join(tokenizer_dir, META_FILE))
    if not exists and master:
        tokenizer.save(tokenizer_dir)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if not exists:
        return f"saved the folder's tokenizer to {tokenizer_dir} for the later stages"
    there = Tokenizer.from_directory(tokenizer_dir)
    if there.get_mergeable_ranks() != tokenizer.get_mergeable_ranks() or there.get_pattern() != tokenizer.get_pattern():
        raise HFFormatError(f"the folder's tokenizer differs from {tokenizer_dir}, which the later stages load; "
                            f"train in a fresh NANOCHAT_BASE_DIR (or remove that tokenizer)")
    return f"the folder's tokenizer equals {tokenizer_dir}"
