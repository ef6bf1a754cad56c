"""Samplers driven by exact velocity fields of known distributions, and the `sample` glue.

For the linear path x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I) and data x1 ~ sum_k pi_k N(mu_k,
S_k), x_t | k ~ N(t mu_k, t^2 S_k + (1-t)^2 I) and the marginal velocity is
E[x1 - x0 | x_t] = sum_k w_k(x) (E[x1 | x, k] - E[x0 | x, k]): exactly what a perfect network
would output. Integrating it must reproduce the data's mean and covariance.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import GaussianClassModel, gmm_moments, gmm_velocity
from torch import nn

from inrflow.model import grid_coords
from inrflow.sampling import (
    SolverStats,
    grid_interpolator,
    integrate,
    nested_grid_index,
    resolution_shift,
    sample,
    time_grid,
)


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double().reshape(-1, x.shape[-1])
    return x.mean(0), torch.cov(x.T)


N_SAMPLES = 20000


@pytest.mark.parametrize(
    "method, steps", [("euler", 100), ("heun", 25), ("sde", 250), ("dopri5", 0)]
)
def test_sampler_reproduces_gmm_moments(method: str, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(N_SAMPLES, 2, generator=g)
    x = integrate(gmm_velocity, x0, steps, method, generator=g)
    mean, cov = moments(x)
    true_mean, true_cov = gmm_moments()
    # Monte-Carlo error of the mean ~ sqrt(4 / 20000) = 0.014 per axis; allow ~4 sigma.
    assert (mean - true_mean).abs().max() < 0.06, (method, mean, true_mean)
    # Covariance entries: MC std ~ 0.04 on entries of size ~3; 5% of the norm is ~10 sigma.
    rel = torch.linalg.matrix_norm(cov - true_cov) / torch.linalg.matrix_norm(true_cov)
    assert rel < 0.05, (method, cov, true_cov)


def test_sde_first_step_stays_bounded() -> None:
    """SBDM diffusion near t = 0: plain EM blows the std up to ~20, the default scheme does not."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(N_SAMPLES, 2, generator=g)
    seen: dict[str, list[float]] = {}

    class Enough(Exception):
        pass

    def recorder(name):
        def v(x, t):
            seen.setdefault(name, []).append(float(x.std()))
            if len(seen[name]) > 20:
                raise Enough
            return gmm_velocity(x, t)

        return v

    for scheme in ("exponential", "euler_maruyama"):
        with pytest.raises(Enough):  # 500 steps as the authors; the first 20 are what matter
            integrate(recorder(scheme), x0, 500, "sde", generator=g, sde_scheme=scheme)
    # the state the second model evaluation sees, i.e. after the first SDE step
    assert seen["euler_maruyama"][1] > 10.0  # the authors' instability, reproduced
    assert 0.8 < seen["exponential"][1] < 1.3  # x_t at t ~ 0.002 is still ~N(0, I)
    assert max(seen["exponential"]) < 3.0


# ------------------------------------------------------------------------------------------------
# `sample` glue: a stand-in model whose velocity is exact for class-conditional Gaussians
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sample_cfg_single_batched_forward(cfg_scale: float) -> None:
    model = GaussianClassModel()
    b, q = 2, 4000
    labels = torch.tensor([0, 1])
    coords = torch.zeros(q, 1)
    out = sample(
        model,
        None,
        coords,
        50,
        "euler",
        cfg_scale=cfg_scale,
        labels=labels,
        generator=torch.Generator().manual_seed(0),
        chunk_size=1000,
        progress=False,
    )
    assert out.shape == (b, q, 2)
    m = 2 if cfg_scale != 1 else 1
    assert model.encode_batches == [b * m] * 50  # one forward per step, both halves batched
    for i in range(b):
        expected = cfg_scale * model.MU[labels[i]]
        assert torch.allclose(out[i].mean(0), expected, atol=0.1), (out[i].mean(0), expected)
        assert torch.allclose(out[i].std(0), torch.ones(2), atol=0.1)


def test_sample_requires_condition_for_cfg() -> None:
    with pytest.raises(ValueError, match="cfg_scale"):
        sample(GaussianClassModel(), None, torch.zeros(4, 1), 2, cfg_scale=3.0, progress=False)


def test_sample_chunking_does_not_change_result() -> None:
    model = GaussianClassModel()
    kw = dict(labels=torch.tensor([1]), progress=False, method="heun")
    a = sample(
        model,
        None,
        torch.zeros(300, 1),
        5,
        generator=torch.Generator().manual_seed(3),
        chunk_size=64,
        **kw,
    )
    b = sample(
        model,
        None,
        torch.zeros(300, 1),
        5,
        generator=torch.Generator().manual_seed(3),
        chunk_size=10**6,
        **kw,
    )
    torch.testing.assert_close(a, b)


