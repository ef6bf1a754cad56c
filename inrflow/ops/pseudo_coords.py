"""Pseudo-coordinate generators for the spatial-aware latents, built on the assignment ops.

* ``grid_coords``: cell centres of a regular grid (pixel-centre convention).
* ``random_centers``: uniform in ``[low, high]^d``.
* ``kmeans_pp`` / ``kmeans_pp_centers``: k-means++ seeding (D^2 sampling) plus optional Lloyd
  steps, whose assignment step is :func:`inrflow.ops.nearest_assign` (the fused kernel when built).
* ``hash_assign``: a spatial hash of voxels to latents for 3D; the voxel of each point is
  :func:`inrflow.ops.grid_assign` on the voxel grid (O(1) per point).

Every generator is deterministic for a given seed: random draws use a seeded CPU generator in
float64, and the assignment kernels are bit-identical to the reference on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inrflow.ops.assign import grid_assign, nearest_assign

__all__ = [
    "grid_coords",
    "hash_assign",
    "kmeans_pp",
    "kmeans_pp_centers",
    "random_centers",
]

# Large odd multipliers for the voxel hash (as in Teschner et al. / instant-NGP).
_HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437)


def grid_coords(
    shape: Sequence[int],
    low: float = 0.0,
    high: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Cell centres ``low + (i + 0.5) (high - low) / n`` of a grid, ``[prod(shape), len(shape)]``.

    Row-major over ``shape``; channel ``a`` is the coordinate along axis ``a`` of ``shape``. This
    is the pixel-centre convention used for images throughout inrflow.
    """
    axes = [low + (torch.arange(n, dtype=torch.float64) + 0.5) * ((high - low) / n) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.reshape(-1, len(shape)).to(device=device, dtype=dtype)


def random_centers(num: int, dim: int, low: float, high: float, seed: int) -> torch.Tensor:
    """``num`` points uniform in ``[low, high]^dim``, ``[num, dim]`` float32."""
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(num, dim, generator=g, dtype=torch.float64)).float()


def kmeans_pp(points: torch.Tensor, num: int, seed: int = 0, lloyd_steps: int = 0) -> torch.Tensor:
    """k-means++ seeding of ``num`` centres on ``points`` ``[M, d]``, then ``lloyd_steps`` steps.

    Each new centre is drawn with probability proportional to the squared distance to the
    nearest centre chosen so far. Runs on the CPU in float64; returns float32 ``[num, d]``.
    """
    pts = points.detach().to("cpu", torch.float64)
    m = pts.shape[0]
    if num > m:
        raise ValueError(f"kmeans++ needs at least {num} points, got {m}")
    g = torch.Generator().manual_seed(seed)
    idx = [int(torch.randint(m, (1,), generator=g))]
    d2 = (pts - pts[idx[0]]).pow(2).sum(-1)
    for _ in range(1, num):
        total = d2.sum()
        if total <= 0:  # all points already chosen (duplicates): fall back to uniform
            nxt = int(torch.randint(m, (1,), generator=g))
        else:
            nxt = int(torch.multinomial(d2 / total, 1, generator=g))
        idx.append(nxt)
        d2 = torch.minimum(d2, (pts - pts[nxt]).pow(2).sum(-1))
    centers = pts[idx].clone()
    for _ in range(lloyd_steps):
        assign = nearest_assign(pts.float(), centers.float())
        sums = torch.zeros_like(centers).index_add_(0, assign, pts)
        counts = torch.bincount(assign, minlength=num).to(pts.dtype)
        keep = counts == 0  # an empty cluster keeps its centre
        centers = torch.where(keep[:, None], centers, sums / counts.clamp_min(1)[:, None])
    return centers.float()


def kmeans_pp_centers(
    num: int,
    dim: int,
    low: float,
    high: float,
    seed: int,
    sample: int = 16384,
    lloyd_steps: int = 0,
) -> torch.Tensor:
    """k-means++ centres for a domain: seeding on ``sample`` uniform points of ``[low, high]^d``."""
    pts = random_centers(max(sample, num), dim, low, high, seed + 1)
    return kmeans_pp(pts, num, seed=seed, lloyd_steps=lloyd_steps)


def hash_assign(
    points: torch.Tensor,
    resolution: int,
    num_buckets: int,
    low: float,
    high: float,
    seed: int = 0,
    *,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial hash: voxel of each point -> bucket in ``[0, num_buckets)``.

    The voxel is the nearest cell of a ``resolution``-per-axis grid over ``[low, high]^d``
    (:func:`inrflow.ops.grid_assign`; points outside clamp to the boundary voxel). Returns
    ``(assign [..., N] int64, voxel_centre [..., N, d])``. Points in one voxel always share a
    bucket; different voxels collide pseudo-randomly (deterministically for a seed).
    ``validate=False`` skips the NaN/inf check of :func:`inrflow.ops.grid_assign` (a host sync).
    """
    d = points.shape[-1]
    if d > len(_HASH_PRIMES):
        raise ValueError(f"hash_assign supports up to {len(_HASH_PRIMES)} dims, got {d}")
    cell = (high - low) / resolution
    pts = points if points.is_floating_point() else points.float()
    flat = grid_assign(pts, [resolution] * d, low, high, validate=validate)
    axes = []
    for _ in range(d):  # unravel the row-major flat index, last axis fastest
        axes.append(flat % resolution)
        flat = flat // resolution
    vox = torch.stack(axes[::-1], dim=-1)
    h = torch.full(
        vox.shape[:-1], (seed * 0x9E3779B1) & 0x7FFFFFFF, dtype=torch.long, device=points.device
    )
    for a in range(d):
        h = h ^ ((vox[..., a] * _HASH_PRIMES[a]) & 0xFFFFFFFF)
    assign = h % num_buckets
    centre = low + (vox.to(pts.dtype) + 0.5) * cell
    return assign, centre
