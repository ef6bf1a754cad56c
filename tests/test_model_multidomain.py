"""Multi-domain model: per-domain shapes and gradients, a domain equals a plain INRFlow with the
same weights, state-dict round trip, the trunk's cross-attention kind, and errors."""

from __future__ import annotations

import pytest
import torch
from test_model import randomize

from inrflow.model import INRFlow, MultiDomainINRFlow, domain_state_dict, get_config, grid_coords
from inrflow.model.multidomain import SHARED_FIELDS, shared_trunk_configs

WIDTHS = dict(hidden=64, depth=2, heads=4, encoder_heads=4, time_freq_dim=64)


def configs() -> dict:
    """Three domains of different coordinate/value widths and encoders, one trunk."""
    return {
        # 8x8 greyscale digits: local encoder over a 4x4 grid of latents, 10 classes
        "digits": get_config(
            "tiny", "image", value_dim=1, num_latents=16, num_classes=10, **WIDTHS
        ),
        # point clouds: perceiver encoder, trunk re-reads the points, 7 classes
        "shapes": get_config("tiny", "pointcloud", num_latents=32, num_classes=7, **WIDTHS),
        # proteins: residue latents, RoPE, residue-type table, no labels
        "protein": get_config("tiny", "protein", coord_dim=5, num_latents=8, **WIDTHS),
    }


def batch(cfg, b: int = 2, n: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, n, cfg.value_dim, generator=g)
    if cfg.coords_are_values:
        coords = None
    elif cfg.residue_vocab:
        coords = torch.rand(b, n, cfg.coord_dim, generator=g) * 2 - 1
        coords[..., 0] = torch.rand(b, n, generator=g)
        coords[..., -1] = torch.randint(0, cfg.residue_vocab, (b, n), generator=g).float()
    else:
        coords = grid_coords((8, 8)).expand(b, -1, -1).contiguous()
    labels = torch.randint(0, cfg.num_classes, (b,), generator=g) if cfg.num_classes else None
    return dict(coords=coords, values=values, t=torch.rand(b, generator=g), labels=labels)


def run(model, x: dict, **kw) -> torch.Tensor:
    return model(x["coords"], x["values"], x["t"], x["coords"], x["values"], x["labels"], **kw)


def test_each_domain_gives_its_shape_and_trains() -> None:
    model = randomize(MultiDomainINRFlow(configs()))
    for name, cfg in model.configs.items():
        x = batch(cfg)
        out = run(model, x, domain=name)
        assert out.shape == x["values"].shape
        out.square().mean().backward()
        model.zero_grad(set_to_none=True)


def test_a_domains_step_leaves_the_other_domains_without_gradients() -> None:
    model = randomize(MultiDomainINRFlow(configs()))
    for name, cfg in model.configs.items():
        run(model, batch(cfg), domain=name).square().mean().backward()
        for pname, p in model.named_parameters():
            if pname.startswith("domains.") and not pname.startswith(f"domains.{name}."):
                assert p.grad is None, f"{name} step: {pname} got a gradient"
            elif pname.startswith(f"domains.{name}.") or pname.startswith(("t_embed", "decoder")):
                assert p.grad is not None and p.grad.abs().sum() > 0, (name, pname)
        # the trunk trains on every domain (self-attention and MLP)
        assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        model.zero_grad(set_to_none=True)


def test_the_trunk_reads_context_only_for_the_domains_that_have_it() -> None:
    model = randomize(MultiDomainINRFlow(configs()))
    assert {c.trunk_cross for c in model.configs.values()} == {"full"}  # shapes reads points
    cross = [p for n, p in model.blocks.named_parameters() if ".cross." in n]
    run(model, batch(model.configs["digits"]), domain="digits").sum().backward()
    assert all(p.grad is None for p in cross)  # digits: no memory, cross-attention skipped
    run(model, batch(model.configs["shapes"]), domain="shapes").sum().backward()
    assert all(p.grad is not None for p in cross)


def test_trained_parameters_are_exactly_those_a_step_gives_gradients() -> None:
    """What each domain's optimizer holds: a step of the domain reaches all of them and no
    other (digits skip the trunk's cross-attention, which shapes read)."""
    model = randomize(MultiDomainINRFlow(configs()))
    for name, cfg in model.configs.items():
        run(model, batch(cfg), domain=name).square().mean().backward()
        reached = {n for n, p in model.named_parameters() if p.grad is not None}
        assert model.trained_parameters(name) == reached, name
        model.zero_grad(set_to_none=True)
    assert not any(".cross." in n for n in model.trained_parameters("digits"))
    with pytest.raises(KeyError, match="unknown domain"):
        model.trained_parameters("audio")


