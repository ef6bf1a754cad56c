"""Point clouds: points as values without coordinates; samples are written as PLY files (one
per cloud, named by class) and, for the bundled shapes, a picture next to real shapes and a
score (recognition and 1-NNA against held-out shapes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from inrflow.data import CoordinateDataset, PointCloudDataset, ShapesDataset
from inrflow.data.io import save_ply, save_point_cloud_grid
from inrflow.nvtx import nvtx_range

from .base import DataOptions, Domain, SampleRequest, SampleRun, score_final

__all__ = ["HEADLINE", "PointCloudDomain", "class_picture", "save_class_clouds"]

#: the scores of the bundled shapes shown in the log during training
HEADLINE = ("recognition", "recognition_min", "1-NNA-CD_mean")


class PointCloudDomain(Domain):
    """The bundled shapes and folders / stacks of point clouds (``.npy``/``.npz``)."""

    name = "pointcloud"
    bundled = ("shapes",)

    def holds(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix in (".npy", ".npz")
        for _dirpath, _dirs, files in os.walk(path, followlinks=True):
            for f in files:
                if f.endswith((".npy", ".npz")):
                    return True
                if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")):
                    return False
        return False

    def build_dataset(self, spec: str, options: DataOptions, split: str) -> CoordinateDataset:
        if spec == "shapes":
            return ShapesDataset(options.num_points or 512, rotate=options.rotate)
        return PointCloudDataset(
            Path(spec).expanduser(), options.num_points or 2048, options.normalization
        )

    def periodic(self, run: SampleRun) -> Path | None:
        num = run.options.num_samples
        labels = run.labels(num)
        with nvtx_range("sample"):
            out = self.generate(run, num, labels, seed=run.options.seed)
        path = save_class_clouds(
            out, labels, run.dataset.class_names, run.out / "samples" / f"step_{run.step:09d}"
        )
        run.log(f"step {run.step}: samples written to {path}")
        # the shapes improving while the loss looks flat
        evaluate = getattr(run.dataset, "evaluate_samples", None)
        if evaluate is not None and labels is not None:
            scores = evaluate(out, labels)
            values = {f"samples/{k}": float(scores[k]) for k in HEADLINE if k in scores}
            run.scalars(values)
            shown = ", ".join(f"{k.split('/')[1]} {v:.3g}" for k, v in values.items())
            run.log(f"step {run.step}: {len(out)} samples: {shown}")
        return path

    def final(self, run: SampleRun) -> dict[str, Any]:
        o, ds = run.options, run.dataset
        num = o.final_samples
        if num <= 0:
            return {}
        labels = run.labels(num)
        t0 = time.perf_counter()
        with nvtx_range("final-samples"):
            out = self.generate(run, num, labels, seed=o.seed + 1)
        result: dict[str, Any] = {"sample_seconds": time.perf_counter() - t0}
        path = save_class_clouds(out, labels, ds.class_names, run.out / "samples" / "final")
        if labels is not None and hasattr(ds, "clouds"):  # the bundled shapes
            png = class_picture(ds, out, labels, run.out / "samples.png")
            if png is not None:
                run.log(f"samples next to real shapes: {png}")
                result["picture"] = str(png)
        result["samples"] = str(path)
        run.log(f"{num} final samples: {path}")
        result.update(score_final(run, out, labels))
        return result

    def write(
        self,
        samples: torch.Tensor,
        info: dict[str, Any],
        path: Path,
        request: SampleRequest,
        num_classes: int,
    ) -> None:
        """One PLY file per cloud, ``sample_0000.ply``, ..."""
        for i, cloud in enumerate(samples):
            save_ply(cloud, path / f"sample_{i:04d}.ply")


def save_class_clouds(
    clouds: torch.Tensor, labels: torch.Tensor | None, class_names: tuple[str, ...], folder: Path
) -> Path:
    """One PLY per cloud, ``sample_000_<class>.ply`` (``sample_000.ply`` when unconditional)."""
    names = (
        [class_names[int(k)] for k in labels.cpu()]
        if labels is not None and class_names
        else [None] * len(clouds)
    )
    for i, (cloud, name) in enumerate(zip(clouds, names, strict=True)):
        save_ply(cloud, folder / (f"sample_{i:03d}_{name}.ply" if name else f"sample_{i:03d}.ply"))
    return folder


def class_picture(
    dataset: Any,
    clouds: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    per_row: int = 6,
    real: int = 2,
) -> Path | None:
    """A PNG, one row per class: ``real`` real held-out shapes, then up to ``per_row`` of the
    samples asked for that class (needs ``dataset.heldout``, as the bundled shapes have)."""
    refs, ref_labels = dataset.heldout(real).clouds(seed=3)
    rows, names = [], []
    for k, name in enumerate(dataset.class_names):
        mine = clouds[(labels.cpu() == k)][:per_row]
        if len(mine) == 0:
            continue
        rows.append([*refs[ref_labels == k], *mine])
        names.append(name)
    return save_point_cloud_grid(rows, path, names, real_columns=real) if rows else None