def test_nested_grid_index() -> None:
    fine = grid_coords((12, 9))
    for factor, tol in ((3, 1e-6), ((2, 3), 0.5 / 12 + 1e-6)):
        idx = nested_grid_index((6, 3) if factor == (2, 3) else (4, 3), factor)
        coarse_shape = (6, 3) if factor == (2, 3) else (4, 3)
        coarse = grid_coords(coarse_shape)
        assert idx.shape == (coarse.shape[0],)
        # the chosen fine cell centre lies within half a fine cell of the coarse centre
        assert (fine[idx] - coarse).abs().max() <= tol
    # odd factors hit the coarse centres exactly
    torch.testing.assert_close(fine[nested_grid_index((4, 3), 3)], grid_coords((4, 3)))


def test_sample_point_cloud_model_with_nested_context() -> None:
    """A 2048-point context drives 5000 points; coordinates are the noisy values themselves."""
    from inrflow.model import build_model

    model = build_model("tiny", "pointcloud")
    torch.nn.init.normal_(model.final.linear.weight, std=0.05)
    noise = torch.randn(2, 5000, 3, generator=torch.Generator().manual_seed(0))
    out = sample(
        model, None, None, 3, noise=noise, context_index=torch.arange(2048), progress=False
    )
    assert out.shape == (2, 5000, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="query_coords"):
        sample(model, None, None, 3, progress=False)


def test_sample_separate_context_matches_plain_run() -> None:
    """With a separate context trajectory whose noise is the plain run's noise, the context
    evolves exactly as in the plain run, and queries at the context points reproduce it."""
    from inrflow.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ctx = grid_coords((8, 8))
    z = torch.randn(1, 64, 3)
    plain = sample(model, None, ctx, 4, noise=z, progress=False)
    both = sample(model, ctx, ctx, 4, noise=z, context_noise=z, progress=False)
    torch.testing.assert_close(both, plain, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Adaptive solver, time grids and NFE
# ------------------------------------------------------------------------------------------------

# A linear ODE dx/dt = M x with a rotation and a decay: x(1) = expm(M (1 - t0)) x(t0) exactly.
LIN_M = torch.tensor([[-0.5, 3.0], [-3.0, -0.5]], dtype=torch.float64)


def linear_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    return x @ LIN_M.T.to(x.dtype)


def linear_exact(x0: torch.Tensor, t0: float) -> torch.Tensor:
    return x0 @ torch.linalg.matrix_exp(LIN_M * (1 - t0)).T.to(x0.dtype)


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-7])
def test_dopri5_matches_exact_linear_solution(tol: float) -> None:
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stats = SolverStats()
    out = integrate(linear_velocity, x0, 0, "dopri5", atol=tol, rtol=tol, stats=stats)
    err = (out - linear_exact(x0, 1e-4)).abs().max().item()
    # The global error of a tolerance-controlled solve stays within a small multiple of it.
    assert err < 20 * tol, (tol, err)
    assert stats.calls == 1 and stats.steps >= 1
    assert stats.nfe == 2 + 6 * (stats.steps + stats.rejected)


def test_dopri5_fewer_evaluations_for_looser_tolerance_and_error_shrinks() -> None:
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = linear_exact(x0, 1e-4)
    nfe, errs = [], []
    for tol in (1e-2, 1e-4, 1e-6, 1e-8):
        s = SolverStats()
        out = integrate(linear_velocity, x0, 0, "dopri5", atol=tol, rtol=tol, stats=s)
        nfe.append(s.nfe)
        errs.append((out - exact).abs().max().item())
    assert nfe == sorted(nfe) and nfe[0] < nfe[-1], nfe
    assert errs[-1] < errs[0] / 1e4, errs


def test_dopri5_ends_exactly_at_one_like_the_fixed_step_methods() -> None:
    for method in ("heun", "dopri5"):
        seen: list[float] = []

        def v(x: torch.Tensor, t: float, seen: list[float] = seen) -> torch.Tensor:
            seen.append(t)
            return linear_velocity(x, t)

        integrate(v, torch.ones(1, 2, dtype=torch.float64), 10, method)
        assert seen[0] == 1e-4 and max(seen) == 1.0 and min(seen) == 1e-4, (method, seen[-3:])


