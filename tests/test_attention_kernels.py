"""The grouped cross-attention kernels against the pure-PyTorch reference.

* The extension's CPU kernels (CUDA when a GPU is present) through the raw ops
  ``grouped_cross_attention_forward`` / ``_backward`` and the public API: outputs, lse and all
  three gradients, dtypes, GQA/MQA, empty/single-key/long groups, non-contiguous inputs,
  gradcheck, ``opcheck``, FLOP counting, ``torch.compile``, hypothesis properties, bad inputs.
* The unchanged ``csrc/kernels/grouped_attention.cu`` run on the CPU by the SIMT emulator under
  several thread schedules, forward and backward, with small split sizes so that the
  multi-split merge paths run on small shapes.

Ground truth: the reference in fp64. Tolerances: fp64 1e-10; fp32 1e-5 relative to the output
scale; fp16/bf16 a few units of their rounding (inputs are rounded to the dtype first, so the
reference sees the same values).
"""

from __future__ import annotations

import ctypes
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import op_samples
import pytest
import torch
from emulation import SCHEDULES, build_emulated, requires_emulator
from hypothesis import given, settings
from hypothesis import strategies as st
from op_samples import Sample

import inrflow.ops
from inrflow.ops import reference

requires_extension = pytest.mark.skipif(
    not inrflow.ops.extension_available("cpu", op="grouped_cross_attention"),
    reason="inrflow._C with the grouped_cross_attention CPU kernel is not built",
)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]

ATTN_CU = "csrc/kernels/grouped_attention.cu"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def fwd_op(q, k, v, offsets, scale):
    return torch.ops.inrflow.grouped_cross_attention_forward.default(q, k, v, offsets, scale)


def bwd_op(grad_out, q, k, v, offsets, out, lse, scale):
    return torch.ops.inrflow.grouped_cross_attention_backward.default(
        grad_out, q, k, v, offsets, out, lse, scale
    )


make_case = op_samples.attention_case
SAMPLES = op_samples.grouped_cross_attention()


def on(sample: Sample, device: str):
    """The sample's (q, k, v, offsets, scale) on ``device`` (fresh tensors: tests may mutate)."""
    q, k, v, offsets, scale = sample.args
    return (*(t.clone().to(device) for t in (q, k, v, offsets)), scale)


def ref64(q, k, v, offsets, scale, grad_out=None):
    """Reference out, lse and (with grad_out) gradients, in fp64 on the CPU."""
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    off = offsets.cpu()
    out = reference.grouped_cross_attention(q64, k64, v64, off, scale)
    counts = (off[1:] - off[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(q.shape[0]), counts)
    rep = q.shape[1] // k.shape[1]
    kk = k64.detach().repeat_interleave(rep, dim=1)
    s = (q64.detach()[seg] * kk).sum(-1) * scale  # [T, Hq]
    lse = torch.full(q.shape[:2], -math.inf, dtype=torch.float64)
    if s.numel():
        lse = lse.scatter_reduce(0, seg[:, None].expand_as(s), s, "amax", include_self=True)
        lse = lse.nan_to_num(neginf=0.0)
        sums = torch.zeros(q.shape[:2], dtype=torch.float64).index_add(0, seg, (s - lse[seg]).exp())
        lse = torch.where(counts[:, None] > 0, lse + sums.log(), -math.inf)
    if grad_out is None:
        return out.detach(), lse, None
    if not out.requires_grad:  # no tokens at all: every gradient is zero
        return out.detach(), lse, tuple(torch.zeros_like(t) for t in (q64, k64, v64))
    grads = torch.autograd.grad(out, (q64, k64, v64), grad_out.cpu().double())
    return out.detach(), lse, grads


def assert_close(got, want, dtype, what):
    got = got.detach().cpu().double()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL[dtype] * scale, msg=what)


