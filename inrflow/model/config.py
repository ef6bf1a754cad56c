"""Model configuration and the size presets of the paper (Table 6 images, Table 11 point clouds).

One frozen dataclass holds every architectural choice; ``build_model(size, domain, **overrides)``
(in :mod:`inrflow.model`) picks a preset and applies overrides, so a checkpoint can store the whole
architecture as ``dataclasses.asdict(config)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENCODERS = ("local", "perceiver", "linear")
ENCODER_FORMS = ("folded", "unfolded", "dense")
PSEUDO_COORDS = ("grid", "random", "kmeans++", "hash", "residue")
COND_NULLS = ("learned", "zeros")
DOMAINS = ("image", "pointcloud", "protein")


# fields of stored configs that older versions had: the model's own random label and token
# dropout (always switched off by the trainer), now only the flow-matching draws'
RETIRED_FIELDS = ("class_dropout", "cond_dropout")


@dataclass(frozen=True)
class INRFlowConfig:
    """Architecture of an INRFlow model. Field comments say what each choice changes."""

    # --- data: a map R^coord_dim -> R^value_dim observed at a set of points -------------------
    coord_dim: int = 2  # 2 for images (x, y); 3 for point clouds; atom-feature width for proteins
    value_dim: int = 3  # RGB, xyz, ...
    coord_low: float = 0.0  # coordinate domain [low, high]^d: pseudo-coordinates live here
    coord_high: float = 1.0
    # Point clouds have no coordinate independent of the value (coordinates *are* the noisy xyz),
    # so the model embeds the noisy values as coordinates and ignores the coords it is given.
    # Feeding the clean (or the base-noise) xyz as coordinates would leak the target.
    coords_are_values: bool = False

    # --- widths --------------------------------------------------------------------------------
    hidden: int = 384
    depth: int = 12  # trunk DiT blocks
    heads: int = 6
    decoder_layers: int = 1
    num_latents: int = 1024
    mlp_ratio: float = 4.0
    qk_norm: bool = True  # RMSNorm on queries and keys of every attention over latents

    # --- encoder -------------------------------------------------------------------------------
    encoder: str = "local"  # local (spatial-aware) | perceiver (global) | linear (INRFlow-linear)
    encoder_form: str = "folded"  # local encoder: W_k folded into the latent queries
    # "unfolded": K/V of every token, grouped_cross_attention; "dense": the authors' composition
    # (equal-size groups reshaped to [B*K, P, H], K/V of every token, dense per-patch SDPA), the
    # yardstick of the benchmarks; it needs every group to hold the same number of points.
    encoder_heads: int = 16  # heads of the local encoder's cross-attention (the authors: 16)
    pseudo_coords: str = "grid"  # grid | random | kmeans++ | hash
    latent_grid: tuple[int, ...] | None = None  # grid shape; default: balanced factors of K
    kmeans_sample: int = 16384  # points drawn from the domain to place kmeans++ centres
    lloyd_steps: int = 0  # Lloyd iterations after the kmeans++ seeding
    pseudo_seed: int = 0  # seeds random / kmeans++ pseudo-coordinates and the hash
    hash_resolution: int = 16  # voxels per axis of the spatial hash
    # "residue" grouping (proteins): coordinate channel 0 holds the residue's position as the
    # centre of cell i of a 1-D grid of num_latents cells on [coord_low, coord_high], so latent i
    # groups exactly the atoms of residue i (see inrflow.data.proteins.residue_position).
    # Decoder queries also read their own group's latent (an atom its residue's latent).
    query_reads_group: bool = False
    # Learned residue-type table: the LAST coordinate channel holds an integer type in
    # [0, residue_vocab) that is replaced by a learned residue_embed_dim-wide embedding
    # (0: off, e.g. when precomputed per-residue embeddings are part of the coordinates).
    residue_vocab: int = 0
    residue_embed_dim: int = 16

    # --- positional features -------------------------------------------------------------------
    # Absolute coordinates (decoder queries, perceiver tokens, latent positions): frequencies
    # freq_scale * 2^linspace(0, max_log2, num_freqs) per axis; default pi..112pi as the
    # authors' images. None: hidden / (2 coord_dim) frequencies and no projection (the authors').
    num_freqs: int | None = None
    max_log2: float = math.log2(112.0)
    freq_scale: float = math.pi
    # Coordinates relative to the latent's pseudo-coordinate, in units of the cell size.
    rel_num_freqs: int = 6
    rel_max_log2: float = 3.0
    # Fourier features of the (noisy) values added to their embedding (0: off). The value
    # embedding's LayerNorm hides the values' magnitude; positions (proteins) need it.
    value_fourier_freqs: int = 0
    value_fourier_max_log2: float = 4.0
    # Axial RoPE over the latents' pseudo-coordinates in the trunk (paper: XL, 2-D/3-D). With
    # residue latents it is 1-D over the residue index: trunk attention then sees sequence
    # separation, which the low-frequency Fourier position of a residue hardly resolves.
    rope: bool = False
    rope_theta: float = 100.0

    # --- conditioning --------------------------------------------------------------------------
    # Labels and tokens are dropped to the null ones for classifier-free guidance by the
    # flow-matching draws of the training data (inrflow.flow.draw_sample), not by the model.
    num_classes: int = 0  # 0 = no class labels; the null (CFG) class is index num_classes
    cond_dim: int = 0  # width of optional condition tokens (0 = none), e.g. 774 for image-to-3D
    cond_null: str = "learned"  # CFG null condition token: learned | zeros (fixed)
    # tokens per sample of the training data: an unconditional request (cond=None) gets this
    # many null tokens, as dropped samples had in training (it matters when the trunk's
    # cross-attention also reads the context tokens); 0: one
    cond_tokens: int = 0
    trunk_reads_context: bool = False  # every trunk block cross-attends to the context tokens
    time_freq_dim: int = 256
    time_scale: float = 1000.0  # t in [0, 1] is scaled before the sinusoids (DiT uses 0..1000)

    extra: dict = field(default_factory=dict, compare=False)  # free-form notes, not used

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> INRFlowConfig:
        """A stored config (checkpoint manifest, export): lists back to tuples, and the fields
        of older versions that the model no longer has (``RETIRED_FIELDS``) left out."""
        return cls(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in stored.items()
                if k not in RETIRED_FIELDS
            }
        )

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"INRFlowConfig: {msg}")

        if self.coord_dim < 1 or self.value_dim < 1:
            bad(f"coord_dim and value_dim must be >= 1, got {self.coord_dim}, {self.value_dim}")
        if self.coords_are_values and self.coord_dim != self.value_dim:
            bad("coords_are_values needs coord_dim == value_dim")
        if not self.coord_high > self.coord_low:
            bad(f"coord_high ({self.coord_high}) must exceed coord_low ({self.coord_low})")
        if min(self.hidden, self.heads, self.encoder_heads) < 1:
            bad(
                f"hidden, heads and encoder_heads must be >= 1, got {self.hidden}, {self.heads}, "
                f"{self.encoder_heads}"
            )
        if self.hidden % self.heads:
            bad(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.encoder not in ENCODERS:
            bad(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder_form not in ENCODER_FORMS:
            bad(f"encoder_form must be one of {ENCODER_FORMS}, got {self.encoder_form!r}")
        if self.hidden % self.encoder_heads:
            bad(f"hidden ({self.hidden}) must be divisible by encoder_heads ({self.encoder_heads})")
        if self.pseudo_coords not in PSEUDO_COORDS:
            bad(f"pseudo_coords must be one of {PSEUDO_COORDS}, got {self.pseudo_coords!r}")
        if min(self.depth, self.decoder_layers, self.num_latents) < 1:
            bad("depth, decoder_layers and num_latents must be >= 1")
        if self.latent_grid is not None:
            if len(self.latent_grid) != self.feature_dim:
                bad(f"latent_grid {self.latent_grid} must have coord_dim={self.coord_dim} axes")
            if math.prod(self.latent_grid) != self.num_latents:
                bad(f"latent_grid {self.latent_grid} must multiply to num_latents")
        if self.rope and not self.has_latent_positions:
            bad("rope needs latent positions (local/linear encoder with grid, random or kmeans++)")
        if self.rope and self.head_dim < 2 * self.rope_dim:
            bad(f"rope needs head_dim >= 2 * {self.rope_dim} (rotated axes), got {self.head_dim}")
        if self.num_freqs is None and self.hidden % (2 * self.feature_dim):
            bad(f"num_freqs=None needs 2*coord_dim to divide hidden ({self.hidden}); set num_freqs")
        if self.num_classes < 0 or self.cond_dim < 0:
            bad("num_classes and cond_dim must be >= 0")
        if self.cond_null not in COND_NULLS:
            bad(f"cond_null must be one of {COND_NULLS}, got {self.cond_null!r}")
        if self.pseudo_coords == "residue" and self.coords_are_values:
            bad("residue grouping needs coordinates separate from the values")
        if self.query_reads_group and not self.grouped:
            bad("query_reads_group needs a grouping encoder (local or linear)")
        if self.residue_vocab < 0 or (self.residue_vocab and self.residue_embed_dim < 1):
            bad("residue_vocab must be >= 0 and residue_embed_dim >= 1")
        if self.residue_vocab and self.coord_dim < 2:
            bad("residue_vocab needs coord_dim >= 2 (the last channel is the residue type)")

    @property
    def feature_dim(self) -> int:
        """Width of the coordinates inside the model (after the residue-type embedding)."""
        if self.residue_vocab:
            return self.coord_dim - 1 + self.residue_embed_dim
        return self.coord_dim

    @property
    def rope_dim(self) -> int:
        """Axes RoPE rotates: the residue index alone for residue latents, else every axis."""
        return 1 if self.pseudo_coords == "residue" else self.feature_dim

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def grouped(self) -> bool:
        """Whether the encoder groups context points by latent (local or linear encoder)."""
        return self.encoder in ("local", "linear")

    @property
    def has_latent_positions(self) -> bool:
        """Latents own a pseudo-coordinate (not for the perceiver or the hash assignment)."""
        return self.grouped and self.pseudo_coords != "hash"

    def grid_shape(self) -> tuple[int, ...]:
        """Latent grid for ``pseudo_coords='grid'``: ``latent_grid`` or balanced factors of K."""
        if self.latent_grid is not None:
            return tuple(self.latent_grid)
        return balanced_factors(self.num_latents, self.feature_dim)

    def replace(self, **overrides) -> INRFlowConfig:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown INRFlowConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)


def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` integer factors as equal as possible (1024, 3 -> (16, 8, 8))."""
    shape = []
    rest = n
    for axes_left in range(d, 1, -1):
        target = rest ** (1.0 / axes_left)
        divisors = [c for c in range(1, rest + 1) if rest % c == 0]
        f = min(divisors, key=lambda c: (abs(math.log(c / target)), -c))
        shape.append(f)
        rest //= f
    shape.append(rest)
    return tuple(sorted(shape, reverse=True))


