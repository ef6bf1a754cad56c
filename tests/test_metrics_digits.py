"""The digits demo's classifier and its metrics (accuracy of conditional samples, FD-digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from inrflow.metrics import DigitsClassifier, digits_classifier, digits_metrics
from inrflow.metrics.digits import load_real_digits


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a busy 2-core machine: one thread avoids OpenMP oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_classifier_is_deterministic_and_accurate() -> None:
    clf = digits_classifier()
    assert clf is digits_classifier()  # cached per process
    again = DigitsClassifier(seed=0)
    for a, b in zip(clf.clf.coefs_, again.clf.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    assert clf.test_accuracy >= 0.95
    images, labels = load_real_digits()
    assert images.shape == (1797, 8, 8) and images.min() == 0.0 and images.max() == 1.0
    assert clf.accuracy(images, labels, (0, 1)) >= 0.97


def test_any_resolution_layout_and_value_range() -> None:
    clf = digits_classifier()
    images, labels = load_real_digits()
    x = torch.from_numpy(images[:300]).float()
    expected = clf.predict(x, (0, 1))
    # inrflow's [-1, 1] values, upsampled 4x (nearest), channel-first and channel-last, RGB
    up = (x * 2 - 1).repeat_interleave(4, 1).repeat_interleave(4, 2)
    np.testing.assert_array_equal(clf.predict(up, (-1, 1)), expected)
    np.testing.assert_array_equal(clf.predict(up[:, None], (-1, 1)), expected)
    np.testing.assert_array_equal(
        clf.predict(up[..., None].expand(-1, -1, -1, 3), (-1, 1)), expected
    )
    np.testing.assert_allclose(clf.features(up, (-1, 1)), clf.features(x, (0, 1)), atol=1e-6)
    # uint8 images map 0..255
    as_u8 = (x * 255).round().to(torch.uint8)
    assert (clf.predict(as_u8) == expected).mean() > 0.98
    assert clf.features(x, (0, 1)).shape == (300, 64)
    assert (expected == labels[:300]).mean() > 0.97


def test_digits_metrics_separate_real_from_noise() -> None:
    images, labels = load_real_digits()
    real = torch.from_numpy(images[:400]).float() * 2 - 1
    good = digits_metrics(real, labels[:400], value_range=(-1, 1))
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(400, 8, 8, generator=gen) * 2 - 1
    bad = digits_metrics(noise, labels[:400], value_range=(-1, 1))
    assert good["digits-accuracy"] > 0.97 and bad["digits-accuracy"] < 0.3
    assert good["FD-digits"] < 0.1 * bad["FD-digits"]
    assert good["KID-digits"] < bad["KID-digits"]
    # labels in the wrong order: accuracy collapses, FD does not change
    shuffled = digits_metrics(real, np.roll(labels[:400], 1), value_range=(-1, 1))
    assert shuffled["digits-accuracy"] < 0.3
    assert shuffled["FD-digits"] == pytest.approx(good["FD-digits"], rel=1e-12)
    assert "accuracy" not in str(digits_metrics(real[:50], value_range=(-1, 1)).keys())
