"""Bundled demo datasets that need no download.

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (16 grey levels, 10 classes), as
  greyscale images, optionally upsampled. :func:`digits_classifier_accuracy` scores generated
  digits with :mod:`inrflow.metrics.digits`' classifier trained on the real ones (the demo's
  quality bar).
- ``shapes``: 3-D point clouds of seven classes of surfaces: five primitives (sphere, torus, box,
  cylinder, cone) and scikit-learn's swiss roll and S-curve generators, each instance with its own
  proportions and orientation, points sampled afresh from the surface for every item.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inrflow.model.pseudo_coords import grid_coords

from .base import CoordinateDataset
from .pointclouds import normalize_points

__all__ = [
    "BUNDLED",
    "DigitsDataset",
    "ShapesDataset",
    "digits_classifier_accuracy",
]

BUNDLED = ("digits", "shapes", "proteins")  # proteins: see inrflow.data.proteins


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The real digits: float images ``[1797, 8, 8]`` in [0, 1] and int64 labels."""
    from inrflow.metrics.digits import load_real_digits

    return load_real_digits()


class DigitsDataset(CoordinateDataset):
    """scikit-learn digits as greyscale images in [-1, 1] at ``resolution`` (8 = native).

    No flips: a mirrored digit is a different (or no) digit.
    """

    domain = "image"
    coord_dim = 2
    value_dim = 1
    num_classes = 10
    class_names = tuple(str(i) for i in range(10))

    def __init__(self, resolution: int = 8) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        images, labels = _load_digits()
        x = torch.from_numpy(images * 2.0 - 1.0).float().unsqueeze(1)  # [S, 1, 8, 8] in [-1, 1]
        if resolution != 8:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
        self.resolution = resolution
        self.shape = (resolution, resolution)
        self.values = x.reshape(len(x), -1, 1).contiguous()  # [S, R*R, 1]
        self.labels = torch.from_numpy(labels)
        self._coords = grid_coords(self.shape)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return f"digits image {index}"

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        return {"values": self.values[index], "coords": self._coords, "label": self.labels[index]}

    def evaluate_samples(self, values: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Score generated digits ``[S, R*R, 1]`` asked for ``labels``: the classifier's
        accuracy (:func:`digits_classifier_accuracy`) beside the within-class diversity
        relative to the real digits (strong guidance buys accuracy with diversity) and the
        Fréchet distance in the classifier's feature space (both from
        :mod:`inrflow.metrics.digits`)."""
        from inrflow.metrics.digits import digits_metrics, within_class_diversity

        images = values.detach().float().cpu().reshape(-1, self.resolution, self.resolution, 1)
        labels = labels.cpu()
        scores = {
            "classifier_accuracy": digits_classifier_accuracy(values, labels, self.resolution)
        }
        if len(images) >= 2 and torch.unique(labels).numel() < len(labels):
            scores["within_class_diversity"] = within_class_diversity(images, labels, (-1.0, 1.0))
            scores["fd_digits"] = float(
                digits_metrics(images, value_range=(-1.0, 1.0))["FD-digits"]
            )
        return scores


def digits_classifier_accuracy(
    values: torch.Tensor, labels: torch.Tensor, resolution: int
) -> float:
    """Fraction of generated digits ``[S, R*R, 1]`` (values in [-1, 1]) that the classifier of
    :mod:`inrflow.metrics.digits` (trained on the real digits) labels as the class they were
    generated for; other resolutions are brought to 8x8 by area averaging."""
    from inrflow.metrics.digits import digits_classifier

    images = values.detach().float().cpu().reshape(-1, resolution, resolution, 1)
    return digits_classifier().accuracy(images, labels.cpu(), value_range=(-1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------

SHAPE_CLASSES = ("sphere", "torus", "box", "cylinder", "cone", "swiss_roll", "s_curve")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _surface(kind: str, n: int, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` points on a ``kind`` surface with proportions ``p`` (3 numbers in [0, 1])."""
    u, v = rng.random(n), rng.random(n)
    if kind == "sphere":  # an ellipsoid
        z = 2 * u - 1
        r = np.sqrt(1 - z**2)
        pts = np.stack([r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v), z], 1)
        return pts * (0.6 + 0.4 * p)
    if kind == "torus":
        big, small = 1.0, 0.2 + 0.3 * p[0]
        a, b = 2 * np.pi * u, 2 * np.pi * v
        rr = big + small * np.cos(b)
        return np.stack([rr * np.cos(a), rr * np.sin(a), small * np.sin(b)], 1)
    if kind == "box":
        half = 0.4 + 0.6 * p
        pts = (2 * rng.random((n, 3)) - 1) * half
        face = rng.choice(3, size=n, p=_face_weights(half))
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        pts[np.arange(n), face] = side * half[face]
        return pts
    if kind in ("cylinder", "cone"):
        radius, height = 0.4 + 0.6 * p[0], 0.6 + 0.8 * p[1]
        z = (2 * u - 1) * height
        r = radius * (1.0 if kind == "cylinder" else (height - z) / (2 * height))
        return np.stack([r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v), z], 1)
    from sklearn.datasets import make_s_curve, make_swiss_roll

    seed = int(rng.integers(2**31 - 1))
    make = make_swiss_roll if kind == "swiss_roll" else make_s_curve
    pts, _ = make(n_samples=n, noise=0.0, random_state=seed)
    return pts * np.array([1.0, 0.5 + p[2], 1.0])


def _face_weights(half: np.ndarray) -> np.ndarray:
    area = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])
    return area / area.sum()


class ShapesDataset(CoordinateDataset):
    """``per_class`` instances of each of :data:`SHAPE_CLASSES`, ``num_points`` points each,
    normalised per shape to [-1, 1] (bounding box)."""

    domain = "pointcloud"
    coord_dim = 3
    value_dim = 3
    class_names = SHAPE_CLASSES
    num_classes = len(SHAPE_CLASSES)

    def __init__(self, num_points: int = 512, per_class: int = 100) -> None:
        if num_points < 1 or per_class < 1:
            raise ValueError("num_points and per_class must be >= 1")
        self.num_points, self.per_class = num_points, per_class
        self.shape = (num_points,)

    def __len__(self) -> int:
        return self.per_class * self.num_classes

    def describe(self, index: int) -> str:
        return f"shape {index} ({SHAPE_CLASSES[index % self.num_classes]})"

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        label = index % self.num_classes
        # the instance (proportions, orientation) is fixed by the index; the points by the seed
        inst = np.random.default_rng(1_000_003 * (index + 1))
        props, rot = inst.random(3), _random_rotation(inst)
        pts = _surface(SHAPE_CLASSES[label], self.num_points, props, rng) @ rot.T
        pts = normalize_points(pts, "shape_bbox")
        return {"values": self._tensor(pts), "label": torch.tensor(label)}
