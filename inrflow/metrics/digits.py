"""The ``digits`` demo's judge: a small classifier trained deterministically on the real digits.

The real digits (scikit-learn's ``load_digits``: :func:`inrflow.data.digits.load_real_digits`)
train a one-hidden-layer MLP (64 ReLU units, L-BFGS, fixed seed, single-threaded BLAS so the
result does not depend on the machine's thread count) in well under a second. It gives two
numbers for generated digits:

- ``digits-accuracy``: the fraction of class-conditional samples that the classifier labels as
  the class they were asked for;
- ``FD-digits``: the Fréchet distance between samples and real digits in the classifier's hidden
  feature space, a domain-specific "FID" for 8 x 8 digits (not comparable with FID).

Samples of any resolution are brought to 8 x 8 by area averaging (exactly undoing a nearest
upsampling by an integer factor) and their values mapped to [0, 1] (``value_range``; inrflow's
image values are in [-1, 1]).

Above 8 x 8 there are no real digits, so a classifier of ``size`` > 8 is trained on the real
digits upsampled bicubically to ``size`` (:func:`upsample_digits`): its Fréchet distance asks
"does this look like a smoothly upsampled real digit?", which is what higher-resolution sampling
should produce. That reference is built the way the bicubic baseline is, so it favours bicubic
upsampling of 8 x 8 samples, never the model's native sampling: a conservative yardstick for
any-resolution generation. Two more figures describe what the classifier does not see:

- :func:`inrflow.metrics.images.upsampling_residual` ("speckle", with an 8 x 8 base): the RMS of
  what an image holds beyond its base resolution; pixel noise in high-resolution samples raises
  it (real digits upsampled bicubically: ~0.04-0.05, the round trip is not exact);
- :func:`within_class_diversity`: the mean pairwise distance of same-class samples relative to
  real digits (1.0: as diverse as the data; strong guidance lowers it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from inrflow.data.digits import load_real_digits
from inrflow.metrics._utils import ArrayLike, as_numpy64
from inrflow.metrics.frechet import feature_statistics, frechet_distance, kid
from inrflow.metrics.images import to_unit_float

__all__ = [
    "DIGITS_SIZE",
    "DigitsClassifier",
    "digits_classifier",
    "digits_metrics",
    "upsample_digits",
    "within_class_diversity",
]

DIGITS_SIZE = 8


def upsample_digits(images: ArrayLike, size: int, mode: str = "bicubic") -> torch.Tensor:
    """``[N, h, w]`` images in [0, 1] -> float64 ``[N, size, size]`` by ``mode`` interpolation
    (``bicubic`` or ``bilinear``, pixel-centre aligned as inrflow's grids are, or ``nearest``),
    clipped to [0, 1]; ``area`` averaging when shrinking."""
    if mode not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"mode must be bicubic, bilinear or nearest, got {mode!r}")
    x = torch.as_tensor(np.asarray(images, dtype=np.float64)).unsqueeze(1)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x[:, 0].clone()
    if min(x.shape[-2:]) > size:
        return F.adaptive_avg_pool2d(x, size)[:, 0]
    corners = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=(size, size), mode=mode, **corners).clamp(0, 1)[:, 0]


def within_class_diversity(
    images: ArrayLike, labels: ArrayLike, value_range: Sequence[float] | None = None
) -> float:
    """Mean pairwise L2 distance between same-class images (at 8 x 8, values in [0, 1]),
    averaged over the classes with >= 2 images, divided by the same figure for the real
    digits: 1.0 is the data's own spread, lower means collapsed (e.g. by strong guidance)."""
    x = _to_rows(images, value_range, DIGITS_SIZE)
    y = as_numpy64(labels).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    real, real_y = load_real_digits()
    ours = _mean_within_class_distance(x, y)
    if ours is None:
        raise ValueError("within-class diversity needs two or more images of some class")
    ref = _mean_within_class_distance(real.reshape(len(real), -1), real_y, classes=np.unique(y))
    return ours / ref


def _mean_within_class_distance(
    x: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None
) -> float | None:
    """Mean over ``classes`` (default: all with >= 2 members) of the mean pairwise distance."""
    per_class = []
    for k in np.unique(y) if classes is None else classes:
        members = x[y == k]
        n = len(members)
        if n < 2:
            continue
        d = np.sqrt(((members[:, None] - members[None]) ** 2).sum(-1))
        per_class.append(d.sum() / (n * (n - 1)))
    return float(np.mean(per_class)) if per_class else None


class DigitsClassifier:
    """MLP on 8 x 8 digits: ``predict``/``predict_proba``/``accuracy`` and hidden ``features``.

    Trained on a fixed 75% split of the real digits (``test_accuracy`` is measured on the other
    25%, about 0.98). All methods take images in any layout :func:`to_unit_float` accepts
    (``[N, H, W]``, ``[N, 1|3, H, W]``, ``[N, H, W, 1|3]``; numpy or torch; RGB is averaged to
    grey) with values in ``value_range`` (None: inferred, uint8 -> [0, 255], negatives ->
    [-1, 1], else [0, 1]).
    """

    def __init__(
        self, seed: int = 0, hidden: int = 64, alpha: float = 1e-2, size: int = DIGITS_SIZE
    ) -> None:
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        if size < DIGITS_SIZE:
            raise ValueError(f"size must be >= {DIGITS_SIZE}, got {size}")
        images, labels = load_real_digits()
        self.size = size
        x = self.real_images().reshape(len(images), -1)
        perm = np.random.default_rng(seed).permutation(len(x))
        n_train = round(0.75 * len(x))
        train, test = perm[:n_train], perm[n_train:]
        self.seed = seed
        self.clf = MLPClassifier(
            hidden_layer_sizes=(hidden,),
            solver="lbfgs",
            alpha=alpha,
            max_iter=1000,
            random_state=seed,
        )
        # One BLAS thread: faster for this size, and the fit is the same on every machine.
        with threadpool_limits(1):
            self.clf.fit(x[train], labels[train])
        self.test_accuracy = float((self.clf.predict(x[test]) == labels[test]).mean())
        real = "load_digits" if size == DIGITS_SIZE else f"load_digits upsampled to {size}x{size}"
        self.description = (
            f"sklearn MLP(64 ReLU) on {real}, seed {seed}, held-out accuracy "
            f"{self.test_accuracy:.4f}"
        )

    def real_images(self) -> np.ndarray:
        """The real digits at this classifier's size (bicubic upsampling above 8 x 8)."""
        images, _ = load_real_digits()
        return upsample_digits(images, self.size).numpy()

    # -- input ------------------------------------------------------------------------------------
    def preprocess(
        self, images: ArrayLike, value_range: Sequence[float] | None = None
    ) -> np.ndarray:
        """Images -> float64 ``[N, size * size]`` rows in [0, 1] (grey; larger images area
        averaged to ``size``, smaller ones bilinearly upsampled)."""
        return _to_rows(images, value_range, self.size)

    # -- outputs ----------------------------------------------------------------------------------
    def predict_proba(
        self, images: ArrayLike, value_range: Sequence[float] | None = None
    ) -> np.ndarray:
        return self.clf.predict_proba(self.preprocess(images, value_range))

    def predict(self, images: ArrayLike, value_range: Sequence[float] | None = None) -> np.ndarray:
        return self.clf.predict(self.preprocess(images, value_range)).astype(np.int64)

    def accuracy(
        self, images: ArrayLike, labels: ArrayLike, value_range: Sequence[float] | None = None
    ) -> float:
        """Fraction of ``images`` classified as ``labels`` (the classes they were sampled for)."""
        y = as_numpy64(labels).astype(np.int64).reshape(-1)
        pred = self.predict(images, value_range)
        if pred.shape != y.shape:
            raise ValueError(f"{len(pred)} images but {len(y)} labels")
        return float((pred == y).mean())

    def features(self, images: ArrayLike, value_range: Sequence[float] | None = None) -> np.ndarray:
        """Hidden-layer activations ``relu(x W1 + b1)``, float64 ``[N, 64]``."""
        return self._hidden(self.preprocess(images, value_range))

    def _hidden(self, x: np.ndarray) -> np.ndarray:
        w, b = self.clf.coefs_[0], self.clf.intercepts_[0]
        return np.maximum(x @ w + b, 0.0)

    def real_features(self) -> np.ndarray:
        """Features of all 1,797 real digits (the default reference set)."""
        images = self.real_images()
        return self._hidden(images.reshape(len(images), -1))


def _to_rows(images: ArrayLike, value_range: Sequence[float] | None, size: int) -> np.ndarray:
    """Images -> float64 ``[N, size * size]`` rows in [0, 1], grey, at ``size`` x ``size``."""
    x = to_unit_float(
        images if isinstance(images, torch.Tensor) else np.asarray(images), value_range
    ).double()
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (size, size):
        if min(x.shape[-2:]) >= size:
            x = F.adaptive_avg_pool2d(x, size)
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.reshape(x.shape[0], -1).cpu().numpy()


@functools.lru_cache(maxsize=8)
def digits_classifier(seed: int = 0, size: int = DIGITS_SIZE) -> DigitsClassifier:
    """The shared, cached classifier (trained once per process, seed and size)."""
    return DigitsClassifier(seed=seed, size=size)


def digits_metrics(
    samples: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    refs: ArrayLike | None = None,
    value_range: Sequence[float] | None = None,
    ref_value_range: Sequence[float] | None = None,
    seed: int = 0,
    size: int = DIGITS_SIZE,
) -> dict[str, object]:
    """Classifier accuracy (when ``labels`` are given) and ``FD-digits`` of generated digits.

    ``refs`` defaults to all real digits (at ``size``: see :class:`DigitsClassifier`); KID in
    the same feature space is reported too (``KID-digits``, unbiased, so it is comparable across
    sample counts).
    """
    clf = digits_classifier(seed, size)
    feats = clf.features(samples, value_range)
    ref_feats = clf.real_features() if refs is None else clf.features(refs, ref_value_range)
    out: dict[str, object] = {
        "classifier": clf.description,
        "num_samples": len(feats),
        "num_refs": len(ref_feats),
    }
    if labels is not None:
        out["digits-accuracy"] = clf.accuracy(samples, labels, value_range)
    if len(feats) >= 2:
        mu1, s1 = feature_statistics(feats)
        mu2, s2 = feature_statistics(ref_feats)
        out["FD-digits"] = frechet_distance(mu1, s1, mu2, s2)
        mean, std = kid(feats, ref_feats, subsets=50, subset_size=min(500, len(feats)))
        out["KID-digits"], out["KID-digits-std"] = mean, std
    return out
