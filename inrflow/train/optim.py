"""AdamW and the exponential moving average of the weights.

The EMA lives outside the optimizer and outside autograd (DiT's ``update_ema``), and with FSDP2 it
is kept as sharded DTensors shaped like the parameters: each rank averages only its own shard, so
an update costs one fused ``lerp`` over local memory and no communication.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["EMA", "LR_SCHEDULES", "build_optimizer", "clean_name", "init_state", "lr_at"]


def build_optimizer(
    model: nn.Module | Iterable[torch.Tensor],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> torch.optim.AdamW:
    """AdamW over every trainable parameter of ``model`` (after sharding, so it holds the
    shards), or over the given parameters.

    The fused implementation (one kernel over all tensors, CPU and CUDA, DTensor shards included)
    where every parameter allows it, as torchtitan does; else the multi-tensor ``foreach`` one.
    On a 2-core CPU the fused step of the ``S`` preset took 0.03-0.04 s, ``foreach`` 0.09-0.17 s.
    """
    found = model.parameters() if isinstance(model, nn.Module) else model
    params = [p for p in found if p.requires_grad]
    impl = {"fused": True} if _fused_ok(params) else {"foreach": True}
    return torch.optim.AdamW(
        params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **impl
    )


def init_state(optimizer: torch.optim.Adam) -> None:
    """Give every parameter of an Adam/AdamW the state its first step would create (step 0,
    zero moments), as ``Adam._init_group`` does lazily.

    Why: :func:`torch.distributed.checkpoint.state_dict.get_optimizer_state_dict` fills an
    optimizer that has no state yet by stepping it with zero gradients and lr 0. That step
    counts, so the real first step's bias correction changes: a run that saved a checkpoint
    before a parameter's first step (a co-training domain that has not had its turn, a step-0
    save) would train differently from one that did not. With the state present from the start,
    a checkpoint holds every parameter and saving changes nothing."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            fused = bool(group.get("fused"))
            wide = torch.get_default_dtype() == torch.float64 and not fused
            device = p.device if fused or group.get("capturable") else torch.device("cpu")
            state["step"] = torch.zeros(
                (), dtype=torch.float64 if wide else torch.float32, device=device
            )
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _fused_ok(params: list[torch.Tensor]) -> bool:
    try:  # a private helper of torch.optim; fused AdamW has had CPU and CUDA kernels since 2.4
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:
        devices = {"cpu", "cuda"}
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    schedule: str = "constant",
    total_steps: int = 0,
) -> float:
    """The learning rate of optimizer step ``step`` (0-based).

    A linear warm-up over ``warmup_steps`` (the paper: none), then ``schedule``: ``constant``
    (the paper's), or a ``cosine`` / ``linear`` decay from ``base_lr`` towards 0 at
    ``total_steps`` (the run's last step still has a small positive rate), the common choice
    for runs whose length is known in advance (for the protein demo a constant rate did better:
    docs/DOMAINS.md). A pure function of the step, so a resumed run continues the same curve.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if total_steps < 1:
        raise ValueError(f"a {schedule} lr schedule needs total_steps >= 1, got {total_steps}")
    decay = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay, 1.0)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (1.0 - progress)


def clean_name(name: str) -> str:
    """Parameter name without wrapper prefixes (activation checkpointing, torch.compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class EMA:
    """``ema <- decay * ema + (1 - decay) * param`` after every optimizer step.

    ``state_dict()`` maps clean parameter names to (sharded) tensors, so
    :mod:`torch.distributed.checkpoint` saves and reshards it like the model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {clean_name(n): p for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self._pairs = [(_local(self.shadow[n]), _local(p)) for n, p in self.params.items()]
        self._all_pairs = self._pairs
        self._subsets: dict[frozenset[str], list] = {}

    def restrict(self, names: frozenset[str] | None) -> None:
        """Let the next updates move only the parameters ``names`` (None: all of them again).

        A co-training step updates the shared parameters and its own domain's; the other
        domains' stand still, and their EMA should too, so that each domain's EMA averages
        over its own steps as in a single-domain run."""
        if names is None:
            self._pairs = self._all_pairs
            return
        if names not in self._subsets:
            unknown = names - set(self.shadow)
            if unknown:
                raise KeyError(f"EMA has no parameters {sorted(unknown)[:5]}")
            self._subsets[names] = [
                (_local(self.shadow[n]), _local(self.params[n])) for n in self.params if n in names
            ]
        self._pairs = self._subsets[names]

    @torch.no_grad()
    def update(self, keep: torch.Tensor | None = None) -> None:
        """One EMA step; ``keep``, a device scalar of 1 or 0, scales the step's
        weight, so that a skipped optimizer step leaves the EMA unchanged without the host
        reading a flag."""
        if not self._pairs:
            return
        ema, cur = zip(*self._pairs, strict=True)
        if keep is None:
            torch._foreach_lerp_(list(ema), list(cur), 1.0 - self.decay)
            return
        weight = keep.reshape(()) * (1.0 - self.decay)
        weights = {t.dtype: weight.to(t.dtype) for t in ema}
        torch._foreach_lerp_(list(ema), list(cur), [weights[t.dtype] for t in ema])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for n, t in self.shadow.items():
            if state[n] is not t:
                t.copy_(state[n])

    def full_state(self, keep: bool = True) -> dict[str, torch.Tensor] | None:
        """Unsharded EMA weights (a collective: every rank must call it); returned on ranks
        with ``keep``, one tensor gathered at a time."""
        out: dict[str, torch.Tensor] | None = {} if keep else None
        for n, t in self.shadow.items():
            full = t.full_tensor() if isinstance(t, DTensor) else t
            if out is not None:
                out[n] = full.detach().cpu()
        return out
