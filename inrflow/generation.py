"""Generation from a trained model: samples at any resolution or point count, and the inputs a
sampling request is made of (class labels, condition tokens, the output image shape).

The library under the sampling and evaluation CLIs (:mod:`inrflow.cli.sample`,
:mod:`inrflow.cli.evaluate`) and the benchmarks: it takes a loaded model and the dataset
description stored with its checkpoint, never a path or parsed options.

Images: the encoder keeps the training-resolution context while the decoder is queried on the
requested grid. With ``resolution_mode="join"`` (the default) only the training-resolution
context is integrated until the fine grid joins it (:func:`default_join_time`: late, or early for
a model trained at continuous coordinates), each query starting from the context state
interpolated to it. ``"noise"`` is the paper's scheme: every fine
query starts from noise of its own (the context is the nested sub-grid of the fine grid when each
side is a multiple of the training side, so both share their noise; otherwise a separate
trajectory). Point clouds: the first ``N_train`` of the requested points are the context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from inrflow.model import INRFlow, grid_coords
from inrflow.sampling import (
    DOPRI5_ATOL,
    DOPRI5_RTOL,
    RESOLUTION_MODES,
    SolverStats,
    grid_interpolator,
    nested_grid_index,
    resolution_shift,
    sample,
)

__all__ = [
    "COND_KEYS",
    "FIELD_JOIN_TIME",
    "default_join_time",
    "generate",
    "image_shape",
    "load_condition",
    "parse_labels",
    "sample_from_model",
]

COND_KEYS = ("cond", "tokens", "condition")  # the array names load_condition looks for in .npz

#: Where a finer grid joins the context by default for a model trained at continuous
#: coordinates (``train.py --field-resolution``): early, so the decoder, which has learnt what
#: lies between pixels, shapes the fine grid for most of the trajectory. A model trained at the
#: pixel centres alone joins at the last step: its values between pixels were never
#: supervised, and every earlier join measured worse (docs/RESOLUTION.md).
FIELD_JOIN_TIME = 0.2


def default_join_time(info: Mapping[str, Any]) -> float | None:
    """The join time of ``resolution_mode="join"`` when none is given, from the dataset
    description stored with a checkpoint: :data:`FIELD_JOIN_TIME` for data read with a
    ``field_resolution`` (values at continuous coordinates), else None (the last step)."""
    return FIELD_JOIN_TIME if info.get("field_resolution") else None


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


def parse_labels(text: str | None, num: int, num_classes: int) -> torch.Tensor | None:
    """``num`` class labels from a ``--labels`` text: ``'3,7'`` (cycled), ``'all'`` / None
    (``0, 1, 2, ...`` cycled over the classes) or ``'none'`` (None: unconditional sampling).
    An unconditional model (``num_classes == 0``) takes only None / ``'none'``."""
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


def image_shape(
    info: Mapping[str, Any], resolution: int | Sequence[int] | None = None
) -> tuple[int, int]:
    """Output ``(H, W)``: ``resolution`` (one side or ``H W``), else the training shape
    ``info["shape"]`` of the dataset description stored with the checkpoint."""
    if resolution is not None:
        hw = (resolution,) if isinstance(resolution, int) else tuple(resolution)
        hw = hw * 2 if len(hw) == 1 else hw
    else:
        hw = tuple(info.get("shape") or ())[:2]
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image sampling needs a resolution H W (got {hw or 'none'})")
    return int(hw[0]), int(hw[1])


@torch.no_grad()
def generate(
    model: INRFlow,
    info: Mapping[str, Any],
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
    ``info`` is the dataset description stored with the checkpoint (``domain``, ``shape``:
    :func:`inrflow.checkpoints.stored_dataset_info`); it gives the training resolution or point
    count the encoder's context keeps.
    ``cond`` ``[C, M, Dc]`` condition tokens are cycled over the samples.

    Images at another resolution than the training one: ``resolution_mode="join"`` integrates
    the training-resolution context alone and lets the requested grid join it at
    ``join_time`` (default: :func:`default_join_time` -- the last step, or early for a model
    trained at continuous coordinates), starting from the bilinearly interpolated context
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
    cfg = model.config
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    if join_time is None:
        join_time = default_join_time(info)
    train_shape = tuple(info.get("shape") or ())
    # a grid of coordinates (images), or points that are their own coordinates (point clouds)
    is_image = not cfg.coords_are_values
    if is_image:
        hw = image_shape(info, resolution)
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


def sample_from_model(
    model: INRFlow,
    info: Mapping[str, Any],
    num_samples: int,
    *,
    steps: int = 50,
    method: str = "euler",
    cfg_scale: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    resolution: Sequence[int] | None = None,
    points: int | None = None,
    progress: bool = True,
    resolution_mode: str = "join",
    join_time: float | None = None,
    **solver: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num_samples`` samples drawn by :func:`generate` (the sampling CLI's path: any
    resolution from the training-resolution context, chunked decoding), shaped for the metrics.

    Images come back as ``[N, C, H, W]`` in inrflow's value range [-1, 1] (pixel centres of an
    ``H x W`` grid in the model's coordinate domain, row-major, channel 0 = row), point clouds
    as ``[N, P, 3]``. Class-conditional models get balanced labels ``i % num_classes``
    (returned, else None). ``solver``: further options of :func:`generate`
    (``time_shift``, ``shift_by_pairs``, ``atol``, ``rtol``, ``stats``).
    """
    cfg = model.config
    num_classes = int(info.get("num_classes", cfg.num_classes) or 0)
    labels = torch.arange(num_samples) % num_classes if num_classes > 0 else None
    hw = None if cfg.coords_are_values else image_shape(info, resolution)
    x = generate(
        model,
        info,
        num_samples,
        labels=labels,
        cfg_scale=cfg_scale,
        steps=steps,
        method=method,
        resolution=hw,
        num_points=points,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        resolution_mode=resolution_mode,
        join_time=join_time,
        **solver,
    )
    if hw is not None:
        x = x.reshape(num_samples, *hw, cfg.value_dim).permute(0, 3, 1, 2)
    return x, labels
