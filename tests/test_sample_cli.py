"""``sample.py``: EMA weights from a checkpoint, any resolution / point count, labels, CFG, PNG
grids and PLY files, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, tiny_config, train
from PIL import Image

from inrflow.checkpoints import list_checkpoints, load_ema_model
from inrflow.cli.sample import main
from inrflow.generation import FIELD_JOIN_TIME, default_join_time, generate


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    # EMA = the weights themselves, so 3 steps already make labels and guidance matter
    train(tiny_config(out, steps=3, ckpt_every=0, cfg_scale=2.0, ema_decay=0.0))
    return out


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    model = {k: TINY_MODEL[k] for k in ("hidden", "depth", "heads", "encoder_heads")}
    train(tiny_config(out, data="shapes", num_points=32, steps=2, model=model, ckpt_every=0))
    return out


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--ckpt",
        "--num",
        "--labels",
        "--cfg-scale",
        "--resolution",
        "--points",
        "--steps",
        "--method",
        "--out",
    ):
        assert flag in text


def test_png_grid_at_the_training_and_other_resolutions(digits_run, tmp_path) -> None:
    png = tmp_path / "s.png"
    assert main(["--ckpt", str(digits_run), "--num", "20", "--steps", "2", "--out", str(png)]) == 0
    with Image.open(png) as img:  # 2 rows of 10 classes, 8x8 cells scaled x16
        assert img.size == ((10 * 9 + 1) * 16, (2 * 9 + 1) * 16)
    for side in (16, 12):  # a nested fine grid, and a size that is not a multiple
        path = tmp_path / f"s{side}.png"
        argv = [
            "--ckpt",
            str(digits_run),
            "--num",
            "3",
            "--steps",
            "2",
            "--resolution",
            str(side),
            "--labels",
            "3,7",
            "--nrow",
            "3",
            "--out",
            str(path),
            "--npz",
            str(path) + ".npz",
        ]
        assert main(argv) == 0
        scale = 128 // side
        with Image.open(path) as img:
            assert img.size == ((3 * (side + 1) + 1) * scale, (side + 2) * scale)
        saved = np.load(str(path) + ".npz")
        assert saved["samples"].shape == (3, side * side, 1)
        assert saved["labels"].tolist() == [3, 7, 3]


def test_png_grid_of_a_non_square_resolution(digits_run, tmp_path) -> None:
    path = tmp_path / "wide.png"
    argv = ["--ckpt", str(digits_run), "--num", "2", "--steps", "2", "--resolution", "8", "16"]
    assert main([*argv, "--nrow", "2", "--out", str(path), "--npz", str(path) + ".npz"]) == 0
    assert np.load(str(path) + ".npz")["samples"].shape == (2, 8 * 16, 1)
    with Image.open(path) as img:  # 2 cells of 8 x 16 with a 1-pixel border, scaled 128 // 16
        assert img.size == ((2 * 17 + 1) * 8, (8 + 2) * 8)


def test_generate_is_seeded_and_guided(digits_run) -> None:
    model, meta, ckpt = load_ema_model(digits_run)
    assert ckpt == list_checkpoints(digits_run / "checkpoints")[0][1]
    assert not model.training and model.config.num_classes == 10
    labels = torch.tensor([1, 2, 3])
    a = generate(
        model, meta["dataset"], 3, labels=labels, cfg_scale=3.0, steps=3, seed=4, progress=False
    )
    b = generate(
        model, meta["dataset"], 3, labels=labels, cfg_scale=3.0, steps=3, seed=4, progress=False
    )
    c = generate(
        model, meta["dataset"], 3, labels=labels, cfg_scale=1.0, steps=3, seed=4, progress=False
    )
    assert a.shape == (3, 64, 1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # batching does not change the samples drawn for a seed... per batch composition
    d = generate(
        model,
        meta["dataset"],
        3,
        labels=labels,
        cfg_scale=3.0,
        steps=3,
        seed=4,
        batch_size=3,
        progress=False,
    )
    torch.testing.assert_close(a, d, rtol=0, atol=0)
    # the EMA weights are the ones in the checkpoint, not the raw weights
    raw = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in raw.values())


def test_generate_any_image_shape_and_the_evaluation_sampler_is_the_same_path(digits_run) -> None:
    from inrflow.checkpoints import load_checkpoint_model
    from inrflow.generation import sample_from_model

    model, meta, _ = load_ema_model(digits_run)
    kw = dict(steps=2, seed=1, progress=False)
    for hw in ((8, 16), (8, 12), (16, 16), (6, 6), (12,)):  # nested per axis, separate, ...
        out = generate(model, meta["dataset"], 2, labels=torch.tensor([0, 1]), resolution=hw, **kw)
        assert out.shape == (2, hw[0] * hw[-1], 1) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="resolution"):
        generate(model, {"domain": "image"}, 1, **kw)
    # evaluate.py samples through generate: same seed, same samples, as [N, C, H, W]
    emodel, emeta = load_checkpoint_model(digits_run)
    imgs, labels = sample_from_model(
        emodel, emeta, 3, steps=2, seed=1, resolution=(8, 16), progress=False
    )
    want = generate(
        model, meta["dataset"], 3, labels=labels, resolution=(8, 16), cfg_scale=1.0, **kw
    )
    assert imgs.shape == (3, 1, 8, 16) and labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(imgs, want.reshape(3, 8, 16, 1).permute(0, 3, 1, 2))


def test_point_clouds_as_ply_at_any_point_count(shapes_run, tmp_path) -> None:
    folder = tmp_path / "clouds"
    argv = [
        "--ckpt",
        str(shapes_run),
        "--num",
        "3",
        "--points",
        "80",
        "--steps",
        "2",
        "--labels",
        "0,6",
        "--out",
        str(folder),
    ]
    assert main(argv) == 0
    files = sorted(folder.glob("*.ply"))
    assert len(files) == 3
    header, body = files[0].read_bytes().split(b"end_header\n")
    assert b"element vertex 80" in header
    pts = np.frombuffer(body, "<f4").reshape(80, 3)
    assert np.isfinite(pts).all()


def test_point_clouds_get_a_picture_next_to_the_ply_files(shapes_run, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "clouds"
    argv = ["--ckpt", str(shapes_run), "--num", "3", "--steps", "1", "--out", str(folder)]
    # classes 0 and 6: one row each, two real held-out shapes (the bundled shapes) then the
    # samples asked for that class (two of class 0, one of class 6)
    assert main([*argv, "--labels", "0,6"]) == 0
    png = folder / "samples.png"
    assert len(sorted(folder.glob("*.ply"))) == 3
    with Image.open(png) as im:  # cells of 1.6 inches at 80 dpi: 128 pixels
        assert im.size == (4 * 128, 2 * 128)
    # unconditional: one row of the samples, nothing real beside them
    folder = tmp_path / "unconditional"
    argv = ["--ckpt", str(shapes_run), "--num", "3", "--steps", "1", "--out", str(folder)]
    assert main([*argv, "--labels", "none"]) == 0
    with Image.open(folder / "samples.png") as im:
        assert im.size == (3 * 128, 128)


def test_a_sample_folder_with_its_picture_is_evaluated_as_point_clouds(
    shapes_run, tmp_path, capsys
) -> None:
    import json

    from inrflow.cli.evaluate import main as evaluate_main

    pytest.importorskip("matplotlib")
    folder = tmp_path / "clouds"
    argv = ["--ckpt", str(shapes_run), "--num", "4", "--steps", "1", "--out", str(folder)]
    assert main(argv) == 0
    assert (folder / "samples.png").is_file()
    np.save(tmp_path / "refs.npy", np.random.default_rng(0).random((4, 32, 3)) * 2 - 1)
    out = tmp_path / "pc.json"
    argv = ["--samples", str(folder), "--ref", str(tmp_path / "refs.npy"), "--emd", "none"]
    assert evaluate_main([*argv, "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["kind"] == "pointcloud" and report["metrics"]["num_samples"] == 4


def test_errors_are_clear(digits_run, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--ckpt", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no valid checkpoint"):
        main(["--ckpt", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="labels"):
        main(["--ckpt", str(digits_run), "--labels", "12"])
    with pytest.raises(SystemExit, match="--num"):
        main(["--ckpt", str(digits_run), "--num", "0"])
    for bad in (["1", "2", "3"], ["0"], ["8", "-1"]):
        with pytest.raises(SystemExit, match="--resolution"):
            main(["--ckpt", str(digits_run), "--resolution", *bad])


def test_solver_options_and_the_nfe_is_reported(digits_run, tmp_path, capsys) -> None:
    png = str(tmp_path / "s.png")
    base = ["--ckpt", str(digits_run), "--num", "4", "--batch-size", "2", "--out", png]
    assert main([*base, "--method", "heun", "--steps", "3"]) == 0
    assert "NFE 6 per batch (12 over 2 batches)" in capsys.readouterr().out
    assert main([*base, "--method", "dopri5", "--atol", "1e-2", "--rtol", "1e-2"]) == 0
    text = capsys.readouterr().out
    assert "dopri5 (atol 0.01, rtol 0.01)" in text and "NFE " in text
    argv = [*base, "--steps", "4", "--time-shift", "3", "--shift-by-resolution"]
    assert main([*argv, "--resolution", "16"]) == 0
    assert "time shift 3 x sqrt(pairs ratio)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--time-shift"):
        main([*base, "--time-shift", "0"])
    with pytest.raises(SystemExit, match="not dopri5"):
        main([*base, "--method", "dopri5", "--time-shift", "2"])
    with pytest.raises(SystemExit, match="--atol"):
        main([*base, "--method", "dopri5", "--atol", "0"])


def test_generate_resolution_shift_is_the_shifted_grid(digits_run) -> None:
    """``shift_by_pairs`` at 16 x 16 from an 8 x 8 run is the grid shifted by 2 x time_shift."""
    from inrflow.sampling import SolverStats

    model, meta, _ = load_ema_model(digits_run)
    kw = dict(steps=3, resolution=16, progress=False, labels=torch.tensor([1, 2, 3]))
    auto = generate(model, meta["dataset"], 3, time_shift=1.5, shift_by_pairs=True, **kw)
    fixed = generate(model, meta["dataset"], 3, time_shift=3.0, **kw)
    plain = generate(model, meta["dataset"], 3, **kw)
    torch.testing.assert_close(auto, fixed)
    assert not torch.allclose(auto, plain)
    stats = SolverStats()
    generate(model, meta["dataset"], 3, method="dopri5", batch_size=2, stats=stats, **kw)
    assert stats.calls == 2 and stats.nfe >= 2 * 8


def test_export_round_trip(digits_run, tmp_path, capsys) -> None:
    """EMA weights -> safetensors + JSON -> the same model, samples and CLI, without DCP."""
    import json
    import subprocess
    import sys

    from inrflow.export import main as export_main
    from inrflow.model import load_pretrained
    from inrflow.model.pretrained import WEIGHTS_FILE

    out = tmp_path / "export"
    assert export_main(["--ckpt", str(digits_run), "--out", str(out)]) == 0
    assert "EMA weights" in capsys.readouterr().out
    ema, meta, _ = load_ema_model(digits_run)
    model = load_pretrained(out)
    assert model.config == ema.config and not model.training
    ref = ema.state_dict()
    got = model.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    config = json.loads((out / "config.json").read_text())
    assert config["step"] == meta["step"] and config["dataset"] == meta["dataset"]
    kw = dict(steps=2, progress=False, labels=torch.tensor([4, 5]))
    torch.testing.assert_close(
        generate(model, config["dataset"], 2, cfg_scale=2.0, **kw),
        generate(ema, meta["dataset"], 2, cfg_scale=2.0, **kw),
    )
    # sample.py takes the exported folder like a run folder (same seed -> same samples)
    npz = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for ckpt, path in zip((out, digits_run), npz, strict=True):
        argv = ["--ckpt", str(ckpt), "--num", "3", "--steps", "2", "--out", str(tmp_path / "s.png")]
        assert main([*argv, "--npz", str(path)]) == 0
    np.testing.assert_array_equal(np.load(npz[0])["samples"], np.load(npz[1])["samples"])
    # loading needs neither the trainer nor torch.distributed.checkpoint
    code = (
        "import sys; sys.modules['torch.distributed.checkpoint'] = None; "
        "sys.modules['inrflow.train'] = None; from inrflow.model import load_pretrained; "
        f"m = load_pretrained({str(out)!r}); print(type(m).__name__)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "INRFlow", res.stderr[-2000:]
    # damaged exports fail clearly
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(SystemExit, match="no valid checkpoint"):
        main(["--ckpt", str(out)])
    with pytest.raises(SystemExit, match="training run"):  # would overwrite its config.json
        export_main(["--ckpt", str(digits_run), "--out", str(digits_run)])
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        load_pretrained(out)


def test_any_resolution_joins_the_training_context_or_starts_from_noise(digits_run) -> None:
    """Default: the 32x32 grid joins the 8x8 context at the last step, so it carries none of its
    own noise; the paper's per-query noise leaves speckle on the same model."""
    from inrflow.metrics.images import upsampling_residual

    model, meta, _ = load_ema_model(digits_run)
    kw = dict(labels=torch.arange(10), steps=4, seed=2, progress=False)
    low = generate(model, meta["dataset"], 10, **kw).reshape(10, 1, 8, 8)
    join = generate(model, meta["dataset"], 10, resolution=32, **kw).reshape(10, 1, 32, 32)
    noise = generate(model, meta["dataset"], 10, resolution=32, resolution_mode="noise", **kw)
    noise = noise.reshape(10, 1, 32, 32)
    speckle = [upsampling_residual(x, 8, (-1, 1)) for x in (join, noise)]
    assert speckle[0] < 0.5 * speckle[1], speckle
    # the joined grid is the 8x8 sample (same seed: same context noise) brought to 32x32
    coarse = torch.nn.functional.adaptive_avg_pool2d(join, 8)
    assert (coarse - low).abs().mean() < 0.5 * (low - low.mean()).abs().mean()
    early = generate(model, meta["dataset"], 10, resolution=32, join_time=0.0, **kw).reshape(
        10, 1, 32, 32
    )
    assert not torch.equal(early, join) and torch.isfinite(early).all()
    with pytest.raises(ValueError, match="resolution_mode"):
        generate(
            model, meta["dataset"], 1, resolution=16, resolution_mode="bilinear", progress=False
        )


