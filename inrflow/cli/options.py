"""The options the sampling and evaluation CLIs share: one definition, one check, one default.

``sample.py`` and ``evaluate.py --ckpt`` name the same things the same way (``--ckpt``,
``--num``, ``--points``, ``--resolution``, ``--steps``, ``--cfg-scale``, ``--method``; ``train.py``
uses ``--points``, ``--resolution`` and ``--cfg-scale`` too), refuse the same unusable values
(:func:`check_sampling_arguments`) and hand them to :func:`inrflow.generation.generate` the same
way (:func:`solver_options`). The sampler, its step count and the guidance scale default to what
the training run was configured to sample with (:func:`apply_run_defaults`), so both CLIs draw
what the run's own periodic samples showed unless told otherwise.

Older spellings (``--checkpoint``, ``--num-samples``, ``--num-points``) are accepted as hidden
aliases (:func:`add_hidden_alias`): scripts written for them keep working, ``--help`` shows one
name per thing.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

import torch

from inrflow.checkpoints import load_checkpoint_model
from inrflow.generation import FIELD_JOIN_TIME
from inrflow.model import INRFlow
from inrflow.sampling import DOPRI5_ATOL, DOPRI5_RTOL, METHODS, RESOLUTION_MODES

__all__ = [
    "DEFAULT_CFG_SCALE",
    "DEFAULT_METHOD",
    "DEFAULT_STEPS",
    "add_checkpoint_argument",
    "add_hidden_alias",
    "add_sample_arguments",
    "add_solver_arguments",
    "apply_run_defaults",
    "check_sampling_arguments",
    "check_solver_arguments",
    "load_sampling_model",
    "resolve_device",
    "settings_line",
    "solver_description",
    "solver_options",
]

# What a run without stored sampling settings (an exported folder, a plain torch file) samples
# with: the trainer's own defaults for its periodic samples (TrainConfig.sample_steps, ...).
DEFAULT_STEPS = 50
DEFAULT_METHOD = "euler"
DEFAULT_CFG_SCALE = 1.0


def add_hidden_alias(p: argparse._ActionsContainer, alias: str, dest: str, **kw: Any) -> None:
    """Accept ``alias`` as an older spelling of the option stored in ``dest``, absent from
    ``--help`` (the documented name is the only one shown)."""
    p.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def add_checkpoint_argument(p: argparse._ActionsContainer, required: bool, help: str) -> None:
    """``--ckpt`` (older spelling ``--checkpoint``): the checkpoint to sample from. ``required``:
    one of the two spellings must be given (a group of its own, so the alias counts). Also
    ``--domain``: which domain of a co-training checkpoint."""
    if required:
        p = p.add_mutually_exclusive_group(required=True)
    p.add_argument("--ckpt", default=None, help=help)
    add_hidden_alias(p, "--checkpoint", "ckpt")
    parser = getattr(p, "_container", p)  # the group's parser: --domain is no alternative
    parser.add_argument(
        "--domain",
        default=None,
        help="the domain of a co-training checkpoint (e.g. digits or shapes of train.py "
        "--preset cotrain): it is loaded as a single-domain checkpoint",
    )


def add_sample_arguments(
    p: argparse._ActionsContainer, num_default: int | None, num_help: str
) -> None:
    """What to draw: ``--num`` samples (help ``num_help``), of ``--resolution`` pixels or
    ``--points`` points, guided by ``--cfg-scale``, from ``--seed``, ``--batch-size`` at a time,
    on ``--device``."""
    p.add_argument("--num", type=int, default=num_default, metavar="N", help=num_help)
    add_hidden_alias(p, "--num-samples", "num", type=int)
    p.add_argument(
        "--resolution",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="image size in pixels, any size: one side (square) or H W (default: the training "
        "resolution)",
    )
    p.add_argument(
        "--points",
        type=int,
        default=None,
        metavar="N",
        help="points per point cloud, any number (default: the training count)",
    )
    add_hidden_alias(p, "--num-points", "points", type=int)
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the training run's --cfg-scale, "
        f"{DEFAULT_CFG_SCALE:g} when the checkpoint has none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of all noise (default 0)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="samples drawn per batch (default 64)"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="where to sample: cpu, cuda or auto (cuda when available; the default)",
    )


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def apply_run_defaults(args: argparse.Namespace, train_config: Mapping[str, Any]) -> list[str]:
    """Fill the sampler options left unset (``--steps``, ``--method``, ``--cfg-scale``) from the
    training run's configuration (its ``--sample-steps``, ``--sample-method``, ``--cfg-scale``),
    else the trainer's defaults; returns the options so filled (for the settings line)."""
    filled = []
    for dest, key, default in (
        ("steps", "sample_steps", DEFAULT_STEPS),
        ("method", "sample_method", DEFAULT_METHOD),
        ("cfg_scale", "cfg_scale", DEFAULT_CFG_SCALE),
    ):
        if getattr(args, dest) is None:
            value = train_config.get(key, default)
            setattr(args, dest, type(default)(value))
            filled.append(dest)
    return filled


