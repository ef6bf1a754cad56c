"""Transformer blocks: adaLN-Zero DiT block (trunk), decoder cross-attention block, final layer.

All conditioning enters through adaLN: ``c`` ``[B, H]`` (time + label embedding) produces a
shift, scale and gate per sub-block. ``INRFlow.init_weights`` zeroes every adaLN projection, so
each block starts as the identity (adaLN-Zero) and the final layer outputs 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttention, SelfAttention
from .embeddings import Mlp, modulate


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class AdaLN(nn.Module):
    """``c`` ``[B, H]`` -> ``chunks`` modulation vectors ``[B, dim]`` (SiLU then Linear)."""

    def __init__(self, cond_dim: int, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(cond_dim, chunks * dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(nn.functional.silu(c)).chunk(self.chunks, dim=-1)


class DiTBlock(nn.Module):
    """Self-attention, optional cross-attention to memory tokens, MLP; adaLN-Zero gated.

    ``cross`` chooses how memory tokens are read:
    - ``"none"``: a plain DiT block.
    - ``"plain"``: ``x + CA(LN(x), memory)`` between attention and MLP, no modulation (PixArt,
      the authors' image-to-3D trunk); the CA output projection starts at zero.
    - ``"full"``: a second gated pair, CA then its own MLP, each with adaLN (the authors'
      ShapeNet trunk, where every block re-reads the point context).
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, cross: str = "none"
    ) -> None:
        super().__init__()
        if cross not in ("none", "plain", "full"):
            raise ValueError(f"cross must be none|plain|full, got {cross!r}")
        self.cross_kind = cross
        self.norm1, self.norm2 = _norm(dim), _norm(dim)
        self.attn = SelfAttention(dim, heads, qk_norm)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.cross = CrossAttention(dim, heads, qk_norm=qk_norm) if cross != "none" else None
        self.norm_c = _norm(dim) if cross != "none" else None
        self.norm_cm = _norm(dim) if cross == "full" else None
        self.cross_mlp = Mlp(dim, int(dim * mlp_ratio)) if cross == "full" else None
        self.adaLN = AdaLN(dim, dim, 12 if cross == "full" else 6)

    def forward(
        self,
        x: torch.Tensor,  # [B, K, H]
        c: torch.Tensor,  # [B, H]
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory: torch.Tensor | None = None,  # [B, M, H]
    ) -> torch.Tensor:
        mod = self.adaLN(c)
        x = x + mod[2].unsqueeze(1) * self.attn(modulate(self.norm1(x), mod[0], mod[1]), rope)
        if self.cross_kind == "plain" and memory is not None:
            x = x + self.cross(self.norm_c(x), memory)
        elif self.cross_kind == "full" and memory is not None:
            x = x + mod[8].unsqueeze(1) * self.cross(
                modulate(self.norm_c(x), mod[6], mod[7]), memory
            )
            h = modulate(self.norm_cm(x), mod[9], mod[10])
            x = x + mod[11].unsqueeze(1) * self.cross_mlp(h)
        return x + mod[5].unsqueeze(1) * self.mlp(modulate(self.norm2(x), mod[3], mod[4]))


class DecoderBlock(nn.Module):
    """Queries cross-attend to all latents, then an MLP; queries never see each other."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(dim), _norm(dim)
        self.attn = CrossAttention(dim, heads, qk_norm=qk_norm)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN = AdaLN(dim, dim, 6)

    def forward(
        self,
        x: torch.Tensor,  # [B, Q, H]
        mod: tuple[torch.Tensor, ...],  # self.adaLN(c), computed once per step
        kv: tuple[torch.Tensor, torch.Tensor],  # self.attn.memory_kv(latents)
    ) -> torch.Tensor:
        x = x + mod[2].unsqueeze(1) * self.attn(modulate(self.norm1(x), mod[0], mod[1]), kv=kv)
        return x + mod[5].unsqueeze(1) * self.mlp(modulate(self.norm2(x), mod[3], mod[4]))


class FinalLayer(nn.Module):
    """``[decoder output | value embedding]`` ``[B, Q, 2H]`` -> velocity ``[B, Q, c]``."""

    def __init__(self, in_dim: int, cond_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = _norm(in_dim)
        self.adaLN = AdaLN(cond_dim, in_dim, 2)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.linear(modulate(self.norm(x), mod[0], mod[1]))
