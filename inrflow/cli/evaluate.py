"""``evaluate.py`` (the application; the metrics themselves are :mod:`inrflow.metrics`): metrics
of generated samples (a folder/file of samples, or a checkpoint that is
sampled first) against a reference set; prints a table and writes a JSON report.

Kinds: ``image`` (FID or rFID, KID, precision/recall, IS), ``pointcloud`` (MMD/COV/1-NNA with CD
and EMD), ``digits`` (accuracy of class-conditional samples and FD/KID in the feature space of
the digits classifier; the reference is the bundled real digits).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inrflow.checkpoints import load_checkpoint_model
from inrflow.cli.options import add_solver_arguments, check_solver_arguments, solver_options
from inrflow.generation import image_shape, sample_from_model
from inrflow.metrics.images import load_images
from inrflow.metrics.inception import WEIGHTS_ENV
from inrflow.metrics.io import load_labels, load_point_clouds

__all__ = ["build_parser", "compare_upsampling", "evaluate", "main"]

KINDS = ("auto", "image", "pointcloud", "digits")


def _detect_kind(x: torch.Tensor) -> str:
    return "pointcloud" if x.dim() == 3 and x.shape[-1] == 3 and x.shape[1] > 4 else "image"


def _guess_kind(path: Path) -> str:
    """``pointcloud`` or ``image`` from what a samples path holds."""
    from inrflow.metrics.images import ARRAY_SUFFIXES, IMAGE_SUFFIXES, load_array_file

    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    suffixes = {f.suffix.lower() for f in files}
    if ".ply" in suffixes:
        return "pointcloud"
    if suffixes & set(IMAGE_SUFFIXES):
        return "image"
    arrays = [f for f in files if f.suffix.lower() in ARRAY_SUFFIXES]
    if not arrays:
        raise FileNotFoundError(f"{path}: no samples (images, .ply or array files) found")
    first = load_array_file(arrays[0])
    if path.is_dir():  # one item per file: a cloud is [P, 3], an image [H, W(, C)] or [C, H, W]
        return "pointcloud" if first.dim() == 2 and first.shape[-1] == 3 else "image"
    return _detect_kind(first)


def _load_samples(path: Path, kind: str) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Samples, their labels when stored beside them (``labels`` in the .npz/.pt), the kind."""
    if not path.exists():
        raise FileNotFoundError(f"samples not found: {path}")
    labels = None
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "labels" in npz.files:
                labels = torch.as_tensor(np.asarray(npz["labels"]).astype(np.int64))
    elif path.is_file() and suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "labels" in obj:
            labels = torch.as_tensor(obj["labels"]).long()
    data_kind = _guess_kind(path) if kind == "auto" else kind
    if data_kind == "pointcloud":
        return load_point_clouds(path), labels, data_kind
    return load_images(path), labels, data_kind


