"""``sample.py``: generate from a checkpoint's EMA weights at any resolution or point count
(the application; the sampling itself is :mod:`inrflow.generation`).

Images: the encoder keeps the training-resolution context while the decoder is queried on the
requested grid (``--resolution N`` or ``H W``). By default (``--resolution-mode join``) only the
training-resolution context is integrated until the fine grid joins it (at the last step for a
model trained at the pixel centres, at t = 0.2 for one trained with ``--field-resolution``), each
query starting from the context state interpolated to it, and the decoder moves the queries to
t = 1 (clean images at any size, fine-grid model calls only after the join).
``--resolution-mode noise`` is the paper's scheme: every fine query starts from noise of its own
(the context is the nested sub-grid of the fine grid when each side is a multiple of the training
side, so both share their noise; otherwise a separate trajectory). Point clouds:
the first ``N_train`` of the requested points are the context; a model trained with condition
tokens (image-to-3D) takes them from ``--cond`` (an .npy/.npz of ``[M, Dc]`` or ``[B, M, Dc]``
tokens), guided by ``--cfg-scale``; the clouds are written as PLY files with a picture of them,
``samples.png``, in the output folder.
Proteins: one structure per chain of ``--structures`` (default: the run's held-out chains),
scored against the true structure (Cα lDDT, TM-score) and written as PDB files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from inrflow.checkpoints import load_checkpoint_model, stored_dataset_info
from inrflow.cli.options import (
    add_checkpoint_argument,
    add_sample_arguments,
    add_solver_arguments,
    apply_run_defaults,
    check_sampling_arguments,
    resolve_device,
    settings_line,
    solver_options,
)
from inrflow.domains import SampleRequest, domain_for
from inrflow.generation import load_condition, parse_labels
from inrflow.sampling import SolverStats

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Generate samples from an inrflow checkpoint (EMA weights).

examples:
  python sample.py --ckpt runs/digits --num 100 --cfg-scale 3 --out digits.png
  python sample.py --ckpt runs/digits --resolution 32 --labels 3,3,3,7 --out big.png
  python sample.py --ckpt runs/digits --resolution 16 32 --out wide.png
  python sample.py --ckpt runs/shapes/checkpoints/step_000003000 --points 4096 --out clouds/
                                                    # PLY files and clouds/samples.png
  python sample.py --ckpt runs/img3d --cond image_tokens.npz --cfg-scale 3 --num 4 --out clouds/
  python sample.py --ckpt runs/protein --out predicted/            # held-out chains, scored
  python sample.py --ckpt runs/protein --structures my_pdbs/ --out predicted/
  python sample.py --ckpt runs/cotrain --domain shapes --out clouds/  # a co-trained domain
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sample.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_argument(
        p,
        required=True,
        help="a checkpoint folder (step_*), a run folder (its newest valid checkpoint), a "
        "folder exported by python -m inrflow.export, or a plain torch checkpoint file",
    )
    add_sample_arguments(p, num_default=16, num_help="number of samples (default 16)")
    add_solver_arguments(p)
    p.add_argument(
        "--labels",
        default=None,
        help="class labels, cycled: '3,7', 'all' (0,1,2,... the default for "
        "class-conditional models) or 'none' (unconditional)",
    )
    p.add_argument(
        "--cond",
        default=None,
        help="image-to-3D: .npy/.npz of condition tokens [M, Dc] or [B, M, Dc] (cycled over "
        "the samples); without it a token-conditioned model samples unconditionally",
    )
    p.add_argument(
        "--structures",
        default=None,
        help="proteins: PDB/mmCIF file or folder (or 'proteins') to predict; default: the "
        "training run's held-out chains",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1 << 16,
        help="query points per decoder pass, bounds memory (default 65536)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="PNG grid for images (default samples.png), folder of PLY files and their "
        "picture samples.png for point clouds (default samples/)",
    )
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--npz", default=None, help="also save the raw samples and labels to this .npz")
    p.add_argument(
        "--no-checksums", action="store_true", help="skip the CRC32 check of the checkpoint files"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if (err := check_sampling_arguments(args)) is not None:
        raise SystemExit(f"sample.py: {err}")
    if args.chunk_size < 1:
        raise SystemExit(f"sample.py: --chunk-size must be >= 1, got {args.chunk_size}")
    resolution = tuple(args.resolution) if args.resolution is not None else None
    try:
        model, meta = load_checkpoint_model(
            args.ckpt, device, checksums=not args.no_checksums, domain=args.domain
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    info, ckpt = stored_dataset_info(meta), meta["checkpoint"]
    filled = apply_run_defaults(args, meta.get("train_config", {}))
    domain = domain_for(info["domain"])
    _check_output(args.out, folder=domain.writes_folder, flag="--out")
    _check_output(args.npz, folder=False, flag="--npz")
    try:
        labels = parse_labels(args.labels, args.num, model.config.num_classes)
        cond = None
        if args.cond is not None:
            if model.config.cond_dim == 0:
                raise ValueError("--cond given but the model takes no condition tokens")
            cond = load_condition(args.cond, model.config.cond_dim)
    except ValueError as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    guided = labels is not None or cond is not None
    print(settings_line(args, str(ckpt), meta["step"], args.num, guided, filled), flush=True)
    request = SampleRequest(
        args.num,
        Path(args.out) if args.out else None,
        args.seed,
        labels,
        cond,
        args.cfg_scale,
        resolution,
        args.points,
        args.batch_size,
        args.chunk_size,
        solver_options(args),
        SolverStats(),
        args.nrow,
        class_rows=args.labels in (None, "all"),
        structures=args.structures,
    )
    try:
        path, out = domain.sample_files(model, info, meta.get("train_config", {}), request, _say)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    if args.npz and out is not None:
        np.savez(
            args.npz,
            samples=out.numpy(),
            labels=labels.numpy() if labels is not None else np.zeros(0),
        )
    _say(f"wrote {path}")
    return 0


def _say(msg: str) -> None:
    print(f"[inrflow] {msg}", flush=True)


def _check_output(path: str | None, folder: bool, flag: str) -> None:
    """Refuse an output path of the wrong kind before sampling (not after minutes of work)."""
    if path is None:
        return
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise SystemExit(f"sample.py: {flag} {p} is a file; these samples are written to a folder")
    if not folder and p.is_dir():
        raise SystemExit(f"sample.py: {flag} {p} is a folder; give a file name")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SystemExit(f"sample.py: {flag} {p}: {parent} is a file, not a folder")


if __name__ == "__main__":
    sys.exit(main())