# ------------------------------------------------------------------------------------------------
# Extension kernels


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", SAMPLES, ids=op_samples.ids(SAMPLES))
def test_forward_backward_match_reference(device, sample: Sample) -> None:
    q, k, v, offsets, scale = on(sample, device)
    dtype = q.dtype
    lens = sample.meta["lens"]
    out, lse = fwd_op(q, k, v, offsets, scale)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(dtype).to(device)
    want, want_lse, grads = ref64(q, k, v, offsets, scale, grad_out)
    assert out.dtype == dtype and out.shape == want.shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(out, want, dtype, "out")
    empty = torch.tensor([n == 0 for n in lens])
    assert torch.isneginf(lse.cpu()[empty]).all()
    torch.testing.assert_close(
        lse.cpu()[~empty].double(), want_lse[~empty], rtol=0, atol=ATOL[torch.float32] * 10
    )
    dq, dk, dv = bwd_op(grad_out, q, k, v, offsets, out, lse, scale)
    for got, ref, name in zip((dq, dk, dv), grads, "qkv", strict=True):
        assert got.shape == ref.shape and got.dtype == dtype
        assert_close(got, ref, dtype, f"d{name}")
    assert (dq.cpu()[empty] == 0).all()


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("hq", "hkv"), [(3, 3), (8, 2)], ids=["mha", "gqa"])
def test_scores_far_apart_and_ragged_tails(device, hq, hkv) -> None:
    """Scores hundreds apart (most exp terms underflow to exactly 0 in fp32), group lengths and
    head dims that are not multiples of the 8-lane vectors, 4-key blocks with remainders."""
    q, k, v, offsets = make_case([9, 17, 1, 4, 31, 300], hq, hkv, 13, 21, torch.float32, device)
    q = q * 40
    scale = 0.5
    out, lse = fwd_op(q, k, v, offsets, scale)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(torch.float32).to(device)
    want, want_lse, grads = ref64(q, k, v, offsets, scale, grad_out)
    assert_close(out, want, torch.float32, "out")
    torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=1e-6, atol=1e-4)
    grads_got = bwd_op(grad_out, q, k, v, offsets, out, lse, scale)
    for got, ref, name in zip(grads_got, grads, "qkv", strict=True):
        assert_close(got, ref, torch.float32, f"d{name}")


@requires_extension
def test_nan_in_a_group_stays_in_that_group() -> None:
    q, k, v, offsets = make_case([5, 12, 3], 4, 2, 16, 16, torch.float32)
    k[8, 1, 3] = float("nan")  # group 1, kv head 1 (query heads 2 and 3)
    out, lse = fwd_op(q, k, v, offsets, 0.25)
    assert torch.isnan(out[1, 2:]).all() and torch.isnan(lse[1, 2:]).all()
    assert torch.isfinite(out[1, :2]).all() and torch.isfinite(out[[0, 2]]).all()


