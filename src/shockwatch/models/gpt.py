"""A GPT-2-style decoder of our own: learned positions, multi-head causal attention, GELU MLP.

Separate query/key/value/output projections (GPT-2 fuses q, k, v into one matrix; separate ones
keep each head's parameters a contiguous block of rows, which is what the GL(d_head) symmetries
act on). ``pre_ln`` picks GPT-2's pre-LayerNorm blocks or the original post-LN Transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPT", "GPTConfig", "CausalSelfAttention"]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 32
    block_size: int = 16
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 16
    pre_ln: bool = True
    # LayerNorm over each head's queries and keys before their product (qk-layernorm: Dehghani et
    # al. 2023; Wortsman et al. 2023): bounds the attention logits by the norms' gains
    qk_norm: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_head {self.n_head}")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head) < 1:
            raise ValueError(f"every size must be >= 1, got {self}")


class CausalSelfAttention(nn.Module):
    """softmax((x W_Q^h + b_Q^h)(x W_K^h + b_K^h)^T / sqrt(d_head) + causal mask) (x W_V^h + b_V^h),
    heads concatenated, then W_O. Rows h*d_head..(h+1)*d_head of q/k/v belong to head h, as do
    those columns of o."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_head, self.d_head = config.n_head, d // config.n_head
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        # shared by the heads (one gain per head dimension), as in Wortsman et al.'s qk-layernorm
        self.q_norm, self.k_norm = ((nn.LayerNorm(self.d_head), nn.LayerNorm(self.d_head)) if config.qk_norm
                                    else (nn.Identity(), nn.Identity()))

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per head: the scaled scores q.k/sqrt(d_head) (before the causal mask), the causal softmax
        weights (batch, heads, length, length), and the values (batch, heads, length, d_head)."""
        batch, length = x.size(0), x.size(1)  # size(), not unpacking: torch.fx traces it

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.n_head, self.d_head).transpose(1, 2)
        q, k, v = self.q_norm(heads(self.q(x))), self.k_norm(heads(self.k(x))), heads(self.v(x))
        # explicit softmax, not scaled_dot_product_attention: its CPU kernel has no double backward,
        # which Hessian-vector products need; the mask is built here so that torch.fx traces it
        causal = x.new_ones((length, length), dtype=torch.bool).tril()
        scores = (q @ k.transpose(-2, -1)) * self.d_head**-0.5
        return scores, F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1), v

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d = x.size(0), x.size(1), x.size(2)
        _, weights, v = self.attention(x)
        return self.o((weights @ v).transpose(1, 2).reshape(batch, length, d))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_ln = config.pre_ln
        self.ln_1, self.ln_2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model))

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """Token ids (batch, length) -> logits (batch, length, vocab)."""

    def __init__(self, config: GPTConfig = GPTConfig()) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model) if config.pre_ln else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))
