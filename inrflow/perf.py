"""Work (FLOPs) and memory traffic (bytes) of the model's parts, and an analytic GPU model.

Everything here runs on the ``meta`` device (shapes only), so XL at 2048^2 queries costs no
compute; ``python -m inrflow.perf`` prints the tables of docs/PERFORMANCE.md.

How we count:

* FLOPs are ``torch.utils.flop_counter.FlopCounterMode``'s: the matmul-class aten ops (``mm``,
  ``addmm``, ``bmm``, SDPA; one multiply-add = 2 FLOPs). Element-wise work (norms, activations,
  sin/cos, softmax) is not counted; it is O(H) per token in every composition.
* The inrflow ops are charged analytically as the kernels would run (:func:`op_cost`), and the
  reference implementation that runs on ``meta`` is hidden from the counters: the reference of
  ``grouped_cross_attention`` is element-wise + ``index_add`` that FlopCounterMode cannot see.
* Bytes are the sum, over every aten op, of its tensor inputs and outputs (views excluded): the
  HBM traffic of an unfused eager execution, i.e. an upper bound for what a compiler that fuses
  element-wise chains would move. inrflow ops are charged the bytes their kernels read and write.
* Parts are attributed by module: ``encoder`` (the encoder module), ``trunk`` (the DiT blocks),
  ``decoder`` (query embeddings, decoder blocks including their K/V over the latents, the final
  layer), ``other`` (time/label embeddings, latent positions).

"ours" is inrflow's path: the folded local encoder (key projection folded into the queries) and
the inrflow ops. "authors" is the same model function composed as the official implementation
does it (``encoder_form="dense"``: gather, reshape into equal patches, K/V of every token, one
SDPA per patch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

from inrflow import ops

__all__ = [
    "GPU",
    "GPUS",
    "Cost",
    "count",
    "kernel_table",
    "model_costs",
    "op_cost",
    "parts_table",
    "roofline_seconds",
    "training_flops_per_sample",
    "training_step_estimate",
]

PARTS = ("encoder", "trunk", "decoder", "other")
_PART_OF = {
    "encoder": "encoder",
    "blocks": "trunk",
    "decoder": "decoder",
    "final": "decoder",
    "query_value": "decoder",
    "query_pos": "decoder",
}
FORMS = {"ours": "folded", "authors": "dense"}


# ------------------------------------------------------------------------------------------------
# GPU specifications (NVIDIA datasheets; dense, i.e. without 2:4 sparsity)


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    hbm_bytes_per_s: float  # HBM bandwidth
    bf16_flops: float  # dense bf16 tensor-core peak
    fp32_flops: float  # fp32 CUDA-core (FMA) peak
    source: str


GPUS = {
    "H100": GPU(
        "H100 SXM5 80GB",
        3.35e12,
        989.4e12,
        66.9e12,
        "NVIDIA H100 Tensor Core GPU datasheet: HBM3 3.35 TB/s, BF16 1,979 TFLOPS with "
        "sparsity (989 dense), FP32 67 TFLOPS",
    ),
    "H200": GPU(
        "H200 SXM 141GB",
        4.8e12,
        989.4e12,
        66.9e12,
        "NVIDIA H200 Tensor Core GPU datasheet: HBM3e 4.8 TB/s, BF16 1,979 TFLOPS with "
        "sparsity (989 dense), FP32 67 TFLOPS",
    ),
}


def roofline_seconds(flops: float, nbytes: float, gpu: GPU, tensor_cores: bool = True) -> float:
    """Lower bound ``max(flops / peak, bytes / bandwidth)``: the kernel can be no faster."""
    peak = gpu.bf16_flops if tensor_cores else gpu.fp32_flops
    return max(flops / peak, nbytes / gpu.hbm_bytes_per_s)


# ------------------------------------------------------------------------------------------------
# Counting


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def op_cost(name: str, args: tuple, kwargs: dict, out: object) -> Cost:
    """FLOPs and bytes of one inrflow op as its kernel runs (read inputs once, write outputs)."""
    tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
    unique = list({id(t): t for t in tensors}.values())  # folded MQA passes kv as k and v
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
    nbytes = sum(_nbytes(t) for t in unique) + sum(_nbytes(o) for o in outs)
    flops = 0.0
    if name == "grouped_cross_attention":
        q, k, v = args[:3]
        flops = 2.0 * k.shape[0] * q.shape[1] * (q.shape[2] + v.shape[2])
    return Cost(flops, float(nbytes))


class _ByteCounter(TorchDispatchMode):
    """Bytes read + written by every non-view aten op, attributed to the active model part."""

    def __init__(self, tracker: ModuleTracker | None) -> None:
        super().__init__()
        self.tracker = tracker
        self.paused = 0
        self.by_part: dict[str, float] = defaultdict(float)

    def part(self) -> str:
        return _current_part(self.tracker)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused or func.is_view or func in _FREE_OPS:
            return out
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        self.by_part[self.part()] += sum(_nbytes(t) for t in tensors + outs)
        return out


_FREE_OPS = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_strided.default,
    torch.ops.aten.detach.default,
    torch.ops.aten._to_copy.default,  # meta -> meta casts of fp32 model: only no-op copies here
    torch.ops.aten.lift_fresh.default,
    torch.ops.aten.empty_like.default,
}


def _current_part(tracker: ModuleTracker | None) -> str:
    if tracker is None:
        return "other"
    best = "other"
    for name in tracker.parents:
        fields = name.split(".")
        if len(fields) >= 2 and fields[1] in _PART_OF:
            return _PART_OF[fields[1]]
    return best


class _Opaque(torch.autograd.Function):
    """Runs an op without recording its graph; backward returns uninitialised gradients of the
    inputs' shapes (free on meta). The op's backward cost is charged analytically instead."""

    @staticmethod
    def forward(ctx, fn, *args):
        ctx.specs = [
            (a.shape, a.dtype, a.device) if isinstance(a, torch.Tensor) else None for a in args
        ]
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def backward(ctx, *grads):
        grads_in = [
            torch.empty(s[0], dtype=s[1], device=s[2]) if s is not None else None for s in ctx.specs
        ]
        return (None, *grads_in)


@contextlib.contextmanager
def _charged_ops(
    bytes_counter: _ByteCounter, tracker: ModuleTracker | None, extra: dict[str, Cost]
) -> Iterator[None]:
    """Replace the public inrflow ops by wrappers that charge :func:`op_cost` to the part."""
    names = ("fourier_embed", "grid_assign", "nearest_assign", "group_layout")
    names += ("grouped_cross_attention",)
    real = {n: getattr(ops, n) for n in names}

    def wrap(name: str, fn: Callable) -> Callable:
        def charged(*args, **kwargs):
            grad = torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args
            )
            bytes_counter.paused += 1
            try:
                if grad:  # hide the reference's backward from the counters too
                    out = _Opaque.apply(functools.partial(fn, **kwargs), *args)
                else:
                    out = fn(*args, **kwargs)
            finally:
                bytes_counter.paused -= 1
            cost = op_cost(name, args, kwargs, out)
            part = _current_part(tracker)
            extra[part] = extra.get(part, Cost()) + cost
            if grad:  # backward: about twice the forward work and traffic
                extra["backward"] = extra.get("backward", Cost()) + Cost(
                    2 * cost.flops, 2 * cost.bytes
                )
            return out

        return charged

    for n, fn in real.items():
        setattr(ops, n, wrap(n, fn))
    try:
        yield
    finally:
        for n, fn in real.items():
            setattr(ops, n, fn)


def count(fn: Callable[[], object]) -> dict[str, Cost]:
    """Run ``fn`` (ideally on meta tensors) and return the cost per part plus ``"total"``.

    The per-part figures are meaningful for a forward pass. ``fn`` may also run a backward pass:
    ``"total"`` is then right (``"backward"`` holds the analytic share of the inrflow ops) but
    the backward work is attributed to parts only roughly.
    """
    tracker = ModuleTracker()
    extra: dict[str, Cost] = {}
    bytes_counter = _ByteCounter(tracker)
    with (
        tracker,
        FlopCounterMode(display=False) as flops,
        bytes_counter,
        _charged_ops(bytes_counter, tracker, extra),
        ops.use_backend("reference"),  # what runs on meta; its cost is replaced by op_cost
    ):
        fn()
    counts = flops.get_flop_counts()
    result: dict[str, Cost] = {p: Cost() for p in PARTS}
    attributed = 0.0
    for name, per_op in counts.items():
        fields = name.split(".")
        if len(fields) < 2 or fields[1] not in _PART_OF:
            continue
        ancestors = (".".join(fields[:i]) for i in range(2, len(fields)))
        if any(a in counts for a in ancestors):  # counted with the outermost module
            continue
        f = float(sum(per_op.values()))
        result[_PART_OF[fields[1]]].flops += f
        attributed += f
    total_flops = float(flops.get_total_flops())
    result["other"].flops += max(0.0, total_flops - attributed)  # includes backward work
    for part, b in bytes_counter.by_part.items():
        result.setdefault(part, Cost()).bytes += b
    for part, c in extra.items():
        result.setdefault(part, Cost())
        result[part] = result[part] + c
    total = Cost(total_flops, sum(bytes_counter.by_part.values()))
    for c in extra.values():
        total = total + c
    result["total"] = total
    return result


# ------------------------------------------------------------------------------------------------
# The model's costs


def _meta_model(size: str, form: str, dtype: torch.dtype = torch.float32, **overrides):
    from inrflow.model import build_model

    with torch.device("meta"):
        model = build_model(size, encoder_form=form, **overrides).to(dtype)
        for m in model.modules():  # what _apply does off meta: frequencies, centres stay fp32
            for name in ("freqs", "centers", "cell"):
                buf = getattr(m, name, None)
                if isinstance(buf, torch.Tensor) and buf.dtype != torch.float32:
                    setattr(m, name, torch.empty(buf.shape, dtype=torch.float32))
    return model


def model_costs(
    size: str,
    context_res: int = 256,
    queries: int = 16384,
    who: str = "ours",
    training: bool = False,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> dict[str, Cost]:
    """Cost of one forward (``training=False``) or forward + backward of the ``size`` image
    model on a ``context_res``^2 raster with ``queries`` query points, per ``batch`` samples.

    ``who``: ``"ours"`` (folded encoder) or ``"authors"`` (dense per-patch composition).
    """
    from inrflow.model import grid_coords

    model = _meta_model(size, FORMS[who], dtype, **overrides)
    n = context_res * context_res
    coords = grid_coords((context_res, context_res), device="meta", dtype=dtype)[None]
    coords = coords.expand(batch, -1, -1)
    values = torch.empty(batch, n, 3, device="meta", dtype=dtype)
    q_coords = torch.empty(batch, queries, 2, device="meta", dtype=dtype)
    q_values = torch.empty(batch, queries, 3, device="meta", dtype=dtype)
    t = torch.empty(batch, device="meta", dtype=dtype)

    def run() -> None:
        with torch.set_grad_enabled(training):
            out = model(coords, values, t, q_coords, q_values)
            if training:
                out.float().square().mean().backward()

    costs = count(run)
    if training:  # backward work is attributed to parts only roughly: keep the totals
        return {"total": costs["total"]}
    return costs


def training_flops_per_sample(config, context: int, queries: int) -> float:
    """Counted FLOPs of one training sample (forward + backward) of the model ``config``
    describes, with ``context`` context points and ``queries`` query points: the "model FLOPs"
    of throughput and MFU reports (torchtitan's convention: the work the model does, not what
    recomputation under activation checkpointing adds). Runs on meta tensors.
    """
    from inrflow.model import INRFlow

    with torch.device("meta"):
        model = INRFlow(config)
    c, d = config.value_dim, config.coord_dim

    def pairs(n: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        coords = None if config.coords_are_values else torch.zeros(1, n, d, device="meta")
        return coords, torch.empty(1, n, c, device="meta")

    ctx_coords, ctx_values = pairs(context)
    q_coords, q_values = pairs(queries)
    labels = torch.zeros(1, dtype=torch.long, device="meta") if config.num_classes else None
    cond = (
        torch.empty(1, max(1, config.cond_tokens), config.cond_dim, device="meta")
        if config.cond_dim
        else None
    )
    t = torch.empty(1, device="meta")

    def run() -> None:
        out = model(ctx_coords, ctx_values, t, q_coords, q_values, labels=labels, cond=cond)
        out.float().square().mean().backward()

    return count(run)["total"].flops


def parts_table(
    sizes: tuple[str, ...] = ("S", "B", "L", "XL"),
    settings: tuple[tuple[str, int], ...] = (
        ("training", 16384),
        ("inference 256^2", 256**2),
        ("inference 1024^2", 1024**2),
        ("inference 2048^2", 2048**2),
    ),
    context_res: int = 256,
) -> str:
    """Markdown: forward GFLOPs per sample per part, ours vs the authors' composition."""
    rows = [
        "| preset | queries | encoder ours / authors | trunk | decoder | other "
        "| total ours / authors | authors / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for label, q in settings:
            ours = model_costs(size, context_res, q, "ours")
            auth = model_costs(size, context_res, q, "authors")
            g = 1e-9
            rows.append(
                f"| {size} | {label} ({q:,}) | {ours['encoder'].flops * g:,.1f} / "
                f"{auth['encoder'].flops * g:,.1f} | {ours['trunk'].flops * g:,.1f} | "
                f"{ours['decoder'].flops * g:,.1f} | {ours['other'].flops * g:,.2f} | "
                f"{ours['total'].flops * g:,.1f} / {auth['total'].flops * g:,.1f} | "
                f"{auth['total'].flops / ours['total'].flops:.2f}x |"
            )
    return "\n".join(rows)


def kernel_costs(
    size: str = "XL", context_res: int = 256, queries: int = 16384, batch: int = 1
) -> dict[str, Cost]:
    """Forward cost of each inrflow kernel call in one forward of the model, bf16 activations
    (as in GPU training), summed by op name."""
    from inrflow.model import grid_coords

    model = _meta_model(size, "folded", torch.bfloat16)
    n = context_res * context_res
    coords = grid_coords((context_res, context_res), device="meta")[None].expand(batch, -1, -1)
    values = torch.empty(batch, n, 3, device="meta", dtype=torch.bfloat16)
    q_coords = torch.empty(batch, queries, 2, device="meta")
    q_values = torch.empty(batch, queries, 3, device="meta", dtype=torch.bfloat16)
    t = torch.empty(batch, device="meta")
    per_op: dict[str, Cost] = defaultdict(Cost)
    names = ("fourier_embed", "grid_assign", "nearest_assign", "group_layout")
    names += ("grouped_cross_attention",)
    real = {nm: getattr(ops, nm) for nm in names}

    def wrap(name: str, fn: Callable) -> Callable:
        def charged(*args, **kwargs):
            out = fn(*args, **kwargs)
            per_op[name] = per_op[name] + op_cost(name, args, kwargs, out)
            return out

        return charged

    for nm, fn in real.items():
        setattr(ops, nm, wrap(nm, fn))
    try:
        with torch.no_grad(), ops.use_backend("reference"):
            model(coords, values, t, q_coords, q_values)
    finally:
        for nm, fn in real.items():
            setattr(ops, nm, fn)
    return dict(per_op)


def kernel_table(size: str = "XL", context_res: int = 256, queries: int = 16384) -> str:
    """Markdown: per-kernel bytes/FLOPs of one forward per sample and roofline time (estimates)."""
    rows = [
        "| kernel (forward, per sample) | MFLOP | MB moved | H100 us | H200 us | bound |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in sorted(kernel_costs(size, context_res, queries).items()):
        # the grouped attention runs on CUDA cores (fp32 FMA, seqlen_q = 1: no MMA tile)
        tc = False
        h100 = roofline_seconds(c.flops, c.bytes, GPUS["H100"], tc)
        h200 = roofline_seconds(c.flops, c.bytes, GPUS["H200"], tc)
        bound = (
            "memory"
            if c.bytes / GPUS["H100"].hbm_bytes_per_s >= c.flops / (GPUS["H100"].fp32_flops)
            else "compute"
        )
        rows.append(
            f"| {name} | {c.flops / 1e6:,.0f} | {c.bytes / 1e6:,.1f} | {h100 * 1e6:,.1f} | "
            f"{h200 * 1e6:,.1f} | {bound} |"
        )
    return "\n".join(rows)


def training_step_estimate(
    size: str = "XL",
    per_gpu_batch: int = 64,
    context_res: int = 256,
    queries: int = 16384,
    mfu: float = 0.4,
) -> dict[str, float]:
    """Seconds per training step per GPU (bf16) from the counted forward+backward FLOPs/bytes.

    ``flops_s_*``: the FLOPs at the dense bf16 tensor-core peak, a hard lower bound.
    ``eager_bytes_s_*``: the HBM traffic of unfused eager execution at full bandwidth (every op
    reads its inputs and writes its output); fusion (``torch.compile``) lowers it.
    ``estimate_s_*``: the FLOPs at ``mfu`` of the peak (an assumption, not a measurement) plus
    AdamW (fp32 master weights and moments, EMA: ~32 bytes moved per parameter, memory-bound).
    """
    one = model_costs(size, context_res, queries, "ours", training=True, dtype=torch.bfloat16)
    from inrflow.model import count_parameters

    params = count_parameters(_meta_model(size, "folded"))
    flops = one["total"].flops * per_gpu_batch
    nbytes = one["total"].bytes * per_gpu_batch
    out: dict[str, float] = {
        "train_tflop_per_sample": one["total"].flops / 1e12,
        "eager_train_gb_per_sample": one["total"].bytes / 1e9,
        "params_millions": params / 1e6,
    }
    for key, gpu in GPUS.items():
        opt = 32.0 * params / gpu.hbm_bytes_per_s
        out[f"flops_s_{key}"] = flops / gpu.bf16_flops
        out[f"eager_bytes_s_{key}"] = nbytes / gpu.hbm_bytes_per_s
        out[f"estimate_s_{key}"] = flops / (gpu.bf16_flops * mfu) + opt
    return out


def main() -> None:  # pragma: no cover - prints the tables of docs/PERFORMANCE.md
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="S,B,L,XL")
    parser.add_argument("--per-gpu-batch", type=int, default=64)
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="peak memory of one training step and the largest batch per GPU (inrflow.memory)",
    )
    parser.add_argument("--size", default="XL", help="--memory: the image preset")
    parser.add_argument("--resolution", type=int, default=256, help="--memory: context side")
    parser.add_argument("--queries", type=int, default=16384, help="--memory: queries per sample")
    parser.add_argument("--batch", type=int, default=32, help="--memory: batch per GPU to report")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="--memory: compare the estimator with real fp32 CPU steps of tiny and S first",
    )
    args = parser.parse_args()
    if args.memory:
        _memory_main(args)
        return
    sizes = tuple(args.sizes.split(","))
    print("## Forward GFLOPs per sample (context 256^2)\n")
    print(parts_table(sizes))
    print("\n## Training step (fwd+bwd) GFLOPs per sample, 256^2 context, 16,384 queries\n")
    print("| preset | ours | authors | authors / ours |\n|---|---|---|---|")
    for size in sizes:
        o = model_costs(size, training=True)["total"].flops
        a = model_costs(size, who="authors", training=True)["total"].flops
        print(f"| {size} | {o / 1e9:,.1f} | {a / 1e9:,.1f} | {a / o:.2f}x |")
    print("\n## inrflow kernels, XL, 256^2 context, 16,384 queries, bf16 (estimates)\n")
    print(kernel_table("XL"))
    est = training_step_estimate("XL", args.per_gpu_batch, mfu=args.mfu)
    print(f"\n## XL training step estimate, {args.per_gpu_batch} samples per GPU, MFU {args.mfu}\n")
    for k, v in est.items():
        print(f"- {k}: {v:,.4g}")


def _memory_main(args) -> None:  # pragma: no cover - prints the table of docs/PERFORMANCE.md
    from inrflow import memory

    if args.validate:
        print("| preset | batch | context | queries | measured MB | estimated MB | est / meas |")
        print("|---|---|---|---|---|---|---|")
        for size, batch, side, q in (("tiny", 16, 32, 512), ("S", 2, 32, 256)):
            r = memory.measure_cpu_step(size, batch, side * side, q)
            print(
                f"| {size} | {batch} | {side}^2 | {q} | {r['measured'] / 1e6:,.0f} | "
                f"{r['estimated'] / 1e6:,.0f} | {r['estimated'] / r['measured']:.2f} |"
            )
        print()
    print(
        f"## {args.size} training step, {args.resolution}^2 context, {args.queries:,} queries, "
        "bf16 compute, fp32 master weights, AdamW, EMA (FSDP2)\n"
    )
    print(
        memory.memory_table(
            args.size,
            args.resolution,
            args.queries,
            args.batch,
            progress=lambda m: print(f"[{m}]", file=sys.stderr, flush=True),
        )
    )


if __name__ == "__main__":  # pragma: no cover
    main()
