"""Samplers: Euler and Heun ODE, Euler–Maruyama SDE, adaptive Dormand–Prince (dopri5) on uniform
or SD3-shifted time grids, classifier-free guidance, resolution-agnostic generation with chunked
decoding, and likelihoods by the instantaneous change of variables.

Time runs from t = ``t_eps`` (noise) to t = 1 (data), see :mod:`inrflow.flow`. The integrators
(:func:`integrate`) only need a velocity function ``v(x, t)``, so they are tested against exact
velocity fields; :func:`sample` builds that function from a model. Every integration can count
its velocity evaluations (NFE, the cost of a sample) in a :class:`SolverStats`.

Resolution-agnostic generation: the encoder keeps a fixed context while the decoder is queried
at any coordinates, ``chunk_size`` points per pass. The state lives on the query points; the
context is either all of them (plain generation), a subset given by ``context_index`` (a nested
sub-grid of the finest grid: low- and high-resolution trajectories share the noise), or, with
``context_coords`` and no index, a separate set of points integrated alongside the queries.

Queries that start from their own noise (the paper's scheme) keep some of it: late in the
trajectory the decoder no longer removes a query's own noise (the share of a nudge to a query's
value that survives into its predicted clean value grows towards 1 as t -> 1), so fine grids
sampled that way are speckled. With ``query_init`` the queries instead *join* a separate
context's trajectory late (``join_time``, by default at the last step): until then only the
context is integrated, at the join every query starts from the context state interpolated to it
(:func:`grid_interpolator`), and from there on the decoder moves the queries along. No query
carries noise of its own, and the fine grid costs model calls only after the join.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from inrflow.flow import TIME_EPS
from inrflow.model import grid_coords

DOPRI5_ATOL = 1e-3
DOPRI5_RTOL = 1e-3

__all__ = [
    "FIXED_STEP_METHODS",
    "METHODS",
    "RESOLUTION_MODES",
    "SolverStats",
    "bits_per_dim",
    "grid_coords",
    "grid_interpolator",
    "integrate",
    "log_likelihood",
    "nested_grid_index",
    "ode_log_likelihood",
    "resolution_shift",
    "sample",
    "sde_lambda",
    "shift_time",
    "time_grid",
]

FIXED_STEP_METHODS = ("euler", "heun", "sde")
METHODS = (*FIXED_STEP_METHODS, "dopri5")
# How queries off the training grid start: joining the context late, or from their own noise.
RESOLUTION_MODES = ("join", "noise")
Velocity = Callable[[torch.Tensor, float], torch.Tensor]

# Dormand–Prince 5(4): nodes, stage weights, the 5th-order weights (equal to the last stage's row:
# "first same as last", the final stage is the next step's first) and the 4th-order weights
# whose difference estimates the local error.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_E = tuple(b5 - b4 for b5, b4 in zip(_DP_B5, _DP_B4, strict=True))


@dataclass
class SolverStats:
    """What an integration cost: filled in by :func:`integrate` (and summed over batches by
    callers that integrate several times).

    ``nfe`` counts velocity evaluations (the cost a user pays: one model forward each; with
    classifier-free guidance the conditional and unconditional halves are one batched forward).
    ``steps``/``rejected``: accepted and rejected steps (rejections only with ``dopri5``);
    ``calls``: integrations summed here.
    """

    nfe: int = 0
    steps: int = 0
    rejected: int = 0
    calls: int = 0

    def add(self, other: SolverStats) -> None:
        """Count ``other``'s evaluations and steps here, as one more call."""
        self.nfe += other.nfe
        self.steps += other.steps
        self.rejected += other.rejected
        self.calls += 1

    @property
    def nfe_per_call(self) -> float:
        """Mean NFE of one integration (one batch of samples)."""
        return self.nfe / self.calls if self.calls else 0.0

    def describe(self) -> str:
        """One line for logs: NFE per integration, and rejections of adaptive steps if any."""
        text = f"NFE {self.nfe_per_call:g}"
        if self.calls > 1:
            text += f" per batch ({self.nfe} over {self.calls} batches)"
        if self.rejected:
            text += f", {self.steps} accepted / {self.rejected} rejected steps"
        return text


def shift_time(u: float, shift: float) -> float:
    """The SD3 / diffusers time shift of a fraction ``u`` in [0, 1] of the way to the data.

    With the noise level ``sigma = 1 - u`` the shifted level is ``s sigma / (1 + (s - 1) sigma)``
    (SD3's ``shift``; diffusers' dynamic shifting is the same map with ``s = exp(mu)``).
    ``s > 1`` spends more of a fixed number of steps near the noise, where larger images need
    them; ``s = 1`` is the identity; 0 and 1 are fixed points.
    """
    if not shift > 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    sigma = 1.0 - u
    return 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)


