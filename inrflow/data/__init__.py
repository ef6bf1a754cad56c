"""Coordinate-value datasets for training: image folders, point-cloud files, bundled demo sets,
and the deterministic distributed stream that feeds the trainer.

Which dataset ``--data`` (a bundled name or a path) names is decided by the domains:
:func:`inrflow.domains.build_dataset`.
"""

from __future__ import annotations

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
    "build_loader",
    "bundled_protein_files",
    "digits_classifier_accuracy",
    "mix_seed",
    "parse_structure",
    "save_image_grid",
    "save_ply",
]
