"""``sample.py``: generate from a checkpoint's EMA weights at any resolution or point count.

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
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from inrflow.data.io import save_image_grid, save_ply
from inrflow.model import INRFlow
from inrflow.model.pretrained import is_pretrained, load_pretrained, read_pretrained_config
from inrflow.model.pseudo_coords import grid_coords
from inrflow.sampling import (
    DOPRI5_ATOL,
    DOPRI5_RTOL,
    METHODS,
    RESOLUTION_MODES,
    SolverStats,
    grid_interpolator,
    nested_grid_index,
    resolution_shift,
    sample,
)
from inrflow.train.checkpoint import load_ema_model

__all__ = [
    "add_solver_arguments",
    "dataset_info",
    "generate",
    "image_shape",
    "load_ema_model",
    "load_model",
    "main",
    "solver_options",
]

DESCRIPTION = """\
Generate samples from an inrflow checkpoint (EMA weights).

examples:
  python sample.py --ckpt runs/digits --num 100 --cfg-scale 3 --out digits.png
  python sample.py --ckpt runs/digits --resolution 32 --labels 3,3,3,7 --out big.png
  python sample.py --ckpt runs/digits --resolution 16 32 --out wide.png
  python sample.py --ckpt runs/shapes/checkpoints/step_000003000 --num-points 4096 --out clouds/
  python sample.py --ckpt runs/img3d --cond image_tokens.npz --cfg-scale 3 --num 4 --out clouds/
  python sample.py --ckpt runs/protein --out predicted/            # held-out chains, scored
  python sample.py --ckpt runs/protein --structures my_pdbs/ --out predicted/
"""

COND_KEYS = ("cond", "tokens", "condition")


def load_model(
    path: str | Path, device: str | torch.device = "cpu", checksums: bool = True
) -> tuple[INRFlow, dict[str, Any], Path]:
    """``(model, meta, source)`` of a training run or checkpoint folder (its EMA weights, by
    :func:`load_ema_model`) or of an exported folder (:func:`inrflow.model.load_pretrained`);
    ``meta`` holds ``step``, ``dataset`` and ``train_config`` either way."""
    if is_pretrained(path):
        return load_pretrained(path, device), read_pretrained_config(path), Path(path)
    return load_ema_model(path, device, checksums=checksums)


def load_condition(path: str | Path, cond_dim: int) -> torch.Tensor:
    """Condition tokens from an .npy/.npz file: ``[M, Dc]`` or ``[B, M, Dc]`` -> ``[B, M, Dc]``."""
    path = str(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in COND_KEYS if k in z.files), None)
            if key is None and len(z.files) == 1:
                key = z.files[0]
            if key is None:
                raise ValueError(f"{path}: no array named one of {COND_KEYS} ({z.files})")
            arr = z[key]
    else:
        arr = np.load(path, allow_pickle=False)
    cond = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if cond.dim() == 2:
        cond = cond.unsqueeze(0)
    if cond.dim() != 3 or cond.shape[-1] != cond_dim or cond.shape[1] < 1:
        raise ValueError(
            f"{path}: condition tokens must be [M, {cond_dim}] or [B, M, {cond_dim}], "
            f"got {tuple(cond.shape)}"
        )
    return cond


def _parse_labels(text: str | None, num: int, num_classes: int) -> torch.Tensor | None:
    if num_classes == 0:
        if text not in (None, "none"):
            raise ValueError("--labels given but the model is unconditional")
        return None
    if text in (None, "all"):
        return torch.arange(num) % num_classes
    if text == "none":
        return None
    labels = [int(x) for x in text.split(",") if x.strip()]
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"--labels must be integers in [0, {num_classes}), got {text!r}")
    return torch.tensor([labels[i % len(labels)] for i in range(num)])


def dataset_info(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset description (``domain``, ``shape``, ...) of checkpoint metadata: nested under
    ``"dataset"`` (:func:`load_ema_model`) or flat (``load_for_sampling``, evaluation files)."""
    info = meta.get("dataset")
    return info if isinstance(info, dict) else meta


