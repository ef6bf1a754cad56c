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

from inrflow.cli.options import (
    add_checkpoint_argument,
    add_sample_arguments,
    add_solver_arguments,
    check_sampling_arguments,
    load_sampling_model,
    resolve_device,
    solver_options,
)
from inrflow.cli.upsampling import compare_upsampling, format_comparison
from inrflow.generation import sample_from_model
from inrflow.metrics.images import load_images
from inrflow.metrics.inception import WEIGHTS_ENV
from inrflow.metrics.io import (
    check_labels,
    detect_kind,
    load_labels,
    load_point_clouds,
    load_samples,
)

__all__ = ["build_parser", "evaluate", "main"]

KINDS = ("auto", "image", "pointcloud", "digits")
DEFAULT_NUM = 500  # samples generated from a checkpoint unless --num says otherwise


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


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run one evaluation from parsed arguments; returns the report (also written as JSON)."""
    t0 = time.perf_counter()
    device = torch.device(resolve_device(args.device))
    progress = not args.no_progress
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = {}
    stats = None
    if args.ckpt:
        from inrflow.sampling import SolverStats

        stats = SolverStats()
        model, meta = load_sampling_model(args, device)
    if args.ckpt and args.num == 0:  # likelihood only
        report_bpd = reference_bits_per_dim(model, args, device)
        settings = {"kind": "likelihood", "samples": None, "reference": args.ref or "digits"}
        return {
            "metrics": report_bpd,
            "settings": settings,
            "environment": {"torch": torch.__version__, "device": str(device)},
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
    if args.ckpt:
        samples, labels = sample_from_model(
            model,
            meta,
            args.num,
            cfg_scale=args.cfg_scale,
            batch_size=args.batch_size,
            seed=args.seed,
            resolution=args.resolution,
            points=args.points,
            progress=progress,
            stats=stats,
            **solver_options(args),
        )
        source = f"checkpoint {args.ckpt}"
        if args.save_samples:
            out = Path(args.save_samples)
            out.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"samples": samples.numpy()}
            if labels is not None:
                arrays["labels"] = labels.numpy()
            np.savez(out, **arrays)
    else:
        samples, labels, data_kind = load_samples(Path(args.samples), args.kind)
        meta.setdefault("domain", data_kind)
        source = str(args.samples)
        if args.num:
            samples = samples[: args.num]
            labels = labels[: args.num] if labels is not None else None
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
            kind = kind or detect_kind(samples)
    settings: dict[str, Any] = {"kind": kind, "samples": source, "reference": args.ref}
    vr = tuple(args.value_range) if args.value_range else None
    if args.ckpt and vr is None and kind in ("image", "digits"):
        vr = (-1.0, 1.0)  # inrflow image values
    rvr = tuple(args.ref_value_range) if args.ref_value_range else None

    metrics: dict[str, Any]
    if kind == "digits":
        from inrflow.data.digits import load_real_digits
        from inrflow.metrics.digits import digits_metrics

        refs = None if args.ref in (None, "digits") else load_images(args.ref)
        if labels is not None:
            check_labels(labels, 10, samples.shape[0])
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

    if args.ckpt and args.bpd:
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
    if args.ckpt:
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
            num_samples=args.num,
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
    add_checkpoint_argument(
        src,
        required=False,
        help="a checkpoint to sample first: a checkpoint folder (step_*), a run folder (its "
        "newest valid checkpoint), a folder exported by python -m inrflow.export, or a plain "
        "torch checkpoint file",
    )
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
    add_sample_arguments(
        p,
        num_default=None,
        num_help=f"samples to generate (--ckpt; default {DEFAULT_NUM}) or to use (--samples; "
        "default all)",
    )
    p.add_argument(
        "--value-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="value range of image samples (default: inferred; [-1, 1] for a checkpoint)",
    )
    p.add_argument(
        "--ref-value-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="value range of the reference images (default: inferred)",
    )
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
    g.add_argument("--rfid-seed", type=int, default=0, help="seed of the random Inception of rFID")
    g = p.add_argument_group("point-cloud metrics")
    g.add_argument(
        "--emd",
        choices=("auto", "exact", "auction", "none"),
        default="auto",
        help="Earth mover's distance: exact (Hungarian), auction (approximate), none (skip); "
        "auto picks by set size",
    )
    g.add_argument(
        "--cd-backend",
        choices=("auto", "kdtree", "matmul", "ops"),
        default="auto",
        help="how the Chamfer distances are computed",
    )
    g.add_argument(
        "--normalize",
        choices=("none", "bbox", "unit_sphere"),
        default="none",
        help="per-shape normalisation of both sets (bbox: the LION protocol)",
    )
    g = p.add_argument_group("sampling (with --ckpt)")
    add_solver_arguments(g)
    g.add_argument(
        "--compare-upsampling",
        action="store_true",
        help="the paper's Tab. 5: sample at --resolution directly (both modes) and compare "
        "with bicubic/bilinear upsampling of training-resolution samples",
    )
    g.add_argument("--save-samples", default=None, help="also save generated samples (.npz)")
    g = p.add_argument_group("likelihood (with --ckpt)")
    g.add_argument(
        "--bpd",
        type=int,
        default=0,
        metavar="N",
        help="also report the bits per dimension of the first N reference items under the "
        "model (values in the model's range; --num 0: only this)",
    )
    g.add_argument(
        "--bpd-method",
        choices=("dopri5", "heun", "euler"),
        default="dopri5",
        help="ODE solver of the likelihood",
    )
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
    if args.ckpt and args.num is None:
        args.num = DEFAULT_NUM
    if args.bpd < 0 or (args.bpd and not args.ckpt):
        print("evaluate.py: error: --bpd N needs --ckpt and N >= 0", file=sys.stderr)
        return 2
    if (err := check_sampling_arguments(args, allow_zero_num=bool(args.bpd))) is not None:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    for flag, path in (("--out", args.out), ("--save-samples", args.save_samples)):
        if path is not None and Path(path).is_dir():
            msg = f"evaluate.py: error: {flag} {path} is a folder; give a file name"
            print(msg, file=sys.stderr)
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
