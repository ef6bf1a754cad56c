"""Bad inputs to the three CLIs (and the data they read): each gets a clear message and a non-zero
exit status, never a traceback or a silently wrong result. One table per CLI, run in-process
(``main(argv)``); one subprocess per script checks that the status reaches the shell."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, script_env, tiny_argv, tiny_config, train
from PIL import Image

from inrflow.cli import evaluate as ev
from inrflow.cli.sample import main as sample_main
from inrflow.data import ImageFolderDataset
from inrflow.metrics.images import load_images
from inrflow.train.cli import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 1-step tiny digits run (a checkpoint to sample from)."""
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(out, steps=1, ckpt_every=0))
    return out


# ------------------------------------------------------------------------------------------------
# sample.py
# ------------------------------------------------------------------------------------------------


def sample_cases(run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    folder = tmp / "a_folder"
    folder.mkdir(exist_ok=True)
    a_file = tmp / "a_file"
    a_file.write_text("x")
    ckpt = ["--ckpt", str(run), "--num", "2", "--steps", "1"]
    return [
        ([*ckpt, "--cfg-scale", "nan"], "--cfg-scale must be a finite number, got nan"),
        ([*ckpt, "--cfg-scale", "inf"], "--cfg-scale must be a finite number, got inf"),
        ([*ckpt, "--chunk-size", "0"], "--chunk-size must be >= 1, got 0"),
        ([*ckpt, "--chunk-size", "-5"], "--chunk-size must be >= 1, got -5"),
        ([*ckpt, "--out", str(folder)], f"--out {folder} is a folder; give a file name"),
        ([*ckpt, "--npz", str(folder)], f"--npz {folder} is a folder; give a file name"),
        ([*ckpt, "--out", str(a_file / "x.png")], f"{a_file} is a file, not a folder"),
    ]


def test_sample_bad_inputs(run, tmp_path, capsys) -> None:
    for argv, message in sample_cases(run, tmp_path):
        with pytest.raises(SystemExit) as exc:
            sample_main(argv)
        assert message in str(exc.value.code), (argv, exc.value.code)
    assert not list(tmp_path.glob("*.png"))


def test_sample_refuses_to_write_nan_samples(run, tmp_path, monkeypatch) -> None:
    import inrflow.domains.base as domain_base  # the domain draws the CLI's samples

    monkeypatch.setattr(
        domain_base, "generate", lambda *a, **k: torch.full((2, 64, 1), float("nan"))
    )
    out = tmp_path / "s.png"
    with pytest.raises(SystemExit, match="2 of 2 samples contain NaN or infinite values"):
        sample_main(["--ckpt", str(run), "--num", "2", "--out", str(out)])
    assert not out.exists()


def test_sample_exit_status_reaches_the_shell(run, tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), "--ckpt", str(run), "--cfg-scale", "nan"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 1 and "--cfg-scale must be a finite number" in res.stderr
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())


