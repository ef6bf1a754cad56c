"""Nearest pseudo-coordinate assignment and the grouped token layout: public wrappers.

Extension schemas these wrappers call when ``inrflow._C`` has a kernel (contract for the kernels):
``nearest_assign(Tensor points, Tensor centers) -> Tensor``,
``grid_assign(Tensor points, int[] grid_shape, float[] low, float[] high) -> Tensor``,
``group_layout(Tensor assign, int num_groups) -> (Tensor, Tensor)``.
The wrappers validate first, so kernels receive well-formed arguments. The kernels take
1 <= d <= 8 coordinates (``MAX_KERNEL_DIM``); higher d runs on the reference. Outputs are int64
index tensors (plus int32 offsets) with no autograd; fake kernels registered below let
``torch.compile`` trace the ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from inrflow.nvtx import nvtx_range
from inrflow.ops import _checks, reference
from inrflow.ops._backend import get_backend, use_extension
from inrflow.ops._registry import register_op

__all__ = ["grid_assign", "grid_centers", "group_layout", "nearest_assign"]

_INT32_MAX = 2**31 - 1
#: Largest coordinate dimension the compiled kernels take (csrc/include/inrflow/assign.h).
MAX_KERNEL_DIM = 8


def _kernel_dim_ok(d: int) -> bool:
    """d within the kernels' range, or the extension forced (which then raises clearly)."""
    return d <= MAX_KERNEL_DIM or get_backend() == "extension"


def _check_finite(op: str, **tensors: torch.Tensor) -> None:
    """One sync for all tensors: NaN/inf coordinates make 'nearest' meaningless."""
    flags = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).tolist()
    for name, ok in zip(tensors, flags, strict=True):
        if not ok:
            raise ValueError(f"{op}: {name} contains NaN or infinite coordinates")


@nvtx_range("inrflow.ops.nearest_assign")
def nearest_assign(
    points: torch.Tensor, centers: torch.Tensor, *, validate: bool = True
) -> torch.Tensor:
    """Index of the nearest centre of every point (squared Euclidean, ties to the lowest index).

    ``points`` ``[N, d]`` or ``[B, N, d]``, ``centers`` ``[K, d]`` or ``[B, K, d]`` (a 2-D argument
    is shared across the batch), same float dtype and device, K >= 1. Returns int64 ``[N]`` or
    ``[B, N]``. Never materialises the N x K distance matrix. ``validate=False`` skips the check
    for NaN/inf coordinates (one device sync); such inputs then give unspecified indices.
    """
    op = "inrflow.ops.nearest_assign"
    points = _checks.tensor(op, "points", points)
    centers = _checks.tensor(op, "centers", centers)
    _checks.dtype_in(op, "points", points, _checks.FLOAT_DTYPES)
    _checks.same_dtype(op, "points", points, centers=centers)
    _checks.rank_in(op, "points", points, (2, 3), "[N, d] or [B, N, d]")
    _checks.rank_in(op, "centers", centers, (2, 3), "[K, d] or [B, K, d]")
    if points.shape[-1] < 1 or points.shape[-1] != centers.shape[-1]:
        raise ValueError(
            f"{op}: points and centers need the same coordinate dimension d >= 1; got "
            f"points {tuple(points.shape)} and centers {tuple(centers.shape)}"
        )
    if centers.shape[-2] == 0:
        raise ValueError(f"{op}: centers is empty (K = 0); there is nothing to assign to")
    if points.dim() == 3 and centers.dim() == 3 and points.shape[0] != centers.shape[0]:
        raise ValueError(
            f"{op}: batch sizes differ: points {tuple(points.shape)}, centers "
            f"{tuple(centers.shape)}"
        )
    _checks.same_device(op, "points", points, centers=centers)
    if _checks.values_checkable(validate, points, centers):
        _check_finite(op, points=points, centers=centers)
    if _kernel_dim_ok(points.shape[-1]) and use_extension("nearest_assign", points.device):
        return torch.ops.inrflow.nearest_assign.default(points, centers)
    return reference.nearest_assign(points, centers)


def _grid_spec(
    op: str, grid_shape: object, low: object, high: object, dims: int | None
) -> tuple[list[int], list[float], list[float]]:
    """Validate a grid description; scalars ``low``/``high`` apply to every axis."""
    if isinstance(grid_shape, (str, bytes)) or not isinstance(grid_shape, Sequence):
        raise TypeError(f"{op}: grid_shape must be a sequence of ints, got {grid_shape!r}")
    shape = [_checks.integer(op, "grid_shape entries", n, minimum=1) for n in grid_shape]
    if not shape:
        raise ValueError(f"{op}: grid_shape must have at least one axis")
    if dims is not None and len(shape) != dims:
        raise ValueError(
            f"{op}: grid_shape has {len(shape)} axes but the points have d = {dims} coordinates"
        )
    bounds = []
    for name, value in (("low", low), ("high", high)):
        seq = [value] * len(shape) if isinstance(value, (int, float)) else value
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise TypeError(f"{op}: {name} must be a real number or a sequence of them")
        if len(seq) != len(shape):
            raise ValueError(f"{op}: {name} has {len(seq)} entries, grid_shape {len(shape)}")
        for item in seq:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise TypeError(f"{op}: {name} entries must be real numbers, got {item!r}")
            if not math.isfinite(item):
                raise ValueError(f"{op}: {name} entries must be finite, got {item}")
        bounds.append([float(item) for item in seq])
    lo, hi = bounds
    if any(b <= a for a, b in zip(lo, hi, strict=True)):
        raise ValueError(f"{op}: need low < high on every axis; got low={lo}, high={hi}")
    return shape, lo, hi


