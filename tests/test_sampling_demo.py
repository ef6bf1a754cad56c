"""Samplers and likelihoods on a briefly trained digits demo model (the demo's preset, trained
on all but the last 297 digits, which are held out).

The model is trained in-process for a few hundred steps: enough for real digits to be far more
likely than noise, and for a velocity field whose trajectories the solvers must agree on.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import train

from inrflow.checkpoints import load_ema_model
from inrflow.data.demo import DigitsDataset
from inrflow.model import grid_coords
from inrflow.sampling import SolverStats, bits_per_dim, log_likelihood, sample
from inrflow.train.config import PRESETS, TrainConfig

HELD_OUT = 297


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_demo")
    fields = {**PRESETS["digits"], "out": str(out), "steps": 250, "ckpt_every": 0}
    fields.update(sample_every=0, final_samples=0, log_every=100)
    ds = DigitsDataset()
    ds.values, ds.labels = ds.values[:-HELD_OUT], ds.labels[:-HELD_OUT]
    train(TrainConfig(**fields), ds)
    model, _, _ = load_ema_model(out)
    return model


def test_fine_step_euler_converges_to_the_dopri5_solution_on_the_demo_model(demo_model) -> None:
    """With guidance, chunked decoding and a nested context: Euler with 200 and 400 steps
    approaches the tight-tolerance dopri5 solution at first order (the error halves), and
    Richardson's extrapolation of the two lands on it."""
    coords = grid_coords((8, 8))
    labels = torch.arange(4) % 10
    noise = torch.randn(4, 64, 1, generator=torch.Generator().manual_seed(0))
    kw = dict(
        labels=labels,
        cfg_scale=3.0,
        noise=noise,
        progress=False,
        chunk_size=64,
        context_index=torch.arange(0, 64, 2),
    )
    stats = SolverStats()
    exact = sample(demo_model, None, coords, 0, "dopri5", atol=1e-6, rtol=1e-6, stats=stats, **kw)
    e200, e400 = (sample(demo_model, None, coords, n, "euler", **kw) for n in (200, 400))
    err200, err400 = ((e - exact).abs().max().item() for e in (e200, e400))
    assert 1.6 < err200 / err400 < 2.5, (err200, err400)
    rich = (2 * e400 - e200 - exact).abs().max().item()
    assert rich < err400 / 3, (rich, err400)
    loose = SolverStats()
    sample(demo_model, None, coords, 0, "dopri5", atol=1e-2, rtol=1e-2, stats=loose, **kw)
    assert 0 < loose.nfe < stats.nfe


def test_held_out_digits_are_more_likely_than_noise(demo_model) -> None:
    real = DigitsDataset()
    x = real.values[-HELD_OUT:][::50]  # 6 held-out digits
    labels = real.labels[-HELD_OUT:][::50]
    g = torch.Generator().manual_seed(0)
    noise_images = {
        "uniform": torch.rand(x.shape, generator=g) * 2 - 1,
        "shuffled pixels": x[:, torch.randperm(64, generator=g)],
    }
    coords = grid_coords((8, 8))
    kw = dict(method="heun", steps=5)

    def bpd(v: torch.Tensor) -> torch.Tensor:
        return bits_per_dim(log_likelihood(demo_model, coords, v, labels, **kw), 64)

    real_bpd = bpd(x)
    assert torch.isfinite(real_bpd).all()
    for name, v in noise_images.items():
        other = bpd(v)
        assert real_bpd.mean() < other.mean() - 0.5, (name, real_bpd, other)
    # Hutchinson's estimate with a few probes agrees with the exact divergence on average
    est = bits_per_dim(
        log_likelihood(demo_model, coords, x, labels, hutchinson=4, generator=g, **kw), 64
    )
    assert abs(est.mean().item() - real_bpd.mean().item()) < 0.1, (est, real_bpd)
    assert math.isfinite(est.mean().item())
