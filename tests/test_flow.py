"""The linear path, time sampling and the CICFM loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inrflow.flow import (
    TIME_EPS,
    FlowDraws,
    cicfm_loss,
    draw,
    interpolate,
    ot_pair_noise,
    sample_time,
    target_velocity,
)
from inrflow.model import build_model, grid_coords


def test_linear_path_endpoints_and_velocity() -> None:
    x0, x1 = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], x1[2])
    torch.testing.assert_close(xt[1], 0.25 * x1[1] + 0.75 * x0[1])
    # d/dt x_t = x1 - x0
    h = 1e-3
    fd = (interpolate(x0, x1, t + h) - interpolate(x0, x1, t)) / h
    torch.testing.assert_close(fd, target_velocity(x0, x1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dist", ["logit_normal", "uniform"])
def test_time_sampling(dist: str) -> None:
    t = sample_time(100_000, dist=dist, generator=torch.Generator().manual_seed(0))
    assert t.min() >= TIME_EPS and t.max() <= 1 - TIME_EPS
    assert abs(t.median().item() - 0.5) < 0.01
    if dist == "uniform":
        assert abs(t.std().item() - (1 / 12) ** 0.5) < 0.01
    else:  # logit(t) ~ N(0, 1)
        logit = torch.logit(t.double())
        assert abs(logit.std().item() - 1.0) < 0.02
    with pytest.raises(ValueError, match="dist"):
        sample_time(3, dist="beta")


class Probe(nn.Module):
    """Records what the loss hands to the model and predicts a fixed velocity of 0."""

    def forward(self, cc, cv, t, qc, qv, labels=None, cond=None):
        self.seen = (cc, cv, t, qc, qv, labels)
        return torch.zeros_like(qv)


def test_cicfm_queries_are_drawn_per_sample_and_match_the_context() -> None:
    b, n, q = 4, 64, 10
    coords = torch.rand(b, n, 2)
    values = torch.randn(b, n, 3)
    t = torch.rand(b)
    noise = torch.randn(b, n, 3)
    probe = Probe()
    draws = FlowDraws(t, noise, query_index=draw(values, num_queries=q).query_index)
    loss = cicfm_loss(probe, coords, values, draws, labels=torch.arange(b))
    cc, cv, _, qc, qv, labels = probe.seen
    xt = interpolate(noise, values, t)
    torch.testing.assert_close(cc, coords)  # the encoder sees the whole noisy context
    torch.testing.assert_close(cv, xt)
    assert qc.shape == (b, q, 2) and qv.shape == (b, q, 3)
    chosen = []
    for i in range(b):  # each query is a context pair with the same noisy value
        idx = torch.cdist(qc[i], coords[i]).argmin(1)
        torch.testing.assert_close(coords[i, idx], qc[i])
        torch.testing.assert_close(xt[i, idx], qv[i])
        assert idx.unique().numel() == q
        chosen.append(set(idx.tolist()))
    assert len({frozenset(s) for s in chosen}) > 1  # independent subsets per sample
    # predicting 0 costs the mean squared target over the queried pairs
    target = values - noise
    expected = (
        torch.stack([target[i, torch.cdist(qc[i], coords[i]).argmin(1)] for i in range(b)])
        .square()
        .mean()
    )
    torch.testing.assert_close(loss, expected)
    assert labels.tolist() == list(range(b))


def test_cicfm_all_queries_and_context_subset() -> None:
    probe = Probe()
    coords, values = torch.rand(2, 30, 2), torch.randn(2, 30, 3)
    cicfm_loss(probe, coords, values, draw(values, num_context=12))
    cc, _, _, qc, _, _ = probe.seen
    assert cc.shape == (2, 12, 2) and qc.shape == (2, 30, 2)
    cicfm_loss(probe, coords, values, draw(values, num_queries=100))  # more than N: all
    assert probe.seen[3].shape == (2, 30, 2)


def test_cicfm_trains_a_model() -> None:
    model = build_model("tiny")
    coords = grid_coords((8, 8)).expand(2, -1, -1)
    values = torch.rand(2, 64, 3) * 2 - 1
    loss = cicfm_loss(model, coords, values, draw(values, num_queries=16))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.final.linear.weight.grad.abs().sum() > 0  # zero-init output still learns


def test_cicfm_point_clouds_take_no_coordinates() -> None:
    model = build_model("tiny", "pointcloud")
    x = torch.randn(2, 50, 3)
    loss = cicfm_loss(model, None, x, draw(x, num_queries=20))
    assert torch.isfinite(loss)


def test_cicfm_input_errors() -> None:
    probe = Probe()
    with pytest.raises(ValueError, match=r"\[B, N, c\]"):
        cicfm_loss(
            probe, torch.rand(5, 2), torch.rand(5, 3), FlowDraws(torch.rand(5), torch.rand(5, 3))
        )
    with pytest.raises(ValueError, match="disagree"):
        values = torch.rand(1, 6, 3)
        cicfm_loss(probe, torch.rand(1, 5, 2), values, draw(values, num_queries=2))
    with pytest.raises(ValueError, match="noise"):
        draws = FlowDraws(torch.rand(1), torch.rand(1, 4, 3))
        cicfm_loss(probe, torch.rand(1, 5, 2), torch.rand(1, 5, 3), draws)


def test_time_location_moves_logit_normal_times_towards_the_data() -> None:
    g = torch.Generator().manual_seed(0)
    t = sample_time(100_000, dist="logit_normal", loc=1.5, generator=g)
    logit = torch.logit(t.double())
    assert abs(logit.mean().item() - 1.5) < 0.02 and abs(logit.std().item() - 1.0) < 0.02
    assert (t > 0.7).float().mean() > 0.6  # loc 0 puts ~20% there


def test_ot_pairing_is_the_optimal_permutation() -> None:
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 256):
        noise, points = torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g) * 2 - 1
        paired = ot_pair_noise(noise, points)
        # a permutation of the noise rows
        order = torch.cdist(paired, noise).argmin(1)
        assert sorted(order.tolist()) == list(range(n))
        torch.testing.assert_close(paired, noise[order])
        # total squared distance: the optimum scipy finds, never above the identity pairing's
        cost = ((paired - points) ** 2).sum().item()
        c = ((points[:, None, :] - noise[None, :, :]) ** 2).sum(-1).double().numpy()
        rows, cols = linear_sum_assignment(c)
        assert cost == pytest.approx(c[rows, cols].sum(), rel=1e-5)
        assert cost <= ((noise - points) ** 2).sum().item() + 1e-6
    with pytest.raises(ValueError, match=r"\[N, c\]"):
        ot_pair_noise(torch.randn(4, 3), torch.randn(5, 3))


def test_per_sample_loss_reduction() -> None:
    model = build_model("tiny", "pointcloud", value_dim=3, num_classes=0)
    g = torch.Generator().manual_seed(0)
    values = torch.rand(3, 32, 3, generator=g) * 2 - 1
    t, noise = torch.tensor([0.2, 0.5, 0.9]), torch.randn(3, 32, 3, generator=g)
    draws = FlowDraws(t, noise)
    mean = cicfm_loss(model, None, values, draws)
    per = cicfm_loss(model, None, values, draws, reduction="per_sample")
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), mean)
    single = cicfm_loss(model, None, values[1:2], FlowDraws(t[1:2], noise[1:2]))
    torch.testing.assert_close(per[1], single, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        cicfm_loss(model, None, values, draws, reduction="sum")
