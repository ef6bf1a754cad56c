"""``evaluate.py`` (the application; the metrics themselves are :mod:`inrflow.metrics`): metrics
of generated samples (a folder/file of samples, or a checkpoint that is sampled first) against a
reference set; prints a table and writes a JSON report.

What the samples are and how they are scored is the domain's (:mod:`inrflow.domains`): the
domain that recognises the sample files (or the checkpoint's domain) reads them and scores them
(:meth:`~inrflow.domains.Domain.score`); ``--kind`` names one of the domains' scorings instead:
``image`` (FID or rFID, KID, precision/recall, IS), ``digits`` (accuracy of class-conditional
samples and FD/KID in the feature space of the digits classifier; the reference is the bundled
real digits), ``pointcloud`` (MMD/COV/1-NNA with CD and EMD).
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
from inrflow.domains import (
    Domain,
    ScoreRequest,
    domain_for,
    domain_of_kind,
    domain_of_samples,
    sample_kinds,
)
from inrflow.generation import sample_from_model
from inrflow.metrics.inception import WEIGHTS_ENV
from inrflow.metrics.io import load_labels, stored_labels

__all__ = ["build_parser", "evaluate", "main"]

DEFAULT_NUM = 500  # samples generated from a checkpoint unless --num says otherwise


def reference_bits_per_dim(
    model: torch.nn.Module, domain: Domain, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, Any], str]:
    """Bits per dimension (:func:`inrflow.sampling.bits_per_dim` of
    :func:`inrflow.sampling.log_likelihood`, values in the model's range) of the first
    ``args.bpd`` items of the reference set ``--ref``, read by the model's domain
    (:meth:`~inrflow.domains.Domain.reference_items`: the real digits by default for images);
    returns the figures and what was read."""
    from inrflow.sampling import SolverStats, bits_per_dim, log_likelihood

    rvr = tuple(args.ref_value_range) if args.ref_value_range else None
    items = domain.reference_items(args.ref, args.bpd, model.config, rvr)
    values, coords, labels = items.values, items.coords, items.labels
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
    figures = {
        "bpd": float(bpd.mean()),
        "bpd-std": float(bpd.std()) if len(bpd) > 1 else 0.0,
        "bpd-num": len(bpd),
        "bpd-nfe-per-batch": stats.nfe_per_call,
        "bpd-divergence": "exact" if args.hutchinson is None else f"hutchinson-{args.hutchinson}",
    }
    return figures, items.source


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
        domain = domain_for(meta["domain"])
    if args.ckpt and args.num == 0:  # likelihood only
        report_bpd, reference = reference_bits_per_dim(model, domain, args, device)
        settings = {"kind": "likelihood", "samples": None, "reference": reference}
        return {
            "metrics": report_bpd,
            "settings": settings,
            "environment": {"torch": torch.__version__, "device": str(device)},
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
    if args.kind != "auto":
        domain = domain_of_kind(args.kind)
    if args.ckpt:
        kind = _kind(domain, args, meta)  # before minutes of sampling: the domain may score none
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
        path = Path(args.samples)
        if args.kind == "auto":
            domain = domain_of_samples(path)
        elif not path.exists():
            raise FileNotFoundError(f"samples not found: {path}")
        kind = _kind(domain, args, meta)
        samples, labels = domain.read_samples(path), stored_labels(path)
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

    settings: dict[str, Any] = {"kind": kind, "samples": source, "reference": args.ref}
    vr = tuple(args.value_range) if args.value_range else None
    if args.ckpt and vr is None:
        vr = (-1.0, 1.0)  # the model's value range (point clouds take no value range)
    request = ScoreRequest(
        kind,
        args.ref,
        value_range=vr,
        ref_value_range=tuple(args.ref_value_range) if args.ref_value_range else None,
        metrics=args.metrics,
        inception_weights=args.inception_weights,
        rfid_seed=args.rfid_seed,
        batch_size=args.batch_size,
        emd=args.emd,
        cd_backend=args.cd_backend,
        normalize=None if args.normalize == "none" else args.normalize,
        device=device,
        progress=progress,
    )
    metrics = domain.score(samples, labels, request)

    if args.ckpt and args.bpd:
        metrics.update(reference_bits_per_dim(model, domain, args, device)[0])
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


def _kind(domain: Domain, args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """``--kind``, or the domain's scoring of samples against ``--ref`` (``meta``: the
    checkpoint's, whose ``dataset`` is the run's ``--data``)."""
    return args.kind if args.kind != "auto" else domain.scoring(args.ref, meta.get("dataset"))


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
    p.add_argument(
        "--kind",
        choices=("auto", *sample_kinds()),
        default="auto",
        help="how to score the samples (auto: the domain that recognises the files, or the "
        "checkpoint's, picks; digits when --ref or the training data is the bundled digits)",
    )
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