def test_a_model_trained_between_pixels_joins_early_by_default(digits_run) -> None:
    """Data read at continuous coordinates (``field_resolution`` in the stored description)
    make the fine grid join at :data:`FIELD_JOIN_TIME`; pixel-centre data at the last step."""
    model, meta, _ = load_ema_model(digits_run)
    info = meta["dataset"]
    field = {**info, "field_resolution": 32}
    assert default_join_time(info) is None and default_join_time(field) == FIELD_JOIN_TIME
    kw = dict(labels=torch.arange(4), steps=5, seed=1, resolution=16, progress=False)
    early = generate(model, field, 4, **kw)
    torch.testing.assert_close(early, generate(model, info, 4, join_time=FIELD_JOIN_TIME, **kw))
    assert not torch.equal(early, generate(model, info, 4, **kw))
    # an explicit join time wins over the stored default
    torch.testing.assert_close(
        generate(model, field, 4, join_time=0.9, **kw),
        generate(model, info, 4, join_time=0.9, **kw),
    )


def test_evaluate_compares_native_sampling_with_upsampling(digits_run, tmp_path, capsys) -> None:
    import json

    from inrflow.cli.evaluate import main as evaluate_main

    out = tmp_path / "tab5.json"
    argv = ["--ckpt", str(digits_run), "--compare-upsampling", "--resolution", "16"]
    argv += ["--num", "20", "--steps", "2", "--out", str(out), "--no-progress"]
    assert evaluate_main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["comparison"]
    assert list(rows) == ["native", "native, per-query noise", "bicubic", "bilinear"]
    for name, row in rows.items():
        assert name in text
        assert set(row) == {"FD-digits", "KID-digits", "accuracy", "diversity", "speckle"}
    assert rows["native"]["speckle"] < rows["native, per-query noise"]["speckle"]
    assert report["settings"]["resolution"] == [16, 16] and out.with_suffix(".png").is_file()
    assert report["settings"]["training_resolution"] == [8, 8]
    assert evaluate_main(["--ckpt", str(digits_run), "--compare-upsampling"]) == 2
    assert "--resolution" in capsys.readouterr().err
