"""Grouped (local) cross-attention: public wrapper, autograd, fake and FLOP registrations.

Extension schema this wrapper calls when ``inrflow._C`` has a kernel (contract for the kernel):
``grouped_cross_attention(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale) -> Tensor``
(``scale`` is always resolved here). Beside it the extension defines
``grouped_cross_attention_forward(q, k, v, offsets, scale) -> (out, lse)`` and
``grouped_cross_attention_backward(grad_out, q, k, v, offsets, out, lse, scale) -> (dq, dk, dv)``.
Autograd of the public op runs through the forward op (so the backward reuses the saved
log-sum-exp instead of recomputing the softmax statistics); all three have fake kernels (so
``torch.compile`` traces them) and FLOP formulas for ``FlopCounterMode``. Optional third-party
GPU backends live in :mod:`inrflow.ops.attention_backends`.
"""

from __future__ import annotations

import math

import torch

from inrflow.nvtx import nvtx_range
from inrflow.ops import _checks, reference
from inrflow.ops._backend import use_extension
from inrflow.ops._registry import register_op

__all__ = ["grouped_cross_attention"]

_OP = "inrflow.ops.grouped_cross_attention"


def _check_offsets_values(offsets: torch.Tensor, tokens: int) -> None:
    """offsets[0] == 0, non-decreasing, offsets[-1] == T: one device sync when all is well."""
    first, last = offsets[0], offsets[-1]
    steps_ok = (offsets[1:] >= offsets[:-1]).all()
    first_v, last_v, monotone = torch.stack(
        [first.to(torch.int64), last.to(torch.int64), steps_ok.to(torch.int64)]
    ).tolist()
    if first_v != 0:
        raise ValueError(f"{_OP}: offsets[0] must be 0; got {first_v}")
    if not monotone:
        where = int(torch.nonzero(offsets[1:] < offsets[:-1])[0, 0])
        raise ValueError(
            f"{_OP}: offsets must be non-decreasing; offsets[{where}] = "
            f"{int(offsets[where])} > offsets[{where + 1}] = {int(offsets[where + 1])}"
        )
    if last_v != tokens:
        raise ValueError(
            f"{_OP}: offsets[-1] must equal the number of tokens T = {tokens}; got {last_v}"
        )


@nvtx_range("inrflow.ops.grouped_cross_attention")
def grouped_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    scale: float | None = None,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """One query per group attends to its group's keys (flash-attn varlen with seqlen_q = 1).

    ``q`` ``[G, Hq, D]``, ``k`` ``[T, Hkv, D]``, ``v`` ``[T, Hkv, Dv]`` (same float dtype and
    device), ``offsets`` int32/int64 ``[G+1]`` with ``offsets[0] = 0``, non-decreasing,
    ``offsets[G] = T``. ``Hq % Hkv == 0``; query head h reads kv head ``h // (Hq // Hkv)``.
    ``scale`` defaults to ``D**-0.5``. Returns ``[G, Hq, Dv]``; empty groups give zeros and zero
    gradients. Differentiable in q, k, v; accumulates in fp32. ``validate=False`` skips the
    offsets value checks (one device sync) for hot paths whose offsets come from
    ``group_layout``; invalid offsets then give unspecified results.
    """
    q = _checks.tensor(_OP, "q", q)
    k = _checks.tensor(_OP, "k", k)
    v = _checks.tensor(_OP, "v", v)
    offsets = _checks.tensor(_OP, "offsets", offsets)
    _checks.dtype_in(_OP, "q", q, _checks.FLOAT_DTYPES)
    _checks.same_dtype(_OP, "q", q, k=k, v=v)
    _checks.dtype_in(_OP, "offsets", offsets, _checks.INDEX_DTYPES)
    _checks.rank_in(_OP, "q", q, (3,), "[G, Hq, D]")
    _checks.rank_in(_OP, "k", k, (3,), "[T, Hkv, D]")
    _checks.rank_in(_OP, "v", v, (3,), "[T, Hkv, Dv]")
    _checks.rank_in(_OP, "offsets", offsets, (1,), "1-D [G+1]")
    groups, hq, dim = q.shape
    tokens, hkv, kdim = k.shape
    if v.shape[:2] != k.shape[:2]:
        raise ValueError(f"{_OP}: k {tuple(k.shape)} and v {tuple(v.shape)} must agree on [T, Hkv]")
    if kdim != dim:
        raise ValueError(f"{_OP}: head dim of q ({dim}) and k ({kdim}) differ")
    if dim < 1 or v.shape[2] < 1:
        raise ValueError(f"{_OP}: head dims must be >= 1; got D = {dim}, Dv = {v.shape[2]}")
    if hq < 1 or hkv < 1 or hq % hkv != 0:
        raise ValueError(
            f"{_OP}: query heads Hq = {hq} must be a positive multiple of kv heads Hkv = {hkv}"
        )
    if offsets.shape[0] != groups + 1:
        raise ValueError(
            f"{_OP}: offsets must have G + 1 = {groups + 1} entries for G = {groups} queries; "
            f"got {offsets.shape[0]}"
        )
    _checks.same_device(_OP, "q", q, k=k, v=v, offsets=offsets)
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"{_OP}: scale must be a real number or None, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"{_OP}: scale must be finite, got {scale}")
    if _checks.values_checkable(validate, offsets):
        _check_offsets_values(offsets, tokens)
    if use_extension("grouped_cross_attention", q.device):
        resolved = dim**-0.5 if scale is None else float(scale)
        return torch.ops.inrflow.grouped_cross_attention.default(q, k, v, offsets, resolved)
    return reference.grouped_cross_attention(q, k, v, offsets, scale)