def image_shape(
    meta: dict[str, Any], resolution: int | Sequence[int] | None = None
) -> tuple[int, int]:
    """Output ``(H, W)``: ``resolution`` (one side or ``H W``), else the training shape."""
    if resolution is not None:
        hw = (resolution,) if isinstance(resolution, int) else tuple(resolution)
        hw = hw * 2 if len(hw) == 1 else hw
    else:
        hw = tuple(dataset_info(meta).get("shape") or ())[:2]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image sampling needs a resolution H W (got {hw or 'none'})")
    return int(hw[0]), int(hw[1])


@torch.no_grad()
def generate(
    model: INRFlow,
    meta: dict[str, Any],
    num: int,
    *,
    labels: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    steps: int = 50,
    method: str = "euler",
    resolution: int | Sequence[int] | None = None,
    num_points: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    chunk_size: int = 1 << 16,
    time_shift: float = 1.0,
    shift_by_pairs: bool = False,
    atol: float = DOPRI5_ATOL,
    rtol: float = DOPRI5_RTOL,
    stats: SolverStats | None = None,
    progress: bool = True,
    resolution_mode: str = "join",
    join_time: float | None = None,
) -> torch.Tensor:
    """``num`` samples ``[num, Q, c]`` (images row-major at ``resolution``, one side or ``H W``;
    point clouds of ``num_points``), drawn ``batch_size`` at a time from one seeded generator.
    ``cond`` ``[C, M, Dc]`` condition tokens are cycled over the samples.

    Images at another resolution than the training one: ``resolution_mode="join"`` integrates
    the training-resolution context alone and lets the requested grid join it at
    ``join_time`` (default: the last step), starting from the bilinearly interpolated context
    state; ``"noise"`` starts every requested pixel from its own noise (the paper's scheme).

    ``method``/``steps``/``time_shift``/``atol``/``rtol``: see :func:`inrflow.sampling.sample`;
    ``shift_by_pairs`` multiplies ``time_shift`` by ``sqrt(Q / Q_train)``
    (:func:`~inrflow.sampling.resolution_shift`, Q = pairs sampled, Q_train = pairs of a
    training item). ``stats`` receives the NFE summed over the batches.
    """
    if resolution_mode not in RESOLUTION_MODES:
        raise ValueError(
            f"resolution_mode must be one of {RESOLUTION_MODES}, got {resolution_mode!r}"
        )
    info = dataset_info(meta)
    cfg = model.config
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    train_shape = tuple(info.get("shape") or ())
    is_image = info.get("domain", "image") == "image"
    if is_image:
        hw = image_shape(meta, resolution)
        train_hw = tuple(train_shape[:2]) or hw
        queries = grid_coords(hw, cfg.coord_low, cfg.coord_high, device=device)
        context = context_index = query_init = None
        if hw != train_hw and resolution_mode == "join":
            context = grid_coords(train_hw, cfg.coord_low, cfg.coord_high, device=device)
            query_init = grid_interpolator(train_hw, hw)
        elif hw != train_hw:
            factors = [divmod(f, t) for f, t in zip(hw, train_hw, strict=True)]
            if all(rest == 0 for _, rest in factors):  # a nested sub-grid: shared noise
                context_index = nested_grid_index(train_hw, [f for f, _ in factors], device)
                context = queries[context_index]
            else:  # a separate training-resolution context trajectory
                context = grid_coords(train_hw, cfg.coord_low, cfg.coord_high, device=device)
    else:
        n_train = int(train_shape[0]) if train_shape else None
        n = num_points or n_train
        if not n:
            raise ValueError("point-cloud sampling needs a point count (the checkpoint has none)")
    if shift_by_pairs:
        pairs, train_pairs = (math.prod(hw), math.prod(train_hw)) if is_image else (n, n_train or n)
        time_shift = resolution_shift(pairs, train_pairs, time_shift)
    outs = []
    bar = tqdm(total=num, desc="samples", unit="sample", disable=not progress)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        lab = labels[start : start + b].to(device) if labels is not None else None
        cnd = None
        if cond is not None:
            cnd = cond[torch.arange(start, start + b) % cond.shape[0]].to(device)
        scale = cfg_scale if lab is not None or cnd is not None else 1.0
        # the per-step bar of the sampler under the per-batch one: one batch of a large image
        # takes minutes, a bar over batches alone would sit at 0 all that time
        kw: dict[str, Any] = dict(
            generator=g,
            chunk_size=chunk_size,
            progress=progress,
            batch_size=b,
            cond=cnd,
            time_shift=time_shift,
            atol=atol,
            rtol=rtol,
            stats=stats,
        )
        if is_image:
            kw.update(context_index=context_index, query_init=query_init, join_time=join_time)
            out = sample(model, context, queries, steps, method, scale, lab, **kw)
        else:
            noise = torch.randn(b, n, cfg.value_dim, generator=g, device=device)
            ctx = torch.arange(n_train, device=device) if n_train and n > n_train else None
            out = sample(
                model, None, None, steps, method, scale, lab, noise=noise, context_index=ctx, **kw
            )
        outs.append(out.cpu())
        bar.update(b)
    bar.close()
    return torch.cat(outs)


