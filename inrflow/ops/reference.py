"""Pure-PyTorch reference implementations of the inrflow ops.

These are the ground truth of every test and the fallback when the extension is not built. They
are written the obvious way, run on any device and are differentiable where each op's contract
(its docstring in :mod:`inrflow.ops`) says, but they do not validate their inputs: call them
through :mod:`inrflow.ops`, which does.

Floating-point conventions that kernels must reproduce to agree bit for bit:

* half inputs (fp16/bf16) are upcast to fp32 for all arithmetic; fp64 stays fp64.
* squared distances are ``acc = (p_0 - c_0)**2; acc = acc + (p_j - c_j)**2`` for j = 1..d-1 in
  that order, each step rounded (no fused multiply-add). Every centre goes through exactly the
  same operations, so identical centres give identical distances and ties resolve to the lowest
  index regardless of how the centres are chunked. (A kernel that contracts to FMA can differ
  from this only where two distances are within rounding of each other.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "fourier_embed",
    "fourier_frequencies",
    "grid_assign",
    "grid_centers",
    "group_layout",
    "grouped_cross_attention",
    "nearest_assign",
]

# Upper bound on the elements of one temporary block (points x centres, or tokens x heads x dim).
DEFAULT_CHUNK_ELEMS = 1 << 22


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32, fp64 for fp64: the accumulation type of every op."""
    return torch.promote_types(dtype, torch.float32)


# ------------------------------------------------------------------------------------------------
# Fourier features