def test_dopri5_per_sample_error_control() -> None:
    """One fast-varying sample in a batch sets the step: its error is controlled too."""
    rates = torch.tensor([[1.0], [1.0], [1.0], [40.0]], dtype=torch.float64)

    def v(x: torch.Tensor, t: float) -> torch.Tensor:
        return -rates * x

    x0 = torch.ones(4, 3, dtype=torch.float64)
    out = integrate(v, x0, 0, "dopri5", atol=1e-6, rtol=1e-6)
    exact = torch.exp(-rates * (1 - 1e-4)) * x0
    assert (out - exact).abs().max() < 1e-5


def test_dopri5_rejects_bad_tolerances_and_shift() -> None:
    x0 = torch.ones(1, 2)
    with pytest.raises(ValueError, match="atol"):
        integrate(linear_velocity, x0, 0, "dopri5", atol=0.0)
    with pytest.raises(ValueError, match="time_shift"):
        integrate(linear_velocity, x0, 0, "dopri5", time_shift=3.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        integrate(linear_velocity, x0, 0, "dopri5", atol=1e-12, rtol=0.0, max_steps=3)


@pytest.mark.parametrize(
    "method, steps, nfe", [("euler", 7, 7), ("heun", 7, 14), ("sde", 7, 7), ("euler", 1, 1)]
)
def test_fixed_step_nfe(method: str, steps: int, nfe: int) -> None:
    s = SolverStats()
    integrate(linear_velocity, torch.ones(2, 2), steps, method, stats=s)
    integrate(linear_velocity, torch.ones(2, 2), steps, method, stats=s)
    assert (s.nfe, s.steps, s.calls, s.rejected) == (2 * nfe, 2 * steps, 2, 0)
    assert s.nfe_per_call == nfe


def test_time_grid_shift() -> None:
    uniform = time_grid(4)
    assert uniform == pytest.approx([1e-4 + (1 - 1e-4) * k / 4 for k in range(5)])
    for shift in (0.5, 3.0):
        ts = time_grid(10, shift=shift)
        assert ts[0] == 1e-4 and ts[-1] == 1.0 and ts == sorted(ts)
        # diffusers' FlowMatchEulerDiscreteScheduler: sigma' = s sigma / (1 + (s - 1) sigma)
        for k, t in enumerate(ts):
            sigma = 1 - k / 10
            ref = 1 - shift * sigma / (1 + (shift - 1) * sigma)
            assert t == pytest.approx(1e-4 + (1 - 1e-4) * ref, abs=1e-12)
    # shift > 1 puts more steps near the noise (t = 0): the first step is shorter
    assert time_grid(10, shift=3.0)[1] < uniform[1] / 2 < time_grid(10, shift=0.5)[1]
    assert time_grid(10, shift=1.0) == time_grid(10)
    with pytest.raises(ValueError, match="shift"):
        time_grid(10, shift=0.0)


def test_resolution_shift() -> None:
    assert resolution_shift(64, 64) == 1.0
    assert resolution_shift(256, 64) == pytest.approx(2.0)
    assert resolution_shift(1024 * 1024, 256 * 256, base_shift=1.5) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        resolution_shift(0, 64)


def test_shifted_grid_euler_converges_on_gmm() -> None:
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4000, 2, generator=g)
    fine = integrate(gmm_velocity, x0, 400, "euler")
    errs = [
        (integrate(gmm_velocity, x0, n, "euler", time_shift=3.0) - fine).abs().mean().item()
        for n in (10, 40)
    ]
    assert errs[1] < errs[0] / 2.5, errs  # first order: 4x the steps, ~4x smaller error


def test_sample_dopri5_cfg_chunked_nested() -> None:
    """dopri5 through `sample`: CFG's exact guided mean, chunking-invariance, nested context."""
    model = GaussianClassModel()
    labels = torch.tensor([0, 1])
    outs, stats = [], []
    for chunk in (100, 10**6):
        s = SolverStats()
        outs.append(
            sample(
                model,
                None,
                torch.zeros(2000, 1),
                0,
                "dopri5",
                cfg_scale=2.0,
                labels=labels,
                generator=torch.Generator().manual_seed(0),
                chunk_size=chunk,
                context_index=torch.arange(0, 2000, 2),
                atol=1e-4,
                rtol=1e-4,
                stats=s,
                progress=False,
            )
        )
        stats.append(s)
    torch.testing.assert_close(outs[0], outs[1])
    assert stats[0].nfe == stats[1].nfe > 0
    for i in range(2):
        assert torch.allclose(outs[0][i].mean(0), 2.0 * model.MU[labels[i]], atol=0.1)
    assert model.encode_batches == [4] * (stats[0].nfe + stats[1].nfe)  # one 2B forward per NFE


