"""Activation checkpointing, whole-model ``torch.compile`` and FSDP2 sharding, in that order.

FSDP2 units: the encoder (each domain's, for a multi-domain model), every trunk block, then the
root. The root keeps the embeddings, the decoder blocks and the final layer: ``INRFlow.encode``
precomputes the decoder's keys/values and adaLN modulations by calling those modules' submodules
directly, which is only valid while their parameters are gathered, i.e. inside the root unit.

A multi-domain model trains one domain per step (the same on every rank): the other domains'
encoder units are neither gathered nor reduced, and the root and trunk units reduce only the
gradients that exist, so the parameters a step does not use get no gradient and no update.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from inrflow.model import INRFlow, MultiDomainINRFlow

__all__ = ["apply_activation_checkpointing", "apply_compile", "apply_fsdp", "parallelize"]


def apply_activation_checkpointing(model: INRFlow) -> None:
    """Recompute each trunk block in backward instead of storing its activations.

    Args:
        model: the model; its ``blocks`` are wrapped in place (state-dict keys are unchanged by
            :func:`torch.distributed.checkpoint.state_dict.get_model_state_dict`).
    """
    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: INRFlow, backend: str = "inductor") -> None:
    """``torch.compile`` the whole model, one graph per piece between FSDP2 unit boundaries.

    The encoder and every trunk block are replaced by their compiled wrappers (before sharding,
    so FSDP2's hooks stay outside the compiled code; activation checkpointing, applied first, is
    traced inside). The root's own work, the conditioning, the latent positions, the decoder's
    keys/values and modulations, and the decoder with its query embeddings and final layer (the
    largest part at 16,384 queries), runs as compiled methods
    (:attr:`~inrflow.model.INRFlow.COMPILED_METHODS`). The inrflow ops are traced through their
    fake kernels. The ``_orig_mod.`` this adds to parameter names is removed again by
    ``get_model_state_dict`` and :func:`~inrflow.train.optim.clean_name`.

    Args:
        model: the model, compiled in place.
        backend: the ``torch.compile`` backend (``"aot_eager"`` checks the graphs without
            generating code: the GPU check's dry run).
    """
    opts = {"dynamic": False, "backend": backend}
    model.encoder = torch.compile(model.encoder, **opts)
    for i, block in enumerate(model.blocks):
        model.blocks[i] = torch.compile(block, **opts)
    for name in model.COMPILED_METHODS:  # instance attributes shadow the (eager) methods
        setattr(model, name, torch.compile(getattr(model, name), **opts))


def _encoders(model: INRFlow | MultiDomainINRFlow) -> list[nn.Module]:
    if isinstance(model, MultiDomainINRFlow):
        return [parts.encoder for parts in model.domains.values()]
    return [model.encoder]


def apply_fsdp(
    model: INRFlow | MultiDomainINRFlow, mesh: DeviceMesh, param_dtype: torch.dtype | None
) -> None:
    """Shard the encoder(s), each trunk block, then the root, over ``mesh``.

    Args:
        model: the model (parameters on any device; they move to the mesh's device).
        mesh: 1-D data-parallel mesh.
        param_dtype: compute/all-gather dtype (``torch.bfloat16`` for mixed precision, or None);
            gradients are reduced and master weights kept in float32.
    """

    def policy(cast_inputs: bool) -> MixedPrecisionPolicy:
        return MixedPrecisionPolicy(
            param_dtype=param_dtype,
            reduce_dtype=torch.float32 if param_dtype is not None else None,
            cast_forward_inputs=cast_inputs,
        )

    # Coordinates and times must reach the Fourier embeddings in float32 (pi * 112 * x in bf16
    # would be noise), so the root and the encoder, which receive them, keep their inputs as they
    # are; the model casts to the parameter dtype where it projects. Trunk blocks only see
    # latents and conditioning, which they take in the compute dtype.
    for encoder in _encoders(model):
        fully_shard(encoder, mesh=mesh, mp_policy=policy(False))
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        # the last block's parameters would be gathered again right away by backward
        fully_shard(
            block, mesh=mesh, mp_policy=policy(True), reshard_after_forward=i < len(blocks) - 1
        )
    fully_shard(model, mesh=mesh, mp_policy=policy(False))


def parallelize(
    model: INRFlow | MultiDomainINRFlow,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    activation_checkpointing: bool = False,
    compile: bool = False,
    compile_backend: str = "inductor",
) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 to ``model`` (in place) and return it.

    A :class:`~inrflow.model.MultiDomainINRFlow` is not compiled (``compile`` raises): its
    forward runs a different domain's modules from step to step."""
    if compile and isinstance(model, MultiDomainINRFlow):
        raise ValueError("--compile is not supported for multi-domain models")
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model, compile_backend)
    apply_fsdp(model, mesh, param_dtype)
    return model
