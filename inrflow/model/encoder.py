"""Encoders: context pairs ``(coords [B, N, d], values [B, N, c])`` -> latents ``[B, K, H]``.

- ``LocalEncoder``: spatial-aware latents. Each point joins the latent of its nearest
  pseudo-coordinate; one query per latent attends to its own group (``grouped_cross_attention``).
  The default *folded* form is exact and cheap: the query does not depend on the input and keys
  have no norm, so ``q_h . (W_k,h x + b_k,h) = (W_k,h^T q_h) . x + const`` (the constant cancels
  in the softmax) and ``sum_j a_j (W_v x_j + b_v) = W_v (sum_j a_j x_j) + b_v``. Attention then
  runs as MQA over the raw token features (one kv head of width H) and W_v is applied to the
  pooled features: per token ``2 h H`` MACs instead of ``2 H^2 + 2 H``. ``dense`` is the
  authors' composition of the same function (gather, reshape into equal patches, K/V of every
  token, one SDPA per patch); it exists as the yardstick of the benchmarks (``inrflow.perf``).
- ``LinearEncoder`` (INRFlow-linear): mean of each group, then a Linear.
- ``PerceiverEncoder``: vanilla PerceiverIO, learned latents attend to all context tokens.

Every encoder returns ``(latents, tokens)``; ``tokens`` ``[B, N, H]`` are the embedded context
points (memory for ``trunk_reads_context``). The grouped encoders return them in group order (a
per-sample permutation of the input order): attention over a memory does not depend on its order,
and embedding the points already sorted saves a gather of ``[B, N, H]`` forward and its scatter
backward (``B N H`` floats each way, the largest tensor of the encoder at full resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inrflow import ops
from inrflow.ops import _checks

from .attention import CrossAttention
from .blocks import AdaLN, _norm
from .config import INRFlowConfig
from .embeddings import FourierFeatures, Mlp, ValueEmbedder, modulate
from .latent_grouping import LatentGrouping


def _permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, N, C]`` permuted per sample by ``perm`` ``[B, N]``."""
    b, n, c = x.shape
    return x.gather(1, perm.unsqueeze(-1).expand(b, n, c))


