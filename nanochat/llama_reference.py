"""
The reference model of the benchmarks (scripts/model_bench.py, infer_bench.py, web_bench.py):
Hugging Face transformers' LlamaForCausalLM in the shape of one of our GPTs, so that "ours vs
Llama" compares implementations, not model sizes.

    llama = llama_like(config)                       # config: our GPTConfig
    llama = llama_like(config, bos_token_id=..., eos_token_id=...)   # extra LlamaConfig fields

The same depth, width, heads (query and key/value), head dim, vocab and context; untied embedding
and head (as ours); SDPA attention. The MLP differs in kind: ours is 4 x width with ReLU^2 (2
matrices, 8 width^2 parameters), Llama's is SwiGLU (3 matrices); intermediate width 8/3 x width
gives the same parameter count, rounded up to a multiple of 64 as Llama's own configurations round
it (256 -> 704, 3% more MLP parameters than ours). Random init; transformers is imported on use.
"""

import math


def llama_mlp_width(n_embd):
    """SwiGLU intermediate width of the reference: 8/3 x n_embd, rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


def llama_like(config, **extra):
    """A LlamaForCausalLM (random init, train mode) of the shape of GPTConfig `config`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                      intermediate_size=llama_mlp_width(config.n_embd), num_hidden_layers=config.n_layer,
                      num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
                      head_dim=config.n_embd // config.n_head, max_position_embeddings=config.sequence_len,
                      tie_word_embeddings=False, attn_implementation="sdpa", **extra)
    return LlamaForCausalLM(cfg)