def test_a_domain_computes_a_plain_inrflow_with_its_weights() -> None:
    """The reference: a plain INRFlow of the domain's config, its parameters copied by name from
    the shared modules and the domain's parts, the domain embedding added to the time
    embedding's output bias by hand."""
    model = randomize(MultiDomainINRFlow(configs()), seed=3)
    model.eval()
    for name, cfg in model.configs.items():
        plain = INRFlow(cfg).eval()
        with torch.no_grad():
            own = dict(model.domains[name].named_parameters())
            shared = dict(model.named_parameters())
            for pname, p in plain.named_parameters():
                p.copy_(own[pname] if pname in own else shared[pname])
            plain.t_embed.mlp[2].bias += model.domains[name].embedding
        x = batch(cfg, seed=1)
        with torch.no_grad():
            expected = run(plain, x)
            # equal up to rounding: (W h + b) + e there, W h + (b + e) here
            torch.testing.assert_close(run(model, x, domain=name), expected)
            torch.testing.assert_close(run(model.single(name), x), expected, rtol=0, atol=0)
            # encode/decode of the domain view, as the samplers call them
            view = model.domain(name)
            enc = view.encode(x["coords"], x["values"], x["t"], x["labels"])
            got = view.decode(enc, x["coords"], x["values"], chunk_size=7)
            torch.testing.assert_close(got, expected)


def test_the_domain_embedding_changes_the_output() -> None:
    model = randomize(MultiDomainINRFlow(configs())).eval()
    x = batch(model.configs["digits"])
    with torch.no_grad():
        before = run(model, x, domain="digits")
        model.domains["digits"].embedding.add_(1.0)
        assert not torch.allclose(run(model, x, domain="digits"), before)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    a = randomize(MultiDomainINRFlow(configs()), seed=1).eval()
    torch.manual_seed(1)
    b = MultiDomainINRFlow(configs()).eval()
    keys = list(a.state_dict())
    assert any(k.startswith("domains.digits.encoder.") for k in keys)
    assert any(k.startswith("domains.shapes.encoder.") for k in keys)
    assert "domains.protein.embedding" in keys and "blocks.0.attn.qkv.weight" in keys
    b.load_state_dict(a.state_dict())
    for name, cfg in a.configs.items():
        x = batch(cfg, seed=2)
        with torch.no_grad():
            torch.testing.assert_close(run(b, x, domain=name), run(a, x, domain=name))


def test_domain_state_dict_drops_the_other_domains() -> None:
    model = MultiDomainINRFlow(configs())
    sd = domain_state_dict(model.state_dict(), "shapes")
    assert set(sd) == set(INRFlow(model.configs["shapes"]).state_dict())
    expected = model.t_embed.mlp[2].bias + model.domains["shapes"].embedding
    torch.testing.assert_close(sd["t_embed.mlp.2.bias"], expected)
    with pytest.raises(KeyError, match=r"'video'.*digits"):
        domain_state_dict(model.state_dict(), "video")


def test_meta_build_then_materialise() -> None:
    with torch.device("meta"):
        model = MultiDomainINRFlow(configs())
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    for name, cfg in model.configs.items():
        out = run(model, batch(cfg), domain=name)
        assert torch.count_nonzero(out) == 0  # every domain's output layer starts at zero
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("embedding"))


def test_a_single_domain_model_is_the_plain_model() -> None:
    """One domain: the shared trunk is that domain's trunk; only the domain embedding is new."""
    cfg = configs()["digits"]
    model = MultiDomainINRFlow({"digits": cfg})
    plain = INRFlow(cfg)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == cfg.hidden
    assert model.configs["digits"].trunk_cross == "none"


def test_trunk_cross_full_without_memory_is_the_plain_trunk() -> None:
    """A "full" block without memory is a plain DiT block: its adaLN's first six chunks are the
    plain block's, the cross-attention and the last six chunks are unused."""
    cfg = get_config("tiny", "image", num_classes=3)
    plain = randomize(INRFlow(cfg)).eval()
    full = randomize(INRFlow(cfg.replace(trunk_cross="full")), seed=5).eval()
    with torch.no_grad():
        full_params = dict(full.named_parameters())
        for name, p in plain.named_parameters():
            full_params[name][: p.shape[0]].copy_(p)  # adaLN: rows of chunks 0-5
    assert any(".cross." in n for n in full_params)
    coords = grid_coords((8, 8)).expand(2, -1, -1).contiguous()
    values, t = torch.randn(2, 64, 3), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(
            full(coords, values, t, coords, values), plain(coords, values, t, coords, values)
        )


def test_bad_domain_sets_raise_clear_errors() -> None:
    cfgs = configs()
    for field in SHARED_FIELDS[:3]:
        other = dict(
            cfgs, shapes=cfgs["shapes"].replace(**{field: getattr(cfgs["shapes"], field) * 2})
        )
        with pytest.raises(ValueError, match=f"cannot share a trunk.*{field}"):
            shared_trunk_configs(other)
    cond = get_config("tiny", "pointcloud", cond_dim=6, trunk_reads_context=False, **WIDTHS)
    with pytest.raises(ValueError, match=r"full.*plain"):
        MultiDomainINRFlow({"shapes": cfgs["shapes"], "cond": cond})
    with pytest.raises(ValueError, match="at least one"):
        MultiDomainINRFlow({})
    with pytest.raises(ValueError, match="identifiers"):
        MultiDomainINRFlow({"my domain": cfgs["digits"]})
    model = MultiDomainINRFlow({"digits": cfgs["digits"]})
    with pytest.raises(KeyError, match="unknown domain 'shapes'"):
        run(model, batch(cfgs["digits"]), domain="shapes")
    with pytest.raises(ValueError, match="trunk_cross"):
        cfgs["digits"].replace(trunk_cross="sideways")
    with pytest.raises(ValueError, match="trunk_reads_context needs"):
        cfgs["shapes"].replace(trunk_cross="plain")