@requires_extension
def test_cpu_baseline_dispatch_matches_reference() -> None:
    """The plain (non-AVX2) loops, forced with INRFLOW_CPU_DISPATCH=baseline."""
    script = textwrap.dedent(
        """
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        import test_attention_kernels as t
        for sample in t.SAMPLES:
            t.test_forward_backward_match_reference("cpu", sample)
        t.test_scores_far_apart_and_ragged_tails("cpu", 8, 2)
        print("ok")
        """
    )
    env = {**os.environ, "INRFLOW_CPU_DISPATCH": "baseline"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_public_api_autograd_and_non_contiguous(device) -> None:
    q, k, v, offsets = make_case([4, 0, 9, 300], 4, 2, 16, 8, torch.float32, device, seed=5)
    q = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous layout
    k = torch.cat([k, k], -1)[..., ::2]  # stride 2 in the last dim: k itself, again
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with inrflow.ops.use_backend("extension"):
        out = inrflow.ops.grouped_cross_attention(qs, ks, vs, offsets.int())
    grad_out = torch.randn(out.shape).to(device)
    out.backward(grad_out)
    want, _, grads = ref64(q, k, v, offsets, 16**-0.5, grad_out)
    assert_close(out, want, torch.float32, "out")
    for t, ref in zip((qs, ks, vs), grads, strict=True):
        assert_close(t.grad, ref, torch.float32, "grad")


GRADCHECK = op_samples.select(SAMPLES, "gradcheck")
OPCHECK = op_samples.select(SAMPLES, "opcheck")
COMPILE = op_samples.select(SAMPLES, "compile")


@requires_extension
@pytest.mark.parametrize("sample", GRADCHECK, ids=op_samples.ids(GRADCHECK))
def test_gradcheck_fp64(sample: Sample) -> None:
    q, k, v, offsets, scale = on(sample, "cpu")
    args = tuple(t.requires_grad_() for t in (q, k, v))

    def fn(a, b, c):
        with inrflow.ops.use_backend("extension"):
            return inrflow.ops.grouped_cross_attention(a, b, c, offsets, scale)

    assert torch.autograd.gradcheck(fn, args)


@requires_extension
@pytest.mark.parametrize(
    "op",
    ["grouped_cross_attention", "grouped_cross_attention_forward"],
)
@pytest.mark.parametrize("sample", OPCHECK, ids=op_samples.ids(OPCHECK))
def test_opcheck(op, sample: Sample) -> None:
    q, k, v, offsets, scale = on(sample, "cpu")
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(getattr(torch.ops.inrflow, op).default, (q, k, v, offsets, scale))


@requires_extension
@pytest.mark.parametrize("sample", OPCHECK, ids=op_samples.ids(OPCHECK))
def test_opcheck_backward(sample: Sample) -> None:
    q, k, v, offsets, scale = on(sample, "cpu")
    out, lse = fwd_op(q, k, v, offsets, scale)
    args = (torch.randn_like(out), q, k, v, offsets, out, lse, scale)
    torch.library.opcheck(torch.ops.inrflow.grouped_cross_attention_backward.default, args)


@requires_extension
def test_flop_counter_counts_the_extension() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v, offsets = make_case([3, 0, 70], 4, 2, 8, 6, torch.float32)
    for t in (q, k, v):
        t.requires_grad_()
    with inrflow.ops.use_backend("extension"), FlopCounterMode(display=False) as counter:
        out = inrflow.ops.grouped_cross_attention(q, k, v, offsets)
        forward = counter.get_total_flops()
        out.sum().backward()
    per_call = 2 * k.shape[0] * q.shape[1] * (q.shape[2] + v.shape[2])
    assert forward == per_call
    assert counter.get_total_flops() == 3 * per_call
    with torch.device("meta"), FlopCounterMode(display=False) as meta_counter:  # shapes only
        torch.ops.inrflow.grouped_cross_attention.default(
            q.to("meta"), k.to("meta"), v.to("meta"), offsets.to("meta"), 0.5
        )
    assert meta_counter.get_total_flops() == per_call


@requires_extension
@pytest.mark.parametrize("sample", COMPILE, ids=op_samples.ids(COMPILE))
def test_torch_compile_traces_the_op(sample: Sample) -> None:
    q, k, v, offsets, scale = on(sample, "cpu")
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(a, b, c):
        return torch.ops.inrflow.grouped_cross_attention.default(a, b, c, offsets, scale)

    out = fn(qs, ks, vs)
    out.sum().backward()
    want, _, grads = ref64(q, k, v, offsets, scale, torch.ones_like(out))
    assert_close(out, want, q.dtype, "out")
    for t, ref, name in zip((qs, ks, vs), grads, "qkv", strict=True):
        assert_close(t.grad, ref, q.dtype, f"d{name}")


@requires_extension
@settings(max_examples=25, deadline=None)
@given(
    lens=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]),
    dim=st.integers(1, 20),
    dim_v=st.integers(1, 12),
    scale=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(lens, heads, dim, dim_v, scale, seed) -> None:
    q, k, v, offsets = make_case(lens, *heads, dim, dim_v, torch.float64, seed=seed)
    out, lse = fwd_op(q, k, v, offsets, scale)
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    want, _, grads = ref64(q, k, v, offsets, scale, grad_out)
    assert_close(out, want, torch.float64, "out")
    for got, ref in zip(bwd_op(grad_out, q, k, v, offsets, out, lse, scale), grads, strict=True):
        assert_close(got, ref, torch.float64, "grad")
    # permutation invariance inside a group: shuffling one group's keys changes nothing
    if k.shape[0] > 1:
        perm = torch.randperm(int(offsets[1]))
        rest = torch.arange(int(offsets[1]), k.shape[0])
        order = torch.cat([perm, rest])
        out2, _ = fwd_op(q, k[order], v[order], offsets, scale)
        torch.testing.assert_close(out2, out, rtol=0, atol=1e-12)


