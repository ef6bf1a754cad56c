"""Log-likelihoods by the instantaneous change of variables, against closed-form densities.

For the linear path from N(0, I) to data N(mu, s^2 I) the marginal velocity is
``mu + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) (x - t mu)``; for a Gaussian mixture it is
``gmm_velocity`` of test_sampling. Integrated back from t = 1 to 0 the likelihood must be the
data's log-density.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import COVS, MUS, WEIGHTS, GaussianClassModel, gmm_velocity

from inrflow.sampling import SolverStats, bits_per_dim, log_likelihood, ode_log_likelihood

MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
S = 0.5


def gauss_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    mu = MU.to(x.dtype)
    return mu + (t * S * S - (1 - t)) / (t * t * S * S + (1 - t) ** 2) * (x - t * mu)


def gauss_logpdf(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    z = (x - MU) / S
    return -0.5 * (z * z).sum(-1) - d * math.log(S) - 0.5 * d * math.log(2 * math.pi)


def gmm_logpdf(x: torch.Tensor) -> torch.Tensor:
    comps = torch.distributions.MultivariateNormal(MUS, covariance_matrix=COVS)
    return torch.logsumexp(torch.log(WEIGHTS) + comps.log_prob(x[:, None, :]), dim=1)


def draw_gauss(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 3, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("method, steps, tol", [("dopri5", 0, 1e-4), ("heun", 200, 1e-3)])
def test_gaussian_log_density_is_exact(method: str, steps: int, tol: float) -> None:
    x = torch.cat([draw_gauss(16, 0), MU[None] + 3 * S])  # typical points and a far one
    stats = SolverStats()
    ll = ode_log_likelihood(
        gauss_velocity, x, steps, method, t_eps=0.0, atol=1e-7, rtol=1e-7, stats=stats
    )
    torch.testing.assert_close(ll, gauss_logpdf(x), atol=tol, rtol=0)
    assert stats.nfe > 0


def test_gmm_log_density_exact_divergence() -> None:
    g = torch.Generator().manual_seed(1)
    k = torch.multinomial(WEIGHTS, 64, replacement=True, generator=g)
    chol = torch.linalg.cholesky(COVS)[k]
    x = MUS[k] + (chol @ torch.randn(64, 2, 1, dtype=torch.float64, generator=g)).squeeze(-1)
    ll = ode_log_likelihood(gmm_velocity, x, 0, "dopri5", t_eps=0.0, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(ll, gmm_logpdf(x), atol=1e-3, rtol=0)
    # The default start time t_eps = 1e-4 (the samplers') changes it by O(t_eps) only.
    ll_eps = ode_log_likelihood(gmm_velocity, x, 0, "dopri5", atol=1e-7, rtol=1e-7)
    assert (ll_eps - gmm_logpdf(x)).abs().max() < 1e-2


def test_gmm_hutchinson_is_unbiased() -> None:
    x = MUS[torch.arange(48) % 3] + 0.3
    exact = ode_log_likelihood(gmm_velocity, x, 0, "dopri5", t_eps=0.0, atol=1e-6, rtol=1e-6)
    ests = torch.stack(
        [
            ode_log_likelihood(
                gmm_velocity,
                x,
                40,
                "heun",
                t_eps=0.0,
                hutchinson=1,
                generator=torch.Generator().manual_seed(seed),
            )
            for seed in range(12)
        ]
    )
    err = ests - exact
    assert err.abs().max() > 1e-3  # the one-probe estimate does vary...
    assert err.mean().abs() < 0.05  # ...around the exact value (576 draws)
    four = ode_log_likelihood(
        gmm_velocity, x, 40, "heun", t_eps=0.0, hutchinson=4, generator=torch.Generator()
    )
    assert (four - exact).abs().mean() < err.abs().mean()  # more probes, less noise


def test_model_wrapper_matches_the_closed_form() -> None:
    """Class y of the stand-in model has pairs N(mu_y, I) independently per pair."""
    model = GaussianClassModel()
    labels = torch.tensor([0, 1])
    g = torch.Generator().manual_seed(0)
    values = model.MU[labels][:, None, :] + torch.randn(2, 5, 2, generator=g)
    ll = log_likelihood(model, torch.zeros(5, 1), values, labels, t_eps=0.0, atol=1e-7, rtol=1e-7)
    exact = torch.distributions.Normal(model.MU[labels][:, None, :], 1.0).log_prob(values)
    torch.testing.assert_close(ll, exact.sum((1, 2)), atol=1e-3, rtol=0)
    assert model.training  # restored


def test_bits_per_dim_and_errors() -> None:
    ll = torch.tensor([-64 * math.log(2), 0.0])
    torch.testing.assert_close(bits_per_dim(ll, 64), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # 8-bit data in [-1, 1]: the uniform density 2^-64 on [-1, 1]^64 is 8 bits per dimension
    uniform = torch.tensor([-64 * math.log(2.0)])
    assert bits_per_dim(uniform, 64, bin_width=2 / 256).item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(ll, 0)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="likelihood method"):
        ode_log_likelihood(gauss_velocity, x, 10, "sde")
    with pytest.raises(ValueError, match="hutchinson"):
        ode_log_likelihood(gauss_velocity, x, 10, "heun", hutchinson=0)
    with pytest.raises(ValueError, match="values"):
        log_likelihood(GaussianClassModel(), None, x)
