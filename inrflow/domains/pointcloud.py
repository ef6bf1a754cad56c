"""Point clouds: points as values without coordinates; samples are written as PLY files (one
per cloud, named by class) with a picture of them (one row per class; for the bundled shapes,
next to real held-out shapes), scored during training by recognition and 1-NNA against
held-out shapes (the bundled shapes), and, from sample files, by MMD/COV/1-NNA against a
reference set."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inrflow.data import CoordinateDataset, PointCloudDataset, ShapesDataset
from inrflow.data.io import save_ply, save_point_cloud_grid
from inrflow.metrics.images import IMAGE_SUFFIXES
from inrflow.metrics.io import first_array, load_point_clouds, sample_files
from inrflow.model import INRFlow
from inrflow.model.config import INRFlowConfig
from inrflow.nvtx import nvtx_range

from .base import (
    DataOptions,
    Domain,
    ReferenceItems,
    SampleRequest,
    SampleRun,
    ScoreRequest,
    score_final,
)

__all__ = ["HEADLINE", "PointCloudDomain", "class_picture", "save_class_clouds"]

#: the scores of the bundled shapes shown in the log during training
HEADLINE = ("recognition", "recognition_min", "1-NNA-CD_mean")


class PointCloudDomain(Domain):
    """The bundled shapes and folders / stacks of point clouds (``.npy``/``.npz``)."""

    name = "pointcloud"
    bundled = ("shapes",)
    sample_kinds = ("pointcloud",)

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

    def sample_files(
        self,
        model: INRFlow,
        info: dict[str, Any],
        train: dict[str, Any],
        request: SampleRequest,
        log: Callable[[str], None],
    ) -> tuple[Path, torch.Tensor | None]:
        """PLY files (:meth:`write`) and ``samples.png`` beside them: one row per class asked
        for (one row when unconditional), after real held-out shapes when the run trained on
        the bundled shapes (the trainer's :func:`class_picture`)."""
        path, out = super().sample_files(model, info, train, request, log)
        if out is not None:
            real = self._heldout_source(info, train) if request.labels is not None else None
            png = class_picture(
                real,
                out,
                request.labels,
                path / "samples.png",
                class_names=tuple(info.get("class_names") or ()),
            )
            if png is not None:
                log(f"picture of the samples: {png}")
        return path, out

    def _heldout_source(self, info: dict[str, Any], train: dict[str, Any]) -> Any:
        """The dataset whose held-out shapes the picture shows beside the samples: the
        bundled shapes of the run, else None (a folder of clouds has no held-out shapes)."""
        if train.get("data") not in self.bundled:
            return None
        return ShapesDataset(int(info["shape"][0]), rotate=bool(train.get("rotate", False)))

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

    # -- the evaluation application ----------------------------------------------------------
    def recognises(self, path: Path) -> bool:
        """PLY files; or array files of clouds: a stack ``[N, P, 3]`` (P > 4) in one file, one
        cloud ``[P, 3]`` per file in a folder. A folder of images holds no clouds."""
        files = sample_files(path)
        suffixes = {f.suffix.lower() for f in files}
        if ".ply" in suffixes:
            return True
        if suffixes & set(IMAGE_SUFFIXES):
            return False
        first = first_array(files)
        if first is None or first.shape[-1:] != (3,):
            return False
        if path.is_dir():
            return first.dim() == 2
        return first.dim() == 3 and first.shape[1] > 4

    def read_samples(self, path: Path) -> torch.Tensor:
        """Clouds ``[N, P, 3]`` (:func:`inrflow.metrics.io.load_point_clouds`)."""
        return load_point_clouds(path)

    def score(
        self, samples: torch.Tensor, labels: torch.Tensor | None, request: ScoreRequest
    ) -> dict[str, Any]:
        """MMD, COV and 1-NNA with the Chamfer and Earth mover's distances against the clouds
        of ``request.reference`` (:func:`inrflow.metrics.pointcloud.point_cloud_metrics`)."""
        from inrflow.metrics.pointcloud import point_cloud_metrics

        if not request.reference:
            raise ValueError("point-cloud metrics need --ref")
        refs = load_point_clouds(request.reference)
        return point_cloud_metrics(
            samples.double(),
            refs.double(),
            emd_method=request.emd,
            backend=request.cd_backend,
            normalize=request.normalize,
            device=request.device,
            progress=request.progress,
        )

    def reference_items(
        self,
        reference: str | None,
        num: int,
        config: INRFlowConfig,
        value_range: tuple[float, float] | None = None,
    ) -> ReferenceItems:
        """The first ``num`` clouds of ``reference`` (the points are the coordinates)."""
        if not reference:
            raise ValueError("--bpd needs --ref (point clouds)")
        return ReferenceItems(load_point_clouds(reference)[:num].float(), None, None, reference)


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
    labels: torch.Tensor | None,
    path: Path,
    per_row: int = 6,
    real: int = 2,
    class_names: tuple[str, ...] | None = None,
) -> Path | None:
    """A PNG, one row per class: ``real`` real held-out shapes (``dataset.heldout``, as the
    bundled shapes have; none when ``dataset`` is None), then up to ``per_row`` of the samples
    asked for that class, rows named by ``class_names`` (default: the dataset's). Unconditional
    samples (``labels`` None): one row of up to ``per_row`` samples. None without matplotlib."""
    if labels is None:
        return save_point_cloud_grid([list(clouds[:per_row])], path)
    names_of = class_names or tuple(dataset.class_names if dataset is not None else ())
    refs, ref_labels = dataset.heldout(real).clouds(seed=3) if dataset is not None else (None, None)
    rows, names = [], []
    for k in labels.unique(sorted=True).tolist():
        mine = clouds[(labels.cpu() == k)][:per_row]
        reals = [*refs[ref_labels == k]] if refs is not None else []
        rows.append([*reals, *mine])
        names.append(names_of[k] if k < len(names_of) else str(k))
    return save_point_cloud_grid(rows, path, names, real_columns=real if refs is not None else 0)