@requires_extension
def test_bad_inputs_raise() -> None:
    q, k, v, offsets = make_case([2, 3], 4, 2, 8, 4, torch.float32)
    with pytest.raises(RuntimeError, match="offsets must be non-decreasing"):
        fwd_op(q, k, v, torch.tensor([0, 4, 3]), 0.5)
    with pytest.raises(RuntimeError, match=r"offsets\[-1\] must equal T"):
        fwd_op(q, k, v, torch.tensor([0, 2, 4]), 0.5)
    with pytest.raises(RuntimeError, match=r"offsets\[0\] must be 0"):
        fwd_op(q, k, v, torch.tensor([1, 2, 5]), 0.5)
    with pytest.raises(RuntimeError, match="G \\+ 1"):
        fwd_op(q, k, v, torch.tensor([0, 5]), 0.5)
    with pytest.raises(RuntimeError, match="multiple of kv heads"):
        fwd_op(q[:, :3], k, v, offsets, 0.5)
    with pytest.raises(RuntimeError, match="share one dtype"):
        fwd_op(q, k.double(), v, offsets, 0.5)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        fwd_op(q, k, v, offsets.float(), 0.5)
    with pytest.raises(RuntimeError, match="must be float32"):
        fwd_op(q.int(), k.int(), v.int(), offsets, 0.5)
    with pytest.raises(RuntimeError, match="head dims"):
        fwd_op(q, k[..., :4], v, offsets, 0.5)
    with pytest.raises(RuntimeError, match=r"\[G, Hq, D\]"):
        fwd_op(q[0], k, v, offsets, 0.5)
    with pytest.raises(RuntimeError, match="scale must be finite"):
        fwd_op(q, k, v, offsets, math.inf)
    out, lse = fwd_op(q, k, v, offsets, 0.5)
    with pytest.raises(RuntimeError, match="lse must be"):
        bwd_op(out, q, k, v, offsets, out, lse.double(), 0.5)
    with pytest.raises(RuntimeError, match="grad_out must be"):
        bwd_op(out[:1], q, k, v, offsets, out, lse, 0.5)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="one device"):
            fwd_op(q, k.cuda(), v, offsets, 0.5)
    # the public wrapper raises ValueError/TypeError first, on both backends
    with inrflow.ops.use_backend("extension"), pytest.raises(ValueError, match="non-decreasing"):
        inrflow.ops.grouped_cross_attention(q, k, v, torch.tensor([0, 4, 3]))


