"""Coordinate-value datasets for training: image folders, point-cloud files, bundled demo sets,
and the deterministic distributed stream that feeds the trainer.

``build_dataset(spec, ...)`` turns ``--data`` (a bundled name or a path) into a dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import CoordinateDataset, DataWarning, UnreadableFileError
from .demo import BUNDLED, DigitsDataset, ShapesDataset, digits_classifier_accuracy
from .images import ImageFolderDataset
from .io import save_image_grid, save_ply
from .loader import FlowCollate, StreamSampler, build_loader, mix_seed
from .pointclouds import NORMALIZATIONS, PointCloudDataset
from .proteins import ProteinDataset, bundled_protein_files, parse_structure

__all__ = [
    "BUNDLED",
    "NORMALIZATIONS",
    "CoordinateDataset",
    "DataWarning",
    "DigitsDataset",
    "FlowCollate",
    "ImageFolderDataset",
    "PointCloudDataset",
    "ProteinDataset",
    "ShapesDataset",
    "StreamSampler",
    "UnreadableFileError",
    "build_dataset",
    "build_loader",
    "bundled_protein_files",
    "digits_classifier_accuracy",
    "mix_seed",
    "parse_structure",
    "save_image_grid",
    "save_ply",
]


def build_dataset(
    spec: str | os.PathLike,
    *,
    resolution: int | None = None,
    num_points: int | None = None,
    hflip: bool = True,
    channels: int = 3,
    normalization: str = "shape_bbox",
    task: str | None = None,
    max_residues: int | None = None,
    residue_embeddings: str | None = None,
    split: str = "all",
    protein_frame: str = "principal",
    rotate: bool = False,
) -> CoordinateDataset:
    """The dataset named by ``spec``: ``digits``, ``shapes``, ``proteins`` (the bundled
    structures), a folder of images (subfolders = classes), a folder/stack file of point clouds
    (.npy/.npz), or a folder of PDB/mmCIF files (or any path with ``task="protein"``).

    ``split`` (proteins): ``all``, ``train`` or ``test`` (every 10th chain held out);
    ``protein_frame`` and ``rotate``: see :class:`ProteinDataset` (``frame``, ``rotate``);
    ``rotate`` also gives the bundled shapes random orientations (:class:`ShapesDataset`).
    A path that does not exist or holds no usable files raises at once, with the path.
    """
    name = str(spec)
    if name == "proteins" or task == "protein" or _holds_structures(Path(name).expanduser()):
        return ProteinDataset(
            name,
            max_residues=max_residues,
            residue_embeddings=residue_embeddings,
            split=split,
            frame=protein_frame,
            rotate=rotate,
        )
    if name == "digits":
        return DigitsDataset(resolution or 8)
    if name == "shapes":
        return ShapesDataset(num_points or 512, rotate=rotate)
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--data {name!r}: no such file or directory (bundled datasets: {', '.join(BUNDLED)})"
        )
    if _holds_point_clouds(path):
        return PointCloudDataset(path, num_points or 2048, normalization)
    if path.is_file():
        raise ValueError(
            f"--data {name!r}: expected a folder of images or point clouds, or a "
            ".npy/.npz stack of point clouds"
        )
    return ImageFolderDataset(path, resolution or 256, hflip=hflip, channels=channels)


def _holds_structures(path: Path) -> bool:
    from .proteins import _is_structure

    if not path.exists():
        return False
    if path.is_file():
        return _is_structure(path.name)
    for _dirpath, _dirs, files in os.walk(path, followlinks=True):
        for f in files:
            if _is_structure(f):
                return True
            if f.lower().endswith((".npy", ".npz", ".jpg", ".jpeg", ".png", ".bmp", ".webp")):
                return False
    return False


def _holds_point_clouds(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".npy", ".npz")
    for _dirpath, _dirs, files in os.walk(path, followlinks=True):
        for f in files:
            if f.endswith((".npy", ".npz")):
                return True
            if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")):
                return False
    return False
