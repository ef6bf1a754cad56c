"""Grouped (local) cross-attention: public wrapper.

Extension schema this wrapper calls when ``inrflow._C`` has a kernel (contract for the kernel):
``grouped_cross_attention(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale) -> Tensor``
(``scale`` is always resolved here). Its autograd and fake registrations belong beside it when
it lands.
"""

from __future__ import annotations

import math

import torch

from inrflow.ops import _checks, reference
from inrflow.ops._backend import use_extension
from inrflow.profiling import nvtx_range

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
