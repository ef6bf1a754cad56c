"""Images: pixels as (coordinate, colour) pairs on a grid; samples are written as a PNG grid and
scored by the FID family against a reference set, or, for the bundled digits, by the digits
classifier (accuracy, Fréchet distance and KID in its feature space)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from inrflow.data import BUNDLED, CoordinateDataset, DigitsDataset, ImageFolderDataset
from inrflow.data.io import save_image_grid
from inrflow.generation import image_shape
from inrflow.metrics.images import ARRAY_SUFFIXES, IMAGE_SUFFIXES, load_images, to_unit_float
from inrflow.metrics.io import check_labels, sample_files
from inrflow.model import grid_coords
from inrflow.model.config import INRFlowConfig
from inrflow.nvtx import nvtx_range

from .base import (
    DataOptions,
    Domain,
    ReferenceItems,
    SampleRequest,
    SampleRun,
    ScoreRequest,
    image_scale,
    score_final,
)

__all__ = ["ImageDomain"]


#: the bundled digits, as a training set and as the reference of the digits scoring
DIGITS = "digits"


class ImageDomain(Domain):
    """The bundled 8x8 digits and folders of images (subfolders = classes).

    Sample files are scored two ways (:attr:`sample_kinds`): ``image``, the FID family against
    a reference set, and ``digits``, the digits classifier's figures against the real digits.
    The digits scoring is this domain's rather than a domain of its own: digits samples are
    images read like any other, and only the reference and the feature extractor differ; it is
    picked when the reference or the training data is the bundled digits."""

    name = "image"
    bundled = (DIGITS,)
    writes_folder = False
    default_out = "samples.png"
    sample_kinds = ("image", DIGITS)

    def holds(self, path: Path) -> bool:
        return path.is_dir()  # a folder nothing else claimed: images

    def build_dataset(self, spec: str, options: DataOptions, split: str) -> CoordinateDataset:
        if spec == DIGITS:
            if options.field_resolution is not None:
                raise ValueError(
                    "--field-resolution needs images above the training resolution; the "
                    "bundled digits exist only at 8x8"
                )
            return DigitsDataset(options.resolution or 8)
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"--data {spec!r}: expected a folder of images or point clouds, or a "
                f".npy/.npz stack of point clouds (bundled datasets: {', '.join(BUNDLED)})"
            )
        return ImageFolderDataset(
            path,
            options.resolution or 256,
            hflip=options.hflip,
            channels=options.channels,
            field_resolution=options.field_resolution,
        )

    def dataset_info(self, ds: CoordinateDataset) -> dict[str, Any]:
        info = super().dataset_info(ds)
        if getattr(ds, "field_resolution", None):  # trained between pixels: sampling joins early
            info["field_resolution"] = ds.field_resolution
        return info

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

    # -- the evaluation application ----------------------------------------------------------
    def recognises(self, path: Path) -> bool:
        """Image files, or array files that no earlier domain (point clouds) claimed."""
        suffixes = (*IMAGE_SUFFIXES, *ARRAY_SUFFIXES)
        return any(f.suffix.lower() in suffixes for f in sample_files(path))

    def read_samples(self, path: Path) -> torch.Tensor:
        """Images ``[N, C, H, W]`` (:func:`inrflow.metrics.images.load_images`)."""
        return load_images(path)

    def scoring(self, reference: str | None, dataset: str | None) -> str:
        """``digits`` when the reference or the training data is the bundled digits, else
        ``image``."""
        return DIGITS if DIGITS in (reference, str(dataset or "").lower()) else "image"

    def score(
        self, samples: torch.Tensor, labels: torch.Tensor | None, request: ScoreRequest
    ) -> dict[str, Any]:
        if request.kind == DIGITS:
            return _digits_scores(samples, labels, request)
        if request.kind != "image":
            raise ValueError(f"the image domain scores {self.sample_kinds}, not {request.kind!r}")
        from inrflow.metrics.images import compute_image_metrics

        if not request.reference:
            raise ValueError("image metrics need --ref (a folder or array file)")
        return compute_image_metrics(
            samples,
            request.reference,
            weights=request.inception_weights,
            seed=request.rfid_seed,
            metrics=request.metrics or ("fd", "kid", "pr", "is"),
            batch_size=request.batch_size,
            value_range=request.value_range,
            ref_value_range=request.ref_value_range,
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
        """The first ``num`` real digits (with their labels for a class-conditional model;
        ``reference`` None or ``digits``) or images of ``reference``, on the training grid,
        mapped to [-1, 1]."""
        labels = None
        if reference in (None, DIGITS):
            from inrflow.data.digits import load_real_digits

            images, digit_labels = load_real_digits()
            x = torch.from_numpy(images[:num]).float()[:, None]
            labels = torch.from_numpy(digit_labels[:num]) if config.num_classes else None
        else:
            x = to_unit_float(load_images(reference, limit=num), value_range)
        n, c, h, w = x.shape
        if c != config.value_dim:
            raise ValueError(f"--bpd: the reference has {c} channels, the model {config.value_dim}")
        values = (x * 2 - 1).permute(0, 2, 3, 1).reshape(n, h * w, c)
        coords = grid_coords((h, w), config.coord_low, config.coord_high)
        return ReferenceItems(values, coords, labels, reference or DIGITS)


def _digits_scores(
    samples: torch.Tensor, labels: torch.Tensor | None, request: ScoreRequest
) -> dict[str, Any]:
    """The digits classifier's figures (accuracy of class-conditional samples, FD and KID in
    its feature space) against the real digits, or the images of ``request.reference``; the
    Inception-family numbers as well when ``request.metrics`` names them."""
    from inrflow.data.digits import load_real_digits
    from inrflow.metrics.digits import digits_metrics

    refs = None if request.reference in (None, DIGITS) else load_images(request.reference)
    if labels is not None:
        check_labels(labels, 10, samples.shape[0])
    vr, rvr = request.value_range, request.ref_value_range
    metrics = digits_metrics(samples, labels, refs=refs, value_range=vr, ref_value_range=rvr)
    if request.metrics:
        from inrflow.metrics.images import compute_image_metrics

        real = torch.from_numpy(load_real_digits()[0]).float() if refs is None else refs
        metrics.update(
            compute_image_metrics(
                samples,
                real,
                weights=request.inception_weights,
                seed=request.rfid_seed,
                metrics=request.metrics,
                batch_size=request.batch_size,
                value_range=vr,
                ref_value_range=(0.0, 1.0) if refs is None else rvr,
                device=request.device,
                progress=request.progress,
            )
        )
    return metrics
