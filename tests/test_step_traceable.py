"""No host-device synchronisation in a training or sampling step.

On a GPU, reading a device value on the host (``.item()``, ``.tolist()``, ``torch.equal``,
``bool(tensor)``, ``nonzero``) stalls the CPU until the device catches up. Two ways to find every
such read without a GPU:

- ``FakeTensorMode``: tensors have shapes but no values, so any read of a value raises
  ``DataDependentOutputException`` (``nonzero``/data-dependent shapes raise too);
- ``torch.compile(fullgraph=True)``: a value read is a graph break, which ``fullgraph`` turns into
  an error.

Both run one training step (forward, backward, the trainer's AdamW) of each domain and one
sampling step (encode + decode with classifier-free guidance), with the extension ops (their
fake kernels) and with the references.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from inrflow import ops
from inrflow.flow import FlowDraws, cicfm_loss
from inrflow.model import build_model, grid_coords
from inrflow.train.optim import build_optimizer

# (domain, overrides): every encoder, pseudo-coordinate kind and conditioning path of the step
CASES = {
    "image": ("image", {"num_classes": 3}),
    "image-rope-random": ("image", {"rope": True, "pseudo_coords": "random"}),
    "image-dense": ("image", {"encoder_form": "dense", "num_classes": 3}),
    "image-linear": ("image", {"encoder": "linear"}),
    "pointcloud": ("pointcloud", {}),
    "image-to-3d": ("pointcloud", {"cond_dim": 8, "cond_tokens": 4}),
    "protein": ("protein", {"coord_dim": 5, "num_latents": 8}),
}
BACKENDS = ("reference", "extension")


def _batch(domain: str, cfg, b: int = 2) -> dict[str, torch.Tensor]:
    """A training batch as the collate makes it (indices drawn per sample)."""
    if domain == "image":
        n = 16 * 16
        coords = grid_coords((16, 16)).expand(b, -1, -1).contiguous()
    elif domain == "protein":
        n = 8 * 4  # 8 residues of 4 atoms
        feats = torch.rand(b, n, cfg.coord_dim - 1) * 2 - 1
        residue = torch.arange(8).repeat_interleave(4).float()
        feats[..., 0] = -1 + (residue + 0.5) * (2 / 8)  # channel 0: the residue's cell centre
        kind = torch.randint(0, cfg.residue_vocab, (b, n, 1)).float()
        coords = torch.cat([feats, kind], dim=-1)
    else:
        n = 128
        coords = None
    batch = {
        "values": torch.rand(b, n, cfg.value_dim) * 2 - 1,
        "t": torch.rand(b),
        "noise": torch.randn(b, n, cfg.value_dim),
        "query_index": torch.rand(b, n).topk(n // 2, dim=1).indices,
    }
    if coords is not None:
        batch["coords"] = coords
    if cfg.num_classes:
        batch["labels"] = torch.randint(0, cfg.num_classes + 1, (b,))
    if cfg.cond_dim:
        batch["cond"] = torch.randn(b, cfg.cond_tokens, cfg.cond_dim)
        batch["cond_drop"] = torch.rand(b) < 0.5
    return batch


def _loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return cicfm_loss(
        model,
        batch.get("coords"),
        batch["values"],
        FlowDraws.from_batch(batch),
        batch.get("labels"),
        cond=batch.get("cond"),
    )


def _sampling_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One Euler step of guided sampling: conditional and null halves in one batch."""
    b = batch["values"].shape[0]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])

    def two(x):
        return None if x is None else torch.cat([x, x])

    coords, x = two(batch.get("coords")), two(batch["noise"])
    enc = model.encode(
        coords, x, two(batch["t"]), two(batch.get("labels")), two(batch.get("cond")), drop
    )
    v = model.decode(enc, coords, x).float()
    v_c, v_u = v.chunk(2)
    return batch["noise"] + 0.1 * (v_u + 2.0 * (v_c - v_u))


def _needs_extension(backend: str) -> None:
    if backend == "extension" and not ops.extension_available("cpu"):
        pytest.skip("the compiled extension has no CPU kernels in this build")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_training_and_sampling_step_read_no_values_under_fake_tensors(case, backend) -> None:
    _needs_extension(backend)
    domain, overrides = CASES[case]
    with ops.use_backend(backend), FakeTensorMode():
        model = build_model("tiny", domain, **overrides)
        opt = build_optimizer(model, 1e-4, (0.9, 0.95), 1e-8, 0.0)
        batch = _batch(domain, model.config)
        loss = _loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert loss.shape == ()
        model.eval()
        with torch.no_grad():
            x = _sampling_step(model, batch)
        assert x.shape == batch["noise"].shape


