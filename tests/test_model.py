"""INRFlow model: presets and parameter counts, meta-device build, the folded-key encoder, the
encoders and pseudo-coordinates, conditioning, chunked decoding, backends and input errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from inrflow import ops
from inrflow.model import (
    PAPER_PARAMS_M,
    INRFlow,
    build_model,
    count_parameters,
    get_config,
    grid_coords,
    hash_assign,
    kmeans_pp,
    preset_names,
)
from inrflow.model.config import balanced_factors

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter a random value (the zero-initialised gates and output included), so
    comparisons exercise every path instead of comparing zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def image_batch(b: int = 2, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords((n, n)).expand(b, -1, -1).contiguous()
    values = torch.randn(b, n * n, 3, generator=g)
    t = torch.rand(b, generator=g)
    return coords, values, t


# ------------------------------------------------------------------------------------------------
# presets and parameter counts
# ------------------------------------------------------------------------------------------------


def test_balanced_factors() -> None:
    assert balanced_factors(1024, 2) == (32, 32)
    assert balanced_factors(1024, 3) == (16, 8, 8)
    assert balanced_factors(64, 3) == (4, 4, 4)
    assert math.prod(balanced_factors(1000, 3)) == 1000


@pytest.mark.parametrize("num_classes", [0, 1000])
@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
def test_image_presets_match_paper_counts(size: str, num_classes: int) -> None:
    with torch.device("meta"):
        model = build_model(size, num_classes=num_classes)
    counted = count_parameters(model) / 1e6
    paper = PAPER_PARAMS_M[("image", size)]
    assert abs(counted / paper - 1) <= 0.06, f"{size}: {counted:.1f}M vs paper {paper}M"


def test_every_preset_builds_on_meta() -> None:
    for domain in ("image", "pointcloud", "protein"):
        for size in preset_names(domain):
            with torch.device("meta"):
                model = build_model(size, domain)
            assert all(p.is_meta for p in model.parameters())
            assert count_parameters(model) > 0


def test_preset_shapes_follow_the_paper() -> None:
    shapes = {
        "S": (12, 384, 6, 1),
        "B": (12, 768, 12, 1),
        "L": (24, 1024, 16, 1),
        "XL": (28, 1152, 16, 2),
    }
    for size, shape in shapes.items():
        cfg = get_config(size)
        assert (cfg.depth, cfg.hidden, cfg.heads, cfg.decoder_layers) == shape
        assert cfg.num_latents == 1024 and cfg.mlp_ratio == 4
    assert get_config("XL").rope and not get_config("L").rope
    pc = {"B": (9, 512, 4, 1), "L": (12, 512, 4, 1), "XL": (28, 1152, 16, 1)}
    for size, shape in pc.items():
        cfg = get_config(size, "pointcloud")
        assert (cfg.depth, cfg.hidden, cfg.heads, cfg.decoder_layers) == shape
        assert (cfg.coord_dim, cfg.value_dim) == (3, 3)


def test_unknown_preset_and_override_errors() -> None:
    with pytest.raises(ValueError, match="size"):
        build_model("M")
    with pytest.raises(ValueError, match="domain"):
        build_model("S", "video")
    with pytest.raises(TypeError, match="unknown"):
        build_model("tiny", hiddn=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("tiny", hidden=66)
    with pytest.raises(ValueError, match="rope"):
        build_model("tiny", encoder="perceiver", rope=True)


def test_meta_build_then_materialise() -> None:
    with torch.device("meta"):
        model = build_model("tiny", pseudo_coords="kmeans++", num_classes=3)
    model.to_empty(device="cpu")
    model.init_weights()
    ref = build_model("tiny", pseudo_coords="kmeans++", num_classes=3)
    # buffers (frequencies, pseudo-coordinates) are functions of the config
    for (name, a), (_, b) in zip(model.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    coords, values, t = image_batch()
    out = model(coords, values, t, coords, values, labels=torch.tensor([0, 3]))
    assert out.shape == values.shape and torch.count_nonzero(out) == 0


# ------------------------------------------------------------------------------------------------
# forward behaviour
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["local", "linear", "perceiver"])
@pytest.mark.parametrize("pseudo", ["grid", "random", "kmeans++", "hash"])
def test_encoders_run_and_train(encoder: str, pseudo: str) -> None:
    model = build_model("tiny", encoder=encoder, pseudo_coords=pseudo, lloyd_steps=1)
    coords, values, t = image_batch()
    out = model(coords, values, t, coords[:, :37], values[:, :37])
    assert out.shape == (2, 37, 3)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    randomize(model)
    out = model(coords, values, t, coords[:, :37], values[:, :37])
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_local_encoder_accepts_any_context() -> None:
    """Any resolution, random subsets, any number of points, empty groups."""
    model = randomize(build_model("tiny"))
    for n in (4, 7, 16, 40):
        coords = grid_coords((n, n))[None]
        values = torch.randn(1, n * n, 3)
        out = model(coords, values, torch.tensor([0.5]), coords[:, :5], values[:, :5])
        assert torch.isfinite(out).all()
    pts = torch.rand(3, 11, 2)  # 11 random points for 64 latents: mostly empty groups
    out = model(pts, torch.randn(3, 11, 3), torch.rand(3), pts, torch.randn(3, 11, 3))
    assert out.shape == (3, 11, 3) and torch.isfinite(out).all()


def folded_pair(**overrides) -> tuple[INRFlow, INRFlow]:
    folded = randomize(build_model("tiny", encoder_form="folded", **overrides), seed=3)
    unfolded = build_model("tiny", encoder_form="unfolded", **overrides)
    unfolded.load_state_dict(folded.state_dict())
    return folded, unfolded


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(pseudo_coords="kmeans++"),
        dict(pseudo_coords="hash"),
        dict(hidden=96, heads=4, encoder_heads=8, num_latents=16),
    ],
)
def test_folded_encoder_equals_unfolded(overrides: dict) -> None:
    folded, unfolded = folded_pair(**overrides)
    g = torch.Generator().manual_seed(5)
    coords = torch.rand(3, 200, 2, generator=g)  # irregular points; some groups empty
    values = torch.randn(3, 200, 3, generator=g)
    t = torch.rand(3, generator=g)
    lat_f, _ = folded.encoder(coords, values, None, folded.grouping)
    lat_u, _ = unfolded.encoder(coords, values, None, unfolded.grouping)
    err = (lat_f - lat_u).abs().max() / lat_u.abs().max()
    assert err < 1e-5, f"relative error {err:.2e}"
    out_f = folded(coords, values, t, coords, values)
    out_u = unfolded(coords, values, t, coords, values)
    assert (out_f - out_u).abs().max() / out_u.abs().max() < 1e-5
    # gradients agree too (the folded form trains the same function)
    out_f.square().mean().backward()
    out_u.square().mean().backward()
    for (name, p_f), (_, p_u) in zip(
        folded.named_parameters(), unfolded.named_parameters(), strict=True
    ):
        err = (p_f.grad - p_u.grad).abs().max() / p_u.grad.abs().max().clamp_min(1e-12)
        assert err < 1e-4, f"{name}: gradient relative error {err:.2e}"


def test_folded_is_the_default() -> None:
    assert get_config("XL").encoder_form == "folded"


def test_decode_chunks_equal_one_pass() -> None:
    model = randomize(build_model("tiny", num_classes=4))
    coords, values, t = image_batch()
    labels = torch.tensor([1, 2])
    enc = model.encode(coords, values, t, labels)
    whole = model.decode(enc, coords, values)
    chunked = model.decode(enc, coords, values, chunk_size=37)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(whole, model(coords, values, t, coords, values, labels=labels))


def test_queries_are_independent() -> None:
    """A query's velocity does not depend on the other queries (point-wise decoder)."""
    model = randomize(build_model("tiny"))
    coords, values, t = image_batch()
    full = model(coords, values, t, coords, values)
    some = model(coords, values, t, coords[:, 10:20], values[:, 10:20])
    torch.testing.assert_close(full[:, 10:20], some, rtol=1e-5, atol=1e-6)