# any-resolution sampling: queries joining a training-resolution context late
# ------------------------------------------------------------------------------------------------


class ContextDrivenModel(nn.Module):
    """Every point moves with the velocity ``(C - mean(context)) / (1 - t)``, which takes the
    context's mean to ``C`` at t = 1: a decoder that ignores its query's own value, as trained
    decoders nearly do late in the trajectory. Under Euler every point keeps its offset from the
    context mean, so the outputs are known in closed form: a point that starts from its own
    noise ``z`` ends at ``C + z - mean(z_context)``."""

    C = 0.25

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            value_dim=1, coord_dim=2, coords_are_values=False, num_classes=0
        )
        self.dummy = nn.Parameter(torch.zeros(()))
        self.decoded: list[int] = []  # query points per decoder call

    def encode(self, coords, values, t, labels=None, cond=None, force_drop=None):
        return SimpleNamespace(t=t, mean=values.double().mean(1, keepdim=True))

    def decode(self, enc, coords, values, chunk_size=None):
        self.decoded.append(values.shape[1])
        v = (self.C - enc.mean) / (1 - enc.t.double()[:, None, None])
        return v.expand(values.shape).float()


class ExactImageModel(ContextDrivenModel):
    """Data is one smooth image ``f``: the exact velocity ``(f(coords) - x) / (1 - t)``, whose
    Euler integration lands on ``f`` exactly at every query, whatever the query's start."""

    @staticmethod
    def f(coords: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * coords[..., :1]) * torch.cos(2 * coords[..., 1:])

    def decode(self, enc, coords, values, chunk_size=None):
        t = enc.t.double()[:, None, None]
        return ((self.f(coords.double()) - values.double()) / (1 - t)).float()


