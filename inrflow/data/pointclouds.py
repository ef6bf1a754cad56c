"""Point clouds from .npy/.npz files, normalised per shape and subsampled to a fixed size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import CoordinateDataset

__all__ = ["NORMALIZATIONS", "PointCloudDataset", "normalize_points", "subsample"]

NORMALIZATIONS = ("shape_bbox", "shape_unit", "none")
POINT_EXTENSIONS = (".npy", ".npz")
NPZ_KEYS = ("points", "xyz", "pc", "pointcloud", "arr_0")
COND_KEYS = ("cond", "tokens", "condition")  # [M, Dc] condition tokens (image-to-3D)


def normalize_points(points: np.ndarray, mode: str) -> np.ndarray:
    """Per-shape normalisation of ``[M, 3]`` points.

    - ``shape_bbox``: centre the bounding box, divide by half its largest side -> [-1, 1]
      (LION's evaluation normalisation, and the model's coordinate domain).
    - ``shape_unit``: subtract the mean, divide by the standard deviation of all coordinates.
    - ``none``: as stored.
    """
    if mode == "none":
        return points
    if mode == "shape_bbox":
        lo, hi = points.min(0), points.max(0)
        scale = max(float((hi - lo).max()) / 2, 1e-12)
        return (points - (lo + hi) / 2) / scale
    if mode == "shape_unit":
        centred = points - points.mean(0)
        return centred / max(float(centred.std()), 1e-12)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def subsample(points: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` points drawn without replacement (with replacement when the shape has fewer)."""
    m = points.shape[0]
    idx = rng.choice(m, size=num, replace=m < num)
    return points[idx]


def _read_cond(path: str, shape_index: int | None) -> np.ndarray | None:
    """The condition tokens ``[M, Dc]`` stored next to a cloud in an .npz (None: none)."""
    if not path.endswith(".npz"):
        return None
    with np.load(path, allow_pickle=False) as z:
        key = next((k for k in COND_KEYS if k in z.files), None)
        if key is None:
            return None
        arr = z[key] if shape_index is None else z[key][shape_index]
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"condition tokens must be [M, Dc], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("the condition tokens contain NaN or inf")
    return arr


def _read_points(path: str, shape_index: int | None) -> np.ndarray:
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in NPZ_KEYS if k in z.files), None)
            if key is None:
                z_files = [f for f in z.files if f not in COND_KEYS]
                if len(z_files) == 1:
                    key = z_files[0]
            if key is None:
                if len(z.files) != 1:
                    raise ValueError(f"no array named one of {NPZ_KEYS} in {path} ({z.files})")
                key = z.files[0]
            arr = z[key] if shape_index is None else z[key][shape_index]
    else:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        arr = arr if shape_index is None else arr[shape_index]
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[0] < 1:
        raise ValueError(f"expected an [M, 3] point array, got shape {arr.shape}")
    arr = arr[:, :3]
    if not np.isfinite(arr).all():
        raise ValueError("the point array contains NaN or inf")
    return arr


class PointCloudDataset(CoordinateDataset):
    """Shapes stored as ``[M, 3]`` arrays in .npy/.npz files (npz key ``points``/``xyz``/...).

    ``root`` is a folder (searched recursively; first-level subfolders are classes when there
    are at least two) or one file holding a stack ``[S, M, 3]`` of shapes. Each item is one
    shape normalised with ``normalization`` and subsampled to ``num_points`` points using the
    item's seed. Values are the xyz; point clouds have no separate coordinates.

    Image-conditioned 3D: an .npz that also holds condition tokens ``[M, Dc]`` under ``cond``
    (or ``tokens``/``condition``; ``[S, M, Dc]`` beside a stack), as produced by any image
    encoder, gives items a ``cond`` entry. The first file decides: when it has tokens every
    file must have them, of the same shape ``[M, Dc]`` (``cond_tokens``, ``cond_dim``).
    """

    cond_dim: int = 0
    cond_tokens: int = 0

    domain = "pointcloud"
    coord_dim = 3
    value_dim = 3

    def __init__(
        self, root: str | os.PathLike, num_points: int, normalization: str = "shape_bbox"
    ) -> None:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"point-cloud path {str(root)!r} does not exist")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.num_points, self.normalization = num_points, normalization
        self.shape = (num_points,)
        entries: list[tuple[str, int | None, int]] = []  # (file, index in a stack, label)
        if root.is_file():
            entries = [(str(root), i, 0) for i in range(_stack_size(root))]
        else:
            classes = sorted(d.name for d in root.iterdir() if d.is_dir())
            classes = [c for c in classes if _walk_points(root / c)]
            if len(classes) >= 2:
                for label, name in enumerate(classes):
                    entries += [(p, None, label) for p in _walk_points(root / name)]
                self.class_names = tuple(classes)
                self.num_classes = len(classes)
            else:
                entries = [(p, None, 0) for p in _walk_points(root)]
        if not entries:
            raise ValueError(f"no point clouds ({', '.join(POINT_EXTENSIONS)}) under {str(root)!r}")
        self.entries = entries
        first = _read_cond(entries[0][0], entries[0][1])
        if first is not None:
            self.cond_tokens, self.cond_dim = first.shape

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        path, i, _ = self.entries[index]
        return f"point cloud {path!r}" + (f" [shape {i}]" if i is not None else "")

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        path, i, label = self.entries[index]
        pts = normalize_points(_read_points(path, i), self.normalization)
        pts = subsample(pts, self.num_points, rng)
        item = {"values": self._tensor(pts), "label": torch.tensor(label)}
        if self.cond_dim:
            item["cond"] = self._tensor(self.condition(index))
        return item

    def condition(self, index: int) -> np.ndarray:
        """The condition tokens ``[M, Dc]`` of item ``index`` (for sampling with its image)."""
        path, i, _ = self.entries[index]
        cond = _read_cond(path, i)
        if cond is None or cond.shape != (self.cond_tokens, self.cond_dim):
            raise ValueError(
                f"expected condition tokens [{self.cond_tokens}, {self.cond_dim}], got "
                f"{None if cond is None else cond.shape}"
            )
        return cond


def _stack_size(path: Path) -> int:
    name = str(path)
    if not name.endswith(POINT_EXTENSIONS):
        raise ValueError(f"{name!r} is not a .npy/.npz file")
    if name.endswith(".npz"):
        with np.load(name, allow_pickle=False) as z:
            rest = [f for f in z.files if f not in COND_KEYS]
            key = next((k for k in NPZ_KEYS if k in z.files), rest[0] if rest else None)
            if key is None:
                raise ValueError(f"{name!r} holds no arrays")
            shape = z[key].shape
    else:
        shape = np.load(name, mmap_mode="r", allow_pickle=False).shape
    if len(shape) == 2:
        raise ValueError(
            f"{name!r} holds one shape {shape}; pass its folder, or a stack [S, M, 3] of shapes"
        )
    if len(shape) != 3 or shape[-1] < 3:
        raise ValueError(f"{name!r} must hold a stack of shapes [S, M, 3], got {shape}")
    return shape[0]


def _walk_points(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(POINT_EXTENSIONS)]
    return out