def fourier_frequencies(
    num: int,
    max_log2: float,
    scale: float = math.pi,
    log_sampling: bool = True,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``scale * 2**linspace(0, max_log2, num)`` (log) or ``scale * linspace(1, 2**max_log2, num)``
    (linear) as float32 ``[num]``; computed in fp64 so the rounding is that of one cast."""
    if log_sampling:
        f = scale * 2.0 ** torch.linspace(0.0, max_log2, num, dtype=torch.float64, device=device)
    else:
        f = scale * torch.linspace(1.0, 2.0**max_log2, num, dtype=torch.float64, device=device)
    return f.to(torch.float32)


def fourier_embed(
    x: torch.Tensor, freqs: torch.Tensor, include_input: bool = False
) -> torch.Tensor:
    """``[x (if include_input) | sin(x_c * f_k) at c*F+k | cos(x_c * f_k) at c*F+k]``.

    ``x`` ``[..., C]``, ``freqs`` ``[F]``; output ``[..., C*2F (+C)]`` in x's dtype. The product and
    the sin/cos are evaluated in fp32 (fp64 for fp64 input) and rounded once to x's dtype.
    """
    compute = _compute_dtype(x.dtype)
    angles = x.to(compute)[..., :, None] * freqs.to(compute)  # [..., C, F]
    parts = [x] if include_input else []
    parts.append(torch.sin(angles).flatten(-2).to(x.dtype))
    parts.append(torch.cos(angles).flatten(-2).to(x.dtype))
    return torch.cat(parts, dim=-1)


# ------------------------------------------------------------------------------------------------
# Nearest pseudo-coordinate assignment


def _squared_distances(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``[..., P, d]`` x ``[..., K, d]`` -> ``[..., P, K]``, summed over d in a fixed order."""
    acc = None
    for j in range(p.shape[-1]):
        diff = p[..., :, None, j] - c[..., None, :, j]
        sq = diff * diff
        acc = sq if acc is None else acc + sq
    assert acc is not None  # d >= 1
    return acc


def nearest_assign(
    points: torch.Tensor,
    centers: torch.Tensor,
    *,
    max_chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> torch.Tensor:
    """Index of the nearest centre (squared Euclidean, ties to the lowest index).

    ``points`` ``[N, d]`` or ``[B, N, d]``; ``centers`` ``[K, d]`` or ``[B, K, d]`` (a 2-D argument
    is shared by every sample of a 3-D one). Returns int64 ``[N]``, or ``[B, N]`` when either
    argument is batched. Works on blocks of at most ``max_chunk_elems`` point-centre pairs and
    keeps a running minimum over centre blocks (strict ``<``, so earlier, lower indices win
    ties): memory is O(N + K + max_chunk_elems), never O(N*K).
    """
    batched = points.dim() == 3 or centers.dim() == 3
    pts = points if points.dim() == 3 else points.unsqueeze(0)
    ctr = centers if centers.dim() == 3 else centers.unsqueeze(0)
    batch = max(pts.shape[0], ctr.shape[0])
    pts = pts.expand(batch, -1, -1)
    ctr = ctr.expand(batch, -1, -1)
    n, k = pts.shape[1], ctr.shape[1]
    compute = _compute_dtype(points.dtype)
    out = torch.empty(batch, n, dtype=torch.int64, device=points.device)

    kc = max(1, min(k, max_chunk_elems))
    pc = max(1, min(n, max_chunk_elems // kc))
    bc = max(1, min(batch, max_chunk_elems // (kc * pc)))
    for b0 in range(0, batch, bc):
        for n0 in range(0, n, pc):
            p = pts[b0 : b0 + bc, n0 : n0 + pc].to(compute)
            best_d: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for k0 in range(0, k, kc):
                dist = _squared_distances(p, ctr[b0 : b0 + bc, k0 : k0 + kc].to(compute))
                idx = dist.argmin(dim=-1)  # first minimum within the block
                val = dist.gather(-1, idx[..., None]).squeeze(-1)
                idx = idx + k0
                if best_d is None or best_i is None:
                    best_d, best_i = val, idx
                else:
                    better = val < best_d
                    best_d = torch.where(better, val, best_d)
                    best_i = torch.where(better, idx, best_i)
            if best_i is not None:
                out[b0 : b0 + bc, n0 : n0 + pc] = best_i
    return out if batched else out[0]


def _axis_centers(
    n: int, low: float, high: float, dtype: torch.dtype, device: torch.device | str | None
) -> torch.Tensor:
    """Cell centres ``low + (i + 0.5) * (high - low) / n`` of one axis, in fp64 then cast."""
    step = (high - low) / n
    i = torch.arange(n, dtype=torch.float64, device=device)
    return (low + (i + 0.5) * step).to(dtype)


def grid_centers(
    grid_shape: Sequence[int],
    low: Sequence[float],
    high: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cell centres of a regular grid over the box ``[low, high]``, ``[prod(grid_shape), d]``.

    Axis j has ``grid_shape[j]`` cells of width ``(high[j] - low[j]) / grid_shape[j]``; the centre
    of cell i is ``low[j] + (i + 0.5) * width`` (evaluated in fp64, rounded once to ``dtype``).
    Centres are listed in row-major (C) order of the cell index ``(i_0, ..., i_{d-1})``: the flat
    index is ``((i_0 * n_1) + i_1) * n_2 + ...``.
    """
    axes = [
        _axis_centers(n, lo, hi, dtype, device)
        for n, lo, hi in zip(grid_shape, low, high, strict=True)
    ]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(axes))


def grid_assign(
    points: torch.Tensor,
    grid_shape: Sequence[int],
    low: Sequence[float],
    high: Sequence[float],
) -> torch.Tensor:
    """``nearest_assign(points, grid_centers(grid_shape, low, high, dtype=points.dtype))`` in O(1)
    per point.

    For each axis the cell ``floor((p - low) / width)`` (clamped into the grid) is computed, and
    the 3**d cells around it are compared with exactly the distances ``nearest_assign`` computes,
    the lowest flat index winning ties. So points outside the box go to the nearest boundary cell
    (clamping) and a point exactly between two centres goes to the lower index. The result equals
    the brute force whenever the brute-force minimum lies in that 3**d neighbourhood: always,
    except far outside the box (more than ~1000 cells away), where fp32 rounding of large
    distances makes far-apart centres tie in the brute force itself.
    """
    compute = _compute_dtype(points.dtype)
    p = points.to(compute)
    d = len(grid_shape)
    axes = [
        _axis_centers(n, lo, hi, points.dtype, points.device).to(compute)
        for n, lo, hi in zip(grid_shape, low, high, strict=True)
    ]
    base = []
    for j, (n, lo, hi) in enumerate(zip(grid_shape, low, high, strict=True)):
        t = (p[..., j] - lo) / ((hi - lo) / n)
        base.append(torch.floor(t.clamp(-1.0, float(n))).to(torch.int64))

    best_d: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for shift in itertools.product((-1, 0, 1), repeat=d):
        dist: torch.Tensor | None = None
        flat: torch.Tensor | None = None
        for j in range(d):
            i = (base[j] + shift[j]).clamp(0, grid_shape[j] - 1)
            diff = p[..., j] - axes[j][i]
            sq = diff * diff
            dist = sq if dist is None else dist + sq
            flat = i if flat is None else flat * grid_shape[j] + i
        assert dist is not None and flat is not None
        if best_d is None or best_i is None:
            best_d, best_i = dist, flat
        else:
            better = (dist < best_d) | ((dist == best_d) & (flat < best_i))
            best_d = torch.where(better, dist, best_d)
            best_i = torch.where(better, flat, best_i)
    assert best_i is not None
    return best_i


def group_layout(assign: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token order and CSR offsets of the groups.

    ``assign`` ``[B, N]`` (or ``[N]``, treated as B = 1) with values in ``[0, num_groups)``.
    Returns ``perm`` int64 of assign's shape, a stable argsort of each row (indices within the
    sample), and ``offsets`` int32 ``[B*num_groups + 1]``: group ``g = b*num_groups + k`` holds the
    flattened permuted tokens ``offsets[g]:offsets[g+1]`` (sample-major, sample b at ``b*N``).
    """
    rows = (assign if assign.dim() == 2 else assign.reshape(1, -1)).to(torch.int64)
    perm = torch.argsort(rows, dim=-1, stable=True)
    batch = rows.shape[0]
    base = torch.arange(batch, device=assign.device, dtype=torch.int64)[:, None] * num_groups
    flat = (rows + base).reshape(-1)
    # scatter_add rather than bincount: same counts, but a static output shape (meta, compile)
    counts = flat.new_zeros(batch * num_groups).scatter_add_(0, flat, torch.ones_like(flat))
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return perm.reshape(assign.shape), offsets.to(torch.int32)


# ------------------------------------------------------------------------------------------------
# Grouped cross-attention


def _chunk_scores(
    q: torch.Tensor, k: torch.Tensor, seg: torch.Tensor, scale: float
) -> torch.Tensor:
    """Scores ``[c, Hkv, r]`` of tokens ``k`` ``[c, Hkv, D]`` against their group's query."""
    qs = q.index_select(0, seg)  # [c, Hkv, r, D]: the one big temporary, bounded by the chunk
    return (qs * k.to(q.dtype)[:, :, None, :]).sum(-1) * scale


def grouped_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    scale: float | None = None,
    *,
    max_chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> torch.Tensor:
    """Each group's single query attends to the group's keys: ``softmax(q k^T * scale) v``.

    ``q`` ``[G, Hq, D]``, ``k`` ``[T, Hkv, D]``, ``v`` ``[T, Hkv, Dv]``, ``offsets`` ``[G+1]`` CSR.
    Query head h uses kv head ``h // (Hq // Hkv)`` (GQA/MQA). Empty groups give zeros (and get
    zero gradients). Scores, softmax and the weighted sum are in fp32 (fp64 for fp64). The
    softmax uses a detached per-group maximum and ``index_add`` sums, so memory is O(T*H) plus
    blocks of ``max_chunk_elems``; the gathered per-token queries of a block are recomputed in
    backward (activation checkpointing) instead of being kept.
    """
    groups, hq, dim = q.shape
    tokens, hkv, _ = k.shape
    dv = v.shape[-1]
    rep = hq // hkv
    scale = dim**-0.5 if scale is None else float(scale)
    compute = _compute_dtype(q.dtype)
    dev = q.device

    counts = (offsets[1:] - offsets[:-1]).to(torch.int64)
    seg = torch.repeat_interleave(
        torch.arange(groups, device=dev), counts, output_size=tokens
    )  # group of every token
    qf = q.to(compute).reshape(groups, hkv, rep, dim)
    chunk = max(1, max_chunk_elems // (hq * max(dim, dv)))
    keep_graph = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)

    blocks = []
    for t0 in range(0, tokens, chunk):
        args = (qf, k[t0 : t0 + chunk], seg[t0 : t0 + chunk], scale)
        if keep_graph:
            blocks.append(checkpoint(_chunk_scores, *args, use_reentrant=False))
        else:
            blocks.append(_chunk_scores(*args))
    scores = torch.cat(blocks) if blocks else qf.new_zeros(0, hkv, rep)  # [T, Hkv, r]

    seg_b = seg[:, None, None].expand(tokens, hkv, rep)
    gmax = qf.new_full((groups, hkv, rep), -math.inf)
    gmax = gmax.scatter_reduce(0, seg_b, scores.detach(), "amax", include_self=True)
    e = torch.exp(scores - gmax.index_select(0, seg))
    denom = qf.new_zeros(groups, hkv, rep).index_add(0, seg, e)
    probs = e / denom.index_select(0, seg)  # [T, Hkv, r]

    out = qf.new_zeros(groups, hkv, rep, dv)
    for t0 in range(0, tokens, chunk):
        vv = v[t0 : t0 + chunk].to(compute)[:, :, None, :]  # [c, Hkv, 1, Dv]
        weighted = probs[t0 : t0 + chunk, ..., None] * vv  # [c, Hkv, r, Dv], not kept
        # scatter_add with a stride-0 index saves only that view for backward; index_add would
        # keep `weighted` alive, i.e. O(T*Hq*Dv) memory.
        index = seg[t0 : t0 + chunk, None, None, None].expand_as(weighted)
        out.scatter_add_(0, index, weighted)
    return out.reshape(groups, hq, dv).to(q.dtype)
