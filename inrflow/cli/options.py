"""The sampler options shared by the sampling and evaluation CLIs: one definition, one check.

``sample.py`` and ``evaluate.py --ckpt`` sample the same way from the same options
(:func:`add_solver_arguments`), refuse the same unusable values (:func:`check_solver_arguments`)
and hand them to :func:`inrflow.generation.generate` the same way (:func:`solver_options`).
"""

from __future__ import annotations

import argparse
from typing import Any

from inrflow.sampling import DOPRI5_ATOL, DOPRI5_RTOL, METHODS, RESOLUTION_MODES

__all__ = [
    "add_solver_arguments",
    "check_solver_arguments",
    "solver_description",
    "solver_options",
]


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
