"""``evaluate.py``: samples from files, folders and checkpoints; table, JSON report, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inrflow.checkpoints import load_checkpoint_model
from inrflow.cli import evaluate as ev

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict | None]:
    out_arg = argv[argv.index("--out") + 1] if "--out" in argv else None
    rc = ev.main([*argv, "--no-progress"])
    text = capsys.readouterr()
    report = json.loads(Path(out_arg).read_text()) if out_arg and rc == 0 else None
    return rc, text.out + text.err, report


def test_help_runs_as_a_script() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0
    assert "--ckpt" in res.stdout and "rFID" in res.stdout


def test_digits_samples_from_an_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inrflow.data.digits import load_real_digits

    images, labels = load_real_digits()
    samples = (images[:200] * 2 - 1).astype(np.float32)  # inrflow's [-1, 1]
    samples = samples.repeat(2, axis=1).repeat(2, axis=2)[:, None]  # [N, 1, 16, 16]
    np.savez(tmp_path / "samples.npz", samples=samples, labels=labels[:200])
    out = tmp_path / "report.json"
    rc, text, report = _run(
        ["--samples", str(tmp_path / "samples.npz"), "--ref", "digits", "--out", str(out)], capsys
    )
    assert rc == 0, text
    assert report is not None
    m = report["metrics"]
    assert report["settings"]["kind"] == "digits"
    assert m["digits-accuracy"] > 0.97 and m["num_samples"] == 200 and m["num_refs"] == 1797
    assert "digits-accuracy" in text and "FD-digits" in text and "classifier:" in text


def test_point_clouds_from_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = torch.Generator().manual_seed(0)
    refs = torch.rand(6, 24, 3, generator=gen)
    folder = tmp_path / "gen"
    folder.mkdir()
    for i in range(6):
        np.save(folder / f"{i}.npy", refs[i].numpy())  # the samples are the references
    np.save(tmp_path / "refs.npy", refs.numpy())
    out = tmp_path / "pc.json"
    rc, text, report = _run(
        [
            "--samples",
            str(folder),
            "--ref",
            str(tmp_path / "refs.npy"),
            "--emd",
            "exact",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0, text
    assert report is not None
    m = report["metrics"]
    assert report["settings"]["kind"] == "pointcloud"
    assert m["MMD-CD"] == 0 and m["COV-CD"] == 100.0 and m["1-NNA-CD"] == 0.0
    assert m["COV-EMD"] == 100.0 and "exact" in m["EMD-method"]
    assert "EMD-method: exact" in text


def test_images_with_the_rfid_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import TinyExtractor

    import inrflow.metrics.images as images_mod

    monkeypatch.setattr(
        images_mod, "inception_extractor", lambda weights, seed, device: TinyExtractor("rfid")
    )
    gen = torch.Generator().manual_seed(1)
    np.save(tmp_path / "a.npy", (torch.rand(12, 3, 16, 16, generator=gen) * 255).byte().numpy())
    np.save(tmp_path / "b.npy", (torch.rand(12, 3, 16, 16, generator=gen) * 255).byte().numpy())
    out = tmp_path / "img.json"
    rc, text, report = _run(
        [
            "--samples",
            str(tmp_path / "a.npy"),
            "--ref",
            str(tmp_path / "b.npy"),
            "--kind",
            "image",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0, text
    assert report is not None
    assert "rFID" in report["metrics"] and "FID" not in report["metrics"]
    assert "rFID" in text


def test_checkpoint_is_sampled_then_evaluated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inrflow.model import build_model

    model = build_model("tiny", "image", num_classes=10, value_dim=1, num_latents=16)
    ckpt = tmp_path / "model.pt"
    torch.save(
        {
            "config": dataclasses.asdict(model.config),
            "ema": model.state_dict(),
            "meta": {"shape": [8, 8], "dataset": "digits"},
        },
        ckpt,
    )
    out = tmp_path / "ck.json"
    saved = tmp_path / "samples.npz"
    rc, text, report = _run(
        [
            "--ckpt",
            str(ckpt),
            "--num",
            "20",
            "--steps",
            "2",
            "--batch-size",
            "10",
            "--save-samples",
            str(saved),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0, text
    assert report is not None
    m = report["metrics"]
    assert report["settings"]["kind"] == "digits" and m["num_samples"] == 20
    assert 0.0 <= m["digits-accuracy"] <= 1.0 and m["FD-digits"] > 0
    with np.load(saved) as z:
        assert z["samples"].shape == (20, 1, 8, 8)
        np.testing.assert_array_equal(z["labels"], np.arange(20) % 10)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_trainer_checkpoint_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The trainer's layout: <run>/checkpoints/step_*/ with DCP files and a manifest that holds
    # the model config, the dataset description and every file's size and CRC32.
    import zlib

    import torch.distributed.checkpoint as dcp

    from inrflow.model import build_model

    model = build_model("tiny", "image", num_classes=10, value_dim=1, num_latents=16)
    ema = {n: p.detach() * 0.9 for n, p in model.named_parameters()}  # distinguishable
    step = tmp_path / "run" / "checkpoints" / "step_000000010"
    dcp.save(
        {"model": model.state_dict(), "ema": ema, "trainer": {"step": 10}}, checkpoint_id=str(step)
    )
    files = {
        f.name: {"size": f.stat().st_size, "crc32": zlib.crc32(f.read_bytes())}
        for f in step.iterdir()
        if f.is_file()
    }
    manifest = {
        "format": 1,
        "step": 10,
        "world_size": 1,
        "files": files,
        "model_config": dataclasses.asdict(model.config),
        "train_config": {"data": "digits"},
        "dataset": {"domain": "image", "shape": [8, 8], "num_classes": 10},
    }
    (step / "inrflow_checkpoint.json").write_text(json.dumps(manifest))

    loaded, meta = load_checkpoint_model(tmp_path / "run")
    assert meta["weights"] == "ema" and meta["dataset"] == "digits" and meta["shape"] == [8, 8]
    for n, p in loaded.named_parameters():
        assert torch.equal(p, ema[n]), n
    out = tmp_path / "dcp.json"
    rc, text, report = _run(
        [
            "--ckpt",
            str(tmp_path / "run"),
            "--num",
            "10",
            "--steps",
            "1",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0, text
    assert report is not None and report["settings"]["kind"] == "digits"
    assert report["settings"]["nfe_per_batch"] == 1 and "NFE 1 per batch" in text
    rc, text, report = _run(
        [
            "--ckpt",
            str(tmp_path / "run"),
            "--num",
            "4",
            "--method",
            "heun",
            "--steps",
            "2",
            "--time-shift",
            "2",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 0 and report["settings"]["nfe_per_batch"] == 4
    assert report["settings"]["time_shift"] == 2.0
    rc, text, _ = _run(
        ["--ckpt", str(tmp_path / "run"), "--method", "dopri5", "--time-shift", "2"], capsys
    )
    assert rc == 2 and "not dopri5" in text
    # likelihood only: bits per dimension of real digits, exact and Hutchinson divergence
    bpd = {}
    for extra in ([], ["--hutchinson", "2"]):
        argv = ["--ckpt", str(tmp_path / "run"), "--num", "0", "--bpd", "3"]
        argv += ["--bpd-method", "heun", "--bpd-steps", "2", "--out", str(out), *extra]
        rc, text, report = _run(argv, capsys)
        assert rc == 0, text
        m = report["metrics"]
        assert m["bpd-num"] == 3 and m["bpd-nfe-per-batch"] == 4 and math.isfinite(m["bpd"])
        bpd[m["bpd-divergence"]] = m["bpd"]
    assert set(bpd) == {"exact", "hutchinson-2"}
    rc, text, _ = _run(["--samples", "x.npz", "--bpd", "3"], capsys)
    assert rc == 2 and "--bpd N needs --ckpt" in text


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, _ = _run(
        [
            "--samples",
            str(tmp_path / "missing"),
            "--ref",
            "digits",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capsys,
    )
    assert rc == 2 and "not found" in text
    torch.save({"weights": torch.zeros(3)}, tmp_path / "bad.pt")
    rc, text, _ = _run(
        ["--ckpt", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x.json")], capsys
    )
    assert rc == 2 and "config" in text
    np.save(tmp_path / "nan.npy", np.full((4, 8, 8), np.nan, dtype=np.float32))
    rc, text, _ = _run(
        [
            "--samples",
            str(tmp_path / "nan.npy"),
            "--ref",
            "digits",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capsys,
    )
    assert rc == 2 and "4 of 4 samples" in text
