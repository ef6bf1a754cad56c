"""Embeddings: Fourier features of coordinates, point values, time, class labels, condition tokens.

Every module here owns its parameters but not their initialisation: ``INRFlow.init_weights`` sets
all of them in one place. Buffers that are pure functions of the config (Fourier frequencies) are
non-persistent and rebuilt by ``reset_buffers`` so a model built on the meta device can be
materialised with ``to_empty`` + ``init_weights``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from inrflow import ops


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; ``shift``/``scale`` are ``[B, H]`` and broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class FourierFeatures(nn.Module):
    """Coordinates ``[..., d]`` -> ``[..., out_dim]`` through the fused Fourier embedding.

    With ``num_freqs=None`` the embedding is exactly ``out_dim`` wide (``out_dim / 2d``
    frequencies per axis, no raw input, no parameters), as in the authors' image model; this
    needs ``2d`` to divide ``out_dim``. Otherwise ``num_freqs`` frequencies per axis (plus the raw
    coordinates) are projected to ``out_dim`` by a Linear, which works for any ``d``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_freqs: int | None,
        max_log2: float,
        scale: float = math.pi,
    ) -> None:
        super().__init__()
        if num_freqs is None:
            if out_dim % (2 * in_dim):
                raise ValueError(f"num_freqs=None needs 2*{in_dim} to divide width {out_dim}")
            num_freqs, self.include_input, self.proj = out_dim // (2 * in_dim), False, None
        else:
            self.include_input = True
            self.proj = nn.Linear(in_dim * (2 * num_freqs + 1), out_dim)
        self.in_dim, self.num_freqs, self.max_log2, self.scale = in_dim, num_freqs, max_log2, scale
        self.register_buffer("freqs", torch.empty(num_freqs), persistent=False)
        if not self.freqs.is_meta:
            self.reset_buffers()

    def reset_buffers(self) -> None:
        f = ops.fourier_frequencies(self.num_freqs, self.max_log2, scale=self.scale)
        self.freqs = f.to(device=self.freqs.device, dtype=torch.float32)

    def _apply(self, fn, recurse=True):
        # `model.to(bfloat16)` would round the frequencies (pi * 112 is off by 0.4% in bf16) and
        # the op wants float32: recompute them instead of keeping a cast copy.
        super()._apply(fn, recurse)
        if self.freqs.dtype != torch.float32 and not self.freqs.is_meta:
            self.reset_buffers()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = ops.fourier_embed(x, self.freqs, include_input=self.include_input)
        return emb if self.proj is None else self.proj(emb.to(self.proj.weight.dtype))


class ValueEmbedder(nn.Module):
    """Point values ``[..., c]`` -> ``[..., H]``: Linear -> LayerNorm -> SiLU (as the authors).

    The LayerNorm makes that embedding blind to the values' magnitude (``LN(W v)`` is the same for
    ``v`` and ``2 v`` until the bias learns otherwise). Fine for colours; positions (proteins)
    need it, so ``fourier_freqs > 0`` adds Fourier features of the values (frequencies
    ``2^linspace(0, fourier_max_log2)``, plus the raw values) through a Linear.
    """

    def __init__(
        self, value_dim: int, hidden: int, fourier_freqs: int = 0, fourier_max_log2: float = 4.0
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(value_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fourier = (
            FourierFeatures(value_dim, hidden, fourier_freqs, fourier_max_log2, scale=1.0)
            if fourier_freqs
            else None
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = F.silu(self.norm(self.proj(v.to(self.proj.weight.dtype))))
        if self.fourier is not None:
            out = out + self.fourier(v.float()).to(out.dtype)
        return out


class TimestepEmbedder(nn.Module):
    """Scalar t in [0, 1] -> ``[B, H]``: sinusoids (cos first) of ``time_scale * t``, then an MLP.

    The authors feed raw t in [0, 1], so the largest phase is 1 rad and most channels are nearly
    constant; scaling by 1000 (DiT's timestep range) spreads the phases.
    """

    def __init__(self, hidden: int, freq_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(10000.0) * k / half)
        args = (t.float() * self.time_scale)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = F.pad(emb, (0, 1))
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> ``[B, H]``; row ``num_classes`` is the null class used for CFG.

    ``drop`` ``[B]`` bool replaces labels by the null class (classifier-free guidance: the
    training data's draws decide which).
    """

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.table(labels)


class CondEmbedder(nn.Module):
    """Condition tokens ``[B, M, cond_dim]`` -> ``[B, M, H]``; dropped samples (CFG) get every
    token replaced by a null token, learned or fixed at zero (``learned_null=False``)."""

    def __init__(self, cond_dim: int, hidden: int, learned_null: bool = True) -> None:
        super().__init__()
        self.learned_null = learned_null
        if learned_null:
            self.null = nn.Parameter(torch.empty(cond_dim))
        else:  # a zero buffer: persistent so checkpoints of either kind load alike
            self.register_buffer("null", torch.zeros(cond_dim))
        self.mlp = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden)
        )

    def reset_buffers(self) -> None:
        if not self.learned_null and not self.null.is_meta:
            self.null.zero_()

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            cond = torch.where(drop[:, None, None], self.null.to(cond.dtype), cond)
        return self.mlp(cond.to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    """Two-layer GELU(tanh) MLP, as in DiT/timm."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