def grid_centers(
    grid_shape: Sequence[int],
    low: Sequence[float] | float,
    high: Sequence[float] | float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cell centres of a regular grid over ``[low, high]``: ``[prod(grid_shape), d]``.

    The centre of cell i on axis j is ``low[j] + (i + 0.5) * (high[j] - low[j]) / grid_shape[j]``;
    rows are in row-major order of ``(i_0, ..., i_{d-1})``, the order ``grid_assign`` indexes.
    """
    op = "inrflow.ops.grid_centers"
    shape, lo, hi = _grid_spec(op, grid_shape, low, high, None)
    if dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be a float dtype, got {dtype}")
    return reference.grid_centers(shape, lo, hi, dtype=dtype, device=device)


@nvtx_range("inrflow.ops.grid_assign")
def grid_assign(
    points: torch.Tensor,
    grid_shape: Sequence[int],
    low: Sequence[float] | float,
    high: Sequence[float] | float,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Nearest cell centre of a regular grid, O(1) per point.

    Equals ``nearest_assign(points, grid_centers(grid_shape, low, high, dtype=points.dtype))``:
    points outside the box go to the nearest boundary cell, a point exactly between two centres
    to the lower index (see :func:`inrflow.ops.reference.grid_assign` for the fp32 fine print).
    ``points`` ``[N, d]`` or ``[B, N, d]``; returns int64 ``[N]`` / ``[B, N]``.
    """
    op = "inrflow.ops.grid_assign"
    points = _checks.tensor(op, "points", points)
    _checks.dtype_in(op, "points", points, _checks.FLOAT_DTYPES)
    _checks.rank_in(op, "points", points, (2, 3), "[N, d] or [B, N, d]")
    shape, lo, hi = _grid_spec(op, grid_shape, low, high, points.shape[-1])
    if _checks.values_checkable(validate, points):
        _check_finite(op, points=points)
    if _kernel_dim_ok(len(shape)) and use_extension("grid_assign", points.device):
        return torch.ops.inrflow.grid_assign.default(points, shape, lo, hi)
    return reference.grid_assign(points, shape, lo, hi)


@nvtx_range("inrflow.ops.group_layout")
def group_layout(
    assign: torch.Tensor, num_groups: int, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable per-sample token order and CSR group offsets for ``grouped_cross_attention``.

    ``assign`` int32/int64 ``[B, N]`` (or ``[N]``) with values in ``[0, num_groups)``. Returns
    ``perm`` int64 of assign's shape (a stable argsort of each row) and ``offsets`` int32
    ``[B*num_groups + 1]`` into the sample-major flattened permuted tokens (group
    ``b*num_groups + k``; empty groups allowed). ``validate=False`` skips the range check of
    ``assign`` (one device sync); out-of-range values then give unspecified results.
    """
    op = "inrflow.ops.group_layout"
    assign = _checks.tensor(op, "assign", assign)
    _checks.dtype_in(op, "assign", assign, _checks.INDEX_DTYPES)
    _checks.rank_in(op, "assign", assign, (1, 2), "[N] or [B, N]")
    num_groups = _checks.integer(op, "num_groups", num_groups, minimum=1)
    batch = assign.shape[0] if assign.dim() == 2 else 1
    if batch * num_groups + 1 > _INT32_MAX or assign.numel() > _INT32_MAX:
        raise ValueError(
            f"{op}: {batch} x {num_groups} groups / {assign.numel()} tokens overflow the int32 "
            "offsets"
        )
    if assign.numel() > 0 and _checks.values_checkable(validate, assign):
        lo, hi = torch.stack([assign.min(), assign.max()]).tolist()
        if lo < 0 or hi >= num_groups:
            raise ValueError(
                f"{op}: assign has values in [{lo}, {hi}] but must lie in [0, {num_groups})"
            )
    if use_extension("group_layout", assign.device):
        return torch.ops.inrflow.group_layout.default(assign, num_groups)
    return reference.group_layout(assign, num_groups)


# ------------------------------------------------------------------------------------------------
# Fake (meta) kernels of the compiled ops, so that torch.compile / FakeTensor can trace them. The
# outputs are integer tensors: the ops have no autograd formula (not differentiable).


def _fake_nearest_assign(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    torch._check(points.dim() in (2, 3), lambda: "nearest_assign: points must be 2-D or 3-D")
    torch._check(centers.dim() in (2, 3), lambda: "nearest_assign: centers must be 2-D or 3-D")
    torch._check(points.shape[-1] == centers.shape[-1], lambda: "nearest_assign: d mismatch")
    if points.dim() == 3:
        shape = points.shape[:-1]
    elif centers.dim() == 3:
        shape = (centers.shape[0], points.shape[0])
    else:
        shape = points.shape[:-1]
    return points.new_empty(shape, dtype=torch.int64)


def _fake_grid_assign(
    points: torch.Tensor, grid_shape: Sequence[int], low: Sequence[float], high: Sequence[float]
) -> torch.Tensor:
    torch._check(points.dim() in (2, 3), lambda: "grid_assign: points must be 2-D or 3-D")
    return points.new_empty(points.shape[:-1], dtype=torch.int64)


def _fake_group_layout(assign: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(assign.dim() in (1, 2), lambda: "group_layout: assign must be 1-D or 2-D")
    batch = assign.shape[0] if assign.dim() == 2 else 1
    perm = assign.new_empty(assign.shape, dtype=torch.int64)
    offsets = assign.new_empty((batch * num_groups + 1,), dtype=torch.int32)
    return perm, offsets


register_op("nearest_assign", fake=_fake_nearest_assign)
register_op("grid_assign", fake=_fake_grid_assign)
register_op("group_layout", fake=_fake_group_layout)