def reference_bits_per_dim(
    model: torch.nn.Module, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Bits per dimension (:func:`inrflow.sampling.bits_per_dim` of
    :func:`inrflow.sampling.log_likelihood`, values in the model's range) of the first
    ``args.bpd`` items of the reference set: the real digits (with their labels) for
    ``--ref digits``, else images (mapped to [-1, 1]) or point clouds of ``--ref``."""
    from inrflow.metrics.images import to_unit_float
    from inrflow.model import grid_coords
    from inrflow.sampling import SolverStats, bits_per_dim, log_likelihood

    cfg = model.config
    labels = None
    if cfg.coords_are_values:
        if not args.ref:
            raise ValueError("--bpd needs --ref (point clouds)")
        values, coords = load_point_clouds(args.ref)[: args.bpd].float(), None
    else:
        if args.ref in (None, "digits"):
            from inrflow.data.digits import load_real_digits

            images, digit_labels = load_real_digits()
            x = torch.from_numpy(images[: args.bpd]).float()[:, None]
            labels = torch.from_numpy(digit_labels[: args.bpd]) if cfg.num_classes else None
        else:
            x = to_unit_float(load_images(args.ref, limit=args.bpd), args.ref_value_range)
        n, c, h, w = x.shape
        if c != cfg.value_dim:
            raise ValueError(f"--bpd: the reference has {c} channels, the model {cfg.value_dim}")
        values = (x * 2 - 1).permute(0, 2, 3, 1).reshape(n, h * w, c)
        coords = grid_coords((h, w), cfg.coord_low, cfg.coord_high)
    gen = torch.Generator().manual_seed(args.seed)
    stats = SolverStats()
    out = []
    for s in range(0, values.shape[0], args.batch_size):
        v = values[s : s + args.batch_size].to(device)
        lab = labels[s : s + args.batch_size] if labels is not None else None
        ll = log_likelihood(
            model,
            coords,
            v,
            lab,
            method=args.bpd_method,
            steps=args.bpd_steps,
            atol=args.bpd_tol,
            rtol=args.bpd_tol,
            hutchinson=args.hutchinson,
            generator=gen,
            stats=stats,
        )
        out.append(bits_per_dim(ll, v.shape[1] * v.shape[2]).cpu())
    bpd = torch.cat(out)
    return {
        "bpd": float(bpd.mean()),
        "bpd-std": float(bpd.std()) if len(bpd) > 1 else 0.0,
        "bpd-num": len(bpd),
        "bpd-nfe-per-batch": stats.nfe_per_call,
        "bpd-divergence": "exact" if args.hutchinson is None else f"hutchinson-{args.hutchinson}",
    }


def _check_labels(labels: torch.Tensor, num_classes: int, num_samples: int) -> None:
    """Labels must name a class of the classifier, one per sample: an out-of-range label would
    be scored as a miss (or, negative, silently as another class) instead of being reported."""
    if labels.numel() != num_samples:
        raise ValueError(f"{num_samples} samples but {labels.numel()} labels")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        shown = ", ".join(str(int(v)) for v in bad.unique()[:5])
        raise ValueError(
            f"labels must be classes 0..{num_classes - 1}; {bad.numel()} are not ({shown})"
        )


UPSAMPLING_ROWS = ("native", "native, per-query noise", "bicubic", "bilinear")


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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.checkpoint or not args.resolution:
        raise ValueError("--compare-upsampling needs --checkpoint and --resolution")
    model, meta = load_checkpoint_model(args.checkpoint, device)
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
    low, labels = sample_from_model(model, meta, args.num_samples, resolution=train_hw, **kw)
    rows: dict[str, torch.Tensor] = {
        "native": sample_from_model(model, meta, args.num_samples, resolution=hw, **kw)[0],
        "native, per-query noise": sample_from_model(
            model, meta, args.num_samples, resolution=hw, resolution_mode="noise", **kw
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
        "checkpoint": args.checkpoint,
        "training_resolution": list(train_hw),
        "resolution": list(hw),
        "reference": "real digits upsampled (bicubic)" if digits else args.ref,
        "classifier_size": min(min(hw), 32) if digits else None,
        **{k: v for k, v in kw.items() if k != "progress"},
        "num_samples": args.num_samples,
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


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run one evaluation from parsed arguments; returns the report (also written as JSON)."""
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = not args.no_progress
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = {}
    stats = None
    if args.checkpoint:
        from inrflow.sampling import SolverStats

        stats = SolverStats()
        model, meta = load_checkpoint_model(args.checkpoint, device)
    if args.checkpoint and args.num_samples == 0:  # likelihood only
        report_bpd = reference_bits_per_dim(model, args, device)
        settings = {"kind": "likelihood", "samples": None, "reference": args.ref or "digits"}
        return {
            "metrics": report_bpd,
            "settings": settings,
            "environment": {"torch": torch.__version__, "device": str(device)},
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
    if args.checkpoint:
        samples, labels = sample_from_model(
            model,
            meta,
            args.num_samples,
            cfg_scale=args.cfg_scale,
            batch_size=args.batch_size,
            seed=args.seed,
            resolution=args.resolution,
            points=args.points,
            progress=progress,
            stats=stats,
            **solver_options(args),
        )
        source = f"checkpoint {args.checkpoint}"
        if args.save_samples:
            out = Path(args.save_samples)
            out.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"samples": samples.numpy()}
            if labels is not None:
                arrays["labels"] = labels.numpy()
            np.savez(out, **arrays)
    else:
        samples, labels, data_kind = _load_samples(Path(args.samples), args.kind)
        meta.setdefault("domain", data_kind)
        source = str(args.samples)
        if args.num_samples:
            samples = samples[: args.num_samples]
            labels = labels[: args.num_samples] if labels is not None else None
    if args.labels:
        labels = load_labels(args.labels)[: samples.shape[0]]
    if samples.is_floating_point():
        bad = int((~torch.isfinite(samples.reshape(samples.shape[0], -1))).any(1).sum())
        if bad:
            raise ValueError(f"{bad} of {samples.shape[0]} samples contain NaN or infinite values")

    kind = args.kind
    if kind == "auto":
        if args.ref == "digits" or str(meta.get("dataset", "")).lower() == "digits":
            kind = "digits"
        else:
            kind = meta.get("domain") if meta.get("domain") in ("image", "pointcloud") else None
            kind = kind or _detect_kind(samples)
    settings: dict[str, Any] = {"kind": kind, "samples": source, "reference": args.ref}
    vr = tuple(args.value_range) if args.value_range else None
    if args.checkpoint and vr is None and kind in ("image", "digits"):
        vr = (-1.0, 1.0)  # inrflow image values
    rvr = tuple(args.ref_value_range) if args.ref_value_range else None

    metrics: dict[str, Any]
    if kind == "digits":
        from inrflow.data.digits import load_real_digits
        from inrflow.metrics.digits import digits_metrics

        refs = None if args.ref in (None, "digits") else load_images(args.ref)
        if labels is not None:
            _check_labels(labels, 10, samples.shape[0])
        metrics = digits_metrics(samples, labels, refs=refs, value_range=vr, ref_value_range=rvr)
        if args.metrics:  # Inception-family numbers as well, on request
            from inrflow.metrics.images import compute_image_metrics

            real = torch.from_numpy(load_real_digits()[0]).float() if refs is None else refs
            metrics.update(
                compute_image_metrics(
                    samples,
                    real,
                    weights=args.inception_weights,
                    seed=args.rfid_seed,
                    metrics=args.metrics,
                    batch_size=args.batch_size,
                    value_range=vr,
                    ref_value_range=(0.0, 1.0) if refs is None else rvr,
                    device=device,
                    progress=progress,
                )
            )
    elif kind == "image":
        from inrflow.metrics.images import compute_image_metrics

        if not args.ref:
            raise SystemExit("evaluate.py: image metrics need --ref (a folder or array file)")
        metrics = compute_image_metrics(
            samples,
            args.ref,
            weights=args.inception_weights,
            seed=args.rfid_seed,
            metrics=args.metrics or ("fd", "kid", "pr", "is"),
            batch_size=args.batch_size,
            value_range=vr,
            ref_value_range=rvr,
            device=device,
            progress=progress,
        )
    elif kind == "pointcloud":
        from inrflow.metrics.pointcloud import point_cloud_metrics

        if not args.ref:
            raise SystemExit("evaluate.py: point-cloud metrics need --ref")
        refs = load_point_clouds(args.ref)
        metrics = point_cloud_metrics(
            samples.double(),
            refs.double(),
            emd_method=args.emd,
            backend=args.cd_backend,
            normalize=None if args.normalize == "none" else args.normalize,
            device=device,
            progress=progress,
        )
    else:
        raise SystemExit(f"evaluate.py: unknown kind {kind!r}")

    if args.checkpoint and args.bpd:
        metrics.update(reference_bits_per_dim(model, args, device))
    report = {
        "metrics": metrics,
        "settings": settings,
        "environment": {
            "torch": torch.__version__,
            "device": str(device),
            "python": platform.python_version(),
        },
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    if args.checkpoint:
        settings.update(
            steps=args.steps,
            method=args.method,
            time_shift=args.time_shift,
            shift_by_resolution=args.shift_by_resolution,
            atol=args.atol,
            rtol=args.rtol,
            nfe_per_batch=stats.nfe_per_call,
            nfe_total=stats.nfe,
            cfg_scale=args.cfg_scale,
            num_samples=args.num_samples,
            seed=args.seed,
        )
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report's metrics as an aligned two-column table (notes after the numbers)."""
    rows, notes = [], []
    for key, val in report["metrics"].items():
        if isinstance(val, float):
            rows.append((key, f"{val:.6g}" if math.isfinite(val) else str(val)))
        elif isinstance(val, int):
            rows.append((key, str(val)))
        elif val is None:
            rows.append((key, "-"))
        else:
            notes.append(f"{key}: {val}")
    width = max([len(k) for k, _ in rows] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", *notes] if notes else []
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=(
            "Evaluate generated samples against a reference set: image metrics (FID with the "
            f"standard Inception weights from --inception-weights or ${WEIGHTS_ENV}, otherwise "
            "rFID with a seeded random Inception), point-cloud metrics (MMD/COV/1-NNA with CD "
            "and EMD), or the digits demo's classifier metrics. Prints a table and writes a "
            "JSON report."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--samples",
        help="folder or file of samples (images: PNG/BMP/..., or "
        ".npy/.npz/.pt arrays; point clouds: .ply or arrays [N, P, 3])",
    )
    src.add_argument("--checkpoint", help="a trained checkpoint: samples are generated first")
    p.add_argument(
        "--ref", help="reference set (folder or file), or 'digits' for the bundled real digits"
    )
    p.add_argument("--kind", choices=KINDS, default="auto", help="what the samples are")
    p.add_argument(
        "--labels",
        help="class labels of the samples (.npy/.npz/.pt/.txt); an .npz "
        "or .pt of samples may hold them under 'labels'",
    )
    p.add_argument("--out", default="eval_report.json", help="where to write the JSON report")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="samples to generate (checkpoint) or to use (folder); default all / 500",
    )
    p.add_argument(
        "--value-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="value range of image samples (default: inferred; [-1, 1] for a checkpoint)",
    )
    p.add_argument("--ref-value-range", type=float, nargs=2, metavar=("LO", "HI"))
    g = p.add_argument_group("image metrics")
    g.add_argument(
        "--metrics",
        type=lambda s: [m for m in s.split(",") if m],
        default=None,
        help="comma list of fd,kid,pr,is (default all for images; for digits, "
        "Inception metrics only when given)",
    )
    g.add_argument(
        "--inception-weights",
        default=None,
        help=f"FID Inception weights file (default ${WEIGHTS_ENV}); without it the "
        "numbers are rFID",
    )
    g.add_argument("--rfid-seed", type=int, default=0)
    g = p.add_argument_group("point-cloud metrics")
    g.add_argument("--emd", choices=("auto", "exact", "auction", "none"), default="auto")
    g.add_argument("--cd-backend", choices=("auto", "kdtree", "matmul", "ops"), default="auto")
    g.add_argument(
        "--normalize",
        choices=("none", "bbox", "unit_sphere"),
        default="none",
        help="per-shape normalisation of both sets (bbox: the LION protocol)",
    )
    g = p.add_argument_group("sampling (with --checkpoint)")
    add_solver_arguments(g, default_steps=100)
    g.add_argument("--cfg-scale", type=float, default=1.0)
    g.add_argument(
        "--resolution", type=int, nargs="+", default=None, help="image size: one side or H W"
    )
    g.add_argument(
        "--compare-upsampling",
        action="store_true",
        help="the paper's Tab. 5: sample at --resolution directly (both modes) and compare "
        "with bicubic/bilinear upsampling of training-resolution samples",
    )
    g.add_argument("--points", type=int, default=None, help="points per generated cloud")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-samples", default=None, help="also save generated samples (.npz)")
    g = p.add_argument_group("likelihood (with --checkpoint)")
    g.add_argument(
        "--bpd",
        type=int,
        default=0,
        metavar="N",
        help="also report the bits per dimension of the first N reference items under the "
        "model (values in the model's range; --num-samples 0: only this)",
    )
    g.add_argument("--bpd-method", choices=("dopri5", "heun", "euler"), default="dopri5")
    g.add_argument("--bpd-steps", type=int, default=50, help="steps of heun/euler")
    g.add_argument("--bpd-tol", type=float, default=1e-5, help="dopri5 atol = rtol")
    g.add_argument(
        "--hutchinson",
        type=int,
        default=None,
        metavar="K",
        help="estimate the divergence with K probes (default: exact, one backward pass per "
        "dimension)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint and args.num_samples is None:
        args.num_samples = 500
    if args.bpd < 0 or (args.bpd and not args.checkpoint):
        print("evaluate.py: error: --bpd N needs --checkpoint and N >= 0", file=sys.stderr)
        return 2
    for flag, value in (
        ("--num-samples", args.num_samples),
        ("--batch-size", args.batch_size),
        ("--steps", args.steps),
        ("--points", args.points),
    ):
        if flag == "--num-samples" and value == 0 and args.bpd:
            continue  # the likelihood only
        if value is not None and value < 1:
            print(f"evaluate.py: error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.resolution is not None and (len(args.resolution) > 2 or min(args.resolution) < 1):
        print("evaluate.py: error: --resolution takes one side or H W, each >= 1", file=sys.stderr)
        return 2
    if not math.isfinite(args.cfg_scale):
        msg = f"evaluate.py: error: --cfg-scale must be finite, got {args.cfg_scale}"
        print(msg, file=sys.stderr)
        return 2
    for flag, path in (("--out", args.out), ("--save-samples", args.save_samples)):
        if path is not None and Path(path).is_dir():
            msg = f"evaluate.py: error: {flag} {path} is a folder; give a file name"
            print(msg, file=sys.stderr)
            return 2
    if args.checkpoint and (err := check_solver_arguments(args)) is not None:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    try:
        report = compare_upsampling(args) if args.compare_upsampling else evaluate(args)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(report) if args.compare_upsampling else format_table(report))
    if "nfe_per_batch" in report["settings"]:
        st = report["settings"]
        print(f"\nsampler: NFE {st['nfe_per_batch']:g} per batch ({st['nfe_total']} in all)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nreport written to {out}")
    return 0
