"""Pseudo-coordinates of the spatial-aware latents and the assignment of points to latents.

Generators (deterministic for a seed, computed on the CPU in float64 so every device gets the
same centres): ``grid`` (cell centres of a regular grid), ``random`` (uniform in the domain),
``kmeans++`` (seeding on a uniform sample of the domain, optionally refined by Lloyd steps), and
``hash`` (a spatial hash of voxels to latents for 3D: neighbouring points are likely, not
certain, to share a latent; latents then have no position), and ``residue`` (proteins: channel
0 of a coordinate is the centre of cell i of a 1-D grid of K cells, latent i groups residue i's
atoms; its pseudo-coordinate is that centre with the other channels 0). Assignment is by nearest
pseudo-coordinate through ``inrflow.ops`` (``grid_assign`` for grids, ``nearest_assign``
otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from inrflow import ops

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
        assign = ops.nearest_assign(pts.float(), centers.float())
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial hash: voxel of each point -> bucket in ``[0, num_buckets)``.

    Returns ``(assign [..., N] int64, voxel_centre [..., N, d])``. Points in one voxel always
    share a bucket; different voxels collide pseudo-randomly.
    """
    d = points.shape[-1]
    if d > len(_HASH_PRIMES):
        raise ValueError(f"hash_assign supports up to {len(_HASH_PRIMES)} dims, got {d}")
    cell = (high - low) / resolution
    vox = torch.floor((points.float() - low) / cell).long().clamp_(0, resolution - 1)
    h = torch.full(
        vox.shape[:-1], (seed * 0x9E3779B1) & 0x7FFFFFFF, dtype=torch.long, device=points.device
    )
    for a in range(d):
        h = h ^ ((vox[..., a] * _HASH_PRIMES[a]) & 0xFFFFFFFF)
    assign = h % num_buckets
    centre = low + (vox.to(points.dtype) + 0.5) * cell
    return assign, centre


class LatentGrouping(nn.Module):
    """Pseudo-coordinates of the latents (a buffer) and the point -> latent assignment.

    ``assign(coords)`` returns the latent of each point and its *anchor* (the pseudo-coordinate,
    or the voxel centre for the hash); the encoder embeds ``(coords - anchor) / spacing``, the
    position in units of the cell size.
    """

    def __init__(
        self,
        kind: str,
        num_latents: int,
        dim: int,
        low: float,
        high: float,
        grid_shape: Sequence[int] | None = None,
        seed: int = 0,
        kmeans_sample: int = 16384,
        lloyd_steps: int = 0,
        hash_resolution: int = 16,
    ) -> None:
        super().__init__()
        self.kind, self.num_latents, self.dim = kind, num_latents, dim
        self.low, self.high, self.seed = float(low), float(high), seed
        self.kmeans_sample, self.lloyd_steps = kmeans_sample, lloyd_steps
        self.hash_resolution = hash_resolution
        self.grid_shape = tuple(grid_shape) if grid_shape is not None else None
        extent = self.high - self.low
        if kind == "grid":
            if self.grid_shape is None or math.prod(self.grid_shape) != num_latents:
                raise ValueError(f"grid pseudo-coordinates need a grid of {num_latents} cells")
            self.spacing = [extent / n for n in self.grid_shape]
        elif kind == "hash":
            self.spacing = [extent / hash_resolution] * dim
        elif kind == "residue":  # residue cells along channel 0; features keep their own scale
            self.spacing = [extent / num_latents] + [1.0] * (dim - 1)
        else:  # random, kmeans++: the mean spacing of K points in the domain
            self.spacing = [extent / num_latents ** (1.0 / dim)] * dim
        self.register_buffer("centers", torch.empty(num_latents, dim), persistent=False)
        if not self.centers.is_meta:
            self.reset_buffers()

    @property
    def has_positions(self) -> bool:
        return self.kind != "hash"

    def reset_buffers(self) -> None:
        k, d, lo, hi = self.num_latents, self.dim, self.low, self.high
        if self.kind == "grid":
            c = ops.grid_centers(self.grid_shape, lo, hi)
        elif self.kind == "random":
            c = random_centers(k, d, lo, hi, self.seed)
        elif self.kind == "kmeans++":
            c = kmeans_pp_centers(k, d, lo, hi, self.seed, self.kmeans_sample, self.lloyd_steps)
        elif self.kind == "hash":
            c = torch.zeros(k, d)  # latents of a hash have no position
        elif self.kind == "residue":
            c = torch.zeros(k, d, dtype=torch.float64)
            c[:, 0] = ops.grid_centers((k,), lo, hi)[:, 0].double()
        else:
            raise ValueError(f"unknown pseudo-coordinates {self.kind!r}")
        self.centers = c.to(device=self.centers.device, dtype=torch.float32).reshape(k, d)

    def _apply(self, fn, recurse=True):
        # keep the pseudo-coordinates exact (float32) when the model is cast to half precision
        super()._apply(fn, recurse)
        if self.centers.dtype != torch.float32 and not self.centers.is_meta:
            self.reset_buffers()
        return self

    def positions(self) -> torch.Tensor:
        """Pseudo-coordinates in cell units ``[K, d]`` (for RoPE)."""
        spacing = torch.tensor(self.spacing, device=self.centers.device)
        return (self.centers - self.low) / spacing

    def assign(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``coords`` ``[B, N, d]`` -> (latent ``[B, N]`` int64, position in cell ``[B, N, d]``)."""
        if self.kind == "hash":
            idx, anchor = hash_assign(
                coords, self.hash_resolution, self.num_latents, self.low, self.high, self.seed
            )
        else:
            if self.kind == "grid":
                idx = ops.grid_assign(coords, self.grid_shape, self.low, self.high)
            elif self.kind == "residue":
                idx = ops.grid_assign(coords[..., :1], (self.num_latents,), self.low, self.high)
            else:
                idx = ops.nearest_assign(coords, self.centers.to(coords.dtype))
            idx = idx.long()
            anchor = self.centers.to(coords.dtype)[idx]
        spacing = torch.tensor(self.spacing, device=coords.device, dtype=coords.dtype)
        return idx, (coords - anchor) / spacing