def test_label_dropout_and_null_class() -> None:
    model = randomize(build_model("tiny", num_classes=5))
    coords, values, t = image_batch()
    labels = torch.tensor([1, 3])
    null = torch.full((2,), 5)
    model.eval()
    cond = model(coords, values, t, coords, values, labels=labels)
    uncond = model(coords, values, t, coords, values, labels=null)
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(model(coords, values, t, coords, values), uncond)  # no labels
    forced = model(
        coords, values, t, coords, values, labels=labels, force_drop=torch.tensor([True, False])
    )
    torch.testing.assert_close(forced[0], uncond[0])
    torch.testing.assert_close(forced[1], cond[1])
    model.train()  # the training data's draws drop labels (force_drop), never the model itself
    torch.testing.assert_close(model(coords, values, t, coords, values, labels=labels), cond)


def test_stored_configs_of_older_versions_load() -> None:
    """Manifests and exports written while the model had its own label dropout still load."""
    from inrflow.model import INRFlowConfig

    config = build_model("tiny", num_classes=5).config
    stored = {**dataclasses.asdict(config), "class_dropout": 0.1, "cond_dropout": 0.0}
    stored = json.loads(json.dumps(stored))  # tuples become lists, as in a JSON file
    assert INRFlowConfig.from_dict(stored) == config