def check_sampling_arguments(args: argparse.Namespace, allow_zero_num: bool = False) -> str | None:
    """Why the options of :func:`add_sample_arguments` and :func:`add_solver_arguments` are
    unusable, or None. ``allow_zero_num``: ``--num 0`` is meaningful (evaluation of the
    likelihood alone)."""
    if args.num is not None and args.num < (0 if allow_zero_num else 1):
        return f"--num must be >= 1, got {args.num}"
    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    if args.resolution is not None and (len(args.resolution) > 2 or min(args.resolution) < 1):
        return "--resolution takes one side or H W, each >= 1"
    if args.points is not None and args.points < 1:
        return f"--points must be >= 1, got {args.points}"
    if args.cfg_scale is not None and not math.isfinite(args.cfg_scale):
        return f"--cfg-scale must be a finite number, got {args.cfg_scale}"
    return check_solver_arguments(args)


def settings_line(
    args: argparse.Namespace, source: str, step: Any, num: int, guided: bool, filled: list[str]
) -> str:
    """The log line both CLIs print before sampling: what is sampled, how, and which settings
    came from the run (``filled``, :func:`apply_run_defaults`)."""
    cfg = f"{args.cfg_scale:g}" if guided else "off"
    line = f"[inrflow] {source} (step {step}), {num} samples, {solver_description(args)}, CFG {cfg}"
    if filled:
        names = {"steps": "steps", "method": "method", "cfg_scale": "CFG"}
        line += f" ({', '.join(names[f] for f in filled)} as the run was configured)"
    return line


def add_solver_arguments(p: argparse._ActionsContainer) -> None:
    """The sampler options shared by ``sample.py`` and ``evaluate.py``."""
    p.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="sampler: euler|heun|sde (fixed steps) or dopri5 (adaptive, --atol/--rtol); "
        f"default: the training run's --sample-method ({DEFAULT_METHOD} when it has none)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps of the fixed-step samplers (NFE: steps, 2 x steps for heun); dopri5 uses "
        "it only to place the default join time of a fine grid; default: the training run's "
        f"--sample-steps ({DEFAULT_STEPS} when it has none)",
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
        f"(default: the last step; {FIELD_JOIN_TIME} for a model trained with "
        "--field-resolution)",
    )


def check_solver_arguments(args: argparse.Namespace) -> str | None:
    """Why the sampler options of :func:`add_solver_arguments` are unusable, or None."""
    if args.steps is not None and args.steps < 1:
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
    """The keyword arguments of :func:`inrflow.generation.generate` set by
    :func:`add_solver_arguments`."""
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


def load_sampling_model(
    args: argparse.Namespace, device: torch.device
) -> tuple[INRFlow, dict[str, Any]]:
    """The model of ``--ckpt`` and its flat metadata
    (:func:`inrflow.checkpoints.load_checkpoint_model`); fills the sampler options left unset
    from the run (:func:`apply_run_defaults`) and prints the settings line before anything is
    sampled (``evaluate.py``: balanced class labels, so guided whenever the model has classes)."""
    model, meta = load_checkpoint_model(args.ckpt, device, domain=args.domain)
    filled = apply_run_defaults(args, meta.get("train_config") or {})
    guided = bool(int(meta.get("num_classes", model.config.num_classes) or 0))
    step = meta.get("step", "?")
    print(settings_line(args, str(args.ckpt), step, args.num, guided, filled), flush=True)
    return model, meta