def test_sample_shows_per_step_progress(run, tmp_path, capsys) -> None:
    out = tmp_path / "s.png"
    assert sample_main(["--ckpt", str(run), "--num", "2", "--steps", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sampling (euler)" in err and "0/3" in err  # a bar over the 3 steps of each batch


# ------------------------------------------------------------------------------------------------
# evaluate.py
# ------------------------------------------------------------------------------------------------


def evaluate_cases(tmp: Path) -> list[tuple[list[str], str]]:
    digits = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    np.savez(tmp / "oob.npz", samples=digits, labels=np.array([1, 99, -3, 2]))
    np.savez(tmp / "short.npz", samples=digits, labels=np.array([1, 2]))
    np.save(tmp / "flat.npy", np.random.default_rng(1).random((3, 5)).astype(np.float32))
    np.savez(tmp / "ok.npz", samples=digits, labels=np.array([0, 1, 2, 3]))
    (tmp / "report_dir").mkdir(exist_ok=True)
    ok = ["--samples", str(tmp / "ok.npz"), "--ref", "digits"]
    return [
        (
            ["--samples", str(tmp / "oob.npz"), "--ref", "digits"],
            "labels must be classes 0..9; 2 are not (-3, 99)",
        ),
        (["--samples", str(tmp / "short.npz"), "--ref", "digits"], "4 samples but 2 labels"),
        (["--samples", str(tmp / "flat.npy"), "--ref", "digits"], "a 2-D array [3, 5] is not"),
        ([*ok, "--num", "0"], "--num must be >= 1, got 0"),
        ([*ok, "--num", "-2"], "--num must be >= 1, got -2"),
        ([*ok, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ([*ok, "--out", str(tmp / "report_dir")], "is a folder; give a file name"),
        ([*ok, "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    ]


def test_evaluate_bad_inputs(tmp_path, capsys) -> None:
    for argv, message in evaluate_cases(tmp_path):
        out = [] if "--out" in argv else ["--out", str(tmp_path / "r.json")]
        code = ev.main([*argv, *out, "--no-progress"])
        text = capsys.readouterr()
        assert code == 2, (argv, text.out, text.err)
        assert message in text.err, (argv, text.err)
        assert "Traceback" not in text.err
    assert not (tmp_path / "r.json").exists()


def test_evaluate_num_samples_zero_with_a_checkpoint(run, tmp_path, capsys) -> None:
    code = ev.main(["--ckpt", str(run), "--num", "0", "--out", str(tmp_path / "r")])
    assert code == 2 and "--num must be >= 1" in capsys.readouterr().err


def test_evaluate_exit_status_reaches_the_shell(tmp_path) -> None:
    argv, message = evaluate_cases(tmp_path)[0]
    res = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *argv, "--out", str(tmp_path / "r.json")],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------
# train.py
# ------------------------------------------------------------------------------------------------


def test_train_bad_inputs(tmp_path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (tiny_argv(tmp_path / "r1", model="hidden=-4"), "hidden, heads and encoder_heads must be"),
        (tiny_argv(tmp_path / "r2", model="heads=0"), "hidden, heads and encoder_heads must be"),
        (tiny_argv(a_file, steps=1), f"--out {a_file} exists and is not a folder"),
        (tiny_argv(a_file / "run", steps=1), f"{a_file} is a file, not a folder"),
        (tiny_argv(tmp_path / "r3", steps=0), "--steps must be >= 1"),
        (tiny_argv(tmp_path / "r4", data=str(tmp_path / "nope")), "no such file or directory"),
        ([*tiny_argv(tmp_path / "r5"), "--dist-timeout", "-1"], "--dist-timeout must be > 0"),
        (
            [*tiny_argv(tmp_path / "r6"), "--field-resolution", "0"],
            "--field-resolution must be >= 1",
        ),
        (
            [*tiny_argv(tmp_path / "r7"), "--field-resolution", "16"],  # digits: only 8x8
            "--field-resolution needs images above the training resolution",
        ),
    ]
    for argv, message in cases:
        code = train_main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r4").exists()


def test_train_exit_status_reaches_the_shell(tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *tiny_argv(tmp_path, model="hidden=-4")],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "hidden, heads and encoder_heads must be >= 1" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------
# data: 16-bit images, unreadable files
# ------------------------------------------------------------------------------------------------


def ramp16(path: Path, side: int = 64) -> np.ndarray:
    """A 16-bit grey PNG whose values run over the whole 0..65535 range (mean 0.5)."""
    values = np.linspace(0, 65535, side * side).round().astype(np.uint16).reshape(side, side)
    Image.fromarray(values).save(path)
    return values


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_images_are_scaled_by_their_bit_depth(tmp_path, channels) -> None:
    ramp16(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as img:
        assert img.mode.startswith("I")  # Pillow's wide grey mode, not "L"
    ds = ImageFolderDataset(tmp_path, resolution=16, hflip=False, channels=channels)
    values = ds.load(0, np.random.default_rng(0))["values"]  # [-1, 1]
    unit = (values + 1) / 2
    assert unit.shape == (256, channels)
    assert float(unit.mean()) == pytest.approx(0.5, abs=0.01)  # clipped: 0.995
    assert float(unit.min()) < 0.05 and float(unit.max()) > 0.95


def test_16_bit_grey_images_are_scaled_for_evaluation(tmp_path) -> None:
    values = ramp16(tmp_path / "ramp.png")
    x = load_images(tmp_path / "ramp.png")  # uint8 [1, 1, H, W]
    assert x.dtype == torch.uint8 and x.shape == (1, 1, 64, 64)
    expected = np.round(values / 65535 * 255)
    assert np.abs(x[0, 0].numpy().astype(float) - expected).max() <= 1


def test_eight_bit_images_load_as_before(tmp_path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    ds = ImageFolderDataset(tmp_path, resolution=8, hflip=False, channels=1)
    values = ds.load(0, np.random.default_rng(0))["values"]
    expected = torch.from_numpy(arr.astype(np.float32).reshape(-1, 1) / 127.5 - 1.0)
    assert torch.equal(values, expected)


def test_a_broken_file_met_in_every_epoch_counts_once(tmp_path) -> None:
    data = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                data / cls / f"{i}.png"
            )
    (data / "a" / "9.png").write_bytes(b"corrupt")  # 9 files, batch 8: met in every epoch
    cfg = tiny_config(tmp_path / "run", data=str(data), channels=3, steps=6, resolution=8)
    with pytest.warns(UserWarning, match="9.png"):
        summary = train(cfg)
    assert summary["skipped_files"] == 1
    manifest = json.loads(
        (
            tmp_path / "run" / "checkpoints" / "step_000000006" / "inrflow_checkpoint.json"
        ).read_text()
    )
    assert len(manifest["skipped_data_files"]) == 1
    with pytest.warns(UserWarning, match="9.png"):  # resumed: the same file still counts once
        summary = train(dataclasses.replace(cfg, steps=9, resume=True))
    assert summary["skipped_files"] == 1
