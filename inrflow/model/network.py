"""The INRFlow network: encoder -> DiT trunk over latents -> cross-attention decoder.

``forward`` = ``decode(encode(context), queries)``. ``encode`` does everything that does not
depend on the queries (conditioning, encoder, trunk, the decoder's keys/values over the latents
and all adaLN modulations), so samplers decode any number of queries in chunks at a fixed memory
bound without recomputing the latents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from inrflow.ops import _checks

from .attention import RMSNorm, rope_tables
from .blocks import AdaLN, DecoderBlock, DiTBlock, FinalLayer
from .config import INRFlowConfig
from .embeddings import (
    CondEmbedder,
    FourierFeatures,
    LabelEmbedder,
    TimestepEmbedder,
    ValueEmbedder,
)
from .encoder import build_encoder
from .latent_grouping import LatentGrouping


class Encoded(NamedTuple):
    """What the decoder needs from the context: one per sampling step."""

    latents: torch.Tensor  # [B, K, H]
    c: torch.Tensor  # [B, H] conditioning (time + label)
    dec_mods: list  # adaLN modulations of each decoder block
    dec_kv: list  # (k, v) over the latents for each decoder block, [B, h, K, D]
    final_mod: tuple  # adaLN modulation of the final layer


def build_modules(cfg: INRFlowConfig, shared: bool = True) -> dict[str, nn.Module | None]:
    """The modules of an INRFlow, in the order an :class:`INRFlow` registers (and seeds) them.

    ``shared=False`` leaves out the modules that depend on nothing but the widths (the time
    embedding, the trunk blocks, the decoder blocks): a domain of
    :class:`~inrflow.model.multidomain.MultiDomainINRFlow` builds only its own parts and runs
    them around a trunk it shares with the other domains. ``None`` marks a part the config
    switches off.
    """
    h = cfg.hidden
    parts: dict[str, nn.Module | None] = {}
    if shared:
        parts["t_embed"] = TimestepEmbedder(h, cfg.time_freq_dim, cfg.time_scale)
    parts["y_embed"] = LabelEmbedder(cfg.num_classes, h) if cfg.num_classes > 0 else None
    parts["cond_embed"] = (
        CondEmbedder(cfg.cond_dim, h, learned_null=cfg.cond_null == "learned")
        if cfg.cond_dim > 0
        else None
    )
    parts["residue_embed"] = (
        nn.Embedding(cfg.residue_vocab, cfg.residue_embed_dim) if cfg.residue_vocab else None
    )
    parts["grouping"] = (
        LatentGrouping(
            cfg.pseudo_coords,
            cfg.num_latents,
            cfg.feature_dim,
            cfg.coord_low,
            cfg.coord_high,
            grid_shape=cfg.grid_shape() if cfg.pseudo_coords == "grid" else None,
            seed=cfg.pseudo_seed,
            kmeans_sample=cfg.kmeans_sample,
            lloyd_steps=cfg.lloyd_steps,
            hash_resolution=cfg.hash_resolution,
        )
        if cfg.grouped
        else None
    )
    parts["encoder"] = build_encoder(cfg)
    parts["latent_pos"] = (
        FourierFeatures(cfg.feature_dim, h, cfg.num_freqs, cfg.max_log2, cfg.freq_scale)
        if cfg.has_latent_positions
        else None
    )
    if shared:
        parts["blocks"] = nn.ModuleList(
            DiTBlock(h, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, cross=cfg.trunk_cross_kind)
            for _ in range(cfg.depth)
        )
    parts["query_value"] = ValueEmbedder(
        cfg.value_dim, h, cfg.value_fourier_freqs, cfg.value_fourier_max_log2
    )
    parts["query_pos"] = FourierFeatures(
        cfg.feature_dim, h, cfg.num_freqs, cfg.max_log2, cfg.freq_scale
    )
    # an atom (query) reads its own residue's (group's) latent directly
    parts["query_group"] = nn.Linear(h, h) if cfg.query_reads_group else None
    if shared:
        parts["decoder"] = nn.ModuleList(
            DecoderBlock(h, cfg.heads, cfg.mlp_ratio, cfg.qk_norm)
            for _ in range(cfg.decoder_layers)
        )
    parts["final"] = FinalLayer(2 * h, h, cfg.value_dim)
    return parts


def init_generic(root: nn.Module) -> None:
    """The initialisation every module of a kind gets (xavier Linears, unit norms, adaLN-Zero,
    rebuilt buffers); the specific decisions of :func:`init_time_and_trunk` and
    :func:`init_domain_parts` come after it."""
    for m in root.modules():
        if isinstance(m, nn.Linear):  # xavier for every Linear, zero bias (DiT)
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
        if hasattr(m, "reset_buffers"):  # Fourier frequencies, pseudo-coordinates
            m.reset_buffers()
    for m in root.modules():
        if isinstance(m, AdaLN):  # adaLN-Zero: every gated residual branch starts closed
            nn.init.zeros_(m.linear.weight)
            nn.init.zeros_(m.linear.bias)


def init_time_and_trunk(t_embed: TimestepEmbedder, blocks: nn.ModuleList) -> None:
    """The time embedding as DiT's, N(0, 0.02); ungated trunk cross-attention starts closed."""
    for lin in (t_embed.mlp[0], t_embed.mlp[2]):
        nn.init.normal_(lin.weight, std=0.02)
    for blk in blocks:
        if blk.cross_kind == "plain":
            nn.init.zeros_(blk.cross.proj.weight)


