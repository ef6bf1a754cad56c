"""The latents' pseudo-coordinates and the grouping of points to latents (:class:`LatentGrouping`).

The generators (``grid``, ``random``, ``kmeans++``, ``hash``) live in
:mod:`inrflow.ops.pseudo_coords` and are re-exported here. ``residue`` (proteins): channel 0 of a
coordinate is the centre of cell i of a 1-D grid of K cells, latent i groups residue i's atoms;
its pseudo-coordinate is that centre with the other channels 0. Assignment is by nearest
pseudo-coordinate through ``inrflow.ops`` (``grid_assign`` for grids, ``nearest_assign``
otherwise), i.e. the fused kernels whenever the extension has them for the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from inrflow import ops
from inrflow.ops import _checks
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
        elif kind == "residue":  # residue cells along channel 0; features keep their own scale
            self.spacing = [extent / num_latents] + [1.0] * (dim - 1)
        else:  # random, kmeans++: the mean spacing of K points in the domain
            self.spacing = [extent / num_latents ** (1.0 / dim)] * dim
        self.register_buffer("centers", torch.empty(num_latents, dim), persistent=False)
        # the cell size per axis on the model's device: a tensor built from the Python list at
        # every step would be a host->device copy, which waits for the device
        self.register_buffer("cell", torch.empty(dim), persistent=False)
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
        self.cell = torch.tensor(self.spacing, dtype=torch.float32, device=self.centers.device)

    def _apply(self, fn, recurse=True):
        # keep the pseudo-coordinates exact (float32) when the model is cast to half precision
        super()._apply(fn, recurse)
        stale = any(b.dtype != torch.float32 for b in (self.centers, self.cell))
        if stale and not self.centers.is_meta:
            self.reset_buffers()
        return self

    def positions(self) -> torch.Tensor:
        """Pseudo-coordinates in cell units ``[K, d]`` (for RoPE)."""
        return (self.centers - self.low) / self.cell

    def assign(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``coords`` ``[B, N, d]`` -> (latent ``[B, N]`` int64, position in cell ``[B, N, d]``).

        NaN/inf coordinates make "nearest" meaningless: checked here once, without a host sync
        on accelerators (:func:`inrflow.ops._checks.assert_values`), so the ops skip theirs.
        """
        used = coords[..., :1] if self.kind == "residue" else coords
        _checks.assert_values(
            torch.isfinite(used).all(), "coordinates contain NaN or infinite values"
        )
        if self.kind == "hash":
            idx, anchor = hash_assign(
                coords,
                self.hash_resolution,
                self.num_latents,
                self.low,
                self.high,
                self.seed,
                validate=False,
            )
        else:
            lo, hi = self.low, self.high
            if self.kind == "grid":
                idx = ops.grid_assign(coords, self.grid_shape, lo, hi, validate=False)
            elif self.kind == "residue":
                idx = ops.grid_assign(coords[..., :1], (self.num_latents,), lo, hi, validate=False)
            else:
                centers = self.centers.to(coords.dtype)
                idx = ops.nearest_assign(coords, centers, validate=False)
            idx = idx.long()
            anchor = self.centers.to(coords.dtype)[idx]
        return idx, (coords - anchor) / self.cell.to(coords.dtype)