def add_solver_arguments(p: argparse._ActionsContainer, default_steps: int) -> None:
    """The sampler options shared by ``sample.py`` and ``evaluate.py``."""
    p.add_argument(
        "--method",
        choices=METHODS,
        default="euler",
        help="sampler: euler|heun|sde (fixed steps) or dopri5 (adaptive, --atol/--rtol); "
        "default euler",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=default_steps,
        help=f"steps of the fixed-step samplers (NFE: steps, 2 x steps for heun); dopri5 uses "
        f"it only to place the default join time of a fine grid; default {default_steps}",
    )
    p.add_argument(
        "--time-shift",
        type=float,
        default=1.0,
        help="shift of the fixed-step time grid as in SD3/diffusers (noise level sigma -> "
        "s sigma / (1 + (s - 1) sigma)); > 1 puts more steps near the noise; default 1 (uniform)",
    )
    p.add_argument(
        "--shift-by-resolution",
        action="store_true",
        help="multiply --time-shift by sqrt(pairs sampled / pairs of a training item) (SD3's "
        "resolution-dependent shift)",
    )
    p.add_argument(
        "--atol", type=float, default=DOPRI5_ATOL, help=f"dopri5 absolute tolerance ({DOPRI5_ATOL})"
    )
    p.add_argument(
        "--rtol", type=float, default=DOPRI5_RTOL, help=f"dopri5 relative tolerance ({DOPRI5_RTOL})"
    )
    p.add_argument(
        "--resolution-mode",
        choices=RESOLUTION_MODES,
        default="join",
        help="images at another resolution than the training one: 'join' (default: only the "
        "training-resolution context is integrated until the fine grid joins it late, from "
        "its interpolated state: clean images) or 'noise' (every pixel starts from its own "
        "noise, the paper's scheme)",
    )
    p.add_argument(
        "--join-time",
        type=float,
        default=None,
        help="with --resolution-mode join: the time in [0, 1) at which the fine grid joins "
        "(default: the last step)",
    )