# ------------------------------------------------------------------------------------------------
# Presets. Shapes (layers, hidden, heads, decoder layers) are the paper's; "paper_params" is the
# count the paper states (millions), kept beside the presets for the README table and the tests.
# ------------------------------------------------------------------------------------------------

_SHAPES: dict[str, dict[str, dict]] = {
    "image": {
        "tiny": dict(
            depth=2,
            hidden=64,
            heads=4,
            decoder_layers=1,
            num_latents=64,
            encoder_heads=4,
            num_freqs=8,
            max_log2=4.0,
            rel_num_freqs=4,
            rel_max_log2=2.0,
            time_freq_dim=64,
        ),
        "S": dict(depth=12, hidden=384, heads=6, decoder_layers=1),
        "B": dict(depth=12, hidden=768, heads=12, decoder_layers=1),
        "L": dict(depth=24, hidden=1024, heads=16, decoder_layers=1),
        "XL": dict(depth=28, hidden=1152, heads=16, decoder_layers=2, rope=True),
    },
    "pointcloud": {
        "tiny": dict(
            depth=2,
            hidden=64,
            heads=4,
            decoder_layers=1,
            num_latents=64,
            encoder_heads=4,
            time_freq_dim=64,
            trunk_reads_context=True,
        ),
        "B": dict(depth=9, hidden=512, heads=4, decoder_layers=1, trunk_reads_context=True),
        "L": dict(depth=12, hidden=512, heads=4, decoder_layers=1, trunk_reads_context=True),
        # Objaverse image-to-3D: condition tokens (DINOv2 + rays, 774 wide) in every block
        "XL": dict(depth=28, hidden=1152, heads=16, decoder_layers=1, cond_dim=774),
    },
}
_SHAPES["protein"] = {  # image shapes; RoPE is a domain default (1-D, over the residue index)
    k: {f: x for f, x in v.items() if f != "rope"} for k, v in _SHAPES["image"].items()
}