@pytest.mark.parametrize(
    ("case", "backend"),
    [
        ("image", "reference"),
        ("image", "extension"),
        ("image-dense", "reference"),
        ("pointcloud", "extension"),
        ("protein", "extension"),
    ],
)
def test_training_and_sampling_step_compile_without_graph_breaks(case, backend) -> None:
    _needs_extension(backend)
    torch._dynamo.reset()
    domain, overrides = CASES[case]
    torch.manual_seed(0)
    model = build_model("tiny", domain, **overrides)
    batch = _batch(domain, model.config)
    opt = build_optimizer(model, 1e-4, (0.9, 0.95), 1e-8, 0.0)
    # aot_eager: Dynamo's full graph and AOTAutograd's forward+backward trace through the ops'
    # fake kernels, without paying for Inductor's code generation on a CPU test machine
    loss_fn = torch.compile(_loss, fullgraph=True, backend="aot_eager", dynamic=False)
    # the trainer's AdamW is fused: one opaque kernel that torch.compile does not trace (the
    # fake-tensor test above runs it); it runs eagerly after the compiled forward + backward
    sample_fn = torch.compile(_sampling_step, fullgraph=True, backend="aot_eager", dynamic=False)
    with ops.use_backend(backend):
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            x = sample_fn(model, batch)
        eager = _sampling_step(model, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(x, eager, rtol=1e-4, atol=1e-5)


def test_bad_values_still_raise_at_the_model_on_the_cpu() -> None:
    """The value checks moved off the host path on GPUs; on the CPU they still raise at once."""
    model = build_model("tiny", num_classes=3)
    b = _batch("image", model.config)
    coords = b["coords"].clone()
    coords[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(coords, b["values"], b["t"], b["coords"], b["values"])
    with pytest.raises(ValueError, match="labels must lie"):
        model(
            b["coords"], b["values"], b["t"], b["coords"], b["values"], labels=torch.tensor([0, 4])
        )
    dense = build_model("tiny", encoder_form="dense")
    shuffled = b["coords"][:, torch.randperm(256)]
    shuffled[:, :2] = shuffled[:, :1]  # two points in one cell: groups of unequal size
    with pytest.raises(ValueError, match="same number of points"):
        dense(shuffled, b["values"], b["t"], b["coords"], b["values"])


def test_value_checks_are_queued_not_read_under_compile() -> None:
    """Compiled, a bad label fails through ``torch._assert_async`` (no graph break)."""
    torch._dynamo.reset()
    model = build_model("tiny", num_classes=3)
    b = _batch("image", model.config)
    fn = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    out = fn(
        b["coords"], b["values"], b["t"], b["coords"], b["values"], labels=torch.tensor([0, 3])
    )
    assert out.shape == b["values"].shape
    with pytest.raises(RuntimeError, match="labels must lie"):
        fn(b["coords"], b["values"], b["t"], b["coords"], b["values"], labels=torch.tensor([0, 4]))


def test_compile_covers_the_whole_model() -> None:
    """``--compile``: the encoder, the trunk blocks and the decoder path all run compiled, and
    the compiled model computes what the eager one does."""
    import copy

    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    from inrflow.train.parallelize import apply_compile

    torch._dynamo.reset()
    counters.clear()
    model = build_model("tiny", num_classes=3)
    eager = copy.deepcopy(model)
    apply_compile(model, backend="aot_eager")
    assert isinstance(model.encoder, OptimizedModule)
    assert all(isinstance(blk, OptimizedModule) for blk in model.blocks)
    b = _batch("image", model.config)
    args = (b["coords"], b["values"], b["t"], b["coords"], b["values"])
    out = model(*args, labels=b["labels"])
    torch.testing.assert_close(out, eager(*args, labels=b["labels"]), rtol=1e-5, atol=1e-6)
    # one frame per piece: encoder, blocks, and the root's methods (decode included)
    assert counters["stats"]["unique_graphs"] >= 1 + len(model.COMPILED_METHODS) + 1
    assert counters["graph_break"] == {}
