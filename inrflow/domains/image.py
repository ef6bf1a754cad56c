"""Images: pixels as (coordinate, colour) pairs on a grid; samples are written as a PNG grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from inrflow.data import BUNDLED, CoordinateDataset, DigitsDataset, ImageFolderDataset
from inrflow.data.io import save_image_grid
from inrflow.generation import image_shape
from inrflow.nvtx import nvtx_range

from .base import DataOptions, Domain, SampleRequest, SampleRun, image_scale, score_final

__all__ = ["ImageDomain"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageDomain(Domain):
    """The bundled 8x8 digits and folders of images (subfolders = classes)."""

    name = "image"
    bundled = ("digits",)
    writes_folder = False
    default_out = "samples.png"

    def holds(self, path: Path) -> bool:
        return path.is_dir()  # a folder nothing else claimed: images

    def build_dataset(self, spec: str, options: DataOptions, split: str) -> CoordinateDataset:
        if spec == "digits":
            return DigitsDataset(options.resolution or 8)
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"--data {spec!r}: expected a folder of images or point clouds, or a "
                f".npy/.npz stack of point clouds (bundled datasets: {', '.join(BUNDLED)})"
            )
        return ImageFolderDataset(
            path, options.resolution or 256, hflip=options.hflip, channels=options.channels
        )

    def periodic(self, run: SampleRun) -> Path | None:
        num = run.options.num_samples
        with nvtx_range("sample"):
            out = self.generate(run, num, run.labels(num), seed=run.options.seed)
        k = run.model.config.num_classes
        path = save_image_grid(
            out,
            run.dataset.shape,
            run.out / "samples" / f"step_{run.step:09d}.png",
            nrow=k if k > 0 and num % k == 0 else None,
            scale=image_scale(run.dataset.shape),
        )
        run.log(f"step {run.step}: samples written to {path}")
        return path

    def final(self, run: SampleRun) -> dict[str, Any]:
        num = run.options.final_samples
        if num <= 0:
            return {}
        t0 = time.perf_counter()
        labels = run.labels(num)
        with nvtx_range("final-samples"):
            out = self.generate(run, num, labels, seed=run.options.seed + 1)
        seconds = time.perf_counter() - t0
        k = run.model.config.num_classes
        path = save_image_grid(
            out[: min(num, 10 * k if k else 100)],
            run.dataset.shape,
            run.out / "samples" / "final.png",
            nrow=k or None,
            scale=image_scale(run.dataset.shape),
        )
        run.log(f"{num} final samples: {path}")
        return {"sample_seconds": seconds, "samples": str(path), **score_final(run, out, labels)}

    def write(
        self,
        samples: torch.Tensor,
        info: dict[str, Any],
        path: Path,
        request: SampleRequest,
        num_classes: int,
    ) -> None:
        """A PNG grid; one class per row when the labels cycle over all classes."""
        hw = image_shape(info, request.resolution)
        nrow = request.nrow
        if nrow is None and request.labels is not None and request.class_rows:
            nrow = num_classes if request.num % num_classes == 0 else None
        save_image_grid(samples, hw, path, nrow=nrow, scale=image_scale(hw))