def resolution_shift(num_pairs: int, base_pairs: int, base_shift: float = 1.0) -> float:
    """SD3's resolution-dependent shift ``base_shift * sqrt(num_pairs / base_pairs)``.

    Sampling ``num_pairs`` coordinate–value pairs where the model was trained (or the shift
    ``base_shift`` was tuned) on ``base_pairs``: more pairs of the same signal are less
    corrupted by the same noise level, so more of the steps belong near the noise.
    """
    if num_pairs < 1 or base_pairs < 1:
        raise ValueError(f"pair counts must be >= 1, got {num_pairs} and {base_pairs}")
    return base_shift * math.sqrt(num_pairs / base_pairs)


def time_grid(steps: int, t_eps: float = TIME_EPS, shift: float = 1.0) -> list[float]:
    """``steps + 1`` times from ``t_eps`` to 1: uniform (the authors' ``linspace(1e-4, 1)``) or,
    with ``shift != 1``, uniform fractions mapped by :func:`shift_time` (same end points)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    us = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    if shift != 1.0:
        us = [shift_time(u, shift) for u in us]
    ts = [t_eps + (1.0 - t_eps) * u for u in us]
    ts[0], ts[-1] = t_eps, 1.0
    return ts


def sde_lambda(t: float, diffusion: str = "sbdm", scale: float = 1.0) -> float:
    """Rate ``lam(t)`` of the SDE family ``dx = [(1 + lam t) v - lam x] dt + sqrt(2 lam (1-t)) dW``.

    All members share the marginals of the ODE ``dx = v dt`` (diffusion ``w = lam (1 - t)``, score
    ``(t v - x) / (1 - t)`` for the linear path). ``"sbdm"``: ``lam = scale / t``, i.e.
    ``w = scale (1 - t) / t``, the authors' choice; ``"linear"``: ``lam = scale``.
    """
    if diffusion == "sbdm":
        return scale / t
    if diffusion == "linear":
        return scale
    raise ValueError(f"diffusion must be 'sbdm' or 'linear', got {diffusion!r}")


def integrate(
    velocity: Velocity,
    x: torch.Tensor,
    steps: int,
    method: str = "euler",
    *,
    t_eps: float = TIME_EPS,
    generator: torch.Generator | None = None,
    diffusion: str = "sbdm",
    diffusion_scale: float = 1.0,
    sde_scheme: str = "exponential",
    time_shift: float = 1.0,
    atol: float = DOPRI5_ATOL,
    rtol: float = DOPRI5_RTOL,
    max_steps: int = 10_000,
    stats: SolverStats | None = None,
    progress: bool = False,
    times: Sequence[float] | None = None,
) -> torch.Tensor:
    """Integrate from noise ``x`` at ``t_eps`` to t = 1.

    Fixed-step methods take ``steps`` steps on :func:`time_grid` (uniform, or shifted by
    ``time_shift``). ``times`` (increasing, ``steps + 1`` of them; ``steps``, ``t_eps`` and
    ``time_shift`` are then ignored) integrates over an explicit grid instead, e.g. one piece of
    :func:`time_grid`; the SDE's noise-free last step is taken only when the grid ends at t = 1.

    - ``euler``: ``x += h v(x, t)`` (``steps`` evaluations; the model never sees t = 1).
    - ``heun``: the trapezoid of ``v(x, t)`` and ``v(x + h v, t + h)`` (``2 steps`` evaluations).
    - ``sde``: Euler–Maruyama for :func:`sde_lambda`'s SDE, final step noise-free (as the
      authors). ``sde_scheme="exponential"`` (default) integrates the linear ``-lam x`` term
      exactly over each step (exponential Euler–Maruyama, with ``v`` frozen as in plain EM), so
      the step is stable for any ``lam h``: with SBDM the first step has ``lam h ~ 20`` and plain
      EM (``sde_scheme="euler_maruyama"``) multiplies the state by ``1 - lam h ~ -19``, the
      std ~ 20 blow-up of the authors' sampler. As ``lam h -> 0`` both schemes coincide.

    ``dopri5`` (adaptive Dormand–Prince 5(4); ``time_shift`` must be 1): see :func:`_dopri5`;
    it runs from the grid's first time to exactly its last (``t_eps`` to 1, or the ends of
    ``times``), whatever ``steps`` is.

    ``stats`` (optional) receives the NFE and step counts of this integration (added to what
    it holds). ``velocity`` is called as ``velocity(x, t)`` with a Python float ``t``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if sde_scheme not in ("exponential", "euler_maruyama"):
        raise ValueError(f"sde_scheme must be exponential|euler_maruyama, got {sde_scheme!r}")
    if method == "dopri5" and time_shift != 1.0:
        raise ValueError("time_shift applies to the fixed-step methods, not to dopri5")
    if times is not None:
        ts = [float(t) for t in times]
    else:
        ts = [t_eps, 1.0] if method == "dopri5" else time_grid(steps, t_eps, time_shift)
    if len(ts) < 2 or any(b <= a for a, b in itertools.pairwise(ts)):
        raise ValueError(f"times must be two or more increasing values, got {ts}")
    steps = len(ts) - 1
    stats = stats if stats is not None else SolverStats()
    stats.calls += 1

    def counted(state: torch.Tensor, t: float) -> torch.Tensor:
        stats.nfe += 1
        return velocity(state, t)

    if method == "dopri5":
        return _dopri5(counted, x, ts[0], ts[-1], atol, rtol, max_steps, stats, progress)
    for n in tqdm(range(steps), desc=f"sampling ({method})", disable=not progress, leave=False):
        t0, t1 = ts[n], ts[n + 1]
        h = t1 - t0
        v = counted(x, t0)
        if method == "euler":
            x = x + h * v
        elif method == "heun":
            v1 = counted(x + h * v, t1)
            x = x + (0.5 * h) * (v + v1)
        elif n == steps - 1 and t1 >= 1.0:  # sde, last step: deterministic
            x = x + h * v
        else:
            lam = sde_lambda(t0, diffusion, diffusion_scale)
            w = lam * (1.0 - t0)
            noise = torch.randn(
                x.shape, generator=generator, device=_gen_device(generator, x), dtype=x.dtype
            ).to(x.device)
            if sde_scheme == "euler_maruyama" or lam * h < 1e-12:
                x = x + h * ((1 + lam * t0) * v - lam * x) + math.sqrt(2 * w * h) * noise
            else:
                a = math.exp(-lam * h)
                b = (1 - a) / lam * (1 + lam * t0)
                c = math.sqrt(w * (1 - a * a) / lam)
                x = a * x + b * v + c * noise
        stats.steps += 1
    return x