class _GroupedEncoder(nn.Module):
    """Shared parts of the local and linear encoders: token embedding and the output head."""

    def __init__(self, cfg: INRFlowConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.num_latents = cfg.num_latents
        self.value_embed = ValueEmbedder(
            cfg.value_dim, h, cfg.value_fourier_freqs, cfg.value_fourier_max_log2
        )
        self.rel_pos = FourierFeatures(cfg.feature_dim, h, cfg.rel_num_freqs, cfg.rel_max_log2)
        self.norm = _norm(h)
        self.mlp = Mlp(h, h)

    def tokens(
        self, coords: torch.Tensor, values: torch.Tensor, grouping: LatentGrouping
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens in group order ``[B, N, H]`` and as rows ``[B*N, H]``, offsets, non-empty mask.

        The inputs are sorted before they are embedded (a gather of ``c + d`` floats per point
        instead of ``H``); every token is embedded on its own, so this is the same function.
        """
        assign, rel = grouping.assign(coords)  # [B, N], [B, N, d]
        perm, offsets = ops.group_layout(assign, self.num_latents, validate=False)  # in range
        values, rel = _permute(values, perm), _permute(rel, perm)
        ve = self.value_embed(values)
        x = ve + self.rel_pos(rel).to(ve.dtype)  # [B, N, H], group order
        nonempty = offsets[1:] > offsets[:-1]  # [B*K]
        return x, x.reshape(-1, x.shape[-1]), offsets, nonempty


class LocalEncoder(_GroupedEncoder):
    """Spatial-aware local cross-attention encoder (folded or unfolded keys)."""

    def __init__(self, cfg: INRFlowConfig) -> None:
        super().__init__(cfg)
        h = cfg.hidden
        self.heads, self.form = cfg.encoder_heads, cfg.encoder_form
        self.latent = nn.Parameter(torch.empty(cfg.num_latents, h))
        self.latent_pos = (
            FourierFeatures(cfg.feature_dim, h, cfg.num_freqs, cfg.max_log2, cfg.freq_scale)
            if cfg.has_latent_positions
            else None
        )
        self.q = nn.Linear(h, h)
        self.k = nn.Linear(h, h, bias=False)  # a key bias adds a per-group constant: no effect
        self.v = nn.Linear(h, h)

    def queries(self, grouping: LatentGrouping) -> torch.Tensor:
        """Per-latent queries ``[K, heads, D]``; they depend on no input (what allows folding)."""
        qin = self.latent
        if self.latent_pos is not None:
            qin = qin + self.latent_pos(grouping.centers).to(qin.dtype)
        return self.q(qin).view(qin.shape[0], self.heads, -1)

    def forward(
        self, coords: torch.Tensor, values: torch.Tensor, c: torch.Tensor, grouping: LatentGrouping
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h = coords.shape[0], self.latent.shape[1]
        x, xs, offsets, nonempty = self.tokens(coords, values, grouping)
        q = self.queries(grouping)  # [K, heads, D]
        k_lat, heads, d = q.shape
        scale = d**-0.5
        if self.form == "folded":
            w_k = self.k.weight.view(heads, d, h).to(q.dtype)
            q_fold = torch.einsum("khd,hdc->khc", q, w_k)  # [K, heads, H]
            q_fold = q_fold.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * k_lat, heads, h)
            kv = xs.unsqueeze(1).to(q_fold.dtype)  # [T, 1, H]: MQA, one kv head of width H
            pooled = ops.grouped_cross_attention(
                q_fold, kv, kv, offsets, scale=scale, validate=False
            )  # offsets from group_layout
            w_v = self.v.weight.view(heads, d, h).to(pooled.dtype)
            out = torch.einsum("ghc,hdc->ghd", pooled, w_v).reshape(b * k_lat, h)
            out = out + self.v.bias * nonempty.unsqueeze(-1).to(out.dtype)  # empty group -> 0
        elif self.form == "dense":
            out = self._dense(xs, offsets, q, b).reshape(b * k_lat, h)
        else:
            k = self.k(xs).view(-1, heads, d)  # [T, heads, D]
            v = self.v(xs).view(-1, heads, d)
            q_b = q.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * k_lat, heads, d)
            out = ops.grouped_cross_attention(
                q_b.to(k.dtype), k, v, offsets, scale=scale, validate=False
            ).reshape(-1, h)
        return self.mlp(self.norm(out.view(b, k_lat, h))), x

    def _dense(
        self, xs: torch.Tensor, offsets: torch.Tensor, q: torch.Tensor, b: int
    ) -> torch.Tensor:
        """The authors' composition: patches ``[B*K, P, H]`` -> K/V -> SDPA with one query each."""
        k_lat, heads, d = q.shape
        groups, tokens = b * k_lat, xs.shape[0]
        p = tokens // groups
        message = (
            "encoder_form='dense' needs every latent to own the same number of points "
            "(e.g. a full image raster on a grid of latents); use 'folded' otherwise"
        )
        if p * groups != tokens:
            raise ValueError(message)
        equal = offsets.long() == torch.arange(groups + 1, device=offsets.device) * p
        _checks.assert_values(equal.all(), message)  # no host sync on GPUs; none on meta
        k = self.k(xs).view(groups, p, heads, d).transpose(1, 2)  # [B*K, heads, P, D]
        v = self.v(xs).view(groups, p, heads, d).transpose(1, 2)
        q_b = q.unsqueeze(0).expand(b, -1, -1, -1).reshape(groups, heads, 1, d).to(k.dtype)
        return F.scaled_dot_product_attention(q_b, k, v)  # [B*K, heads, 1, D]


class LinearEncoder(_GroupedEncoder):
    """INRFlow-linear: the mean of each group's tokens, then a Linear (then LayerNorm + MLP)."""

    def __init__(self, cfg: INRFlowConfig) -> None:
        super().__init__(cfg)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(
        self, coords: torch.Tensor, values: torch.Tensor, c: torch.Tensor, grouping: LatentGrouping
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = coords.shape
        h, k_lat = self.proj.in_features, self.num_latents
        x, xs, offsets, nonempty = self.tokens(coords, values, grouping)
        counts = (offsets[1:] - offsets[:-1]).long()  # [B*K]
        group = torch.repeat_interleave(
            torch.arange(b * k_lat, device=xs.device), counts, output_size=b * n
        )
        sums = xs.new_zeros(b * k_lat, h).index_add_(0, group, xs)
        mean = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)
        out = self.proj(mean) * nonempty.unsqueeze(-1).to(sums.dtype)
        return self.mlp(self.norm(out.view(b, k_lat, h))), x


class PerceiverEncoder(nn.Module):
    """Vanilla PerceiverIO: learned latents cross-attend to every context token (time-aware)."""

    def __init__(self, cfg: INRFlowConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.value_embed = ValueEmbedder(
            cfg.value_dim, h, cfg.value_fourier_freqs, cfg.value_fourier_max_log2
        )
        self.pos = FourierFeatures(cfg.feature_dim, h, cfg.num_freqs, cfg.max_log2, cfg.freq_scale)
        self.latent = nn.Parameter(torch.empty(cfg.num_latents, h))
        self.norm1, self.norm2 = _norm(h), _norm(h)
        self.attn = CrossAttention(h, cfg.heads, qk_norm=cfg.qk_norm)
        self.mlp = Mlp(h, int(h * cfg.mlp_ratio))
        self.adaLN = AdaLN(h, h, 6)

    def forward(
        self, coords: torch.Tensor, values: torch.Tensor, c: torch.Tensor, grouping=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ve = self.value_embed(values)
        x = ve + self.pos(coords).to(ve.dtype)  # [B, N, H]
        lat = self.latent.unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, K, H]
        mod = self.adaLN(c)
        lat = lat + mod[2].unsqueeze(1) * self.attn(modulate(self.norm1(lat), mod[0], mod[1]), x)
        lat = lat + mod[5].unsqueeze(1) * self.mlp(modulate(self.norm2(lat), mod[3], mod[4]))
        return lat, x


def build_encoder(cfg: INRFlowConfig) -> nn.Module:
    return {"local": LocalEncoder, "linear": LinearEncoder, "perceiver": PerceiverEncoder}[
        cfg.encoder
    ](cfg)