def test_condition_tokens() -> None:
    model = randomize(build_model("tiny", cond_dim=12))
    model.eval()
    coords, values, t = image_batch()
    cond = torch.randn(2, 5, 12)
    a = model(coords, values, t, coords, values, cond=cond)
    b = model(coords, values, t, coords, values, cond=cond.flip(0))
    assert not torch.allclose(a, b)  # the tokens matter
    null = model(coords, values, t, coords, values)
    dropped = model(
        coords, values, t, coords, values, cond=cond, force_drop=torch.tensor([True, True])
    )
    torch.testing.assert_close(null, dropped)


def test_rope_changes_trunk_and_keeps_shapes() -> None:
    on = randomize(build_model("tiny", rope=True), seed=1)
    off = build_model("tiny", rope=False)
    off.load_state_dict(on.state_dict())
    coords, values, t = image_batch()
    a, b = on(coords, values, t, coords, values), off(coords, values, t, coords, values)
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_pointcloud_model_uses_values_as_coordinates() -> None:
    model = randomize(build_model("tiny", "pointcloud"))
    x = torch.randn(2, 100, 3)
    t = torch.rand(2)
    a = model(None, x, t, None, x[:, :20])
    b = model(torch.zeros_like(x), x, t, torch.ones(2, 20, 3), x[:, :20])  # coords ignored
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------
# pseudo-coordinates
# ------------------------------------------------------------------------------------------------


def test_pseudo_coordinates_are_deterministic() -> None:
    for kind in ("random", "kmeans++"):
        a = build_model("tiny", pseudo_coords=kind, pseudo_seed=4).grouping.centers
        b = build_model("tiny", pseudo_coords=kind, pseudo_seed=4).grouping.centers
        c = build_model("tiny", pseudo_coords=kind, pseudo_seed=5).grouping.centers
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)
        assert a.shape == (64, 2) and a.min() >= 0 and a.max() <= 1


def test_kmeans_pp_spreads_centres() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(4000, 2, generator=g)
    centres = kmeans_pp(pts, 16, seed=0, lloyd_steps=5)
    counts = torch.bincount(ops.nearest_assign(pts, centres), minlength=16)
    assert counts.min() > 0.3 * counts.float().mean()  # balanced, unlike random centres
    d = torch.cdist(centres, centres) + torch.eye(16) * 9
    assert d.min() > 0.08


def test_grid_grouping_matches_nearest_centre() -> None:
    model = build_model("tiny")
    pts = torch.rand(1, 500, 2)
    idx, rel = model.grouping.assign(pts)
    torch.testing.assert_close(idx, ops.nearest_assign(pts, model.grouping.centers))
    assert rel.abs().max() <= 0.5 + 1e-5  # within-cell position, in cell units


def test_hash_assign_keeps_voxels_together() -> None:
    pts = torch.rand(2000, 3) * 2 - 1
    idx, centre = hash_assign(pts, 8, 64, -1.0, 1.0)
    assert idx.min() >= 0 and idx.max() < 64
    vox = torch.floor((pts + 1) / 0.25).long()
    key = vox[:, 0] * 64 + vox[:, 1] * 8 + vox[:, 2]
    for k in key.unique()[:50]:
        assert idx[key == k].unique().numel() == 1
    assert ((pts - centre).abs() <= 0.125 + 1e-6).all()
    assert torch.bincount(idx, minlength=64).count_nonzero() > 40  # spread over the buckets


