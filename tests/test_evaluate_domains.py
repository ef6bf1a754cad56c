"""``evaluate.py`` scores sample files through the domain interface: which domain recognises a
samples path, which domain a ``--kind`` names, and a domain added to the registry is evaluated
without any change to the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

import inrflow.domains as domains
from inrflow.cli import evaluate as ev
from inrflow.data.io import save_ply
from inrflow.domains import Domain, ScoreRequest, domain_for, domain_of_kind, domain_of_samples

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)


def _ply_folder(path: Path) -> None:
    for i in range(2):
        save_ply(torch.rand(16, 3), path / f"sample_{i:04d}.ply")


@pytest.mark.parametrize(
    ("make", "name", "domain"),
    [
        (lambda p: _ply_folder(p), "clouds", "pointcloud"),
        (lambda p: np.save(p, np.zeros((4, 32, 3), np.float32)), "clouds.npy", "pointcloud"),
        # one [P, 3] cloud per file
        (lambda p: (p.mkdir(), np.save(p / "0.npy", np.zeros((32, 3)))), "one_each", "pointcloud"),
        (lambda p: _png(p / "a.png"), "pngs", "image"),
        (lambda p: _png(p), "one.png", "image"),
        (lambda p: np.save(p, np.zeros((4, 1, 8, 8), np.float32)), "images.npy", "image"),
        (lambda p: np.save(p, np.zeros((4, 8, 8), np.float32)), "grey.npy", "image"),
        # a stack of 3-wide clouds of at most 4 points reads as images (as before)
        (lambda p: np.save(p, np.zeros((4, 4, 3), np.float32)), "tiny.npy", "image"),
        # a .ply anywhere makes it point clouds, even beside a picture of them
        (lambda p: (_ply_folder(p), _png(p / "samples.png")), "both", "pointcloud"),
    ],
)
def test_a_samples_path_is_recognised_by_its_domain(tmp_path, make, name, domain) -> None:
    path = tmp_path / name
    make(path)
    assert domain_of_samples(path).name == domain


def test_a_samples_path_that_no_domain_recognises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="samples not found"):
        domain_of_samples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no samples"):
        domain_of_samples(tmp_path / "empty")


def test_every_kind_names_one_domain() -> None:
    assert domain_of_kind("image") is domain_for("image")
    assert domain_of_kind("digits") is domain_for("image")  # digits are images
    assert domain_of_kind("pointcloud") is domain_for("pointcloud")
    with pytest.raises(ValueError, match="unknown kind 'protein'"):
        domain_of_kind("protein")  # structures are scored by sample.py, not from files
    kinds = [k for d in domains.DOMAINS.values() for k in d.sample_kinds]
    assert len(kinds) == len(set(kinds))
    assert ev.build_parser().parse_args(["--samples", "x", "--kind", "digits"]).kind == "digits"


def test_the_image_domain_picks_the_digits_scoring_by_reference_or_dataset() -> None:
    image = domain_for("image")
    assert image.scoring(reference="digits", dataset=None) == "digits"
    assert image.scoring(reference=None, dataset="digits") == "digits"
    assert image.scoring(reference="refs/", dataset="Digits") == "digits"
    assert image.scoring(reference="refs/", dataset="/data/faces") == "image"
    assert image.scoring(reference=None, dataset=None) == "image"
    assert domain_for("pointcloud").scoring(reference="digits", dataset=None) == "pointcloud"


def test_a_domain_without_sample_scoring_says_so() -> None:
    protein = domain_for("protein")
    assert protein.sample_kinds == ()
    with pytest.raises(ValueError, match="protein"):
        protein.scoring(reference=None, dataset=None)
    with pytest.raises(ValueError, match="protein"):
        protein.score(torch.zeros(1, 3), None, ScoreRequest("protein", None))


class _Tally(Domain):
    """A domain added to the registry: its samples are ``.tally`` files of numbers, its score
    their mean and the reference's name."""

    name = "tally"
    sample_kinds: ClassVar[tuple[str, ...]] = ("tally",)
    seen: ClassVar[list[Any]] = []

    def recognises(self, path: Path) -> bool:
        return path.suffix == ".tally"

    def read_samples(self, path: Path) -> torch.Tensor:
        return torch.tensor([float(x) for x in path.read_text().split()])[:, None]

    def score(
        self, samples: torch.Tensor, labels: torch.Tensor | None, request: ScoreRequest
    ) -> dict[str, Any]:
        self.seen.append((request.kind, request.reference, request.batch_size))
        return {"mean": float(samples.mean()), "num_samples": len(samples)}


def test_a_new_domain_is_evaluated_without_changing_the_cli(
    tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(domains.DOMAINS, "tally", _Tally())
    (tmp_path / "s.tally").write_text("1 2 3 6")
    out = tmp_path / "r.json"
    argv = ["--samples", str(tmp_path / "s.tally"), "--ref", "R", "--batch-size", "7"]
    assert ev.main([*argv, "--out", str(out), "--no-progress"]) == 0, capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["settings"]["kind"] == "tally" and report["settings"]["reference"] == "R"
    assert report["metrics"] == {"mean": 3.0, "num_samples": 4}
    assert _Tally.seen == [("tally", "R", 7)]
    assert "mean" in capsys.readouterr().out
    # --num takes the first samples, --kind names the new domain
    argv = ["--samples", str(tmp_path / "s.tally"), "--kind", "tally", "--num", "2"]
    assert ev.main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["metrics"] == {"mean": 1.5, "num_samples": 2}


def test_scoring_without_the_reference_it_needs_is_a_clear_error(tmp_path, capsys) -> None:
    np.save(tmp_path / "images.npy", np.zeros((4, 1, 8, 8), np.float32))
    np.save(tmp_path / "clouds.npy", np.zeros((4, 32, 3), np.float32))
    for name, message in (
        ("images", "image metrics need --ref"),
        ("clouds", "point-cloud metrics need --ref"),
    ):
        argv = ["--samples", str(tmp_path / f"{name}.npy"), "--out", str(tmp_path / "r.json")]
        assert ev.main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"evaluate.py: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_train_task_accepts_every_registered_domain(monkeypatch) -> None:
    """``--task`` names the registry's domains, so a new domain needs no edit of the config."""
    from inrflow.domains import DOMAINS
    from inrflow.train.config import TrainConfig

    monkeypatch.setitem(DOMAINS, "heatmap", DOMAINS["image"])
    for name in DOMAINS:
        assert TrainConfig(task=name).validate().task == name
    with pytest.raises(ValueError, match="--task must be one of"):
        TrainConfig(task="audio").validate()