def init_domain_parts(parts: nn.Module) -> None:
    """Label, condition and residue tables, the latent array; the output layer at zero (the
    untrained model predicts velocity 0). ``parts`` holds the modules of :func:`build_modules`
    as attributes (an :class:`INRFlow`, or one domain of a multi-domain model)."""
    if parts.y_embed is not None:
        nn.init.normal_(parts.y_embed.table.weight, std=0.02)
    if parts.cond_embed is not None and parts.cond_embed.learned_null:
        nn.init.normal_(parts.cond_embed.null, std=0.02)
    if parts.residue_embed is not None:
        nn.init.normal_(parts.residue_embed.weight, std=0.5)
    if hasattr(parts.encoder, "latent"):  # learned latent array (local, perceiver)
        nn.init.normal_(parts.encoder.latent, std=0.02)
    nn.init.zeros_(parts.final.linear.weight)
    nn.init.zeros_(parts.final.linear.bias)


class FlowComputation:
    """The forward computation of INRFlow over the modules of :func:`build_modules`.

    A mixin: :class:`INRFlow` runs it over its own modules; one domain of a multi-domain model
    runs the very same code over that domain's modules and the shared trunk, so a domain of a
    co-trained model computes exactly what a single-domain model with those weights computes.
    Needs the attributes ``config``, ``training`` and the modules named by
    :func:`build_modules`.
    """

    config: INRFlowConfig
    training: bool

    # -------------------------------------------------------------------------------------------
    def _check_pairs(self, coords, values, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not isinstance(values, torch.Tensor) or values.dim() != 3:
            raise ValueError(
                f"{what}_values must be a [B, N, {cfg.value_dim}] tensor, got "
                f"{getattr(values, 'shape', type(values))}"
            )
        if values.shape[-1] != cfg.value_dim:
            raise ValueError(
                f"{what}_values has {values.shape[-1]} channels; the config has "
                f"value_dim={cfg.value_dim}"
            )
        if not values.is_floating_point():
            raise TypeError(f"{what}_values must be floating point, got {values.dtype}")
        if cfg.coords_are_values:
            return values, values  # point clouds: the noisy xyz are the coordinates
        if not isinstance(coords, torch.Tensor) or coords.dim() != 3:
            raise ValueError(
                f"{what}_coords must be a [B, N, {cfg.coord_dim}] tensor, got "
                f"{getattr(coords, 'shape', type(coords))}"
            )
        if coords.shape[-1] != cfg.coord_dim:
            raise ValueError(
                f"{what}_coords has dimension {coords.shape[-1]}; the config has "
                f"coord_dim={cfg.coord_dim}"
            )
        if not coords.is_floating_point():
            raise TypeError(f"{what}_coords must be floating point, got {coords.dtype}")
        if coords.shape[:2] != values.shape[:2]:
            raise ValueError(
                f"{what}_coords {tuple(coords.shape)} and {what}_values "
                f"{tuple(values.shape)} disagree on [B, N]"
            )
        if coords.device != values.device:
            raise ValueError(f"{what}_coords on {coords.device}, {what}_values on {values.device}")
        return self._features(coords), values

    def _features(self, coords: torch.Tensor) -> torch.Tensor:
        """Input coordinates -> model features: the residue-type channel becomes its embedding."""
        if self.residue_embed is None:
            return coords
        kind = coords[..., -1].round().long().clamp_(0, self.config.residue_vocab - 1)
        emb = self.residue_embed(kind).to(coords.dtype)
        return torch.cat([coords[..., :-1], emb], dim=-1)

    def _conditioning(self, t, labels, cond, force_drop, b, device):
        cfg = self.config
        t = torch.as_tensor(t, device=device)
        if not t.is_floating_point():
            raise TypeError(f"t must be floating point, got {t.dtype}")
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape [{b}], got {tuple(t.shape)}")
        if force_drop is not None:
            force_drop = torch.as_tensor(force_drop, device=device, dtype=torch.bool).expand(b)
        c = self.t_embed(t)  # [B, H]
        if self.y_embed is not None:
            if labels is None:  # unconditional request: every sample gets the null class
                labels = torch.full((b,), cfg.num_classes, device=device, dtype=torch.long)
            labels = self._check_labels(labels, b, device)
            c = c + self.y_embed(labels, force_drop).to(c.dtype)
        elif labels is not None:
            raise ValueError("labels were given but the model has num_classes=0")
        memory = None
        if self.cond_embed is not None:
            if cond is None:
                cond = self.cond_embed.null.expand(b, max(1, cfg.cond_tokens), -1)
                drop = None
            else:
                if cond.dim() != 3 or cond.shape[0] != b or cond.shape[-1] != cfg.cond_dim:
                    raise ValueError(
                        f"cond must be [B={b}, M, {cfg.cond_dim}], got {tuple(cond.shape)}"
                    )
                drop = force_drop
            memory = self.cond_embed(cond, drop)
        elif cond is not None:
            raise ValueError("cond tokens were given but the model has cond_dim=0")
        return c, memory

    def _check_labels(self, labels, b, device) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.shape != (b,):
            raise ValueError(f"labels must have shape [{b}], got {tuple(labels.shape)}")
        n = self.config.num_classes
        # a bad index would fail inside the embedding; checked without a host sync on GPUs
        _checks.assert_values(
            ((labels >= 0) & (labels <= n)).all(),
            f"labels must lie in [0, {n}] ({n} = null class)",
        )
        return labels.long()

    # -------------------------------------------------------------------------------------------
    def encode(
        self,
        context_coords: torch.Tensor | None,
        context_values: torch.Tensor,
        t: torch.Tensor | float,
        labels: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        force_drop: torch.Tensor | None = None,
    ) -> Encoded:
        """Context ``[B, N, d]`` / ``[B, N, c]`` at time ``t`` ``[B]`` -> :class:`Encoded`.

        ``force_drop`` ``[B]`` bool replaces labels and condition tokens by the null ones (the
        unconditional half of classifier-free guidance).
        """
        coords, values = self._check_pairs(context_coords, context_values, "context")
        b = values.shape[0]
        c, memory = self._conditioning(t, labels, cond, force_drop, b, values.device)
        lat, tokens = self.encoder(coords, values, c, self.grouping)  # [B, K, H], [B, N, H]
        lat, rope, memory = self._trunk_inputs(lat, tokens, memory)
        for blk in self.blocks:
            lat = blk(lat, c, rope, memory)
        return self._decoder_inputs(lat, c)

    def _trunk_inputs(self, lat, tokens, memory):
        """Latent positions (added, and RoPE tables) and the trunk's cross-attention memory."""
        rope = None
        if self.latent_pos is not None:
            lat = lat + self.latent_pos(self.grouping.centers).to(lat.dtype).unsqueeze(0)
            if self.config.rope:
                pos = self.grouping.positions()[:, : self.config.rope_dim]
                rope = rope_tables(pos, self.config.head_dim, self.config.rope_theta)
        if self.config.trunk_reads_context:
            memory = tokens if memory is None else torch.cat([memory, tokens], dim=1)
        return lat, rope, memory

    def _decoder_inputs(self, lat: torch.Tensor, c: torch.Tensor) -> Encoded:
        """Everything of the decoder that does not depend on the queries."""
        dec_mods = [blk.adaLN(c) for blk in self.decoder]
        dec_kv = [blk.attn.memory_kv(lat) for blk in self.decoder]
        return Encoded(lat, c, dec_mods, dec_kv, self.final.adaLN(c))

    def decode(
        self,
        enc: Encoded,
        query_coords: torch.Tensor | None,
        query_values: torch.Tensor,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Velocity ``[B, Q, c]`` at the queries; ``chunk_size`` bounds the queries per pass."""
        coords, values = self._check_pairs(query_coords, query_values, "query")
        if values.shape[0] != enc.latents.shape[0]:
            raise ValueError(
                f"queries have batch {values.shape[0]}, the context {enc.latents.shape[0]}"
            )
        q = values.shape[1]
        if chunk_size is None or chunk_size >= q:
            return self._decode(enc, coords, values)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return torch.cat(
            [
                self._decode(enc, coords[:, s : s + chunk_size], values[:, s : s + chunk_size])
                for s in range(0, q, chunk_size)
            ],
            dim=1,
        )

    def _decode(self, enc: Encoded, coords: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        ve = self.query_value(values)  # [B, Q, H]
        x = ve + self.query_pos(coords).to(ve.dtype)
        if self.query_group is not None:
            idx, _ = self.grouping.assign(coords)  # [B, Q]
            own = enc.latents.gather(1, idx.unsqueeze(-1).expand(-1, -1, enc.latents.shape[-1]))
            x = x + self.query_group(own).to(x.dtype)
        for blk, mod, kv in zip(self.decoder, enc.dec_mods, enc.dec_kv, strict=True):
            x = blk(x, mod, kv)
        return self.final(torch.cat([x, ve], dim=-1), enc.final_mod)  # [B, Q, c]

    def forward(
        self,
        context_coords: torch.Tensor | None,
        context_values: torch.Tensor,
        t: torch.Tensor | float,
        query_coords: torch.Tensor | None,
        query_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        *,
        force_drop: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Velocity at the queries given the (noisy) context.

        Args:
            context_coords: ``[B, N, d]`` (ignored, may be None, when ``coords_are_values``).
            context_values: ``[B, N, c]`` noisy values at time ``t``.
            t: ``[B]`` (or a scalar) in [0, 1]; 0 is noise, 1 is data.
            query_coords, query_values: ``[B, Q, d]``, ``[B, Q, c]``.
            labels: ``[B]`` int64 in ``[0, num_classes]`` (``num_classes`` = null class).
            cond: ``[B, M, cond_dim]`` condition tokens.
        Returns:
            ``[B, Q, c]``.
        """
        enc = self.encode(context_coords, context_values, t, labels, cond, force_drop)
        return self.decode(enc, query_coords, query_values, chunk_size)


class INRFlow(FlowComputation, nn.Module):
    """Flow-matching transformer on coordinate-value pairs (docs/DESIGN.md, section 4)."""

    # The root's own work is split at the calls of the encoder and the trunk blocks (their own
    # FSDP2 units): ``inrflow.train.parallelize.apply_compile`` compiles each piece.
    COMPILED_METHODS = ("_conditioning", "_trunk_inputs", "_decoder_inputs", "_decode")

    def __init__(self, config: INRFlowConfig) -> None:
        super().__init__()
        self.config = config
        for name, module in build_modules(config).items():
            setattr(self, name, module)
        if not self.final.linear.weight.is_meta:
            self.init_weights()

    def init_weights(self) -> None:
        """Every initialisation decision, in one place; callable after ``to_empty()``."""
        init_generic(self)
        init_time_and_trunk(self.t_embed, self.blocks)
        init_domain_parts(self)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded); works on meta-device models."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