def check_solver_arguments(args: argparse.Namespace) -> str | None:
    """Why the sampler options of :func:`add_solver_arguments` are unusable, or None."""
    if args.steps < 1:
        return "--steps must be >= 1"
    if not args.time_shift > 0:
        return "--time-shift must be > 0"
    if not (args.atol > 0 and args.rtol >= 0):
        return "--atol must be > 0 and --rtol >= 0"
    if args.method == "dopri5" and (args.time_shift != 1.0 or args.shift_by_resolution):
        return "--time-shift and --shift-by-resolution apply to the fixed-step methods, not dopri5"
    if args.join_time is not None and not 0.0 <= args.join_time < 1.0:
        return "--join-time must be in [0, 1)"
    return None


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`generate` set by :func:`add_solver_arguments`."""
    return dict(
        method=args.method,
        steps=args.steps,
        time_shift=args.time_shift,
        shift_by_pairs=args.shift_by_resolution,
        atol=args.atol,
        rtol=args.rtol,
        resolution_mode=args.resolution_mode,
        join_time=args.join_time,
    )


def solver_description(args: argparse.Namespace) -> str:
    """The sampler of parsed options in words, for the log line before sampling."""
    if args.method == "dopri5":
        return f"dopri5 (atol {args.atol:g}, rtol {args.rtol:g})"
    text = f"{args.method} {args.steps} steps"
    if args.time_shift != 1.0 or args.shift_by_resolution:
        text += f", time shift {args.time_shift:g}" + (
            " x sqrt(pairs ratio)" if args.shift_by_resolution else ""
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sample.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="a checkpoint folder (step_*), a run folder (its newest valid checkpoint), or a "
        "folder exported by python -m inrflow.export",
    )
    p.add_argument("--num", type=int, default=16, help="number of samples (default 16)")
    p.add_argument(
        "--labels",
        default=None,
        help="class labels, cycled: '3,7', 'all' (0,1,2,... the default for "
        "class-conditional models) or 'none' (unconditional)",
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the training run's)",
    )
    add_solver_arguments(p, default_steps=50)
    p.add_argument(
        "--resolution",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="output size in pixels, any size: one side (square) or H W "
        "(default: the training resolution)",
    )
    p.add_argument(
        "--num-points",
        type=int,
        default=None,
        help="points per cloud, any number (default: the training count)",
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
    p.add_argument("--seed", type=int, default=0, help="seed of all noise (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1 << 16,
        help="query points per decoder pass, bounds memory (default 65536)",
    )
    p.add_argument("--device", default="auto", help="cpu|cuda|auto (default auto)")
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
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.num < 1 or args.batch_size < 1:
        raise SystemExit("sample.py: --num and --batch-size must be >= 1")
    if (err := check_solver_arguments(args)) is not None:
        raise SystemExit(f"sample.py: {err}")
    if args.resolution is not None and (len(args.resolution) > 2 or min(args.resolution) < 1):
        raise SystemExit("sample.py: --resolution takes one side or H W, each >= 1")
    if args.num_points is not None and args.num_points < 1:
        raise SystemExit("sample.py: --num-points must be >= 1")
    if args.chunk_size < 1:
        raise SystemExit(f"sample.py: --chunk-size must be >= 1, got {args.chunk_size}")
    if args.cfg_scale is not None and not math.isfinite(args.cfg_scale):
        raise SystemExit(f"sample.py: --cfg-scale must be a finite number, got {args.cfg_scale}")
    resolution = tuple(args.resolution) if args.resolution is not None else None
    try:
        model, meta, ckpt = load_model(args.ckpt, device, checksums=not args.no_checksums)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    info = meta["dataset"]
    if info["domain"] == "protein":
        _check_output(args.out, folder=True, flag="--out")
        return _sample_proteins(args, model, meta, ckpt)
    _check_output(args.out, folder=info["domain"] != "image", flag="--out")
    _check_output(args.npz, folder=False, flag="--npz")
    try:
        labels = _parse_labels(args.labels, args.num, model.config.num_classes)
        cond = None
        if args.cond is not None:
            if model.config.cond_dim == 0:
                raise ValueError("--cond given but the model takes no condition tokens")
            cond = load_condition(args.cond, model.config.cond_dim)
    except ValueError as exc:
        raise SystemExit(f"sample.py: {exc}") from None
    cfg_scale = args.cfg_scale
    if cfg_scale is None:
        cfg_scale = float(meta.get("train_config", {}).get("cfg_scale", 1.0))
    print(
        f"[inrflow] {ckpt} (step {meta['step']}), {args.num} samples, "
        f"{solver_description(args)}, CFG "
        f"{cfg_scale if labels is not None or cond is not None else 'off'}",
        flush=True,
    )
    stats = SolverStats()
    out = generate(
        model,
        meta,
        args.num,
        labels=labels,
        cond=cond,
        cfg_scale=cfg_scale,
        resolution=resolution,
        num_points=args.num_points,
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
        hw = image_shape(meta, resolution)
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


def _sample_proteins(args: argparse.Namespace, model: INRFlow, meta: dict, ckpt: Any) -> int:
    import json

    from inrflow.data.proteins import ProteinDataset
    from inrflow.domains.folding import evaluate_structures

    info, train = meta["dataset"], meta.get("train_config", {})
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
    print(f"[inrflow] {ckpt} (step {meta['step']}): {len(ds)} chains from {source}", flush=True)
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
