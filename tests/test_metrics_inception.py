"""The FID InceptionV3: standard state-dict layout, weight loading, the deterministic rFID net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inrflow.metrics.inception import (
    WEIGHTS_ENV,
    InceptionFeatureExtractor,
    InceptionV3,
    inception_extractor,
    random_inception_state_dict,
    state_dict_sha256,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# A sample of the torchvision ``Inception3`` layout of the FID weights file
# (pt_inception-2015-12-05-6726825d.pth): names and shapes our module must reproduce.
STANDARD_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch3x3dbl_3.bn.bias": (96,),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
    "Mixed_6e.branch7x7_2.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
# torchvision's inception_v3 has 27,161,264 parameters (1000 classes, with the aux head of
# 3,326,696); the FID graph has no aux head and 1008 classes (+8 * 2049).
FID_INCEPTION_PARAMS = 27_161_264 - 3_326_696 + 8 * 2049
# SHA-256 of the rFID weights for seed 0: they must never change, or rFID numbers of different
# runs, machines and inrflow versions stop being comparable.
RFID_SEED0_SHA256 = "237bd1d5ed7b"


@pytest.fixture(scope="module")
def rfid() -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(None, seed=0)


def test_architecture_has_the_standard_fid_layout() -> None:
    net = InceptionV3()
    state = net.state_dict()
    for name, shape in STANDARD_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    assert sum(p.numel() for p in net.parameters()) == FID_INCEPTION_PARAMS
    assert not any(k.startswith("AuxLogits") for k in state)


def test_rfid_weights_are_deterministic_and_pinned(rfid: InceptionFeatureExtractor) -> None:
    again = random_inception_state_dict(seed=0)
    ours = rfid.net.state_dict()
    assert all(torch.equal(again[k], ours[k]) for k in again)
    assert state_dict_sha256(again).startswith(RFID_SEED0_SHA256)
    assert rfid.weights_sha256.startswith(RFID_SEED0_SHA256)
    other = random_inception_state_dict(seed=1)
    assert not torch.equal(other["fc.weight"], again["fc.weight"])
    # our own init, not torch's: batch norms are identity, convolutions He-uniform
    w = again["Mixed_6b.branch1x1.conv.weight"]
    bound = (6.0 / 768) ** 0.5
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert torch.equal(again["Mixed_6b.branch1x1.bn.running_var"], torch.ones(192))


def test_rfid_features_are_deterministic_and_labelled(rfid: InceptionFeatureExtractor) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    pool, logits = rfid(images)  # the full path: resize to 299, scale, network
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool).all() and float(pool.std()) > 0
    fresh = InceptionFeatureExtractor(None, seed=0)
    pool2, _ = fresh(images.clone())
    assert torch.equal(pool, pool2)
    # grey input is the same image repeated to RGB
    grey = InceptionFeatureExtractor.preprocess(images[:, :1])
    rgb = InceptionFeatureExtractor.preprocess(images[:, :1].expand(-1, 3, -1, -1))
    assert torch.equal(grey, rgb) and grey.shape == (2, 3, 299, 299)
    assert float(grey.min()) >= -1.0 and float(grey.max()) <= 1.0
    assert rfid.kind == "rfid" and rfid.metric_name == "rFID"
    assert "RANDOM" in rfid.description and "not comparable" in rfid.description


def test_loads_a_fake_standard_state_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rfid: InceptionFeatureExtractor
) -> None:
    # A fake weights file in the FID file's layout (with the extra entries such files carry:
    # a DataParallel prefix, an aux head, batch-norm counters) loads, and the extractor then
    # computes exactly what the architecture computes with those weights.
    gen = torch.Generator().manual_seed(5)
    template = InceptionV3().state_dict()
    fake = {}
    for k, v in template.items():
        if k.endswith("num_batches_tracked"):
            fake["module." + k] = torch.tensor(0)
        elif k.endswith("running_var"):
            fake["module." + k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            fake["module." + k] = torch.randn(v.shape, generator=gen) * 0.05
    fake["module.AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "fake_inception.pth"
    torch.save(fake, path)

    ext = InceptionFeatureExtractor(path)
    assert ext.kind == "fid" and ext.metric_name == "FID"
    assert not ext.standard and "NON-STANDARD" in ext.description  # hash differs from the real
    ref = InceptionV3()
    ref.load_state_dict({k[len("module.") :]: v for k, v in fake.items() if "AuxLogits" not in k})
    ref.eval()
    x = torch.rand(2, 3, 75, 75, generator=gen) * 2 - 1  # 75 x 75: the smallest valid input
    with torch.no_grad():
        expected = ref(x)
        got = ext.net(x)
        random_net = rfid.net(x)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    assert not torch.equal(got[0], random_net[0])

    # The environment variable selects the same file.
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    assert inception_extractor().kind == "fid"
    monkeypatch.delenv(WEIGHTS_ENV)
    assert inception_extractor().kind == "rfid"


def test_rejects_files_that_are_not_fid_weights(tmp_path: Path) -> None:
    template = InceptionV3().state_dict()
    broken = dict(template)
    del broken["Mixed_7c.branch_pool.conv.weight"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing"):
        InceptionFeatureExtractor(tmp_path / "missing.pth")
    wrong = dict(template)
    wrong["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's ImageNet head, not the FID one
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="wrong shapes"):
        InceptionFeatureExtractor(tmp_path / "wrong.pth")
    with pytest.raises(FileNotFoundError):
        InceptionFeatureExtractor(tmp_path / "absent.pth")