def _error_ratio(err: torch.Tensor, scale: torch.Tensor) -> float:
    """The largest per-sample RMS of ``err / scale`` (dim 0 = samples), as a Python float.

    Per sample rather than over the whole batch, so that one badly resolved sample is not
    averaged away by a well-behaved majority. The one host sync of an adaptive step: the
    accept/reject decision is made on the host.
    """
    r = (err / scale).float().reshape(err.shape[0], -1)
    return float(r.square().mean(1).sqrt().max())


def _dopri5(
    f: Velocity,
    x: torch.Tensor,
    t_start: float,
    t_end: float,
    atol: float,
    rtol: float,
    max_steps: int,
    stats: SolverStats,
    progress: bool,
) -> torch.Tensor:
    """Adaptive Dormand–Prince 5(4) from ``t_start`` to exactly ``t_end`` (the
    local-extrapolation, FSAL scheme of ``scipy``'s RK45 and ``torchdiffeq``'s dopri5).

    A step is accepted when the largest per-sample RMS of the error estimate, measured in units
    of ``atol + rtol max(|x|, |x_new|)``, is <= 1; the next step is ``h * clip(0.9 ratio^-1/5,
    0.2, 10)`` (at most ``h`` after a rejection). The first step is chosen as in Hairer, Nørsett
    & Wanner (one extra evaluation). NFE = 2 + 6 x (accepted + rejected steps). The stages hold
    7 copies of the state.
    """
    if not (atol > 0 and rtol >= 0):
        raise ValueError(f"dopri5 needs atol > 0 and rtol >= 0, got atol={atol}, rtol={rtol}")
    t, t_end = float(t_start), float(t_end)
    k1 = f(x, t)
    h = _initial_step(f, x, t, k1, atol, rtol, t_end - t)
    bar = tqdm(total=1000, desc="sampling (dopri5)", disable=not progress, leave=False)
    while t < t_end:
        if stats.steps + stats.rejected >= max_steps:
            raise RuntimeError(
                f"dopri5 took {max_steps} steps without reaching t = {t_end:g} (at t = {t:.6g}, "
                f"step {h:.3g}): loosen atol/rtol or raise max_steps"
            )
        last = t + h >= t_end - 1e-12 * max(1.0, abs(t_end))
        if last:
            h = t_end - t
        ks = [k1]
        for i in range(1, 7):
            y = x
            for a, k in zip(_DP_A[i], ks, strict=True):
                if a != 0.0:
                    y = y + (h * a) * k
            ks.append(f(y, t_end if (last and i >= 5) else t + _DP_C[i] * h))
        x_new = y  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = sum((h * e) * k for e, k in zip(_DP_E, ks, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        ratio = _error_ratio(err, scale)
        if ratio <= 1.0:
            t = t_end if last else t + h
            x, k1 = x_new, ks[6]
            stats.steps += 1
            bar.update(round(1000 * (t - t_start) / (t_end - t_start)) - bar.n)
            factor = 10.0 if ratio == 0.0 else min(10.0, max(0.2, 0.9 * ratio**-0.2))
        else:
            stats.rejected += 1
            factor = min(1.0, max(0.2, 0.9 * ratio**-0.2))
        h = h * factor
    bar.close()
    return x


def _initial_step(
    f: Velocity,
    x: torch.Tensor,
    t: float,
    v: torch.Tensor,
    atol: float,
    rtol: float,
    span: float,
) -> float:
    """First step size of an order-5 method (Hairer, Nørsett & Wanner, Solving ODEs I, II.4):
    small enough that an Euler step changes ``x`` by ~1% of its scale, corrected by the
    curvature seen one trial step later."""
    scale = atol + rtol * x.abs()
    d0 = _error_ratio(x, scale)
    d1 = _error_ratio(v, scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    v1 = f(x + h0 * v, t + h0)
    d2 = _error_ratio(v1 - v, scale) / h0
    d = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if d <= 1e-15 else (0.01 / d) ** 0.2
    return min(100 * h0, h1, span)


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def nested_grid_index(
    coarse_shape: Sequence[int], factor: int | Sequence[int], device=None
) -> torch.Tensor:
    """Flat indices, into the row-major fine grid ``coarse_shape * factor``, of the fine cell
    nearest each coarse cell centre (pixel-centre convention of :func:`grid_coords`).

    For odd factors the fine centre equals the coarse one; for even factors it is half a fine
    cell below it on every axis.
    """
    factors = [factor] * len(coarse_shape) if isinstance(factor, int) else list(factor)
    if len(factors) != len(coarse_shape) or min(factors) < 1:
        raise ValueError(f"factor must be a positive int or one per axis, got {factor}")
    fine_shape = [n * f for n, f in zip(coarse_shape, factors, strict=True)]
    axes = [torch.arange(n) * f + (f - 1) // 2 for n, f in zip(coarse_shape, factors, strict=True)]
    idx = torch.zeros(coarse_shape, dtype=torch.long)
    for a, ax in enumerate(axes):
        shape = [1] * len(coarse_shape)
        shape[a] = -1
        idx = idx * fine_shape[a] + ax.view(shape)
    return idx.reshape(-1).to(device)


def grid_interpolator(
    src_shape: Sequence[int], dst_shape: Sequence[int], mode: str = "linear"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A map from values ``[B, prod(src_shape), c]`` on a row-major grid to ``[B,
    prod(dst_shape), c]`` on another grid of the same extent (pixel-centre convention of
    :func:`grid_coords`, i.e. ``align_corners=False``).

    ``mode``: ``linear`` (bi-/trilinear by the grid's dimension), ``cubic`` (2-D only: bicubic)
    or ``nearest``. Used as ``query_init`` of :func:`sample` to start fine-grid queries from the
    training-resolution context.
    """
    src, dst = tuple(int(n) for n in src_shape), tuple(int(n) for n in dst_shape)
    if len(src) != len(dst) or not 1 <= len(src) <= 3 or min(src + dst) < 1:
        raise ValueError(f"grid shapes must be 1-3-D and match, got {src} -> {dst}")
    modes = {
        "linear": ("linear", "bilinear", "trilinear")[len(src) - 1],
        "cubic": "bicubic" if len(src) == 2 else None,
        "nearest": "nearest",
    }
    torch_mode = modes.get(mode)
    if torch_mode is None:
        raise ValueError(f"mode must be linear|nearest (or cubic on 2-D grids), got {mode!r}")

    def interpolate(values: torch.Tensor) -> torch.Tensor:
        b, n, c = values.shape
        if n != math.prod(src):
            raise ValueError(f"expected {math.prod(src)} values per sample, got {n}")
        grid = values.transpose(1, 2).reshape(b, c, *src)
        kw = {} if torch_mode == "nearest" else {"align_corners": False}
        out = torch.nn.functional.interpolate(grid, size=dst, mode=torch_mode, **kw)
        return out.reshape(b, c, -1).transpose(1, 2)

    return interpolate


def _join_index(times: Sequence[float], join_time: float | None) -> int:
    """Index of the grid time where late-joining queries start: the first ``>= join_time``
    (``None``: the last step's start)."""
    last = len(times) - 2
    if join_time is None:
        return last
    if not 0.0 <= join_time < 1.0:
        raise ValueError(f"join_time must be in [0, 1), got {join_time}")
    return min(next(k for k, t in enumerate(times) if t >= join_time or k == last), last)


def _batched(x: torch.Tensor | None, b: int, name: str, rank: int = 3) -> torch.Tensor | None:
    if x is None:
        return None
    if x.dim() == rank - 1:
        return x.unsqueeze(0).expand(b, *x.shape)
    if x.dim() != rank or x.shape[0] not in (1, b):
        raise ValueError(f"{name} must be [{b}, ...] or unbatched, got {tuple(x.shape)}")
    return x.expand(b, *x.shape[1:])


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def sample(
    model: nn.Module,
    context_coords: torch.Tensor | None,
    query_coords: torch.Tensor | None,
    steps: int,
    method: str = "euler",
    cfg_scale: float = 1.0,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    cond: torch.Tensor | None = None,
    context_index: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    context_noise: torch.Tensor | None = None,
    batch_size: int | None = None,
    chunk_size: int = 1 << 16,
    t_eps: float = TIME_EPS,
    diffusion: str = "sbdm",
    diffusion_scale: float = 1.0,
    sde_scheme: str = "exponential",
    time_shift: float = 1.0,
    atol: float = DOPRI5_ATOL,
    rtol: float = DOPRI5_RTOL,
    stats: SolverStats | None = None,
    progress: bool = True,
    query_init: Callable[[torch.Tensor], torch.Tensor] | None = None,
    join_time: float | None = None,
) -> torch.Tensor:
    """Generate values at ``query_coords``; returns ``[B, Q, c]`` (float32).

    Args:
        model: an :class:`~inrflow.model.INRFlow` (anything with its ``encode``/``decode``).
        context_coords: ``None`` (the context is every query), or ``[N, d]`` / ``[B, N, d]``
            coordinates of the context the encoder sees at every step. With ``context_index``
            their state is the state of those queries (a nested sub-grid, sharing noise);
            without it they form a separate trajectory (noise ``context_noise``).
        query_coords: ``[Q, d]`` / ``[B, Q, d]``. For ``coords_are_values`` models (point
            clouds) coordinates are ignored and may be None; ``noise`` then sets Q.
        steps: integration steps (NFE: ``steps`` for euler/sde, ``2 steps`` for heun; unused
            by dopri5, whose NFE follows from ``atol``/``rtol``, except to place the default
            join time of late-joining queries).
        method: ``euler``, ``heun``, ``sde`` or ``dopri5`` (see :func:`integrate`).
        cfg_scale: guidance ``v_u + s (v_c - v_u)``; conditional and unconditional halves run as
            one batched forward of size 2B. Needs labels or cond tokens when != 1.
        labels: ``[B]`` class labels; cond: ``[B, M, cond_dim]`` condition tokens.
        generator: source of all noise (initial and SDE), for reproducible samples.
        context_index: ``[N]`` or ``[B, N]`` indices into the queries (see
            :func:`nested_grid_index`).
        noise: initial noise ``[B, Q, c]``, e.g. drawn once on the finest grid.
        chunk_size: query points per decoder pass summed over the batch (and the CFG halves);
            bounds the decoder's activation memory.
        query_init: with a separate context (``context_coords``, no ``context_index``), let the
            queries join the context's trajectory late instead of starting from noise: at the
            grid time ``join_time`` (the first step time >= it; ``None``: the last step) the
            query state becomes ``query_init(context_state)`` (e.g. :func:`grid_interpolator`)
            and both are integrated to t = 1. ``noise`` then only needs to cover the context.
        time_shift: shift of the fixed-step time grid (:func:`shift_time`; 1 = uniform).
        atol, rtol: dopri5's error tolerances (on values in the model's range, [-1, 1] for
            images).
        stats: a :class:`SolverStats` that receives the NFE and steps of this call (one
            ``call``, even when late-joining queries split the integration in two).
    """
    cfg = model.config
    c = cfg.value_dim
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    guided = cfg_scale != 1.0
    if guided and labels is None and cond is None:
        raise ValueError("cfg_scale != 1 needs labels or cond tokens to guide with")

    # --- batch size and shapes -------------------------------------------------------------------
    candidates = [x.shape[0] for x in (labels, cond, noise, context_noise) if x is not None]
    candidates += [
        x.shape[0]
        for x in (query_coords, context_coords)
        if x is not None and x.dim() == 3 and x.shape[0] > 1
    ]
    b = batch_size or (candidates[0] if candidates else 1)
    if any(n != b for n in candidates):
        raise ValueError(f"inconsistent batch sizes {candidates} (batch_size={batch_size})")
    query_coords = _batched(query_coords, b, "query_coords")
    if query_coords is not None:
        query_coords = query_coords.to(device)
        if query_coords.shape[-1] != cfg.coord_dim:
            raise ValueError(
                f"query_coords have dimension {query_coords.shape[-1]}; the model "
                f"has coord_dim={cfg.coord_dim}"
            )
    elif not cfg.coords_are_values or noise is None:
        raise ValueError("query_coords are required (or, for coords_are_values models, noise)")
    late = query_init is not None
    if late and (context_coords is None or context_index is not None or query_coords is None):
        raise ValueError(
            "query_init needs query_coords and a separate context (context_coords without "
            "context_index)"
        )
    q = query_coords.shape[1] if query_coords is not None else noise.shape[1]
    if late:  # the queries start from the context state, not from noise of their own
        x = torch.empty((b, 0, c), device=device)
    else:
        if noise is None:
            noise = torch.randn(
                (b, q, c),
                generator=generator,
                device=_gen_device(generator, torch.empty(0, device=device)),
            )
        elif tuple(noise.shape) != (b, q, c):
            raise ValueError(f"noise must be [{b}, {q}, {c}], got {tuple(noise.shape)}")
        x = noise.to(device=device, dtype=torch.float32)

    # --- context: all queries, a subset of them, or a separate trajectory ------------------------
    context_coords = _batched(context_coords, b, "context_coords")
    separate = context_coords is not None and context_index is None
    if separate:
        n = context_coords.shape[1]
        if context_noise is None:
            context_noise = torch.randn(
                (b, n, c), generator=generator, device=_gen_device(generator, x)
            )
        elif tuple(context_noise.shape) != (b, n, c):
            raise ValueError(f"context_noise must be [{b}, {n}, {c}]")
        x = torch.cat([context_noise.to(x), x], dim=1)
        if query_coords is not None:
            query_coords = torch.cat([context_coords.to(query_coords), query_coords], dim=1)
        context_index = torch.arange(n, device=device)
    if context_index is not None:
        context_index = _batched(context_index.to(device).long(), b, "context_index", rank=2)
        if context_index.numel() and not (
            context_index.min() >= 0 and context_index.max() < x.shape[1] + (q if late else 0)
        ):
            raise ValueError("context_index out of range of the queries")
        if context_coords is None and query_coords is not None:
            context_coords = _take(query_coords, context_index)
    if context_coords is not None:
        context_coords = context_coords.to(device)

    # --- guidance batching -----------------------------------------------------------------------
    force_drop = None
    if guided:
        force_drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
        force_drop = force_drop.to(device)
        labels = torch.cat([labels, labels]).to(device) if labels is not None else None
        cond = torch.cat([cond, cond]).to(device) if cond is not None else None
    else:
        labels = labels.to(device) if labels is not None else None
        cond = cond.to(device) if cond is not None else None
    m = 2 if guided else 1
    per_pass = max(1, chunk_size // (b * m))

    def dup(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None or not guided else torch.cat([t, t])

    def velocity_field(coords: torch.Tensor | None, ctx_index: torch.Tensor | None) -> Velocity:
        """The (guided) velocity of a state on ``coords`` whose context is the ``ctx_index``
        subset of that state (``None``: all of it)."""

        def velocity(state: torch.Tensor, t: float) -> torch.Tensor:
            ctx = state if ctx_index is None else _take(state, ctx_index)
            ctx_c = coords if ctx_index is None else context_coords
            tt = torch.full((b * m,), t, device=device)
            enc = model.encode(
                dup(ctx_c) if guided else ctx_c,
                dup(ctx) if guided else ctx,
                tt,
                labels,
                cond,
                force_drop,
            )
            out = torch.empty_like(state)
            for s in range(0, state.shape[1], per_pass):
                qv = state[:, s : s + per_pass]
                qc = coords[:, s : s + per_pass] if coords is not None else None
                v = model.decode(enc, dup(qc) if guided else qc, dup(qv) if guided else qv)
                v = v.float()
                if guided:
                    v_c, v_u = v.chunk(2)
                    v = v_u + cfg_scale * (v_c - v_u)
                out[:, s : s + per_pass] = v
            return out

        return velocity

    calls = SolverStats()  # this call's cost, added to ``stats`` as one call
    solver = dict(
        generator=generator,
        diffusion=diffusion,
        diffusion_scale=diffusion_scale,
        sde_scheme=sde_scheme,
        progress=progress,
        time_shift=time_shift,
        atol=atol,
        rtol=rtol,
        stats=calls,
    )
    was_training = model.training
    model.eval()
    try:
        if not late:
            velocity = velocity_field(query_coords, context_index)
            x = integrate(velocity, x, steps, method, t_eps=t_eps, **solver)
        else:  # the context alone up to the join, then the context and the queries together
            times = time_grid(steps, t_eps, time_shift)
            k = _join_index(times, join_time)
            if k > 0:
                x = integrate(
                    velocity_field(context_coords, None),
                    x,
                    k,
                    method,
                    times=times[: k + 1],
                    **solver,
                )
            x = torch.cat([x, query_init(x).to(x)], dim=1)
            velocity = velocity_field(query_coords, context_index)
            x = integrate(velocity, x, steps - k, method, times=times[k:], **solver)
    finally:
        model.train(was_training)
    if stats is not None:
        stats.add(calls)
    return x[:, context_coords.shape[1] :] if separate else x


# ------------------------------------------------------------------------------------------------
# Likelihood
# ------------------------------------------------------------------------------------------------

LIKELIHOOD_TOL = 1e-5


def ode_log_likelihood(
    velocity: Velocity,
    x1: torch.Tensor,
    steps: int = 100,
    method: str = "dopri5",
    *,
    hutchinson: int | None = None,
    generator: torch.Generator | None = None,
    t_eps: float = TIME_EPS,
    atol: float = LIKELIHOOD_TOL,
    rtol: float = LIKELIHOOD_TOL,
    stats: SolverStats | None = None,
) -> torch.Tensor:
    """``[B]`` log-density (nats) of data ``x1`` ``[B, ...]`` under the flow ``dx/dt = v(x, t)``
    whose state at ``t_eps`` is standard normal.

    The instantaneous change of variables, ``d log p(x_t) / dt = -div v(x_t, t)``, integrated
    from t = 1 back to ``t_eps`` alongside the state: ``log p_1(x1) = log N(x_eps; 0, I) -
    int div v dt``. ``velocity`` must be differentiable in ``x`` and act on each sample
    independently (row ``b`` of its output depends only on row ``b`` of ``x``); it is called
    with gradients enabled. The divergence is exact when ``hutchinson`` is None (one backward
    pass per dimension of a sample, summed over the batch at once) or Hutchinson's estimate
    ``E[e^T (dv/dx) e]`` with that many Rademacher probes ``e``, drawn once from ``generator``
    and kept along the trajectory (unbiased; one backward pass per probe).

    ``method``: ``dopri5`` (default; ``atol``/``rtol`` on the state and the log-density), or a
    fixed-step ``euler``/``heun`` with ``steps`` steps (the SDE sampler has no likelihood).
    """
    if method not in ("euler", "heun", "dopri5"):
        raise ValueError(f"likelihood method must be euler, heun or dopri5, got {method!r}")
    if hutchinson is not None and hutchinson < 1:
        raise ValueError(f"hutchinson must be None (exact) or >= 1 probes, got {hutchinson}")
    b, shape = x1.shape[0], x1.shape[1:]
    d = math.prod(shape)
    probes = None
    if hutchinson is not None:
        probes = torch.randint(
            0, 2, (hutchinson, *x1.shape), generator=generator, device=_gen_device(generator, x1)
        ).to(device=x1.device, dtype=x1.dtype)
        probes = probes * 2 - 1

    def reverse(y: torch.Tensor, s: float) -> torch.Tensor:
        """``d[x, ell]/ds`` with ``s`` running ``t_eps -> 1`` while ``t = 1 + t_eps - s`` runs
        ``1 -> t_eps``: minus the forward field and minus the divergence."""
        t = 1.0 + t_eps - s
        with torch.enable_grad():
            x = y[:, :d].reshape(b, *shape).detach().requires_grad_(True)
            v = velocity(x, t)
            div = _divergence(v, x, probes)
        return -torch.cat([v.detach().reshape(b, d), div.detach()[:, None]], dim=1)

    y = torch.cat([x1.reshape(b, d), torch.zeros(b, 1, dtype=x1.dtype, device=x1.device)], 1)
    y = integrate(
        reverse, y, steps, method, t_eps=t_eps, atol=atol, rtol=rtol, stats=stats, progress=False
    )
    x0, ell = y[:, :d], y[:, d]
    log_p0 = -0.5 * (d * math.log(2 * math.pi) + x0.double().square().sum(1))
    return (log_p0 + ell.double()).to(x1.dtype)


def _divergence(v: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """``[B]`` trace of ``dv/dx`` per sample: exact (a backward pass per dimension) or
    Hutchinson's estimate with ``probes`` ``[K, *x.shape]``."""
    b = x.shape[0]
    if probes is not None:
        total = torch.zeros(b, dtype=torch.float64, device=x.device)
        for k, e in enumerate(probes):
            (g,) = torch.autograd.grad(v, x, e, retain_graph=k < len(probes) - 1)
            total += (g * e).reshape(b, -1).double().sum(1)
        return (total / len(probes)).to(v.dtype)
    vf = v.reshape(b, -1)
    d = vf.shape[1]
    div = torch.zeros(b, dtype=torch.float64, device=x.device)
    for i in range(d):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=i < d - 1)
        div += g.reshape(b, -1)[:, i].double()
    return div.to(v.dtype)


def log_likelihood(
    model: nn.Module,
    coords: torch.Tensor | None,
    values: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    steps: int = 100,
    method: str = "dopri5",
    hutchinson: int | None = None,
    generator: torch.Generator | None = None,
    cond: torch.Tensor | None = None,
    t_eps: float = TIME_EPS,
    atol: float = LIKELIHOOD_TOL,
    rtol: float = LIKELIHOOD_TOL,
    stats: SolverStats | None = None,
) -> torch.Tensor:
    """``[B]`` log-density in nats of each sample's pairs ``values`` ``[B, N, c]`` at ``coords``
    ``[B, N, d]`` (or ``[N, d]``; None for ``coords_are_values`` models) under the model's flow.

    The model is called as in sampling without guidance, with the state as both the context
    and the queries; ``labels``/``cond`` give the class-conditional density. See
    :func:`ode_log_likelihood` for ``steps``, ``method``, ``hutchinson`` and the tolerances;
    :func:`bits_per_dim` turns the result into bits per dimension. The exact divergence costs
    ``N c`` backward passes per evaluation: use ``hutchinson`` for large ``N``.
    """
    if values.dim() != 3:
        raise ValueError(f"values must be [B, N, c], got {tuple(values.shape)}")
    b = values.shape[0]
    params = next(model.parameters(), None)
    device = params.device if params is not None else values.device
    coords = _batched(coords, b, "coords")
    if coords is not None:
        coords = coords.to(device)
    elif not model.config.coords_are_values:
        raise ValueError("coords are required (except for coords_are_values models)")
    labels = labels.to(device) if labels is not None else None
    cond = cond.to(device) if cond is not None else None

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((b,), t, device=device)
        return model.decode(model.encode(coords, x, tt, labels, cond), coords, x).float()

    was_training = model.training
    model.eval()
    try:
        return ode_log_likelihood(
            velocity,
            values.to(device=device, dtype=torch.float32),
            steps,
            method,
            hutchinson=hutchinson,
            generator=generator,
            t_eps=t_eps,
            atol=atol,
            rtol=rtol,
            stats=stats,
        )
    finally:
        model.train(was_training)


def bits_per_dim(
    log_likelihood: torch.Tensor, num_dims: int, bin_width: float | None = None
) -> torch.Tensor:
    """Bits per dimension ``-log2 p / D`` of log-densities in nats over ``num_dims`` dimensions.

    With ``bin_width`` (the spacing of quantised data in the model's value range, e.g. 2 / 256
    for 8-bit images mapped to [-1, 1]) it is the usual dequantised figure ``-(log p + D log
    bin_width) / (D ln 2)``, the bits per dimension of the discrete data, comparable across
    papers; without it, the differential figure of the continuous values.
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    nats = log_likelihood.double()
    if bin_width is not None:
        if not bin_width > 0:
            raise ValueError(f"bin_width must be > 0, got {bin_width}")
        nats = nats + num_dims * math.log(bin_width)
    return -nats / (num_dims * math.log(2))
