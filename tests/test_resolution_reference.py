"""The glyph yardstick of ``benchmarks/resolution_reference.py``: renders that exist at every
resolution, and a judge that can tell real high-resolution detail from interpolation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("PIL.ImageFont")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "resolution_reference.py"
_spec = importlib.util.spec_from_file_location("resolution_reference", _PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def test_glyphs_are_seeded_balanced_and_in_unit_range():
    a, labels = ref.render_glyphs(20, seed=5)
    b, _ = ref.render_glyphs(20, seed=5)
    c, _ = ref.render_glyphs(20, seed=6)
    assert a.shape == (20, ref.RENDER, ref.RENDER) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert labels.tolist() == [i % 10 for i in range(20)]
    assert a.min() >= 0 and a.max() <= 1
    # every glyph has ink, and it stays on the canvas (the border is empty)
    assert (a.flatten(1).mean(1) > 0.02).all()
    border = torch.cat([a[:, :2].flatten(1), a[:, -2:].flatten(1)], 1)
    assert border.max() < 0.05


def test_area_is_the_block_mean():
    x = torch.rand(3, 16, 16, dtype=torch.float64)
    expected = x.reshape(3, 4, 4, 4, 4).mean((2, 4))
    torch.testing.assert_close(ref.area(x, 4), expected)


def test_the_judge_prefers_real_detail_to_upsampled_low_resolution():
    from inrflow.metrics.digits import upsample_digits

    judge = ref.Judge(16, train=600, refs=300)
    assert judge.test_accuracy > 0.8
    real, labels = ref.render_glyphs(300, seed=3)
    high = judge.score(ref.area(real, 16), labels)
    nearest = judge.score(upsample_digits(ref.area(real, 4), 16, "nearest"), labels)
    assert high["FD"] < nearest["FD"] and high["accuracy"] > nearest["accuracy"]
    # real renders hold detail above the base side; a smooth upsampling of the base does not
    assert ref.speckle(ref.area(real, 16), 8) > 3 * ref.speckle(
        upsample_digits(ref.area(real, 8), 16, "bicubic"), 8
    )


def test_write_train_makes_a_class_folder_per_digit(tmp_path):
    ref.write_train(tmp_path, side=8, count=20)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == [str(i) for i in range(10)]
    from PIL import Image

    first = np.asarray(Image.open(next((tmp_path / "3").iterdir())))
    assert first.shape == (8, 8) and first.dtype == np.uint8 and first.max() > 0


def test_save_picture_writes_a_row_of_ten_per_entry(tmp_path):
    from PIL import Image

    shown = {"black": torch.zeros(10, 16, 16, dtype=torch.float64), "white": torch.ones(10, 16, 16)}
    ref.save_picture(shown, tmp_path / "p.png")
    img = np.asarray(Image.open(tmp_path / "p.png"))
    # two rows of ten 16x16 tiles, 1-pixel gaps, upscaled 4x (to 64 pixels a tile)
    assert img.shape == (4 * (2 * 17 + 1), 4 * (10 * 17 + 1))
    tile = 4 * 16
    assert (img[4 : 4 + tile, 4 : 4 + tile] == 0).all()  # first row: the black tiles
    assert (img[4 * 18 : 4 * 18 + tile, 4 : 4 + tile] == 255).all()  # second row: white
