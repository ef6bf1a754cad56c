"""Evaluation metrics: FID family, digits classifier metrics, point-cloud metrics
(MMD / COV / 1-NNA with Chamfer and EMD), and Cα structure metrics (lDDT, TM-score).

A pure library: it scores tensors and files of samples; loading checkpoints and the ``evaluate.py``
application are :mod:`inrflow.checkpoints` and :mod:`inrflow.cli.evaluate`.

Modules import their optional dependencies (scipy, scikit-learn, Pillow: the ``[eval]`` extra)
only when a function needs them.
"""

from __future__ import annotations

from inrflow.metrics.digits import DigitsClassifier, digits_classifier, digits_metrics
from inrflow.metrics.frechet import (
    FeatureStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)
from inrflow.metrics.images import compute_image_metrics, load_images, to_unit_float
from inrflow.metrics.inception import InceptionFeatureExtractor, InceptionV3, inception_extractor
from inrflow.metrics.io import load_point_clouds, read_ply
from inrflow.metrics.pointcloud import (
    chamfer_distance,
    emd,
    mmd_cov,
    normalize_point_clouds,
    one_nna,
    pairwise_chamfer,
    pairwise_emd,
    point_cloud_metrics,
)
from inrflow.metrics.protein import kabsch, lddt, tm_score

__all__ = [
    "DigitsClassifier",
    "FeatureStats",
    "InceptionFeatureExtractor",
    "InceptionV3",
    "chamfer_distance",
    "compute_image_metrics",
    "digits_classifier",
    "digits_metrics",
    "emd",
    "feature_statistics",
    "frechet_distance",
    "inception_extractor",
    "inception_score",
    "kabsch",
    "kid",
    "lddt",
    "load_images",
    "load_point_clouds",
    "mmd_cov",
    "normalize_point_clouds",
    "one_nna",
    "pairwise_chamfer",
    "pairwise_emd",
    "point_cloud_metrics",
    "precision_recall",
    "read_ply",
    "tm_score",
    "to_unit_float",
]
