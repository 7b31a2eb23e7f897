"""Hugging Face transformers models behind the model factory seam, built from a config (no download):

    model=trainer.hf_models:llama      LlamaForCausalLM: RMSNorm, SwiGLU, rotary embeddings
    model=trainer.hf_models:gpt_neox   GPTNeoXForCausalLM: LayerNorm with biases, a fused QKV matrix,
                                        parallel attention and MLP branches, partial rotary

transformers is an optional extra (``pip install 'mutransfer[hf]'``). Heads of head_dim as for GPT-2;
any other config field through model_args (e.g. ``model_args={intermediate_size:96}``; the MLP is
mlp_ratio x width wide by default, so it grows with width). Roles, multipliers and init come from the
trainer (trainer.roles, trainer.hooks), not from the config's initializer_range.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Logits(nn.Module):
    """A causal LM's logits (B, T, vocab) from token ids: the seam's forward."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=idx, use_cache=False).logits


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError("this model needs Hugging Face transformers: pip install 'mutransfer[hf]'") from None
    return transformers


def _common(width: int, depth: int, vocab_size: int, seq_len: int, head_dim: int, mlp_ratio: float) -> dict:
    return {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": width // min(head_dim, width),
            "intermediate_size": int(mlp_ratio * width), "vocab_size": vocab_size,
            "max_position_embeddings": seq_len, "tie_word_embeddings": False, "use_cache": False}


def llama(width: int, depth: int, vocab_size: int, seq_len: int, head_dim: int = 64, mlp_ratio: float = 8 / 3,
          **config) -> Logits:
    """LlamaForCausalLM of this width and depth; ``config``: any other LlamaConfig field."""
    transformers = _transformers()
    settings = {**_common(width, depth, vocab_size, seq_len, head_dim, mlp_ratio), "attn_implementation": "sdpa",
                **config}
    return Logits(transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)))


def gpt_neox(width: int, depth: int, vocab_size: int, seq_len: int, head_dim: int = 64, mlp_ratio: float = 4.0,
             **config) -> Logits:
    """GPTNeoXForCausalLM of this width and depth; ``config``: any other GPTNeoXConfig field."""
    transformers = _transformers()
    settings = {**_common(width, depth, vocab_size, seq_len, head_dim, mlp_ratio), "attn_implementation": "sdpa",
                **config}
    return Logits(transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**settings)))
