"""``sample.py``: generate from a checkpoint's EMA weights at any resolution or point count
(the application; the sampling itself is :mod:`inrflow.generation`).

Images: the encoder keeps the training-resolution context while the decoder is queried on the
requested grid (``--resolution N`` or ``H W``). By default (``--resolution-mode join``) only the
training-resolution context is integrated until late in the trajectory; there the fine grid
joins it, each query starting from the context state interpolated to it, and the decoder moves
the queries to t = 1 (clean images at any size, fine-grid model calls only after the join).
``--resolution-mode noise`` is the paper's scheme: every fine query starts from noise of its own
(the context is the nested sub-grid of the fine grid when each side is a multiple of the training
side, so both share their noise; otherwise a separate trajectory). Point clouds:
the first ``N_train`` of the requested points are the context; a model trained with condition
tokens (image-to-3D) takes them from ``--cond`` (an .npy/.npz of ``[M, Dc]`` or ``[B, M, Dc]``
tokens), guided by ``--cfg-scale``.
Proteins: one structure per chain of ``--structures`` (default: the run's held-out chains),
scored against the true structure (Cα lDDT, TM-score) and written as PDB files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
from inrflow.data.io import save_image_grid, save_ply
from inrflow.generation import generate, image_shape, load_condition, parse_labels
from inrflow.model import INRFlow
from inrflow.sampling import SolverStats

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Generate samples from an inrflow checkpoint (EMA weights).

examples:
  python sample.py --ckpt runs/digits --num 100 --cfg-scale 3 --out digits.png
  python sample.py --ckpt runs/digits --resolution 32 --labels 3,3,3,7 --out big.png
  python sample.py --ckpt runs/digits --resolution 16 32 --out wide.png
  python sample.py --ckpt runs/shapes/checkpoints/step_000003000 --points 4096 --out clouds/
  python sample.py --ckpt runs/img3d --cond image_tokens.npz --cfg-scale 3 --num 4 --out clouds/
  python sample.py --ckpt runs/protein --out predicted/            # held-out chains, scored
  python sample.py --ckpt runs/protein --structures my_pdbs/ --out predicted/
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
        help="PNG grid for images (default samples.png), folder of PLY files for "
        "point clouds (default samples/)",
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
        model, meta = load_checkpoint_model(args.ckpt, device, checksums=not args.no_checksums)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    info, ckpt = stored_dataset_info(meta), meta["checkpoint"]
    filled = apply_run_defaults(args, meta.get("train_config", {}))
    if info["domain"] == "protein":
        _check_output(args.out, folder=True, flag="--out")
        return _sample_proteins(args, model, meta)
    _check_output(args.out, folder=info["domain"] != "image", flag="--out")
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
    stats = SolverStats()
    out = generate(
        model,
        info,
        args.num,
        labels=labels,
        cond=cond,
        cfg_scale=args.cfg_scale,
        resolution=resolution,
        num_points=args.points,
        seed=args.seed,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        stats=stats,
        **solver_options(args),
    )
    print(f"[inrflow] {stats.describe()}", flush=True)
    bad = int((~torch.isfinite(out.reshape(out.shape[0], -1))).any(1).sum())
    if bad:
        raise SystemExit(
            f"sample.py: {bad} of {out.shape[0]} samples contain NaN or infinite values (the "
            f"checkpoint's weights or the sampler settings are broken); nothing was written"
        )
    if info["domain"] == "image":
        hw = image_shape(info, resolution)
        path = Path(args.out or "samples.png")
        nrow = args.nrow or (
            model.config.num_classes
            if labels is not None
            and args.labels in (None, "all")
            and args.num % model.config.num_classes == 0
            else None
        )
        save_image_grid(out, hw, path, nrow=nrow, scale=max(1, 128 // max(hw)))
    else:
        path = Path(args.out or "samples")
        for i, cloud in enumerate(out):
            save_ply(cloud, path / f"sample_{i:04d}.ply")
    if args.npz:
        np.savez(
            args.npz,
            samples=out.numpy(),
            labels=labels.numpy() if labels is not None else np.zeros(0),
        )
    print(f"[inrflow] wrote {path}", flush=True)
    return 0


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


def _sample_proteins(args: argparse.Namespace, model: INRFlow, meta: dict[str, Any]) -> int:
    import json

    from inrflow.data.proteins import ProteinDataset
    from inrflow.domains.folding import evaluate_structures

    info, train = stored_dataset_info(meta), meta.get("train_config", {})
    source = args.structures or train.get("data", "proteins")
    split = "all" if args.structures else "test"
    try:
        ds = ProteinDataset(
            source,
            max_residues=info["max_residues"],
            split=split,
            position_scale=info["position_scale"],
            residue_embeddings=info.get("residue_embeddings"),
            frame=info.get("frame", "file"),  # checkpoints from before the frame option
        )
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    if ds.coord_dim != model.config.coord_dim:
        raise SystemExit(
            f"sample.py: the structures give {ds.coord_dim} feature channels, the model "
            f"takes {model.config.coord_dim}"
        )
    out = Path(args.out or "predicted")
    print(
        f"[inrflow] {meta['checkpoint']} (step {meta['step']}): {len(ds)} chains from {source}",
        flush=True,
    )
    stats = SolverStats()
    scores = evaluate_structures(
        model,
        ds,
        steps=args.steps,
        method=args.method,
        seed=args.seed,
        out_dir=out,
        time_shift=args.time_shift,
        atol=args.atol,
        rtol=args.rtol,
        stats=stats,
    )
    print(f"[inrflow] {stats.describe()}", flush=True)
    for name, s in scores["chains"].items():
        print(
            f"  {name}: {s['residues']} residues, Cα lDDT {s['lddt_ca']:.3f}, "
            f"TM-score {s['tm_score']:.3f}"
        )
    print(
        f"[inrflow] mean Cα lDDT {scores['lddt_ca']:.3f}, TM-score {scores['tm_score']:.3f}; "
        f"PDBs in {out}",
        flush=True,
    )
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
