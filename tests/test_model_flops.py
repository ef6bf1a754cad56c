"""Work of the folded-key local encoder (the key projection folded into the latent queries) vs
the unfolded one, counted with ``FlopCounterMode`` on the meta device (shapes only, so XL at
256x256 costs no compute).

How we count: ``FlopCounterMode`` counts the matmul-class aten ops (``mm``, ``addmm``, ``bmm``,
SDPA); both forms run with the reference ops backend. ``grouped_cross_attention`` is one op
whose reference implementation is made of element-wise and ``index_add`` ops that the counter does
not see, so every call is charged analytically ``2 T Hq (D + Dv)`` FLOPs (the score dot products
and the weighted sum, one multiply-add each) and we check that the counter itself saw nothing
inside the call. Element-wise work (LayerNorm, SiLU, sin/cos, softmax) is counted in neither form;
it is O(H) per token in both and does not change the conclusion.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import inrflow.model.encoder as encoder_module
from inrflow import ops
from inrflow.model import build_model, grid_coords


def encoder_flops(size: str, form: str, res: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    with torch.device("meta"):
        model = build_model(size, encoder_form=form)
    coords = grid_coords((res, res), device="meta")[None]
    values = torch.empty(1, res * res, 3, device="meta")
    charged = {"attention": 0, "seen_inside": 0}
    real = ops.grouped_cross_attention

    def counted(q, k, v, offsets, scale=None, **kw):
        charged["attention"] += 2 * k.shape[0] * q.shape[1] * (q.shape[2] + v.shape[2])
        before = counter.get_total_flops()
        out = real(q, k, v, offsets, scale, **kw)
        charged["seen_inside"] += counter.get_total_flops() - before
        return out

    monkeypatch.setattr(encoder_module.ops, "grouped_cross_attention", counted)
    with ops.use_backend("reference"), FlopCounterMode(display=False) as counter:
        latents, _ = model.encoder(coords, values, None, model.grouping)
    monkeypatch.setattr(encoder_module.ops, "grouped_cross_attention", real)
    assert latents.shape == (1, 1024, model.config.hidden)
    return {"matmul": counter.get_total_flops(), **charged}


def test_folded_encoder_costs_a_tenth_of_unfolded_xl_256(monkeypatch) -> None:
    folded = encoder_flops("XL", "folded", 256, monkeypatch)
    unfolded = encoder_flops("XL", "unfolded", 256, monkeypatch)
    assert folded["seen_inside"] == 0 and unfolded["seen_inside"] == 0  # no double counting
    total_f = folded["matmul"] + folded["attention"]
    total_u = unfolded["matmul"] + unfolded["attention"]
    ratio = total_f / total_u
    print(
        f"\nXL encoder at 256x256: folded {total_f / 1e9:.1f} GFLOP, unfolded "
        f"{total_u / 1e9:.1f} GFLOP, ratio {ratio:.4f}"
    )
    # the unfolded K/V projections alone are 2 * 65536 * 1152^2 * 2 FLOPs
    assert total_u > 2 * 65536 * 1152**2 * 2
    assert ratio <= 0.1
