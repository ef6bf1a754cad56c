"""The dataset contract of the trainer: coordinate-value pairs per sample, unreadable files skipped.

A dataset item is a dict::

    values  [N, c] float32   image pixels in [-1, 1] / point xyz
    coords  [N, d] float32   pixel centres in [0, 1]^2, or any positions there (images read
                             with a ``field_resolution``); absent for point clouds, whose
                             coordinates are their values
    label   int64            class index (0 when the dataset has no classes)
    skipped int64            unreadable files passed over to produce this item
    skipped_index list[int]  their indices (the trainer counts distinct files, not events)

Items are addressed by ``(index, seed)``: the seed (from :class:`~inrflow.data.StreamSampler`)
drives every random choice of the item (flip, point subset), so an item is a pure function of its
position in the training stream, whatever the worker, rank or world size that loads it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CoordinateDataset", "DataWarning", "UnreadableFileError"]


class DataWarning(UserWarning):
    """A data file could not be read and was skipped."""


class UnreadableFileError(RuntimeError):
    """Too many unreadable files in a row: the dataset itself is probably broken."""


class CoordinateDataset(Dataset):
    """Base class: subclasses set the attributes below and implement :meth:`load`.

    Attributes:
        domain: ``"image"``, ``"pointcloud"`` or ``"protein"`` (the model preset family).
        num_classes: number of class labels (0: unconditional data).
        value_dim, coord_dim: widths of values and coordinates.
        shape: the pixel grid ``(H, W)`` of images, or ``(num_points,)`` for point clouds.
        class_names: one name per class (for logs and sample grids).
        cond_dim: width of the items' condition tokens ``cond`` ``[M, cond_dim]`` (0: none).
    """

    domain: str = "image"
    num_classes: int = 0
    value_dim: int = 3
    coord_dim: int = 2
    shape: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    cond_dim: int = 0
    max_consecutive_failures: int = 50

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """The item ``index`` (without ``skipped``); may raise on an unreadable file."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from (a path), for error messages."""
        return f"item {index}"

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (int(key), int(key))
        skipped: list[int] = []
        n = len(self)
        for attempt in range(self.max_consecutive_failures + 1):
            i = (index + attempt) % n
            try:
                item = self.load(i, np.random.default_rng(seed))
            except Exception as exc:  # any unreadable file: report its path, take the next one
                skipped.append(i)
                warnings.warn(
                    f"skipping unreadable {self.describe(i)}: {type(exc).__name__}: {exc}",
                    DataWarning,
                    stacklevel=2,
                )
                continue
            item["skipped"] = len(skipped)
            item["skipped_index"] = skipped
            return item
        raise UnreadableFileError(
            f"{len(skipped)} consecutive items starting at {self.describe(index)} could not be "
            "read; the dataset looks broken"
        )

    # -- helpers for subclasses ------------------------------------------------------------------
    @staticmethod
    def _tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
