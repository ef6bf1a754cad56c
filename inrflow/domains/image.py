"""Images: pixels as (coordinate, colour) pairs on a grid; samples are written as a PNG grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from inrflow.data import BUNDLED, CoordinateDataset, DigitsDataset, ImageFolderDataset
from inrflow.data.io import save_image_grid
from inrflow.model.latent_grouping import grid_coords
from inrflow.nvtx import nvtx_range
from inrflow.sampling import sample

from .base import DataOptions, Domain, SampleRun, image_scale, score_final

__all__ = ["ImageDomain"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageDomain(Domain):
    """The bundled 8x8 digits and folders of images (subfolders = classes)."""

    name = "image"
    bundled = ("digits",)

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

    def generate(
        self, run: SampleRun, num: int, labels: torch.Tensor | None, seed: int
    ) -> torch.Tensor:
        o = run.options
        g = torch.Generator(run.device).manual_seed(seed)
        coords = grid_coords(run.dataset.shape, device=run.device)
        scale = o.cfg_scale if labels is not None else 1.0
        return sample(
            run.model,
            None,
            coords,
            o.sample_steps,
            o.sample_method,
            scale,
            labels,
            g,
            batch_size=num,
            progress=False,
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
