"""Samplers: Euler and Heun ODE, Euler–Maruyama SDE, classifier-free guidance, and resolution-
agnostic generation with chunked decoding.

Time runs from t = ``t_eps`` (noise) to t = 1 (data), see :mod:`inrflow.flow`. The integrators
(:func:`integrate`) only need a velocity function ``v(x, t)``, so they are tested against exact
velocity fields; :func:`sample` builds that function from a model.

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

import torch
from torch import nn
from tqdm.auto import tqdm

from inrflow.flow import TIME_EPS
from inrflow.model.pseudo_coords import grid_coords

__all__ = [
    "METHODS",
    "RESOLUTION_MODES",
    "grid_coords",
    "grid_interpolator",
    "integrate",
    "nested_grid_index",
    "sample",
    "sde_lambda",
    "time_grid",
]

METHODS = ("euler", "heun", "sde")
# How queries off the training grid start: joining the context late, or from their own noise.
RESOLUTION_MODES = ("join", "noise")
Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def time_grid(steps: int, t_eps: float = TIME_EPS) -> list[float]:
    """``steps + 1`` uniform times from ``t_eps`` to 1 (the authors' ``linspace(1e-4, 1)``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_eps, 1.0, steps + 1, dtype=torch.float64).tolist()


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
    progress: bool = False,
    times: Sequence[float] | None = None,
) -> torch.Tensor:
    """Integrate from noise ``x`` at ``t_eps`` to t = 1 with ``steps`` steps.

    ``times`` (increasing, ``steps + 1`` of them; ``steps`` and ``t_eps`` are then ignored)
    integrates over an explicit grid instead, e.g. one piece of :func:`time_grid`; the SDE's
    noise-free last step is taken only when the grid ends at t = 1.

    - ``euler``: ``x += h v(x, t)`` (``steps`` evaluations; the model never sees t = 1).
    - ``heun``: the trapezoid of ``v(x, t)`` and ``v(x + h v, t + h)`` (``2 steps`` evaluations).
    - ``sde``: Euler–Maruyama for :func:`sde_lambda`'s SDE, final step noise-free (as the
      authors). ``sde_scheme="exponential"`` (default) integrates the linear ``-lam x`` term
      exactly over each step (exponential Euler–Maruyama, with ``v`` frozen as in plain EM), so
      the step is stable for any ``lam h``: with SBDM the first step has ``lam h ~ 20`` and plain
      EM (``sde_scheme="euler_maruyama"``) multiplies the state by ``1 - lam h ~ -19``, the
      std ~ 20 blow-up of the authors' sampler. As ``lam h -> 0`` both schemes coincide.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if sde_scheme not in ("exponential", "euler_maruyama"):
        raise ValueError(f"sde_scheme must be exponential|euler_maruyama, got {sde_scheme!r}")
    ts = time_grid(steps, t_eps) if times is None else [float(t) for t in times]
    steps = len(ts) - 1
    if len(ts) < 2 or any(b <= a for a, b in itertools.pairwise(ts)):
        raise ValueError(f"times must be two or more increasing values, got {ts}")
    for n in tqdm(range(steps), desc=f"sampling ({method})", disable=not progress, leave=False):
        t0, t1 = ts[n], ts[n + 1]
        h = t1 - t0
        v = velocity(x, t0)
        if method == "euler":
            x = x + h * v
        elif method == "heun":
            v1 = velocity(x + h * v, t1)
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
    return x


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
        steps: integration steps (NFE: ``steps`` for euler/sde, ``2 steps`` for heun).
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

    solver = dict(
        generator=generator,
        diffusion=diffusion,
        diffusion_scale=diffusion_scale,
        sde_scheme=sde_scheme,
        progress=progress,
    )
    was_training = model.training
    model.eval()
    try:
        if not late:
            velocity = velocity_field(query_coords, context_index)
            x = integrate(velocity, x, steps, method, t_eps=t_eps, **solver)
        else:  # the context alone up to the join, then the context and the queries together
            times = time_grid(steps, t_eps)
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
    return x[:, context_coords.shape[1] :] if separate else x
