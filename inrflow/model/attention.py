"""Attention over latents: RMSNorm qk-norm, axial RoPE over pseudo-coordinates, SDPA.

Shapes: ``B`` batch, ``K`` latents, ``M`` memory tokens, ``Q`` queries, ``h`` heads, ``D`` head
width. Tensors handed to ``F.scaled_dot_product_attention`` are ``[B, h, tokens, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed in fp32 (the authors' runs in bf16)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope_tables(
    pos: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial RoPE tables for positions ``[..., K, d]`` -> cos, sin ``[..., 1, K, R/2]``.

    Each axis gets ``n = head_dim // (2 d)`` frequencies ``theta^(-j/n)``; ``R = 2 d n`` leading
    channels of a head are rotated, any remainder passes through unrotated.
    """
    d = pos.shape[-1]
    n = head_dim // (2 * d)
    j = torch.arange(n, device=pos.device, dtype=torch.float32)
    freqs = theta ** (-j / n)  # [n]
    ang = (pos.float()[..., :, None] * freqs).flatten(-2)  # [..., K, d*n]
    return torch.cos(ang).unsqueeze(-3), torch.sin(ang).unsqueeze(-3)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, h, K, D]`` (half-split pairing) with tables from :func:`rope_tables`."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    x1f, x2f = x1.float(), x2.float()
    out = torch.cat([x1f * cos - x2f * sin, x2f * cos + x1f * sin], dim=-1).to(x.dtype)
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, T, h*D]`` -> ``[B, h, T, D]``."""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, T, D]`` -> ``[B, T, h*D]``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with qk RMSNorm and optional RoPE (qkv without bias)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        q, k, v = (_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Queries ``[B, Q, dim]`` attend to memory ``[B, M, kv_dim]``; qk RMSNorm, no q/kv bias.

    ``memory_kv`` computes the normalised keys and values once, so a decoder that processes
    queries in chunks projects the latents only once per step.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.q_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = (_heads(t, self.heads) for t in self.kv(memory).chunk(2, dim=-1))
        return self.k_norm(k), v  # [B, h, M, D] each

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if kv is None:
            if memory is None:
                raise ValueError("CrossAttention needs memory or precomputed kv")
            kv = self.memory_kv(memory)
        q = self.q_norm(_heads(self.q(x), self.heads))
        return self.proj(_merge(F.scaled_dot_product_attention(q, kv[0], kv[1])))
