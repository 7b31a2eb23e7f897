"""GPT-2 as in the paper's section 5.1, with the three block multipliers of Tables 1-6.

Learned token and position embeddings, pre-LayerNorm blocks, causal attention through
scaled_dot_product_attention, MLP 4n with GELU, no dropout, an untied output layer. Each attention
and each MLP branch is a residual block of two matrices (k = 2) scaled by ``block`` multiplier.
Initialisation is not done here: the parameterization table owns every init std.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .cost import LOSS_CHUNK_ELEMENTS, loss_chunk_rows
from .loss import linear_cross_entropy


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    seq_len: int
    width: int
    depth: int
    n_head: int
    layernorm: bool = True
    attention_scale: Optional[float] = None  # the factor on q.k; None: SDPA's 1/sqrt(d_head)


@dataclass(frozen=True)
class Multipliers:
    """Forward-pass multipliers alpha of the input layer, each residual block and the output layer."""
    input: float = 1.0
    block: float = 1.0
    output: float = 1.0


def _norm(width: int, enabled: bool) -> nn.Module:
    return nn.LayerNorm(width) if enabled else nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        n = shape.width
        self.n_head = shape.n_head
        self.scale = shape.attention_scale
        # Separate Q, K and V so that Muon orthogonalises each matrix on its own.
        self.q = nn.Linear(n, n)
        self.k = nn.Linear(n, n)
        self.v = nn.Linear(n, n)
        self.proj = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # One (B*T, n) x (n, 3n) product, as a fused c_attn computes it: concatenating the three
        # weights copies 3n^2 numbers, little next to three separate products over B*T rows.
        qkv = F.linear(x, torch.cat([self.q.weight, self.k.weight, self.v.weight]),
                       torch.cat([self.q.bias, self.k.bias, self.v.bias]))
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.fc = nn.Linear(shape.width, 4 * shape.width)
        self.proj = nn.Linear(4 * shape.width, shape.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, shape: ModelShape, multiplier: float):
        super().__init__()
        self.multiplier = multiplier
        self.ln_1 = _norm(shape.width, shape.layernorm)
        self.attn = CausalSelfAttention(shape)
        self.ln_2 = _norm(shape.width, shape.layernorm)
        self.mlp = MLP(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # add(alpha=) scales inside the residual add: no extra pass over the activations.
        x = torch.add(x, self.attn(self.ln_1(x)), alpha=self.multiplier)
        return torch.add(x, self.mlp(self.ln_2(x)), alpha=self.multiplier)


class GPT(nn.Module):
    def __init__(self, shape: ModelShape, multipliers: Multipliers = Multipliers()):
        super().__init__()
        self.shape = shape
        self.multipliers = multipliers
        self.wte = nn.Embedding(shape.vocab_size, shape.width)
        self.wpe = nn.Embedding(shape.seq_len, shape.width)
        self.h = nn.ModuleList(Block(shape, multipliers.block) for _ in range(shape.depth))
        self.ln_f = _norm(shape.width, shape.layernorm)
        self.lm_head = nn.Linear(shape.width, shape.vocab_size, bias=False)
        # Recompute each block in backward instead of keeping its activations (a runtime choice:
        # the same gradients, about a third more compute).
        self.activation_checkpointing = False

    def forward(self, idx: torch.Tensor, return_block_outputs: bool = False):
        """Logits of shape (B, T, vocab); with return_block_outputs also each block's output."""
        x, outputs = self._hidden(idx, return_block_outputs)
        logits = self.lm_head(x)
        return (logits, outputs) if return_block_outputs else logits

    def _hidden(self, idx: torch.Tensor, return_block_outputs: bool = False):
        """The output layer's input, alpha_out * ln_f(x), and (if asked) each block's output."""
        T = idx.shape[1]
        if T > self.shape.seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds seq_len={self.shape.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        if self.multipliers.input != 1.0:  # muP's alpha_in is 1: then no pass over the activations
            x = self.multipliers.input * x
        outputs = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.h:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if return_block_outputs:
                outputs.append(x)
        return self._scaled_ln_f(x), outputs

    def _scaled_ln_f(self, x: torch.Tensor) -> torch.Tensor:
        """alpha_out * ln_f(x): alpha * (W x) applied as W (alpha x), so no pass over the (B, T, vocab)
        logits, and alpha folded into LayerNorm's gain and bias (n numbers, not B*T*n)."""
        alpha = self.multipliers.output
        if isinstance(self.ln_f, nn.LayerNorm):
            ln = self.ln_f
            return F.layer_norm(x, ln.normalized_shape, ln.weight * alpha, ln.bias * alpha, ln.eps)
        return x if alpha == 1.0 else alpha * x

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the tokens. The fp32 logits are made at most LOSS_CHUNK_ELEMENTS
        at a time, their gradients in the same pass (trainer.loss): nothing is recomputed."""
        x, _ = self._hidden(idx)
        rows = loss_chunk_rows(self.shape.vocab_size, LOSS_CHUNK_ELEMENTS)
        return linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten(), rows)


def gpt2(width: int, depth: int, vocab_size: int, seq_len: int, head_dim: int = 64, layernorm: bool = True,
         attention_scale: str = "inv_sqrt_d", multipliers: Multipliers = Multipliers()) -> GPT:
    """The factory of ``model=trainer.model:gpt2`` (trainer.model_factory): heads of head_dim (one
    head of the full width below it), q.k scaled by 1/sqrt(d_head) (inv_sqrt_d) or 1/d_head (inv_d).
    It names ``multipliers``, so it applies them itself, inside the residual add and ln_f."""
    n_head = width // min(head_dim, width)
    shape = ModelShape(vocab_size=vocab_size, seq_len=seq_len, width=width, depth=depth, n_head=n_head,
                       layernorm=layernorm, attention_scale=None if attention_scale == "inv_sqrt_d" else n_head / width)
    return GPT(shape, multipliers)
