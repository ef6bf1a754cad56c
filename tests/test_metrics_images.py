"""Image sets for the metrics: lossless folder reading, layouts, value ranges, and the FID family
pipeline (with a small stand-in extractor: the Inception network is tested on its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyExtractor

from inrflow.metrics import compute_image_metrics, load_images, to_unit_float
from inrflow.metrics.images import infer_value_range

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)


def test_layouts_and_value_ranges() -> None:
    x = torch.rand(2, 3, 5, 7)
    nhwc = x.permute(0, 2, 3, 1)
    torch.testing.assert_close(to_unit_float(nhwc, (0, 1)), x)
    torch.testing.assert_close(to_unit_float(x * 2 - 1, (-1, 1)), x, rtol=0, atol=1e-6)
    grey = to_unit_float(torch.rand(2, 5, 7), (0, 1))
    assert grey.shape == (2, 1, 5, 7)
    rgba = torch.randint(0, 256, (2, 4, 4, 4), dtype=torch.uint8)
    assert to_unit_float(rgba).shape == (2, 3, 4, 4)
    assert infer_value_range(rgba) == (0.0, 255.0)
    assert infer_value_range(x * 2 - 1) == (-1.0, 1.0)
    assert infer_value_range(x) == (0.0, 1.0)
    with pytest.raises(ValueError, match="channels"):
        to_unit_float(torch.rand(2, 5, 6, 7))


def test_png_folder_is_read_losslessly(tmp_path: Path) -> None:
    from PIL import Image

    imgs = _images(5, seed=0)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")  # other files are ignored
    loaded = load_images(tmp_path)
    assert loaded.dtype == torch.uint8
    assert torch.equal(loaded, torch.from_numpy(imgs).permute(0, 3, 1, 2))


def test_array_files_and_batching(tmp_path: Path) -> None:
    imgs = _images(7, seed=1)
    np.savez(tmp_path / "set.npz", samples=imgs, labels=np.arange(7))
    torch.save({"images": torch.from_numpy(imgs)}, tmp_path / "set.pt")
    expected = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    assert torch.equal(load_images(tmp_path / "set.npz"), expected)
    assert torch.equal(load_images(tmp_path / "set.pt"), expected)
    folder = tmp_path / "per_image"
    folder.mkdir()
    for i, im in enumerate(imgs):
        np.save(folder / f"{i}.npy", im)
    assert torch.equal(load_images(folder), expected)
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "nothing_here")


def test_metrics_pipeline_with_a_stand_in_extractor(tmp_path: Path) -> None:
    from PIL import Image

    refs = _images(40, seed=2)
    for i, im in enumerate(refs):
        Image.fromarray(im).save(tmp_path / f"{i:03d}.png")
    # samples: the same images as floats in [-1, 1], as inrflow produces them
    samples = torch.from_numpy(refs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ext = TinyExtractor("rfid")
    out = compute_image_metrics(
        samples,
        tmp_path,
        extractor=ext,
        batch_size=16,
        kid_subsets=10,
        kid_subset_size=20,
        progress=False,
    )
    # Identical sets (read back from PNG bit-exactly) -> distance 0, full precision/recall.
    assert out["rFID"] == pytest.approx(0.0, abs=1e-9)
    assert out["rPrecision"] == 1.0 and out["rRecall"] == 1.0
    assert "FID" not in out and "precision" not in out  # random features never called FID
    assert out["IS"] is None and "real Inception" in str(out["IS-note"])
    assert out["sample_value_range"] == [-1.0, 1.0] and out["ref_value_range"] == [0.0, 255.0]
    assert out["num_samples"] == 40 and out["num_refs"] == 40
    # The extractor saw [0, 1] images in batches of at most 16.
    assert all(b.shape[0] <= 16 and b.min() >= 0 and b.max() <= 1 for b in ext.seen)

    real = TinyExtractor("fid")
    other = 0.5 * torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # darker
    out = compute_image_metrics(
        other,
        samples,
        extractor=real,
        value_range=(0, 1),
        ref_value_range=(-1, 1),
        kid_subsets=10,
        kid_subset_size=20,
        progress=False,
    )
    assert out["FID"] > 0 and out["KID"] > 0 and "IS" in out and out["IS"] >= 1.0
    with pytest.raises(ValueError, match="unknown image metrics"):
        compute_image_metrics(other, samples, extractor=real, metrics=("fid",), progress=False)