# ------------------------------------------------------------------------------------------------
# backends and input errors
# ------------------------------------------------------------------------------------------------


def test_model_matches_across_backends() -> None:
    model = randomize(build_model("tiny", num_classes=3), seed=2)
    model.eval()
    coords, values, t = image_batch(seed=1)
    labels = torch.tensor([0, 2])
    with ops.use_backend("reference"):
        ref = model(coords, values, t, coords, values, labels=labels)
    with ops.use_backend("auto"):
        auto = model(coords, values, t, coords, values, labels=labels)
    torch.testing.assert_close(auto, ref, rtol=1e-4, atol=1e-5)
    if ops.extension_available():
        for op in (
            "fourier_embed",
            "grouped_cross_attention",
            "nearest_assign",
            "grid_assign",
            "group_layout",
        ):
            if not ops.extension_available("cpu", op):
                return  # the rest of the extension is not built yet
        with ops.use_backend("extension"):
            ext = model(coords, values, t, coords, values, labels=labels)
        torch.testing.assert_close(ext, ref, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_clear_errors() -> None:
    model = build_model("tiny", num_classes=3)
    coords, values, t = image_batch()
    with pytest.raises(ValueError, match="coord_dim=2"):
        model(torch.rand(2, 256, 3), values, t, coords, values)
    with pytest.raises(ValueError, match="value_dim=3"):
        model(coords, values[..., :2], t, coords, values)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        model(coords[:, :10], values, t, coords, values)
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        model(coords[0], values, t, coords, values)
    with pytest.raises(TypeError, match="floating"):
        model(coords.long(), values, t, coords, values)
    with pytest.raises(ValueError, match="t must"):
        model(coords, values, torch.rand(3), coords, values)
    with pytest.raises(ValueError, match="labels must lie"):
        model(coords, values, t, coords, values, labels=torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="integer"):
        model(coords, values, t, coords, values, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="batch"):
        model(coords, values, t, coords[:1], values[:1])
    with pytest.raises(ValueError, match="cond_dim=0"):
        model(coords, values, t, coords, values, cond=torch.randn(2, 4, 8))
    plain = build_model("tiny")
    with pytest.raises(ValueError, match="num_classes=0"):
        plain(coords, values, t, coords, values, labels=torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------
# precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["local", "linear", "perceiver"])
def test_bfloat16_model_and_autocast(encoder: str) -> None:
    ref = randomize(build_model("tiny", encoder=encoder), seed=4)
    coords, values, t = image_batch()
    expected = ref(coords, values, t, coords, values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = ref(coords, values, t, coords, values)
    half = build_model("tiny", encoder=encoder)
    half.load_state_dict(ref.state_dict())
    half = half.to(torch.bfloat16)
    # buffers that define the function stay exact
    assert half.query_pos.freqs.dtype == torch.float32
    torch.testing.assert_close(half.query_pos.freqs, ref.query_pos.freqs)
    if half.grouping is not None:
        assert half.grouping.centers.dtype == torch.float32
    out = half(coords, values, t, coords, values)  # fp32 coordinates and values are fine
    assert out.dtype == torch.bfloat16
    scale = expected.abs().max()
    assert (amp.float() - expected).abs().max() < 0.1 * scale
    assert (out.float() - expected).abs().max() < 0.1 * scale


@pytest.mark.parametrize(
    "overrides", [dict(), dict(encoder="perceiver", cond_dim=6), dict(trunk_reads_context=True)]
)
def test_adaln_zero_blocks_start_as_identity(overrides: dict) -> None:
    model = build_model("tiny", **overrides)
    for name, m in model.named_modules():
        if type(m).__name__ == "AdaLN":
            assert torch.count_nonzero(m.linear.weight) == 0, name
            assert torch.count_nonzero(m.linear.bias) == 0, name
    x = torch.randn(2, 64, 64)
    c = torch.randn(2, 64)
    memory = torch.randn(2, 5, 64)
    for blk in model.blocks:
        torch.testing.assert_close(blk(x, c, None, memory), x)