# ------------------------------------------------------------------------------------------------
# Registrations for the compiled ops (only when inrflow._C defines them; see _registry.py).
#
# * autograd: the public op's Autograd kernel calls grouped_cross_attention_forward, whose
#   registered autograd saves (q, k, v, offsets, out, lse) and runs the backward op. lse is not
#   differentiable (the public op never exposes it).
# * fake: shape/dtype propagation for FakeTensor / torch.compile / meta tensors.
# * FLOPs: forward 2 T Hq (D + Dv) (scores and weighted sum, one multiply-add each), backward
#   twice that (dq, dk, dp and dv), torch's convention for SDPA (recomputation not counted).


def _setup_context(ctx, inputs, output) -> None:  # torch.library callback
    q, k, v, offsets, scale = inputs
    out, lse = output
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, offsets, out, lse)


def _backward(ctx, grad_out, _grad_lse):  # torch.library callback
    q, k, v, offsets, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.inrflow.grouped_cross_attention_backward.default(
        grad_out.contiguous(), q, k, v, offsets, out, lse, ctx.scale
    )
    needs = ctx.needs_input_grad
    return (
        dq if needs[0] else None,
        dk if needs[1] else None,
        dv if needs[2] else None,
        None,
        None,
    )


def _no_double_backward(ctx, *grads):  # torch.library callback
    # Without this the backward op would have no autograd formula, and a second derivative
    # through it would silently come out as zero.
    raise RuntimeError(
        "inrflow.ops.grouped_cross_attention: double backward (a gradient of a gradient, e.g. "
        "create_graph=True through the attention) is not implemented by the extension kernels; "
        "run that part under inrflow.ops.use_backend('reference')"
    )


def _no_context(ctx, inputs, output) -> None:  # torch.library callback
    pass


def _public_autograd(q, k, v, offsets, scale):  # Autograd kernel of the public op
    return torch.ops.inrflow.grouped_cross_attention_forward.default(q, k, v, offsets, scale)[0]


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_check(q, k, v, offsets) -> None:
    torch._check(q.dim() == 3 and k.dim() == 3 and v.dim() == 3, lambda: "q, k, v must be 3-D")
    torch._check(offsets.dim() == 1, lambda: "offsets must be 1-D")
    torch._check(offsets.shape[0] == q.shape[0] + 1, lambda: "offsets must have G + 1 entries")
    torch._check(k.shape[2] == q.shape[2], lambda: "q and k head dims differ")
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "Hq must be a multiple of Hkv")


def _fake_public(q, k, v, offsets, scale):
    _fake_check(q, k, v, offsets)
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


def _fake_forward(q, k, v, offsets, scale):
    _fake_check(q, k, v, offsets)
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
    lse = q.new_empty((q.shape[0], q.shape[1]), dtype=_lse_dtype(q.dtype))
    return out, lse


def _fake_backward(grad_out, q, k, v, offsets, out, lse, scale):
    _fake_check(q, k, v, offsets)
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def attention_flops(q_shape, k_shape, v_shape) -> int:
    """Forward FLOPs of one grouped_cross_attention call: ``2 T Hq (D + Dv)``."""
    return 2 * k_shape[0] * q_shape[1] * (q_shape[2] + v_shape[2])


def _flops_forward(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(q_shape, k_shape, v_shape)


def _flops_backward(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * attention_flops(q_shape, k_shape, v_shape)


register_op(
    "grouped_cross_attention",
    fake=_fake_public,
    autograd_kernel=_public_autograd,
    flops=_flops_forward,
    needs=("grouped_cross_attention_forward",),
)
register_op(
    "grouped_cross_attention_forward",
    fake=_fake_forward,
    backward=_backward,
    setup_context=_setup_context,
    flops=_flops_forward,
    needs=("grouped_cross_attention_backward",),
)
register_op(
    "grouped_cross_attention_backward",
    fake=_fake_backward,
    backward=_no_double_backward,
    setup_context=_no_context,
    flops=_flops_backward,
)
