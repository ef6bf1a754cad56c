"""The ``digits`` demo's judge: a small classifier trained deterministically on the real digits.

scikit-learn's bundled ``load_digits`` (1,797 handwritten 8 x 8 digits, 16 grey levels) trains a
one-hidden-layer MLP (64 ReLU units, L-BFGS, fixed seed, single-threaded BLAS so the result does
not depend on the machine's thread count) in well under a second. It gives two numbers for
generated digits:

- ``digits-accuracy``: the fraction of class-conditional samples that the classifier labels as
  the class they were asked for (issue 5's quality bar: >= 80% of 500 CFG samples);
- ``FD-digits``: the Fréchet distance between samples and real digits in the classifier's hidden
  feature space, a domain-specific "FID" for 8 x 8 digits (not comparable with FID).

Samples of any resolution are brought to 8 x 8 by area averaging (exactly undoing a nearest
upsampling by an integer factor) and their values mapped to [0, 1] (``value_range``; inrflow's
image values are in [-1, 1]).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from inrflow.metrics._utils import ArrayLike, as_numpy64
from inrflow.metrics.frechet import feature_statistics, frechet_distance, kid
from inrflow.metrics.images import to_unit_float

__all__ = [
    "DIGITS_SIZE",
    "DigitsClassifier",
    "digits_classifier",
    "digits_metrics",
    "load_real_digits",
]

DIGITS_SIZE = 8


def load_real_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float64 ``[1797, 8, 8]`` images in [0, 1] and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the [eval] extra
        raise ImportError(
            "the digits metrics need scikit-learn: pip install 'inrflow[eval]'"
        ) from exc
    data = load_digits()
    return data.images.astype(np.float64) / 16.0, data.target.astype(np.int64)


class DigitsClassifier:
    """MLP on 8 x 8 digits: ``predict``/``predict_proba``/``accuracy`` and hidden ``features``.

    Trained on a fixed 75% split of the real digits (``test_accuracy`` is measured on the other
    25%, about 0.98). All methods take images in any layout :func:`to_unit_float` accepts
    (``[N, H, W]``, ``[N, 1|3, H, W]``, ``[N, H, W, 1|3]``; numpy or torch; RGB is averaged to
    grey) with values in ``value_range`` (None: inferred, uint8 -> [0, 255], negatives ->
    [-1, 1], else [0, 1]).
    """

    def __init__(self, seed: int = 0, hidden: int = 64, alpha: float = 1e-2) -> None:
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        images, labels = load_real_digits()
        x = images.reshape(len(images), -1)
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
        self.description = (
            f"sklearn MLP(64 ReLU) on load_digits, seed {seed}, held-out accuracy "
            f"{self.test_accuracy:.4f}"
        )

    # -- input ------------------------------------------------------------------------------------
    @staticmethod
    def preprocess(images: ArrayLike, value_range: Sequence[float] | None = None) -> np.ndarray:
        """Images -> float64 ``[N, 64]`` rows in [0, 1] (grey, 8 x 8 by area averaging)."""
        x = to_unit_float(
            images if isinstance(images, torch.Tensor) else np.asarray(images), value_range
        ).double()
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (DIGITS_SIZE, DIGITS_SIZE):
            if min(x.shape[-2:]) >= DIGITS_SIZE:
                x = F.adaptive_avg_pool2d(x, DIGITS_SIZE)
            else:
                x = F.interpolate(
                    x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False
                )
        return x.reshape(x.shape[0], -1).cpu().numpy()

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
        images, _ = load_real_digits()
        return self._hidden(images.reshape(len(images), -1))


@functools.lru_cache(maxsize=4)
def digits_classifier(seed: int = 0) -> DigitsClassifier:
    """The shared, cached classifier (trained once per process and seed)."""
    return DigitsClassifier(seed=seed)


def digits_metrics(
    samples: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    refs: ArrayLike | None = None,
    value_range: Sequence[float] | None = None,
    ref_value_range: Sequence[float] | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Classifier accuracy (when ``labels`` are given) and ``FD-digits`` of generated digits.

    ``refs`` defaults to all real digits; KID in the same feature space is reported too
    (``KID-digits``, unbiased, so it is comparable across sample counts).
    """
    clf = digits_classifier(seed)
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
