"""The training-progress signals: loss per time band, class-named PLYs, the sample picture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from inrflow.data.demo import ShapesDataset
from inrflow.data.io import save_point_cloud_grid
from inrflow.domains.pointcloud import class_picture, save_class_clouds
from inrflow.train.progress import TimeBucketLoss, append_progress


def test_time_bucket_means_match_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(0)
    buckets = TimeBucketLoss(torch.device("cpu"), edges=(0.0, 0.5, 0.9, 1.0))
    ts, losses = [], []
    for _ in range(4):
        t, loss = torch.rand(8, generator=g), torch.rand(8, generator=g)
        t[0] = 0.5  # on an edge: belongs to the band that starts there
        buckets.add(loss, t)
        ts.append(t)
        losses.append(loss)
    t, loss = torch.cat(ts), torch.cat(losses)
    got = buckets.read()
    assert list(got) == ["loss_t/0.0-0.5", "loss_t/0.5-0.9", "loss_t/0.9-1.0"]
    for name, lo, hi in zip(got, (0.0, 0.5, 0.9), (0.5, 0.9, 1.0), strict=True):
        inside = (t >= lo) & (t < hi)
        assert got[name] == pytest.approx(loss[inside].double().mean().item())
    # read resets; an empty band is NaN
    buckets.add(torch.tensor([1.0]), torch.tensor([0.95]))
    again = buckets.read()
    assert again["loss_t/0.9-1.0"] == 1.0 and again["loss_t/0.0-0.5"] != again["loss_t/0.0-0.5"]
    # the pooled sums of two ranks: an all-reduce that doubles every sum and count
    buckets.add(torch.tensor([2.0]), torch.tensor([0.1]))
    assert buckets.read(lambda v: [2 * x for x in v])["loss_t/0.0-0.5"] == 2.0
    with pytest.raises(ValueError, match="increasing"):
        TimeBucketLoss(torch.device("cpu"), edges=(0.0, 0.5, 0.5))


def test_progress_file_and_class_named_clouds(tmp_path) -> None:
    append_progress(tmp_path, 10, {"a": 1.0})
    append_progress(tmp_path, 20, {"a": 0.5})
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"step": 10, "a": 1.0}, {"step": 20, "a": 0.5}]
    clouds = torch.rand(3, 16, 3)
    save_class_clouds(clouds, torch.tensor([0, 2, 1]), ("sphere", "torus", "box"), tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["sample_000_sphere.ply", "sample_001_box.ply", "sample_002_torus.ply"]
    save_class_clouds(clouds, None, (), tmp_path / "u")
    assert sorted(p.name for p in (tmp_path / "u").iterdir())[0] == "sample_000.ply"


def test_class_picture_rows_and_errors(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    ds = ShapesDataset(64, 2)
    clouds, labels = ds.clouds()
    png = class_picture(ds, clouds, labels, tmp_path / "s.png", per_row=2, real=1)
    w, h = Image.open(png).size
    assert h > 6 * w / 3 * 0.9  # 7 rows of 3 cells: taller than wide
    with pytest.raises(ValueError, match="every row"):
        save_point_cloud_grid([[clouds[0]], []], tmp_path / "x.png")
    with pytest.raises(ValueError, match="row names"):
        save_point_cloud_grid([[clouds[0]]], tmp_path / "x.png", row_names=["a", "b"])


def test_a_shapes_run_logs_time_bands_scores_and_writes_the_picture(tmp_path) -> None:
    from helpers import TINY_MODEL, tiny_config, train

    model = {k: TINY_MODEL[k] for k in ("hidden", "depth", "heads", "encoder_heads")}
    cfg = tiny_config(
        tmp_path,
        data="shapes",
        num_points=32,
        steps=4,
        model=model,
        ckpt_every=0,
        log_every=2,
        sample_every=2,
        num_samples=7,
        final_samples=14,
        sample_steps=2,
        pairing="ot",
        time_loc=1.0,
    )
    summary = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    bands = [r for r in rows if "loss_t/0.9-1.0" in r]
    assert [r["step"] for r in bands] == [2, 4]
    scored = [r for r in rows if "samples/recognition" in r]
    assert [r["step"] for r in scored] == [2]  # the last step's samples are the final ones
    assert 0.0 <= scored[0]["samples/recognition"] <= 1.0
    final = sorted(p.name for p in (tmp_path / "samples" / "final").iterdir())
    assert final[:2] == ["sample_000_sphere.ply", "sample_001_torus.ply"] and len(final) == 14
    assert Path(summary["picture"]).exists()
    scores = json.loads((tmp_path / "final_scores.json").read_text())
    assert {"recognition", "recognition_min", "1-NNA-CD_mean", "MMD-CD", "COV-CD"} <= set(scores)
