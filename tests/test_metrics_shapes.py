"""Shape recognition (rotation-invariant descriptors + classifier) and the class-wise scores of
generated shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inrflow.data.demo import (
    NO_SHAPE,
    SHAPE_CLASSES,
    ShapesDataset,
    shapes_classifier,
    shapes_scores,
)
from inrflow.metrics.pointcloud import one_nna, pairwise_chamfer
from inrflow.metrics.shapes import ShapeClassifier, score_class_samples, shape_descriptors


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q.double()


def test_descriptors_ignore_rotation_reflection_order_shift_and_scale() -> None:
    clouds, _ = ShapesDataset(128, 1, rotate=True).clouds(seed=0)
    base = shape_descriptors(clouds)
    moved = clouds.double() @ _rotation(1).T * 1.7 + torch.tensor([0.3, -0.2, 0.5]).double()
    moved = moved[:, torch.randperm(128, generator=torch.Generator().manual_seed(2))]
    # the D2 pairs are drawn by index, so a reordering draws other pairs: close, not equal
    np.testing.assert_allclose(shape_descriptors(moved), base, atol=0.05)
    same_order = clouds.double() @ _rotation(3).T * 0.5
    np.testing.assert_allclose(shape_descriptors(same_order), base, atol=1e-6)
    assert base.shape[0] == 7 and np.isfinite(base).all()


def test_descriptors_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        shape_descriptors(torch.zeros(2, 64, 2))
    with pytest.raises(ValueError, match=r"N > "):
        shape_descriptors(torch.zeros(2, 5, 3))
    bad = torch.zeros(1, 64, 3)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        shape_descriptors(bad)


@pytest.mark.parametrize("rotate", [False, True])
def test_classifier_recognises_real_held_out_shapes(rotate: bool) -> None:
    clf = shapes_classifier(256, rotate)
    clouds, labels = ShapesDataset(256, 30, rotate=rotate, first_instance=5_000_000).clouds(7)
    assert clf.accuracy(clouds, labels) >= 0.95
    assert min(clf.per_class_accuracy(clouds, labels).values()) >= 0.85
    # gaussian blobs are not recognised as any shape: the classifier calls them "none"
    blobs = torch.randn(70, 256, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    assert clf.accuracy(blobs, labels[:70]) < 0.05
    assert (clf.predict(blobs) == len(SHAPE_CLASSES)).mean() > 0.95
    assert clf.class_names[len(SHAPE_CLASSES)] == NO_SHAPE


def test_classifier_errors() -> None:
    clf = ShapeClassifier(SHAPE_CLASSES)
    with pytest.raises(RuntimeError, match="before fit"):
        clf.predict(torch.randn(1, 64, 3))
    clouds, labels = ShapesDataset(64, 2).clouds()
    with pytest.raises(ValueError, match="every class"):
        ShapeClassifier(SHAPE_CLASSES).fit(clouds[:7], labels[:7] * 0)
    with pytest.raises(ValueError, match="labels for"):
        ShapeClassifier(SHAPE_CLASSES).fit(clouds, labels[:3])
    with pytest.raises(ValueError, match="at least two"):
        ShapeClassifier(["one"])


def test_scores_match_the_obvious_computation() -> None:
    clf = shapes_classifier(128, False)
    samples, s_lab = ShapesDataset(128, 4, first_instance=7_000_000).clouds(seed=1)
    refs, r_lab = ShapesDataset(128, 5, first_instance=8_000_000).clouds(seed=2)
    got = score_class_samples(samples, s_lab, refs, r_lab, clf)
    pred = clf.predict(samples)
    assert got["recognition"] == pytest.approx(float((pred == s_lab.numpy()).mean()))
    per = []
    for k, name in enumerate(SHAPE_CLASSES):
        s, r = samples[s_lab == k], refs[r_lab == k]
        expect = one_nna(pairwise_chamfer(r), pairwise_chamfer(s), pairwise_chamfer(r, s))
        assert got[f"1-NNA-CD/{name}"] == pytest.approx(expect)
        per.append(expect)
        assert got[f"recognition/{name}"] == pytest.approx(float((pred[s_lab == k] == k).mean()))
    assert got["1-NNA-CD_mean"] == pytest.approx(np.mean(per))
    assert got["recognition_min"] == min(got[f"recognition/{n}"] for n in SHAPE_CLASSES)
    assert 0.0 <= got["COV-CD"] <= 100.0 and got["MMD-CD"] > 0


def test_real_shapes_score_well_and_blobs_badly() -> None:
    real, labels = ShapesDataset(256, 10, first_instance=9_000_000).clouds(seed=4)
    good = shapes_scores(real, labels, 256, rotate=False)
    assert good["recognition"] >= 0.95 and good["1-NNA-CD_mean"] < 75
    blobs = torch.randn(70, 256, 3, generator=torch.Generator().manual_seed(1)) * 0.5
    bad = shapes_scores(blobs, labels, 256, rotate=False)
    assert bad["recognition"] < 0.05 and bad["1-NNA-CD_mean"] > 90


def test_aligned_instances_keep_their_pose_and_proportions() -> None:
    aligned = ShapesDataset(512, 3)
    rotated = ShapesDataset(512, 3, rotate=True)
    for index in (3, 10):  # cylinders: the axis is z, the cross-section a circle
        pts = aligned[(index, 0)]["values"].double()
        radius = pts[:, :2].norm(dim=1)
        assert radius.std() < 0.01 * radius.mean()
        turned = rotated[(index, 0)]["values"].double()
        assert turned[:, :2].norm(dim=1).std() > 0.05
    # proportions are random per instance: two cylinders differ in radius / height
    r3 = aligned[(3, 0)]["values"][:, :2].norm(dim=1).mean()
    r10 = aligned[(10, 0)]["values"][:, :2].norm(dim=1).mean()
    assert abs(float(r3 - r10)) > 1e-3
    # held-out instances are not training instances
    held = aligned.heldout(3)
    assert held.first_instance > len(aligned) and held.rotate is False
    assert not torch.allclose(held[(3, 0)]["values"], aligned[(3, 0)]["values"])
    with pytest.raises(ValueError, match="first_instance"):
        ShapesDataset(16, 1, first_instance=-1)