@pytest.mark.parametrize("join_time", [None, 0.0, 0.5, 0.9])
def test_late_join_at_4x_gives_closed_form_image(join_time: float | None) -> None:
    model = ExactImageModel()
    ctx, fine = grid_coords((8, 8)), grid_coords((32, 32))
    out = sample(
        model,
        ctx,
        fine,
        20,
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
        query_init=grid_interpolator((8, 8), (32, 32)),
        join_time=join_time,
        progress=False,
    )
    assert out.shape == (2, 32 * 32, 1)
    expected = model.f(fine).expand(2, -1, -1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("join_time", [None, 0.0, 0.6])
def test_late_join_queries_follow_the_context_without_own_noise(join_time) -> None:
    """With a decoder that ignores its query's value, queries that start from their own noise
    keep it (the speckle of the paper's scheme), while late-joining queries end exactly at the
    interpolation of the context's final state."""
    model = ContextDrivenModel()
    ctx, fine = grid_coords((8, 8)), grid_coords((32, 32))
    steps, g = 10, torch.Generator().manual_seed(1)
    z_ctx = torch.randn(3, 64, 1, generator=g, dtype=torch.float64).float()
    z_fine = torch.randn(3, 32 * 32, 1, generator=g, dtype=torch.float64).float()
    up = grid_interpolator((8, 8), (32, 32))
    ctx_final = sample(model, None, ctx, steps, noise=z_ctx, progress=False)
    expected_ctx = model.C + z_ctx - z_ctx.mean(1, keepdim=True)
    torch.testing.assert_close(ctx_final, expected_ctx, rtol=0, atol=1e-5)

    model.decoded.clear()
    joined = sample(
        model,
        ctx,
        fine,
        steps,
        context_noise=z_ctx,
        query_init=up,
        join_time=join_time,
        progress=False,
    )
    torch.testing.assert_close(joined, up(ctx_final), rtol=0, atol=1e-5)
    # the fine grid is decoded only from the join on: one pass per remaining step
    k = steps - 1 if join_time is None else round(join_time * steps)
    assert model.decoded == [64] * k + [64 + 32 * 32] * (steps - k)

    noisy = sample(
        model,
        ctx,
        fine,
        steps,
        noise=z_fine,
        context_noise=z_ctx,
        progress=False,
    )
    expected_noisy = model.C + z_fine - z_ctx.mean(1, keepdim=True)
    torch.testing.assert_close(noisy, expected_noisy, rtol=0, atol=1e-5)
    assert (noisy - up(ctx_final)).std() > 0.9  # every query kept its own unit noise


def test_grid_interpolator_matches_pixel_centre_grids() -> None:
    """A field linear in the coordinates, sampled at 8x8 pixel centres, is reproduced at the
    32x32 pixel centres away from the border half-cell, where interpolation clamps (a shifted
    grid convention would miss by ~0.01-0.02); nearest copies each coarse cell to its block."""
    coarse, fine = grid_coords((8, 8)), grid_coords((32, 32))

    def field(c: torch.Tensor) -> torch.Tensor:
        return (0.7 * c[..., :1] - 1.3 * c[..., 1:] + 0.2).unsqueeze(0)

    inner = ((fine - 0.5).abs() <= 0.5 - 1 / 16 + 1e-6).all(-1)  # half a coarse cell in
    got = grid_interpolator((8, 8), (32, 32))(field(coarse))
    torch.testing.assert_close(got[0, inner], field(fine)[0, inner], rtol=0, atol=1e-5)
    # torch's bicubic (Keys, a = -0.75) keeps constants and follows linear fields closely
    cubic = grid_interpolator((8, 8), (32, 32), "cubic")
    torch.testing.assert_close(cubic(torch.full((1, 64, 1), 0.3)), torch.full((1, 1024, 1), 0.3))
    inner = ((fine - 0.5).abs() <= 0.5 - 2 / 8 + 1e-6).all(-1)  # the 4-cell stencil in
    assert (cubic(field(coarse)) - field(fine))[0, inner].abs().max() < 0.015
    got = grid_interpolator((8, 8), (32, 32), "nearest")(field(coarse))
    blocks = field(coarse).reshape(8, 1, 8, 1).expand(8, 4, 8, 4).reshape(1, -1, 1)
    torch.testing.assert_close(got, blocks)
    one_d = grid_interpolator((4,), (8,))(torch.arange(4.0).reshape(1, 4, 1))
    torch.testing.assert_close(one_d[0, 1:-1, 0], torch.arange(6.0) * 0.5 + 0.25)
    with pytest.raises(ValueError, match="cubic"):
        grid_interpolator((4, 4, 4), (8, 8, 8), "cubic")
    with pytest.raises(ValueError, match="expected 64"):
        grid_interpolator((8, 8), (16, 16))(torch.zeros(1, 63, 1))


def test_late_join_needs_a_separate_context() -> None:
    model, fine = ExactImageModel(), grid_coords((16, 16))
    up = grid_interpolator((8, 8), (16, 16))
    with pytest.raises(ValueError, match="separate context"):
        sample(model, None, fine, 4, query_init=up, progress=False)
    idx = nested_grid_index((8, 8), 2)
    with pytest.raises(ValueError, match="separate context"):
        sample(model, fine[idx], fine, 4, context_index=idx, query_init=up, progress=False)
    with pytest.raises(ValueError, match="join_time"):
        sample(model, grid_coords((8, 8)), fine, 4, query_init=up, join_time=1.0, progress=False)


def test_integrate_over_explicit_times_splits_a_run() -> None:
    """Integrating two pieces of a time grid equals integrating the whole grid."""
    x0 = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    times = time_grid(12)
    whole = integrate(gmm_velocity, x0, 12, "heun")
    half = integrate(gmm_velocity, x0, 0, "heun", times=times[:5])
    split = integrate(gmm_velocity, half, 0, "heun", times=times[4:])
    torch.testing.assert_close(split, whole)
    with pytest.raises(ValueError, match="increasing"):
        integrate(gmm_velocity, x0, 0, times=[0.5, 0.2])


def test_dopri5_over_pieces_of_the_interval() -> None:
    """Late-joining queries split the integration at a grid time: dopri5 integrates each piece
    from its first to exactly its last time, and the pieces compose to the whole solve."""
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kw = dict(atol=1e-9, rtol=1e-9)
    half = integrate(linear_velocity, x0, 0, "dopri5", times=[1e-4, 0.5], **kw)
    whole = integrate(linear_velocity, half, 0, "dopri5", times=[0.5, 1.0], **kw)
    exact_half = x0 @ torch.linalg.matrix_exp(LIN_M * (0.5 - 1e-4)).T
    torch.testing.assert_close(half, exact_half, atol=1e-7, rtol=0)
    torch.testing.assert_close(whole, linear_exact(x0, 1e-4), atol=1e-7, rtol=0)


def test_sample_counts_a_late_join_as_one_call() -> None:
    model = GaussianClassModel()
    stats = SolverStats()
    ctx = torch.zeros(50, 1)
    sample(
        model,
        ctx,
        torch.zeros(200, 1),
        10,
        "heun",
        labels=torch.tensor([0]),
        query_init=lambda c: c.repeat(1, 4, 1),
        stats=stats,
        progress=False,
    )
    assert (stats.calls, stats.nfe, stats.steps) == (1, 20, 10)
