"""One model for several data domains: a shared trunk, each domain's own input and output parts.

Which parts are shared is decided by what they depend on:

- **shared**: the time embedding, the DiT trunk blocks and the decoder's cross-attention blocks.
  They see only ``hidden``-wide latents, queries and conditioning, whatever the data is, so every
  domain trains them (what co-training is for).
- **per domain** (:class:`DomainParts`): everything that depends on the domain's coordinate and
  value dimensions or its latent layout: the encoder (value and position embeddings, the latent
  array, the pseudo-coordinates and their grouping), the latent positions, the query value and
  position embeddings, the output layer, and the domain's own conditioning: its class-label table
  (with its own null class for classifier-free guidance), condition tokens, residue types, and a
  learned domain embedding added to the conditioning vector ``c``.

Each domain keeps its own label table rather than one table over all classes with per-domain
offsets: the domains' classes have nothing in common to share (a digit is no kind of torus), each
domain needs its own null class for guidance, a domain without labels simply has no table, and
adding a domain renumbers nothing.

A domain of this model computes exactly what a plain :class:`~inrflow.model.INRFlow` with the
domain's config computes with the same weights and the domain embedding folded into the time
embedding's output bias (``c = t_embed(t) + e_domain + ...``): :func:`domain_state_dict` does
that fold, so sampling, evaluation and export load one domain of a multi-domain checkpoint as a
plain model and need nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .config import INRFlowConfig
from .network import (
    FlowComputation,
    INRFlow,
    build_modules,
    init_domain_parts,
    init_generic,
    init_time_and_trunk,
)

__all__ = [
    "SHARED_FIELDS",
    "DomainParts",
    "MultiDomainINRFlow",
    "domain_state_dict",
    "shared_trunk_configs",
]

# Config fields that shape the shared modules: every domain must agree on them.
SHARED_FIELDS = (
    "hidden",
    "depth",
    "heads",
    "decoder_layers",
    "mlp_ratio",
    "qk_norm",
    "time_freq_dim",
    "time_scale",
)
# Where a domain's embedding is folded in a single-domain model: the time embedding's output bias.
TIME_BIAS = "t_embed.mlp.2.bias"


def shared_trunk_configs(configs: Mapping[str, INRFlowConfig]) -> dict[str, INRFlowConfig]:
    """Each domain's config with the trunk's cross-attention kind made common (``trunk_cross``).

    The trunk blocks are built once, so they need one cross-attention kind: ``full`` when some
    domain's trunk reads its context tokens, ``plain`` when some domain has condition tokens,
    else ``none``. A domain without memory runs ``full`` or ``plain`` blocks with the
    cross-attention skipped, so its function is unchanged. Raises ``ValueError`` when the
    domains disagree on a field of :data:`SHARED_FIELDS`, or need ``full`` and ``plain`` both.
    """
    if not configs:
        raise ValueError("a multi-domain model needs at least one domain")
    for name in configs:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"domain names must be identifiers (e.g. 'digits'), got {name!r}")
    items = list(configs.items())
    first_name, first = items[0]
    for name, cfg in items[1:]:
        differ = [f for f in SHARED_FIELDS if getattr(cfg, f) != getattr(first, f)]
        if differ:
            detail = ", ".join(f"{f}: {getattr(first, f)!r} vs {getattr(cfg, f)!r}" for f in differ)
            raise ValueError(
                f"domains {first_name!r} and {name!r} cannot share a trunk; they differ in {detail}"
            )
    kinds = {cfg.trunk_cross_kind for cfg in configs.values()} - {"none"}
    if len(kinds) > 1:
        raise ValueError(
            "the shared trunk cannot both re-read context tokens in every block (full) and read "
            "condition tokens without modulation (plain): "
            + ", ".join(f"{n}: {c.trunk_cross_kind}" for n, c in configs.items())
        )
    kind = kinds.pop() if kinds else "none"
    return {name: cfg.replace(trunk_cross=kind) for name, cfg in configs.items()}


class DomainParts(nn.Module):
    """The modules one domain owns (:func:`~inrflow.model.network.build_modules` without the
    shared ones) and its learned embedding, added to the conditioning of its every step."""

    def __init__(self, config: INRFlowConfig) -> None:
        super().__init__()
        self.config = config
        modules = build_modules(config, shared=False)
        self.part_names = tuple(modules)
        for name, module in modules.items():
            setattr(self, name, module)
        self.embedding = nn.Parameter(torch.empty(config.hidden))


class _DomainTime:
    """The shared time embedding plus one domain's embedding: that domain's ``c`` before its
    labels (the root owns both parts; this only calls them)."""

    def __init__(self, t_embed: nn.Module, embedding: torch.Tensor) -> None:
        self.t_embed, self.embedding = t_embed, embedding

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        c = self.t_embed(t)
        return c + self.embedding.to(c.dtype)


class _DomainView(FlowComputation):
    """One domain of a :class:`MultiDomainINRFlow` seen as an INRFlow: its own parts, the shared
    trunk and decoder, the time embedding with its domain embedding. Owns no parameters."""

    def __init__(self, root: MultiDomainINRFlow, name: str) -> None:
        parts = root.domains[name]
        self._root = root
        self.config = parts.config
        for attr in parts.part_names:
            setattr(self, attr, getattr(parts, attr))
        self.t_embed = _DomainTime(root.t_embed, parts.embedding)
        self.blocks = root.blocks
        self.decoder = root.decoder

    @property
    def training(self) -> bool:  # type: ignore[override]
        return self._root.training


class MultiDomainINRFlow(nn.Module):
    """INRFlow over several domains with one trunk (see the module docstring for what is shared).

    ``model(..., domain="digits")`` is the velocity of that domain's model; a step's batch comes
    from one domain, so the other domains' parts take no part in it and get no gradient.

    Args:
        configs: domain name -> that domain's :class:`INRFlowConfig` (as a single-domain model
            of the domain would have). They must agree on :data:`SHARED_FIELDS`.
    """

    def __init__(self, configs: Mapping[str, INRFlowConfig]) -> None:
        super().__init__()
        self.configs = shared_trunk_configs(configs)
        # the domains whose own trunk has no cross-attention skip the shared one
        self._skips_cross = {n: c.trunk_cross_kind == "none" for n, c in configs.items()}
        first = next(iter(self.configs.values()))
        shared = build_modules(first)
        self.t_embed = shared["t_embed"]
        self.blocks = shared["blocks"]
        self.decoder = shared["decoder"]
        self.domains = nn.ModuleDict({n: DomainParts(c) for n, c in self.configs.items()})
        if not self.t_embed.mlp[0].weight.is_meta:
            self.init_weights()

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(self.configs)

    def init_weights(self) -> None:
        """As :meth:`INRFlow.init_weights`, for the shared modules and every domain; the
        domain embeddings N(0, 0.02) as the label tables."""
        init_generic(self)
        init_time_and_trunk(self.t_embed, self.blocks)
        for parts in self.domains.values():
            init_domain_parts(parts)
            nn.init.normal_(parts.embedding, std=0.02)

    def domain(self, name: str) -> FlowComputation:
        """Domain ``name`` as an INRFlow (``encode``/``decode``/``forward``), sharing weights.

        Under FSDP2 call the model itself (``model(..., domain=name)``): only the root's
        forward gathers the root's parameters.
        """
        if name not in self.configs:
            raise KeyError(f"unknown domain {name!r}; this model has {list(self.configs)}")
        return _DomainView(self, name)

    def trained_parameters(self, name: str) -> frozenset[str]:
        """Names of the parameters that a step of domain ``name`` trains: the shared ones and
        its own, less the trunk's cross-attention when the domain has no memory tokens for it.
        A co-training run gives each domain an optimizer over exactly these."""
        if name not in self.configs:
            raise KeyError(f"unknown domain {name!r}; this model has {list(self.configs)}")
        own = f"domains.{name}."
        skipped = (".cross.", ".cross_mlp.") if self._skips_cross[name] else ()
        return frozenset(
            n
            for n, _ in self.named_parameters()
            if (n.startswith(own) or not n.startswith("domains."))
            and not (n.startswith("blocks.") and any(s in n for s in skipped))
        )

    def forward(self, *args, domain: str, **kwargs) -> torch.Tensor:
        """:meth:`INRFlow.forward` of domain ``domain`` (same arguments)."""
        return self.domain(domain).forward(*args, **kwargs)

    def single(self, name: str) -> INRFlow:
        """A standalone :class:`INRFlow` of domain ``name`` holding a copy of its weights."""
        model = INRFlow(self.configs[name]).to(next(self.parameters()).device)
        model.load_state_dict(domain_state_dict(self.state_dict(), name))
        return model


def domain_state_dict(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """A multi-domain state dict -> the state dict of a single-domain INRFlow of domain ``name``.

    Shared entries keep their names, ``domains.<name>.*`` lose the prefix, other domains' are
    dropped, and the domain embedding is added to the time embedding's output bias: ``c`` is
    unchanged, so the single-domain model computes what the domain of the multi-domain one did.
    Works on plain tensors (e.g. the EMA weights of a checkpoint) without building the model.
    """
    prefix = f"domains.{name}."
    if not any(k.startswith(prefix) for k in state):
        names = sorted({k.split(".")[1] for k in state if k.startswith("domains.")})
        raise KeyError(f"no domain {name!r} in this state dict; it has {names}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("domains."):
            if key.startswith(prefix):
                out[key[len(prefix) :]] = value
        else:
            out[key] = value
    embedding = out.pop("embedding")
    out[TIME_BIAS] = out[TIME_BIAS] + embedding.to(out[TIME_BIAS].dtype)
    return out