@requires_extension
def test_model_local_encoder_uses_extension_by_default() -> None:
    """The folded local encoder (MQA, one kv head of model width) runs on the extension."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from inrflow.model import build_model, grid_coords

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "grouped_cross_attention" in str(func):
                self.calls.append((str(func), tuple(args[1].shape)))
            return func(*args, **(kwargs or {}))

    model = build_model("tiny")
    assert model.config.encoder_form == "folded"
    coords = grid_coords((8, 8))[None].expand(2, -1, -1)
    values = torch.randn(2, 64, model.config.value_dim)
    with Record() as rec:  # default backend: "auto"
        latents, _ = model.encoder(coords, values, None, model.grouping)
        latents.sum().backward()
    names = {name for name, _ in rec.calls}
    assert "inrflow.grouped_cross_attention_forward.default" in names
    assert "inrflow.grouped_cross_attention_backward.default" in names
    k_shape = rec.calls[0][1]
    assert k_shape == (2 * 64, 1, model.config.hidden)  # folded: MQA, one kv head of width H
    with inrflow.ops.use_backend("reference"):
        want, _ = model.encoder(coords, values, None, model.grouping)
    torch.testing.assert_close(latents, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Emulated CUDA kernels


def _lib():
    lib = build_emulated([ATTN_CU], "grouped_attention")
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    ws = lib.function(
        "inrflow_grouped_attention_workspace_bytes",
        i64,
        ctypes.c_int32,
        ctypes.c_int32,
        *(i64,) * 7,
    )
    fwd = lib.function(
        "inrflow_grouped_attention_forward",
        ctypes.c_int32,
        ctypes.c_int32,
        *(ptr,) * 7,
        *(i64,) * 6,
        ctypes.c_double,
        i64,
        ptr,
    )
    bwd = lib.function(
        "inrflow_grouped_attention_backward",
        ctypes.c_int32,
        ctypes.c_int32,
        *(ptr,) * 11,
        *(i64,) * 6,
        ctypes.c_double,
        i64,
        ptr,
    )
    return lib, ws, fwd, bwd


def emulated_forward_backward(lib_fns, q, k, v, offsets, scale, grad_out, max_split):
    lib, ws_fn, fwd, bwd = lib_fns
    g, hq, dim = q.shape
    t, hkv, dim_v = v.shape
    code = DTYPE_CODE[q.dtype]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    off = offsets.to(torch.int64).contiguous()
    dims = (g, t, hq, hkv, dim, dim_v)
    out = torch.full((g, hq, dim_v), float("nan"), dtype=q.dtype)
    lse = torch.full((g, hq), float("nan"), dtype=acc)
    nbytes = ws_fn(code, 0, *dims, max_split)
    assert nbytes > 0
    work = torch.empty(nbytes, dtype=torch.uint8)
    rc = fwd(code, q.data_ptr(), k.data_ptr(), v.data_ptr(), off.data_ptr(), out.data_ptr(),
             lse.data_ptr(), work.data_ptr(), *dims, scale, max_split, None)  # fmt: skip
    assert rc == 0, lib.last_error()
    dq = torch.full_like(q, float("nan"))
    dk = torch.full_like(k, float("nan"))
    dv = torch.full_like(v, float("nan"))
    work = torch.empty(ws_fn(code, 1, *dims, max_split), dtype=torch.uint8)
    rc = bwd(code, grad_out.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), off.data_ptr(),
             out.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
             work.data_ptr(), *dims, scale, max_split, None)  # fmt: skip
    assert rc == 0, lib.last_error()
    return out, lse, (dq, dk, dv)


# Each emulator sample under the first three schedules whose seed it was drawn for.
EMULATED = [
    (order, seed, sample)
    for order, seed in SCHEDULES[:3]
    for sample in op_samples.select(SAMPLES, "emulator")
    if sample.meta["schedule_seed"] == seed
]


@requires_emulator
@pytest.mark.emulated
@pytest.mark.parametrize(
    ("order", "seed", "sample"), EMULATED, ids=[f"{o}-{s.name}" for o, _, s in EMULATED]
)
def test_emulated_kernels_match_reference(order, seed, sample: Sample) -> None:
    q, k, v, offsets, scale = on(sample, "cpu")
    dtype, lens = q.dtype, sample.meta["lens"]
    lib_fns = _lib()
    lib_fns[0].set_schedule(order, seed)
    grad_out = torch.randn(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64).to(dtype)
    out, lse, grads = emulated_forward_backward(
        lib_fns, q, k, v, offsets, scale, grad_out, sample.meta["max_split"]
    )
    want, want_lse, want_grads = ref64(q, k, v, offsets, scale, grad_out)
    assert_close(out, want, dtype, "out")
    empty = torch.tensor([n == 0 for n in lens])
    assert torch.isneginf(lse[empty]).all()
    torch.testing.assert_close(lse[~empty].double(), want_lse[~empty], rtol=0, atol=2e-4)
    for got, ref, name in zip(grads, want_grads, "qkv", strict=True):
        assert_close(got, ref, dtype, f"d{name}")


@requires_emulator
@pytest.mark.emulated
def test_emulated_launcher_rejects_bad_arguments() -> None:
    _, ws_fn, fwd, _ = _lib()
    assert ws_fn(0, 0, 2, 4, 3, 2, 8, 8, 0) == -1  # Hq % Hkv != 0
    assert ws_fn(9, 0, 2, 4, 2, 2, 8, 8, 0) == -1  # unknown dtype
    assert ws_fn(0, 0, 2, 4, 2, 2, 0, 8, 0) == -1  # D = 0
    rc = fwd(0, None, None, None, None, None, None, None, 2, 4, 2, 2, 8, 8, 0.5, 0, None)
    assert rc == 1  # cudaErrorInvalidValue


# ------------------------------------------------------------------------------------------------
# Optional third-party backends (GPU only; skipped where they cannot run)


def test_optional_backends_are_absent_off_cuda() -> None:
    from inrflow.ops import attention_backends as ab

    assert ab.available_backends("cpu") == []
    q, k, v, offsets = make_case([2, 3], 2, 1, 8, 8, torch.float16)
    with pytest.raises(ValueError, match="unknown attention backend"):
        ab.grouped_cross_attention_via("nope", q, k, v, offsets)
    with pytest.raises(RuntimeError, match="not available"):
        ab.grouped_cross_attention_via("flash_attn", q, k, v, offsets)


@requires_cuda
@pytest.mark.parametrize("backend", ["flash_attn", "xformers", "torch_varlen"])
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 1)], ids=["mha", "mqa"])
def test_optional_backend_matches_reference(backend, hq, hkv) -> None:
    from inrflow.ops import attention_backends as ab

    if backend not in ab.available_backends("cuda"):
        pytest.skip(f"{backend} is not installed or not usable here")
    q, k, v, offsets = make_case([3, 0, 1, 70, 5], hq, hkv, 64, 64, torch.bfloat16, "cuda")
    out = ab.grouped_cross_attention_via(backend, q, k, v, offsets, 0.125)
    want, _, _ = ref64(q, k, v, offsets, 0.125)
    assert_close(out, want, torch.bfloat16, backend)


@requires_extension
def test_double_backward_raises_instead_of_returning_zeros() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(n, 2, 8, dtype=torch.float64, generator=gen).requires_grad_() for n in (3, 7, 7)
    )
    offsets = torch.tensor([0, 2, 5, 7], dtype=torch.int32)
    with inrflow.ops.use_backend("extension"):
        out = inrflow.ops.grouped_cross_attention(q, k, v, offsets)
        (g,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(g.sum(), q)
    # The reference supports it.
    out = inrflow.ops.reference.grouped_cross_attention(q, k, v, offsets)
    (g,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), q)
    assert h.abs().sum() > 0
