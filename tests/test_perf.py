"""The authors' composition (``encoder_form="dense"``) computes inrflow's function, and the cost
model of :mod:`inrflow.perf` counts what it says it counts."""

from __future__ import annotations

import pytest
import torch

from inrflow import perf
from inrflow.model import build_model, grid_coords


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_dense_composition_equals_folded_on_a_raster() -> None:
    folded = _randomized(build_model("tiny", encoder_form="folded"), 1)
    dense = build_model("tiny", encoder_form="dense")
    dense.load_state_dict(folded.state_dict())
    g = torch.Generator().manual_seed(2)
    coords = grid_coords((16, 16))[None].expand(2, -1, -1)  # 4 pixels per latent
    values = torch.randn(2, 256, 3, generator=g)
    t = torch.rand(2, generator=g)
    out_f = folded(coords, values, t, coords[:, :50], values[:, :50])
    out_d = dense(coords, values, t, coords[:, :50], values[:, :50])
    torch.testing.assert_close(out_d, out_f, rtol=1e-5, atol=1e-5)
    out_f.square().mean().backward()
    out_d.square().mean().backward()
    for (name, p_f), (_, p_d) in zip(
        folded.named_parameters(), dense.named_parameters(), strict=True
    ):
        err = (p_f.grad - p_d.grad).abs().max() / p_d.grad.abs().max().clamp_min(1e-12)
        assert err < 1e-4, f"{name}: gradient relative error {err:.2e}"


def test_dense_composition_rejects_unequal_groups() -> None:
    model = build_model("tiny", encoder_form="dense")
    pts = torch.rand(1, 256, 2)
    with pytest.raises(ValueError, match="same number of points"):
        model(pts, torch.randn(1, 256, 3), torch.rand(1), pts, torch.randn(1, 256, 3))


def test_costs_differ_only_in_the_encoder() -> None:
    ours = perf.model_costs("S", 64, 1024, "ours")
    authors = perf.model_costs("S", 64, 1024, "authors")
    h, k, n = 384, 1024, 64 * 64
    for part in ("trunk", "decoder", "other"):
        assert ours[part].flops == authors[part].flops
    # authors: K/V projections of every token, 2 * N * H * 2H FLOPs, plus the per-patch SDPA
    assert authors["encoder"].flops >= 2 * n * h * 2 * h
    # ours: the folded grouped attention, charged 2 T Hq (D + Dv) with D = Dv = H, 16 heads
    assert ours["encoder"].flops >= 2 * n * 16 * 2 * h
    assert ours["encoder"].flops < authors["encoder"].flops
    # trunk: 12 blocks of qkv + proj + MLP (12 H^2 per latent) + attention (4 K H per latent)
    trunk = 12 * 2 * k * (12 * h * h + 2 * k * h) + 12 * 2 * 6 * h * h
    assert ours["trunk"].flops == pytest.approx(trunk, rel=0.01)
    assert ours["total"].bytes > 0 and authors["total"].bytes > 0


def test_training_counts_forward_and_backward() -> None:
    fwd = perf.model_costs("tiny", 16, 64, "ours")["total"]
    train = perf.model_costs("tiny", 16, 64, "ours", training=True)["total"]
    assert 2.5 * fwd.flops < train.flops < 3.5 * fwd.flops  # backward ~ 2x forward


def test_kernel_table_and_roofline() -> None:
    costs = perf.kernel_costs("tiny", 16, 64)
    assert {"fourier_embed", "grid_assign", "group_layout", "grouped_cross_attention"} <= set(costs)
    gpu = perf.GPUS["H100"]
    assert perf.roofline_seconds(1e12, 0, gpu) == pytest.approx(1e12 / gpu.bf16_flops)
    assert perf.roofline_seconds(0, 3.35e12, gpu) == pytest.approx(1.0)
    assert "grouped_cross_attention" in perf.kernel_table("tiny", 16, 64)
