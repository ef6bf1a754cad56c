"""The digits demo's classifier and its metrics (accuracy of conditional samples, FD-digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from inrflow.data.digits import load_real_digits
from inrflow.metrics import DigitsClassifier, digits_classifier, digits_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_high_resolution_classifier_and_its_reference() -> None:
    """Above 8x8 the classifier learns real digits upsampled bicubically: it recognises them,
    and per-pixel noise (speckle) raises their FD to the reference monotonically."""
    from inrflow.metrics.digits import upsample_digits

    clf = digits_classifier(size=16)
    assert clf is digits_classifier(size=16) and clf.size == 16 and clf.test_accuracy >= 0.95
    images, labels = load_real_digits()
    up = upsample_digits(images, 16)
    assert up.shape == (1797, 16, 16) and up.min() >= 0.0 and up.max() <= 1.0
    torch.testing.assert_close(upsample_digits(images[:5], 8), torch.from_numpy(images[:5]))
    nearest = torch.from_numpy(images[:5]).repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(upsample_digits(images[:5], 16, "nearest"), nearest)
    with pytest.raises(ValueError, match="mode"):
        upsample_digits(images[:5], 16, "area")
    assert clf.accuracy(up, labels, (0, 1)) >= 0.97
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(400, 16, 16, generator=gen, dtype=torch.float64)
    fds = [
        digits_metrics((up[:400] + s * noise).clamp(0, 1), value_range=(0, 1), size=16)["FD-digits"]
        for s in (0.0, 0.15, 0.3, 1.0)
    ]
    assert fds == sorted(fds) and fds[0] < 0.2 * fds[-1], fds  # more speckle, larger FD
    # a 32x32 sample is area-averaged to the classifier's 16x16
    big = upsample_digits(images[:300], 32)
    assert clf.accuracy(big, labels[:300], (0, 1)) >= 0.95
    with pytest.raises(ValueError, match="size"):
        DigitsClassifier(size=4)


def test_upsampling_residual_measures_detail_beyond_the_base() -> None:
    from inrflow.metrics.digits import upsample_digits
    from inrflow.metrics.images import upsampling_residual

    images, _ = load_real_digits()
    up = upsample_digits(images[:500], 32).float()
    smooth = upsampling_residual(up, 8, (0, 1))
    assert 0.02 < smooth < 0.07  # the bicubic round trip is not exact
    assert upsampling_residual(torch.full((4, 32, 32), 0.3), 8, (0, 1)) == pytest.approx(
        0, abs=1e-9
    )
    gen = torch.Generator().manual_seed(1)
    # white noise of std s keeps ~15/16 of its variance (its 4x4-block means are removed); the
    # value range (-1, 2) maps everything into [0, 1] by a factor 1/3, noise included
    noisy = up + 0.2 * torch.randn(up.shape, generator=gen)
    expected = np.sqrt((smooth / 3) ** 2 + (0.2 / 3) ** 2 * 15 / 16)
    assert upsampling_residual(noisy, 8, (-1, 2)) == pytest.approx(expected, rel=0.05)
    # pixel noise of std s on [0, 1] images adds about s
    assert (
        upsampling_residual(up * 0.5 + 0.25 + 0.1 * torch.randn(up.shape, generator=gen), 8, (0, 1))
        > 0.09
    )
    with pytest.raises(ValueError, match="at least"):
        upsampling_residual(torch.zeros(2, 6, 6), 8, (0, 1))


def test_within_class_diversity() -> None:
    from inrflow.metrics.digits import within_class_diversity

    images, labels = load_real_digits()
    assert within_class_diversity(images, labels, (0, 1)) == pytest.approx(1.0, rel=1e-12)
    # one image per class, repeated: no spread at all
    firsts = np.stack([images[labels == k][0] for k in range(10)])
    assert within_class_diversity(np.repeat(firsts, 5, 0), np.repeat(np.arange(10), 5), (0, 1)) == 0
    # a class subset is compared with the same classes of the real digits
    sub = labels < 3
    assert within_class_diversity(images[sub], labels[sub], (0, 1)) == pytest.approx(1.0)
    # shrinking every image towards its class mean shrinks the figure by the same factor
    means = {k: images[labels == k].mean(0) for k in range(10)}
    centre = np.stack([means[k] for k in labels])
    half = centre + 0.5 * (images - centre)
    assert within_class_diversity(half, labels, (0, 1)) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        within_class_diversity(images[:5], labels[:4], (0, 1))
    with pytest.raises(ValueError, match="two or more"):
        within_class_diversity(images[:3], np.array([0, 1, 2]), (0, 1))
