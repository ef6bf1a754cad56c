"""Model-level benchmarks: encoder, trunk and decoder separately, a whole training step, one
sampling step, chunked decoding at 1024^2 queries, and the whole-step comparison of inrflow's path
with the authors' composition.

Backends: ``reference`` runs every inrflow op on its pure-PyTorch reference; ``extension`` runs
each op on the compiled extension where it has a kernel for the device (the others stay on the
reference: ``extra_info["extension_ops"]`` lists which) and skips when none has. So these
benchmarks time new kernels as soon as they are merged.

``extra_info`` holds FLOPs and bytes of the timed call counted on the meta device by
:mod:`inrflow.perf` (matmul-class FLOPs; bytes = inputs + outputs of every op, unfused), per step.

Whole-step comparison (``whole step`` groups): the same model function trained two ways, the
``ours`` path (folded local encoder, inrflow ops on the extension where available) and the
``authors`` composition (``encoder_form="dense"``: gather, equal patches, K/V of every token, one
SDPA per patch; reference ops; AdamW ``foreach`` as the authors' trainer gets it, against the
trainer's fused AdamW). Both start from the same weights and see the same batch; the
paired test alternates their steps and records the ratio of medians (robust to load drift on a
shared machine).

Sizes: ``tiny`` on a 32^2 raster, ``S`` on 64^2 (1024 queries, 25%); under --benchmark-disable
(CI) everything runs once at the tiny size.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

import inrflow.ops
from inrflow import ops, perf
from inrflow.flow import FlowDraws, cicfm_loss
from inrflow.model import build_model, grid_coords
from inrflow.sampling import sample
from inrflow.train.optim import build_optimizer

MODEL_OPS = ("fourier_embed", "grid_assign", "group_layout", "grouped_cross_attention")
# preset -> (raster side, queries per sample, batch)
SETTINGS = {"tiny": (32, 256, 4), "S": (64, 1024, 1)}
SMOKE = ("tiny", 8, 16, 2)  # preset, side, queries, batch under --benchmark-disable
BACKENDS = ("reference", "extension")
CHUNKED_SIDE = 1024  # chunked decoding: 1024^2 queries (tiny model on the CPU)
CHUNK = 1 << 16


def _extension_ops(device: str) -> list[str]:
    return [op for op in MODEL_OPS if inrflow.ops.extension_available(device, op=op)]


def _scope(backend: str, device: str):
    """The ops backend of a variant; ``extension`` = each op on its kernel where one exists."""
    if backend == "extension":
        if not _extension_ops(device):
            pytest.skip(f"inrflow._C has no {device} kernel for any of {MODEL_OPS}")
        return ops.use_backend("auto")
    return ops.use_backend("reference")


def _setting(size: str, smoke: bool) -> tuple[str, int, int, int]:
    if smoke:
        if size != "tiny":
            pytest.skip("under --benchmark-disable only the tiny variant runs")
        return SMOKE
    side, queries, batch = SETTINGS[size]
    return size, side, queries, batch


def _batch(side: int, queries: int, batch: int, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords((side, side))[None].expand(batch, -1, -1).contiguous()
    values = torch.rand(batch, side * side, 3, generator=g) * 2 - 1
    t = torch.rand(batch, generator=g)
    noise = torch.randn(values.shape, generator=g)
    qidx = torch.stack([torch.randperm(side * side, generator=g)[:queries] for _ in range(batch)])
    return {
        "coords": coords.to(device),
        "values": values.to(device),
        "t": t.to(device),
        "noise": noise.to(device),
        "query_index": qidx.to(device),
    }


def _model(size: str, form: str = "folded", seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    return build_model(size, encoder_form=form).to(device)


def _cost(part: str, *args, **kwargs) -> Callable[[], perf.Cost]:
    """Deferred ``perf.model_costs(*args, **kwargs)[part]``."""
    return lambda: perf.model_costs(*args, **kwargs)[part]


def _record(benchmark, cost: Callable[[], perf.Cost], **info) -> None:
    """FLOPs and bytes (counted on meta: skipped under --benchmark-disable, tested elsewhere)."""
    if not benchmark.disabled:
        c = cost()
        info = {"GFLOP": round(c.flops / 1e9, 3), "MB": round(c.bytes / 1e6, 1), **info}
    benchmark.extra_info.update(info)


def _rounds(size: str) -> int:
    return 3 if size == "S" else 5


def _loss(model, batch) -> torch.Tensor:
    return cicfm_loss(model, batch["coords"], batch["values"], FlowDraws.from_batch(batch))


def _train_step(model, opt, batch) -> Callable[[], float]:
    def step() -> float:
        loss = _loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _opt(model, who: str = "ours"):
    """The trainer's AdamW (fused where supported); the authors' is ``torch.optim.AdamW`` as
    their Lightning module builds it, whose default on GPUs is the ``foreach`` implementation."""
    if who == "authors":
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
    return build_optimizer(model, 1e-4, (0.9, 0.999), 1e-8, 0.0)


# ------------------------------------------------------------------------------------------------
# Model parts (forward + backward of each part's output)


def _part_fns(model, batch, scope: Callable, opt=None) -> dict[str, Callable[[], None]]:
    """fwd+bwd of each part of a training step on the step's own inputs (and the optimizer step
    when ``opt`` is given); the encoder and decoder run inside ``scope()`` (an ops backend)."""
    cfg, b = model.config, batch["values"].shape[0]
    q = batch["query_index"].shape[1]
    x0 = torch.randn(b, cfg.num_latents, cfg.hidden, requires_grad=True)
    c = torch.randn(b, cfg.hidden)
    with torch.no_grad(), ops.use_backend("reference"):
        enc = model.encode(batch["coords"], batch["values"], batch["t"])
    qc, qv = batch["coords"][:, :q], batch["values"][:, :q]

    def encoder() -> None:
        with scope():
            lat, _ = model.encoder(batch["coords"], batch["values"], c, model.grouping)
            lat.square().mean().backward()

    def trunk() -> None:
        x = x0
        for blk in model.blocks:
            x = blk(x, c, None, None)
        x.square().mean().backward()

    def decoder() -> None:
        with scope():
            model.decode(enc, qc, qv).square().mean().backward()

    fns = {"encoder": encoder, "trunk": trunk, "decoder": decoder}
    if opt is not None:

        def optimizer() -> None:
            for p in model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            opt.step()

        fns["optimizer"] = optimizer
    return fns


@pytest.mark.parametrize("part", ["encoder", "trunk", "decoder"])
@pytest.mark.parametrize("size", ["tiny", "S"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="model part fwd+bwd")
def test_part(benchmark, part, size, backend, smoke) -> None:
    """Forward + backward of the encoder, the trunk (no inrflow ops: timed once, under
    ``reference``) or the decoder."""
    if part == "trunk" and backend != "reference":
        pytest.skip("the trunk uses no inrflow op: one variant")
    size, side, queries, b = _setting(size, smoke)
    benchmark.group = f"{part} fwd+bwd {size} {side}^2 {queries} queries x{b}"
    batch = _batch(side, queries, b)
    run = _part_fns(_model(size), batch, lambda: _scope(backend, "cpu"))[part]
    run()
    cost = _cost(part, size, side, queries, batch=b)
    info = {"ops": _extension_ops("cpu")} if part != "trunk" else {}
    _record(benchmark, cost, fwd_only="flops/bytes are the forward's", **info)
    benchmark.pedantic(run, rounds=_rounds(size), warmup_rounds=0)


# ------------------------------------------------------------------------------------------------
# Whole training step: forward, backward, AdamW (the trainer's optimizer)


@pytest.mark.parametrize("size", ["tiny", "S"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="train step")
def test_train_step(benchmark, size, backend, smoke) -> None:
    size, side, queries, b = _setting(size, smoke)
    benchmark.group = f"train step {size} {side}^2 {queries} queries x{b}"
    model = _model(size)
    step = _train_step(model, _opt(model), _batch(side, queries, b))
    with _scope(backend, "cpu"):
        step()
        cost = _cost("total", size, side, queries, training=True, batch=b)
        _record(benchmark, cost, what="fwd+bwd", ops=_extension_ops("cpu"))
        loss = benchmark.pedantic(step, rounds=_rounds(size), warmup_rounds=0)
    assert loss == loss  # finite


# ------------------------------------------------------------------------------------------------
# Whole-step comparison: inrflow's path vs the authors' composition


WHO = {"ours": ("folded", "extension"), "authors": ("dense", "reference")}


def _paths(size: str, side: int, queries: int, b: int):
    batch = _batch(side, queries, b)
    built = {}
    for who, (form, _backend) in WHO.items():
        model = _model(size, form, seed=0)
        built[who] = (model, _opt(model, who))
    built["authors"][0].load_state_dict(built["ours"][0].state_dict())
    return batch, built


def _enter(who: str):
    backend = WHO[who][1]
    return ops.use_backend("auto" if backend == "extension" else "reference")


@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.benchmark(group="whole step")
def test_whole_step(benchmark, who, smoke) -> None:
    size, side, queries, b = _setting("tiny" if smoke else "S", smoke)
    benchmark.group = f"whole step {size} {side}^2: ours vs authors"
    batch, built = _paths(size, side, queries, b)
    model, opt = built[who]
    step = _train_step(model, opt, batch)
    with _enter(who):
        step()
        cost = _cost("total", size, side, queries, who, training=True, batch=b)
        _record(benchmark, cost, path=WHO[who], ops=_extension_ops("cpu") if who == "ours" else [])
        benchmark.pedantic(step, rounds=_rounds(size), warmup_rounds=0)


@pytest.mark.parametrize("side", [64, 256])
@pytest.mark.benchmark(group="whole step paired")
def test_whole_step_paired(benchmark, smoke, large, side) -> None:
    """Alternate one step of each path; ``extra_info`` holds both medians and the ratio. The
    first step of both must give the same loss (the same function, the same weights). The 256^2
    variant (16,384 queries, ~1 min per pair on 2 cores) runs with INRFLOW_BENCH_LARGE=1."""
    if side == 256 and not large:
        pytest.skip("set INRFLOW_BENCH_LARGE=1 for the 256^2 whole-step comparison")
    size, side_s, queries, b = _setting("tiny" if smoke else "S", smoke)
    if side == 256:
        side_s, queries = 256, 16384
    side = side_s
    benchmark.group = f"whole step paired {size} {side}^2 (one round = ours + authors)"
    batch, built = _paths(size, side, queries, b)
    steps = {who: _train_step(m, o, batch) for who, (m, o) in built.items()}
    first = {}
    for who in WHO:
        with _enter(who):
            first[who] = steps[who]()
    assert first["ours"] == pytest.approx(first["authors"], rel=1e-4)
    times: dict[str, list[float]] = {who: [] for who in WHO}

    def pair() -> None:
        for who in WHO:
            with _enter(who):
                t0 = time.perf_counter()
                steps[who]()
                times[who].append(time.perf_counter() - t0)

    benchmark.pedantic(pair, rounds=3 if side == 256 else _rounds(size) + 2, warmup_rounds=0)
    med = {who: statistics.median(v) for who, v in times.items()}
    benchmark.extra_info.update(
        {
            "ours_median_s": round(med["ours"], 4),
            "authors_median_s": round(med["authors"], 4),
            "authors_over_ours": round(med["authors"] / med["ours"], 3),
            "ops_on_extension": _extension_ops("cpu"),
        }
    )


@pytest.mark.parametrize("side", [64, 256])
@pytest.mark.benchmark(group="whole step anatomy")
def test_whole_step_anatomy(benchmark, smoke, large, side) -> None:
    """Each part of a training step (fwd+bwd; the optimizer step) timed for both paths, and the
    Amdahl bound of the whole-step ratio: the authors' parts over ours without encoder and
    optimizer (the trunk and the decoder are the same computation in both)."""
    if side == 256 and not large:
        pytest.skip("set INRFLOW_BENCH_LARGE=1 for the 256^2 anatomy")
    size, side_s, queries, b = _setting("tiny" if smoke else "S", smoke)
    if side == 256:
        side_s, queries = 256, 16384
    benchmark.group = f"whole step anatomy {size} {side_s}^2"
    batch, built = _paths(size, side_s, queries, b)
    rounds = 1 if smoke else 7
    fns = {
        who: _part_fns(model, batch, lambda who=who: _enter(who), opt)
        for who, (model, opt) in built.items()
    }
    times = {who: {name: [] for name in fns[who]} for who in fns}

    def measure() -> None:  # interleaved part by part, so load drift hits both paths alike
        for _ in range(rounds):
            for name in fns["ours"]:
                for who in fns:
                    t0 = time.perf_counter()
                    fns[who][name]()
                    times[who][name].append(time.perf_counter() - t0)

    for who in fns:  # warm-up
        for fn in fns[who].values():
            fn()
    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    parts = {who: {k: statistics.median(v) for k, v in t.items()} for who, t in times.items()}
    shared = parts["ours"]["trunk"] + parts["ours"]["decoder"]
    info = {f"{who}_{k}_s": round(v, 4) for who, p in parts.items() for k, v in p.items()}
    info["authors_sum_over_ours_sum"] = round(
        sum(parts["authors"].values()) / sum(parts["ours"].values()), 3
    )
    info["bound_free_encoder_and_optimizer"] = round(sum(parts["authors"].values()) / shared, 3)
    benchmark.extra_info.update(info)


# ------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("size", ["tiny", "S"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="sampling step")
def test_sampling_step(benchmark, size, backend, smoke) -> None:
    """One Euler step (encode + decode every pixel) of a full-raster sample."""
    size, side, _queries, b = _setting(size, smoke)
    benchmark.group = f"sampling step {size} {side}^2 x{b}"
    model = _model(size).eval()
    coords = grid_coords((side, side))
    g = torch.Generator().manual_seed(0)

    def run() -> torch.Tensor:
        with _scope(backend, "cpu"), torch.no_grad():
            return sample(model, None, coords, 1, generator=g, batch_size=b, progress=False)

    run()
    cost = _cost("total", size, side, side * side, batch=b)
    _record(benchmark, cost, ops=_extension_ops("cpu"))
    out = benchmark.pedantic(run, rounds=_rounds(size), warmup_rounds=0)
    assert out.shape == (b, side * side, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.benchmark(group="chunked decoding")
def test_chunked_decoding(benchmark, backend, smoke) -> None:
    """Decode 1024^2 queries of one sample in chunks of 65,536 from a 32^2 context (tiny)."""
    side = 64 if smoke else CHUNKED_SIDE
    benchmark.group = f"chunked decoding tiny {side}^2 queries, chunks of {CHUNK}"
    model = _model("tiny").eval()
    ctx = _batch(32, 1, 1)
    qc = grid_coords((side, side))[None]
    qv = torch.randn(1, side * side, 3)
    with torch.no_grad(), ops.use_backend("reference"):
        enc = model.encode(ctx["coords"], ctx["values"], ctx["t"])

    def run() -> torch.Tensor:
        with _scope(backend, "cpu"), torch.no_grad():
            return model.decode(enc, qc, qv, chunk_size=CHUNK)

    cost = _cost("decoder", "tiny", 32, side * side)
    _record(benchmark, cost, queries=side * side, ops=_extension_ops("cpu"))
    out = benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    assert out.shape == (1, side * side, 3)
    if not benchmark.disabled and benchmark.stats is not None:
        rate = side * side / benchmark.stats.stats.median
        benchmark.extra_info["Mqueries/s"] = round(rate / 1e6, 3)
