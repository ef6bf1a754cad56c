"""``evaluate.py --compare-upsampling``: the paper's Tab. 5 on a checkpoint, native sampling at a
higher resolution against upsampling of training-resolution samples, as a table and a picture."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inrflow.cli.options import load_sampling_model, resolve_device, solver_options
from inrflow.generation import image_shape, sample_from_model

__all__ = ["compare_upsampling", "format_comparison"]


def compare_upsampling(args: argparse.Namespace) -> dict[str, Any]:
    """The paper's Tab. 5 on a checkpoint: images sampled directly at ``--resolution`` against
    bicubic and bilinear upsampling of the same model's training-resolution samples (same seed,
    same labels), each scored at the high resolution.

    Rows: ``native`` (the default any-resolution path: the fine grid joins the
    training-resolution context late), ``native, per-query noise`` (the paper's scheme), and the
    two upsamplings. Digits get the classifier figures at the high resolution (accuracy,
    Fréchet distance against real digits upsampled to it, within-class diversity); other images
    get FD/KID against ``--ref``. Every row also gets the speckle figure
    (:func:`~inrflow.metrics.images.upsampling_residual` over the training resolution).
    """
    from inrflow.metrics.images import upsampling_residual

    t0 = time.perf_counter()
    device = torch.device(resolve_device(args.device))
    if not args.ckpt or not args.resolution:
        raise ValueError("--compare-upsampling needs --ckpt and --resolution")
    model, meta = load_sampling_model(args, device)
    if model.config.coords_are_values:
        raise ValueError("--compare-upsampling is for image checkpoints")
    train_hw, hw = image_shape(meta), image_shape(meta, args.resolution)
    if hw[0] < train_hw[0] or hw[1] < train_hw[1]:
        raise ValueError(f"--resolution {hw} must not be below the training resolution {train_hw}")
    digits = args.ref in (None, "digits") and str(meta.get("dataset", "")).lower() == "digits"
    if not digits and not args.ref:
        raise ValueError("--compare-upsampling of non-digits images needs --ref")
    kw = dict(
        solver_options(args),  # the same sampler for every row; each row says how it starts
        cfg_scale=args.cfg_scale,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    kw.pop("resolution_mode")
    low, labels = sample_from_model(model, meta, args.num, resolution=train_hw, **kw)
    rows: dict[str, torch.Tensor] = {
        "native": sample_from_model(model, meta, args.num, resolution=hw, **kw)[0],
        "native, per-query noise": sample_from_model(
            model, meta, args.num, resolution=hw, resolution_mode="noise", **kw
        )[0],
    }
    for mode in ("bicubic", "bilinear"):
        up = torch.nn.functional.interpolate(low, size=hw, mode=mode, align_corners=False)
        rows[mode] = up.clamp(-1.0, 1.0)
    table: dict[str, dict[str, Any]] = {}
    for name, x in rows.items():
        if digits:
            from inrflow.metrics.digits import digits_metrics, within_class_diversity

            size = min(min(hw), 32)
            m = digits_metrics(x, labels, value_range=(-1.0, 1.0), size=size)
            row = {"FD-digits": m["FD-digits"], "KID-digits": m["KID-digits"]}
            if labels is not None:
                row["accuracy"] = m["digits-accuracy"]
                row["diversity"] = within_class_diversity(x, labels, value_range=(-1.0, 1.0))
        else:
            from inrflow.metrics.images import compute_image_metrics

            m = compute_image_metrics(
                x,
                args.ref,
                weights=args.inception_weights,
                seed=args.rfid_seed,
                metrics=("fd", "kid"),
                batch_size=args.batch_size,
                value_range=(-1.0, 1.0),
                ref_value_range=tuple(args.ref_value_range) if args.ref_value_range else None,
                device=device,
                progress=not args.no_progress,
            )
            row = {k: v for k, v in m.items() if isinstance(v, float)}
        row["speckle"] = upsampling_residual(x, train_hw, value_range=(-1.0, 1.0))
        table[name] = row
    picture = _comparison_picture(low, rows, hw, Path(args.out).with_suffix(".png"))
    settings = {
        "checkpoint": args.ckpt,
        "training_resolution": list(train_hw),
        "resolution": list(hw),
        "reference": "real digits upsampled (bicubic)" if digits else args.ref,
        "classifier_size": min(min(hw), 32) if digits else None,
        **{k: v for k, v in kw.items() if k != "progress"},
        "num_samples": args.num,
    }
    return {
        "comparison": table,
        "picture": str(picture),
        "settings": settings,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }


def _comparison_picture(
    low: torch.Tensor, rows: dict[str, torch.Tensor], hw: Sequence[int], path: Path
) -> Path:
    """One PNG row per way of reaching ``hw`` (the first 10 samples each), below the
    training-resolution samples themselves (nearest upsampling)."""
    from inrflow.data.io import save_image_grid

    k = min(10, low.shape[0])
    nearest = torch.nn.functional.interpolate(low[:k], size=tuple(hw), mode="nearest")
    stack = torch.cat([nearest, *(x[:k] for x in rows.values())])  # [R*k, C, H, W]
    values = stack.flatten(2).transpose(1, 2)  # [R*k, H*W, C]
    return save_image_grid(values, hw, path, nrow=k, scale=max(1, 64 // max(hw)))


def format_comparison(report: dict[str, Any]) -> str:
    """The upsampling comparison as a table: one row per way of reaching the resolution."""
    table = report["comparison"]
    cols = list(dict.fromkeys(k for row in table.values() for k in row))
    width = max(len(n) for n in table)
    head = f"{'':<{width}}  " + "  ".join(f"{c:>10}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, row in table.items():
        cells = [f"{row[c]:>10.4g}" if c in row else f"{'-':>10}" for c in cols]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    s = report["settings"]
    lines.append(f"\npicture (rows: training resolution, then the rows above): {report['picture']}")
    lines.append(
        f"{s['resolution'][0]}x{s['resolution'][1]} from a model trained at "
        f"{s['training_resolution'][0]}x{s['training_resolution'][1]}; reference: "
        f"{s['reference']}; {s['num_samples']} samples, {s['method']} {s['steps']} steps, "
        f"CFG {s['cfg_scale']}"
    )
    return "\n".join(lines)