_DOMAIN_DEFAULTS: dict[str, dict] = {
    "image": dict(
        coord_dim=2,
        value_dim=3,
        coord_low=0.0,
        coord_high=1.0,
        encoder="local",
        pseudo_coords="grid",
    ),
    # The authors' 3D model: global PerceiverIO encoder, Fourier features of the noisy xyz with
    # frequencies 2^0..2^9 (no pi).
    "pointcloud": dict(
        coord_dim=3,
        value_dim=3,
        coord_low=-1.0,
        coord_high=1.0,
        coords_are_values=True,
        encoder="perceiver",
        pseudo_coords="hash",
        num_freqs=10,
        max_log2=9.0,
        freq_scale=1.0,
    ),
    # Atom features -> xyz (inrflow.data.proteins). One latent per residue (residue grouping),
    # each atom decoded with its own residue's latent; the last coordinate channel is the
    # residue type of a learned table. coord_dim is set from the data by the trainer. RoPE over
    # the residue index lets trunk attention see sequence separation (the bundled demo's
    # flow-matching loss after 600 steps: 0.38 with it, 0.51 without).
    "protein": dict(
        coord_dim=24,
        value_dim=3,
        coord_low=-1.0,
        coord_high=1.0,
        encoder="local",
        pseudo_coords="residue",
        query_reads_group=True,
        residue_vocab=21,
        rope=True,
        num_freqs=4,
        max_log2=2.0,
        freq_scale=1.0,
    ),
}

PAPER_PARAMS_M: dict[tuple[str, str], float] = {
    ("image", "S"): 35.0,
    ("image", "B"): 138.0,
    ("image", "L"): 458.0,
    ("image", "XL"): 733.0,
    ("pointcloud", "B"): 108.0,
    ("pointcloud", "L"): 204.0,
    ("pointcloud", "XL"): 866.0,
}


def preset_names(domain: str = "image") -> tuple[str, ...]:
    if domain not in _SHAPES:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return tuple(_SHAPES[domain])


def get_config(size: str, domain: str = "image", **overrides) -> INRFlowConfig:
    """The preset ``size`` of ``domain`` with config-field ``overrides`` applied."""
    names = preset_names(domain)
    if size not in names:
        raise ValueError(f"size for domain {domain!r} must be one of {names}, got {size!r}")
    fields = {**_DOMAIN_DEFAULTS[domain], **_SHAPES[domain][size]}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(INRFlowConfig)}
    if unknown:
        raise TypeError(f"unknown INRFlowConfig field(s): {sorted(unknown)}")
    fields.update(overrides)
    if isinstance(fields.get("latent_grid"), list):
        fields["latent_grid"] = tuple(fields["latent_grid"])
    return INRFlowConfig(**fields)
