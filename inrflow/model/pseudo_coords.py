"""Pseudo-coordinates of the spatial-aware latents and the assignment of points to latents.

The generators (``grid``, ``random``, ``kmeans++``, ``hash``) live in
:mod:`inrflow.ops.pseudo_coords` and are re-exported here. Assignment is by nearest
pseudo-coordinate through ``inrflow.ops`` (``grid_assign`` for grids, ``nearest_assign``
otherwise), i.e. the fused kernels whenever the extension has them for the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from inrflow import ops
from inrflow.ops.pseudo_coords import (
    grid_coords,
    hash_assign,
    kmeans_pp,
    kmeans_pp_centers,
    random_centers,
)

__all__ = [
    "LatentGrouping",
    "grid_coords",
    "hash_assign",
    "kmeans_pp",
    "kmeans_pp_centers",
    "random_centers",
]


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
            else:
                idx = ops.nearest_assign(coords, self.centers.to(coords.dtype))
            idx = idx.long()
            anchor = self.centers.to(coords.dtype)[idx]
        spacing = torch.tensor(self.spacing, device=coords.device, dtype=coords.dtype)
        return idx, (coords - anchor) / spacing
