"""Datasets, the deterministic distributed stream, the flow-matching collate, sample writers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inrflow.data import (
    DataWarning,
    DigitsDataset,
    FlowCollate,
    ImageFolderDataset,
    PointCloudDataset,
    ShapesDataset,
    StreamSampler,
    UnreadableFileError,
    build_loader,
    digits_classifier_accuracy,
    save_image_grid,
    save_ply,
)
from inrflow.data.demo import SHAPE_CLASSES
from inrflow.data.digits import load_real_digits
from inrflow.data.images import bilinear_at, continuous_coords
from inrflow.domains import build_dataset
from inrflow.model import grid_coords

# ------------------------------------------------------------------------------------------------
# the stream
# ------------------------------------------------------------------------------------------------


def take(sampler: StreamSampler, n: int) -> list[tuple[int, int]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_ranks_together_see_exactly_the_single_process_stream() -> None:
    one = take(StreamSampler(50, 8, seed=3), 8 * 20)
    r0 = take(StreamSampler(50, 8, rank=0, world=2, seed=3), 4 * 20)
    r1 = take(StreamSampler(50, 8, rank=1, world=2, seed=3), 4 * 20)
    merged = []
    for s in range(20):
        merged += r0[4 * s : 4 * s + 4] + r1[4 * s : 4 * s + 4]
    assert merged == one


def test_stream_resumes_at_a_step_and_epochs_are_permutations() -> None:
    full = take(StreamSampler(30, 6, seed=1), 6 * 25)
    resumed = take(StreamSampler(30, 6, seed=1, start_step=7), 6 * 18)
    assert resumed == full[6 * 7 :]
    for e in range(5):  # every epoch visits each item once, in a fresh order
        idx = [i for i, _ in full[30 * e : 30 * e + 30]]
        assert sorted(idx) == list(range(30))
    assert [i for i, _ in full[:30]] != [i for i, _ in full[30:60]]
    assert len({s for _, s in full}) == len(full)  # a distinct seed per position


def test_stream_rejects_indivisible_batch() -> None:
    with pytest.raises(ValueError, match="divisible"):
        StreamSampler(10, 7, rank=0, world=2)


def test_collate_draws_depend_only_on_each_sample_seed() -> None:
    items = [
        {
            "values": torch.randn(64, 1),
            "coords": grid_coords((8, 8)),
            "label": torch.tensor(i),
            "skipped": 0,
            "seed": 1000 + i,
        }
        for i in range(6)
    ]
    collate = FlowCollate(num_queries=16, num_classes=10, label_dropout=0.5)
    whole = collate(items)
    halves = [collate(items[:3]), collate(items[3:])]
    for key in ("t", "noise", "query_index", "labels", "values", "coords"):
        torch.testing.assert_close(whole[key], torch.cat([h[key] for h in halves]), rtol=0, atol=0)
    assert whole["query_index"].shape == (6, 16)
    for row in whole["query_index"]:
        assert row.unique().numel() == 16 and row.max() < 64
    assert ((whole["t"] > 0) & (whole["t"] < 1)).all()
    dropped = whole["labels"] == 10
    kept = ~dropped
    assert dropped.any() and kept.any()  # p = 0.5 over 6 samples with these seeds
    assert (whole["labels"][kept] == torch.arange(6)[kept]).all()
    # all pairs decoded: no query index at all
    assert "query_index" not in FlowCollate(num_queries=None)(items)


def test_ot_pairing_reorders_each_clouds_noise_towards_its_points() -> None:
    ds = ShapesDataset(64, 2)
    items = [{**ds[(i, 50 + i)], "skipped": 0, "seed": 50 + i} for i in range(5)]
    plain = FlowCollate(None, num_classes=7)(items)
    paired = FlowCollate(None, num_classes=7, pairing="ot")(items)
    for key in ("t", "labels", "values"):  # only the noise's order changes
        torch.testing.assert_close(paired[key], plain[key], rtol=0, atol=0)
    for i in range(5):
        a, b = paired["noise"][i], plain["noise"][i]
        order = torch.cdist(a, b).argmin(1)
        assert sorted(order.tolist()) == list(range(64))
        torch.testing.assert_close(a, b[order], rtol=0, atol=0)
        x1 = plain["values"][i]
        assert ((a - x1) ** 2).sum() < 0.8 * ((b - x1) ** 2).sum()
    halves = [
        FlowCollate(None, num_classes=7, pairing="ot")(items[k]) for k in (slice(0, 2), slice(2, 5))
    ]
    torch.testing.assert_close(paired["noise"], torch.cat([h["noise"] for h in halves]))
    image_item = {"values": torch.randn(4, 1), "coords": torch.rand(4, 2), "skipped": 0, "seed": 1}
    with pytest.raises(ValueError, match="point cloud"):
        FlowCollate(None, pairing="ot")([image_item])
    with pytest.raises(ValueError, match="pairing"):
        FlowCollate(None, pairing="sinkhorn")


def test_label_dropout_rate() -> None:
    items = [
        {"values": torch.zeros(4, 1), "label": torch.tensor(1), "skipped": 0, "seed": s}
        for s in range(4000)
    ]
    labels = FlowCollate(None, num_classes=3, label_dropout=0.1)(items)["labels"]
    assert abs((labels == 3).float().mean().item() - 0.1) < 0.02


def test_loader_with_workers_matches_main_process_loading() -> None:
    ds = DigitsDataset()
    collate = FlowCollate(num_queries=8, num_classes=10)
    batches = []
    for workers in (0, 2):
        loader = build_loader(ds, StreamSampler(len(ds), 12, seed=5), collate, num_workers=workers)
        it = iter(loader)
        batches.append([next(it) for _ in range(3)])
        del it, loader
    for a, b in zip(*batches, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------


def write_images(root, classes=("cat", "dog"), per_class=3, size=(20, 14)) -> None:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_image_folder_classes_values_and_coords(tmp_path) -> None:
    write_images(tmp_path)
    ds = ImageFolderDataset(tmp_path, resolution=8)
    assert len(ds) == 6 and ds.num_classes == 2 and ds.class_names == ("cat", "dog")
    item = ds[(4, 123)]
    assert item["values"].shape == (64, 3) and item["coords"].shape == (64, 2)
    assert item["values"].min() >= -1 and item["values"].max() <= 1
    assert int(item["label"]) == 1 and item["skipped"] == 0
    torch.testing.assert_close(item["coords"], grid_coords((8, 8)))
    # the flip is a function of the seed: same seed -> same item; some seeds flip
    again = ds[(4, 123)]
    torch.testing.assert_close(item["values"], again["values"])
    variants = {ds[(4, s)]["values"].numpy().tobytes() for s in range(12)}
    assert len(variants) == 2
    flat = ImageFolderDataset(tmp_path, resolution=8, hflip=False)
    assert len({flat[(4, s)]["values"].numpy().tobytes() for s in range(12)}) == 1


def test_image_folder_greyscale_and_unconditional(tmp_path) -> None:
    for i in range(3):
        Image.fromarray(np.full((9, 9), 40 * i, np.uint8)).save(tmp_path / f"{i}.jpg")
    ds = ImageFolderDataset(tmp_path, resolution=4, channels=1)
    assert ds.num_classes == 0 and len(ds) == 3
    assert ds[(2, 0)]["values"].shape == (16, 1)


def test_continuous_coords_cover_every_cell_then_anywhere() -> None:
    rng = np.random.default_rng(0)
    c = continuous_coords(6, rng)
    assert c.shape == (72, 2) and c.dtype == torch.float32
    assert bool(((c >= 0) & (c <= 1)).all())
    cells = (c[:36] * 6).floor().long()  # the first half: one point in each cell, row-major
    want = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij"), -1)
    assert torch.equal(cells, want.reshape(-1, 2))
    off = (c[:36] - grid_coords((6, 6))).abs()
    assert float(off.max()) > 0.02  # jittered, not the pixel centres
    assert not torch.equal(c, continuous_coords(6, np.random.default_rng(1)))


def test_bilinear_at_matches_scipy_and_the_pixel_centres() -> None:
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.standard_normal((5, 7, 2)).astype(np.float32))
    # at the pixel centres: the pixels themselves
    at_centres = bilinear_at(image, grid_coords((5, 7)))
    torch.testing.assert_close(at_centres, image.reshape(-1, 2))
    # anywhere: scipy's order-1 spline on pixel indices (centre of pixel i at (i + 0.5) / n),
    # the edge value beyond the outer centres
    coords = torch.from_numpy(rng.uniform(0, 1, (50, 2)).astype(np.float32))
    idx = (coords.double().numpy() * [5, 7] - 0.5).T
    for ch in range(2):
        want = map_coordinates(image[..., ch].double().numpy(), idx, order=1, mode="nearest")
        got = bilinear_at(image, coords)[:, ch].double().numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_image_folder_field_resolution_reads_values_between_pixels(tmp_path) -> None:
    write_images(tmp_path, size=(16, 16))
    grid = ImageFolderDataset(tmp_path, resolution=4, hflip=False)
    field = ImageFolderDataset(tmp_path, resolution=4, hflip=False, field_resolution=16)
    assert field.shape == grid.shape == (4, 4)
    item = field[(3, 7)]
    assert item["values"].shape == (32, 3) and item["coords"].shape == (32, 2)
    fine = ImageFolderDataset(tmp_path, resolution=16, hflip=False)[(3, 0)]["values"]
    want = bilinear_at(fine.reshape(16, 16, 3), item["coords"])
    torch.testing.assert_close(item["values"], want)
    torch.testing.assert_close(field[(3, 7)]["values"], item["values"])  # a function of the seed
    assert not torch.equal(field[(3, 8)]["coords"], item["coords"])
    with pytest.raises(ValueError, match="at least the resolution"):
        ImageFolderDataset(tmp_path, resolution=8, field_resolution=4)
    with pytest.raises(ValueError, match="only at 8x8"):
        build_dataset("digits", field_resolution=16)


def test_corrupt_images_are_reported_with_their_path_and_skipped(tmp_path) -> None:
    write_images(tmp_path, classes=("a", "b"), per_class=2)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png at all")
    good = tmp_path / "b" / "0.png"
    data = good.read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(data[: len(data) // 3])
    ds = ImageFolderDataset(tmp_path, resolution=8)
    assert len(ds) == 6
    broken = next(i for i, (p, _) in enumerate(ds.files) if p.endswith("broken.png"))
    with pytest.warns(DataWarning, match="broken.png"):
        item = ds[(broken, 0)]
    assert item["skipped"] == 1 and item["values"].shape == (64, 3)
    # through the loader the skips are counted per batch, never raised
    collate = FlowCollate(None, num_classes=ds.num_classes)
    loader = build_loader(ds, StreamSampler(len(ds), 6, seed=0, shuffle=False), collate)
    with pytest.warns(DataWarning):
        batch = next(iter(loader))
    assert int(batch["skipped"]) == 2


def test_a_folder_of_only_broken_files_fails_clearly(tmp_path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path, resolution=4)
    ds.max_consecutive_failures = 5
    with pytest.warns(DataWarning), pytest.raises(UnreadableFileError, match="broken"):
        ds[(0, 0)]


def test_bad_paths_fail_at_construction_with_the_path(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        build_dataset(missing)
    with pytest.raises(FileNotFoundError, match="bundled datasets: digits, shapes"):
        build_dataset("digitz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        build_dataset(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="expected a folder"):
        build_dataset(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="nope"):
        PointCloudDataset(missing, 16)


# ------------------------------------------------------------------------------------------------
# point clouds
# ------------------------------------------------------------------------------------------------


def test_point_cloud_files_normalised_and_subsampled(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ("chair", "lamp"):
        (tmp_path / name).mkdir()
        for i in range(2):
            pts = rng.normal(size=(300, 3)) * [3.0, 1.0, 0.5] + 7.0
            np.save(tmp_path / name / f"{i}.npy", pts)
    np.savez(tmp_path / "lamp" / "z.npz", points=rng.normal(size=(50, 3)))
    ds = build_dataset(tmp_path, num_points=128)
    assert isinstance(ds, PointCloudDataset)
    assert len(ds) == 5 and ds.num_classes == 2 and ds.domain == "pointcloud"
    item = ds[(0, 9)]
    v = item["values"]
    assert v.shape == (128, 3) and "coords" not in item
    assert v.abs().max() <= 1 + 1e-6
    # without replacement when the shape has enough points
    assert torch.unique(v, dim=0).shape[0] == 128
    # the shape (not the subset) fixes the normalisation: the full shape spans [-1, 1] in x
    full = PointCloudDataset(tmp_path, 300)[(0, 1)]["values"]
    assert full[:, 0].max().item() == pytest.approx(1.0) and full[:, 0].min() == pytest.approx(-1)
    assert ds[(4, 0)]["values"].shape == (128, 3)  # 50 points: drawn with replacement
    unit = PointCloudDataset(tmp_path, 300, normalization="shape_unit")[(0, 1)]["values"]
    assert abs(unit.mean().item()) < 1e-5 and unit.std().item() == pytest.approx(1, rel=1e-2)


def test_point_cloud_stack_file_and_corrupt_files(tmp_path) -> None:
    stack = np.random.default_rng(1).normal(size=(4, 64, 3))
    np.save(tmp_path / "stack.npy", stack)
    ds = build_dataset(tmp_path / "stack.npy", num_points=32)
    assert len(ds) == 4 and ds.num_classes == 0
    folder = tmp_path / "clouds"
    folder.mkdir()
    np.save(folder / "ok.npy", stack[0])
    (folder / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(folder / "nan.npy", np.full((10, 3), np.nan))
    np.save(folder / "flat.npy", np.zeros(5))
    ds = PointCloudDataset(folder, 16)
    assert len(ds) == 4
    with pytest.warns(DataWarning) as record:
        items = [ds[(i, 0)] for i in range(4)]
    messages = " ".join(str(w.message) for w in record)
    for name in ("bad.npy", "nan.npy", "flat.npy"):
        assert name in messages
    assert sum(it["skipped"] for it in items) >= 3
    assert all(it["values"].shape == (16, 3) for it in items)


# ------------------------------------------------------------------------------------------------
# bundled demo sets
# ------------------------------------------------------------------------------------------------


def test_digits_dataset_and_its_classifier() -> None:
    ds = build_dataset("digits")
    assert isinstance(ds, DigitsDataset)
    assert len(ds) == 1797 and ds.num_classes == 10 and ds.value_dim == 1
    item = ds[(5, 0)]
    assert item["values"].shape == (64, 1) and int(item["label"]) == 5
    assert item["values"].min() >= -1 and item["values"].max() <= 1
    images, labels = load_real_digits()
    real = torch.from_numpy(images[:300] * 2.0 - 1.0).float().reshape(300, 64, 1)
    assert digits_classifier_accuracy(real, torch.from_numpy(labels[:300]), 8) > 0.97
    # upsampled digits score the same after the scorer's downsampling
    big = DigitsDataset(16)
    assert big.values.shape == (1797, 256, 1)
    acc16 = digits_classifier_accuracy(big.values[:300], big.labels[:300], 16)
    assert acc16 > 0.95
    noise = torch.rand(300, 64, 1) * 2 - 1
    assert digits_classifier_accuracy(noise, torch.from_numpy(labels[:300]), 8) < 0.3
    scores = ds.evaluate_samples(real, torch.from_numpy(labels[:300]))
    assert scores["classifier_accuracy"] > 0.97
    assert scores["within_class_diversity"] == pytest.approx(1.0, abs=0.1)  # real digits
    assert scores["fd_digits"] < 5.0
    # one sample per class repeated: as recognisable as those ten, with no diversity at all
    firsts = torch.stack([real[int(np.flatnonzero(labels == k)[0])] for k in range(10)])
    collapsed = ds.evaluate_samples(firsts.repeat(10, 1, 1), torch.arange(10).repeat(10))
    assert collapsed["classifier_accuracy"] >= 0.9
    assert (
        collapsed["within_class_diversity"] == 0.0 and collapsed["fd_digits"] > scores["fd_digits"]
    )


def test_shapes_dataset() -> None:
    ds = build_dataset("shapes", num_points=256)
    assert isinstance(ds, ShapesDataset)
    assert ds.num_classes == len(SHAPE_CLASSES) == 7 and len(ds) == 700
    for i in range(7):
        v = ds[(i, 3)]["values"]
        assert v.shape == (256, 3) and torch.isfinite(v).all()
        assert v.abs().max().item() == pytest.approx(1.0, abs=1e-5)
        assert int(ds[(i, 3)]["label"]) == i
    # same instance, fresh points per seed; different instances differ in shape
    a, b = ds[(0, 1)]["values"], ds[(0, 2)]["values"]
    assert not torch.equal(a, b)
    torch.testing.assert_close(ds[(0, 1)]["values"], a)


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------


def test_png_grid_and_ply(tmp_path) -> None:
    vals = torch.linspace(-1, 1, 6 * 4 * 4 * 3).reshape(6, 16, 3)
    path = save_image_grid(vals, (4, 4), tmp_path / "g.png", nrow=3, scale=2)
    img = Image.open(path)
    assert img.size == ((3 * 5 + 1) * 2, (2 * 5 + 1) * 2)
    pts = torch.randn(10, 3)
    ply = save_ply(pts, tmp_path / "c.ply").read_bytes()
    header, body = ply.split(b"end_header\n")
    assert b"element vertex 10" in header
    np.testing.assert_array_equal(np.frombuffer(body, "<f4").reshape(10, 3), pts.numpy())
