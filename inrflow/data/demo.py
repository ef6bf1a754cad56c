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

from inrflow.model import grid_coords

from .base import CoordinateDataset
from .digits import load_real_digits
from .pointclouds import normalize_points

__all__ = [
    "BUNDLED",
    "DigitsDataset",
    "ShapesDataset",
    "digits_classifier_accuracy",
    "shapes_classifier",
    "shapes_scores",
]

BUNDLED = ("digits", "shapes", "proteins")  # proteins: see inrflow.data.proteins


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
        images, labels = load_real_digits()
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


HELDOUT_OFFSET = 1_000_000  # instance indices of held-out shapes start here


class ShapesDataset(CoordinateDataset):
    """``per_class`` instances of each of :data:`SHAPE_CLASSES`, ``num_points`` points each,
    normalised per shape to [-1, 1] (bounding box).

    An instance (its random proportions and, with ``rotate``, its random orientation) is fixed
    by its index; its points are drawn afresh from the surface for every item. ``rotate=False``
    (the demo) keeps every instance in its class's canonical pose, as ShapeNet's shapes are;
    ``rotate=True`` turns each instance by its own random rotation. ``first_instance`` shifts
    the instance indices: :meth:`heldout` uses it for shapes the training set never holds.
    """

    domain = "pointcloud"
    coord_dim = 3
    value_dim = 3
    class_names = SHAPE_CLASSES
    num_classes = len(SHAPE_CLASSES)

    def __init__(
        self,
        num_points: int = 512,
        per_class: int = 100,
        *,
        rotate: bool = False,
        first_instance: int = 0,
    ) -> None:
        if num_points < 1 or per_class < 1:
            raise ValueError("num_points and per_class must be >= 1")
        if first_instance < 0:
            raise ValueError(f"first_instance must be >= 0, got {first_instance}")
        self.num_points, self.per_class = num_points, per_class
        self.rotate, self.first_instance = rotate, first_instance
        self.shape = (num_points,)

    def __len__(self) -> int:
        return self.per_class * self.num_classes

    def describe(self, index: int) -> str:
        return f"shape {index} ({SHAPE_CLASSES[index % self.num_classes]})"

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        label = index % self.num_classes
        # the instance (proportions, orientation) is fixed by the index; the points by the seed
        inst = np.random.default_rng(1_000_003 * (index + self.first_instance + 1))
        props, rot = inst.random(3), _random_rotation(inst)
        pts = _surface(SHAPE_CLASSES[label], self.num_points, props, rng)
        if self.rotate:
            pts = pts @ rot.T
        pts = normalize_points(pts, "shape_bbox")
        return {"values": self._tensor(pts), "label": torch.tensor(label)}

    def heldout(self, per_class: int, offset: int = HELDOUT_OFFSET) -> ShapesDataset:
        """The same classes, points and pose convention, on instances ``offset`` onwards (no
        overlap with the training instances while ``offset`` exceeds their count)."""
        return ShapesDataset(self.num_points, per_class, rotate=self.rotate, first_instance=offset)

    def clouds(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item once: clouds ``[S, N, 3]`` and labels ``[S]`` (points drawn from
        ``seed``)."""
        items = [self.load(i, np.random.default_rng([seed, i])) for i in range(len(self))]
        return (
            torch.stack([it["values"] for it in items]),
            torch.stack([it["label"] for it in items]),
        )

    def evaluate_samples(self, values: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Score generated clouds ``[S, N, 3]`` asked for ``labels``: see
        :func:`shapes_scores`."""
        return shapes_scores(values, labels, self.num_points, self.rotate)


CLASSIFIER_OFFSET = 2_000_000  # instances the recognition classifier learns from
CLASSIFIER_PER_CLASS = 100
CLASSIFIER_JITTER = 0.05
_CLASSIFIERS: dict[tuple[int, bool], Any] = {}


def _volumes(count: int, num_points: int, rotate: bool, seed: int) -> torch.Tensor:
    """``count`` clouds that fill a volume instead of lying on a surface: Gaussian blobs,
    solid boxes and solid ellipsoids with random proportions, normalised like the shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        axes = 0.3 + 0.7 * rng.random(3)
        if i % 3 == 0:
            pts = rng.normal(size=(num_points, 3))
        elif i % 3 == 1:
            pts = 2 * rng.random((num_points, 3)) - 1
        else:
            d = rng.normal(size=(num_points, 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            pts = d * rng.random((num_points, 1)) ** (1 / 3)
        pts = pts * axes
        if rotate:
            pts = pts @ _random_rotation(rng).T
        out.append(torch.from_numpy(normalize_points(pts, "shape_bbox")).float())
    return torch.stack(out)


NO_SHAPE = "none"  # the classifier's label for a cloud that fills a volume


def shapes_classifier(num_points: int, rotate: bool) -> Any:
    """The :class:`~inrflow.metrics.shapes.ShapeClassifier` trained on 100 real instances per
    class (none of them a training or held-out instance), built once per point count and pose
    convention.

    Every training cloud is seen twice: clean, and with Gaussian jitter of a random scale up to
    ``CLASSIFIER_JITTER`` (in the [-1, 1] box), so a generated shape whose points sit slightly
    off the surface is still judged by its shape, not rejected for its thickness. An eighth
    class, :data:`NO_SHAPE`, holds clouds that fill a volume (Gaussian blobs, solid boxes and
    ellipsoids): a blob is not counted as whichever class it happens to be nearest. It
    recognises over 98% of real held-out shapes, aligned or rotated
    (``tests/test_metrics_shapes.py``).
    """
    from inrflow.metrics.shapes import ShapeClassifier

    key = (num_points, rotate)
    if key not in _CLASSIFIERS:
        real = ShapesDataset(
            num_points, CLASSIFIER_PER_CLASS, rotate=rotate, first_instance=CLASSIFIER_OFFSET
        )
        clouds, labels = real.clouds(seed=1)
        g = torch.Generator().manual_seed(0)
        scale = torch.rand(len(clouds), 1, 1, generator=g) * CLASSIFIER_JITTER
        jittered = clouds + scale * torch.randn(clouds.shape, generator=g)
        volumes = _volumes(3 * CLASSIFIER_PER_CLASS, num_points, rotate, seed=5)
        none = torch.full((len(volumes),), len(SHAPE_CLASSES), dtype=labels.dtype)
        _CLASSIFIERS[key] = ShapeClassifier((*SHAPE_CLASSES, NO_SHAPE)).fit(
            torch.cat([clouds, jittered, volumes]), torch.cat([labels, labels, none])
        )
    return _CLASSIFIERS[key]


def shapes_scores(
    values: torch.Tensor, labels: torch.Tensor, num_points: int, rotate: bool
) -> dict[str, float]:
    """Recognition and MMD / COV / 1-NNA (Chamfer) of generated shapes ``[S, N, 3]`` asked for
    ``labels``, against fresh held-out real shapes, as many per class as the most-asked class
    has samples (:func:`inrflow.metrics.shapes.score_class_samples`)."""
    from inrflow.metrics.shapes import score_class_samples

    y = labels.detach().cpu().long()
    per_class = max(int(torch.bincount(y, minlength=len(SHAPE_CLASSES)).max()), 2)
    refs, ref_labels = ShapesDataset(
        num_points, per_class, rotate=rotate, first_instance=HELDOUT_OFFSET
    ).clouds(seed=2)
    return score_class_samples(
        values.detach().float().cpu(), y, refs, ref_labels, shapes_classifier(num_points, rotate)
    )
