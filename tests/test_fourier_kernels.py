"""The fused Fourier-embedding kernels against the pure-PyTorch reference.

* The extension's CPU kernels (and CUDA kernels when a GPU is present) through the raw ops
  ``torch.ops.inrflow.fourier_embed`` / ``fourier_embed_backward``: dtypes, shapes, strides,
  large and non-finite arguments, ``opcheck``, input validation, and the public API's gradcheck
  and ``torch.compile``.
* The unchanged ``csrc/kernels/fourier.cu`` run on the CPU by the SIMT emulator under every
  thread schedule in ``SCHEDULES``.
* The shared header ``csrc/include/inrflow/fourier.h`` (sincos, exact products, the
  multiply-high division) compiled by g++ into a small probe library.

Ground truth is the reference evaluated in fp64. Tolerances (OUTPUT_ERR, absolute):
* fp32 forward: 2.5e-7 for every argument (the kernels form x*f exactly and measure 1.3e-7; the
  fp32 reference itself is off by up to ulp(x*f)/2, i.e. 3e-5 at |x*f| = 1e3).
* fp16/bf16 forward: half an ulp of a value in [0.5, 1) on top of the fp32 error (one rounding).
* backward: it uses the saved forward output, so each term f*(g_sin*cos - g_cos*sin) carries the
  stored sin/cos error; the bound checked is OUTPUT_ERR * sum_k |f_k| (|g_sin| + |g_cos|) plus
  fp32 accumulation (F + 4 roundings of that scale) plus the final rounding of the result.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import op_samples
import pytest
import torch
from emulation import BUILD_DIR, SCHEDULES, build_emulated, requires_emulator
from hypothesis import given, settings
from hypothesis import strategies as st
from op_samples import Sample

import inrflow.ops
from inrflow import _extension
from inrflow.ops import reference

# Defined here rather than imported from conftest: with tests/ and benchmarks/ in one pytest run,
# the module name `conftest` refers to whichever conftest.py was loaded last.
requires_extension = pytest.mark.skipif(
    not inrflow.ops.extension_available("cpu", op="fourier_embed"),
    reason="inrflow._C with the fourier_embed CPU kernel is not built "
    "(pip install --no-build-isolation -e .)",
)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[1]
FOURIER_CU = "csrc/kernels/fourier.cu"

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
CUDA_ERROR_INVALID_VALUE = 1
# Unit roundoff u of each storage dtype: rounding to it errs by at most u * |value|.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
# Largest absolute error of one stored sin/cos value (and of the forward output) per dtype.
OUTPUT_ERR = {
    torch.float64: 1e-15,
    torch.float32: 2.5e-7,
    torch.float16: 2.0**-12 + 2.5e-7,
    torch.bfloat16: 2.0**-9 + 2.5e-7,
}
# |x*f| below which the kernels use their polynomial path (inrflow::fourier::kFastRange).
FAST_RANGE = 65536.0

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def fwd_op(x: torch.Tensor, freqs: torch.Tensor, include_input: bool) -> torch.Tensor:
    return torch.ops.inrflow.fourier_embed.default(x, freqs, include_input)


def bwd_op(
    grad_out: torch.Tensor, out: torch.Tensor, freqs: torch.Tensor, include_input: bool
) -> torch.Tensor:
    return torch.ops.inrflow.fourier_embed_backward.default(grad_out, out, freqs, include_input)


def reference64(x: torch.Tensor, freqs: torch.Tensor, include_input: bool) -> torch.Tensor:
    """The reference in fp64 (x and freqs are exactly representable there)."""
    return reference.fourier_embed(x.double(), freqs, include_input)


def reference64_grad(
    x: torch.Tensor, freqs: torch.Tensor, grad_out: torch.Tensor, include_input: bool
) -> torch.Tensor:
    x64 = x.detach().double().requires_grad_()
    (grad,) = torch.autograd.grad(
        reference.fourier_embed(x64, freqs, include_input), x64, grad_out.double()
    )
    return grad


def grad_error_bound(
    freqs: torch.Tensor,
    grad_out: torch.Tensor,
    grad64: torch.Tensor,
    include_input: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Worst-case error of the backward, given the error of the saved output it reads."""
    channels = grad64.shape[-1]
    num_freqs = freqs.shape[0]
    g = grad_out.double().abs()
    if include_input:
        g = g[..., channels:]
    g = g.reshape(*g.shape[:-1], 2, channels, num_freqs)
    scale = ((g[..., 0, :, :] + g[..., 1, :, :]) * freqs.double().abs()).sum(-1)
    acc_u = 2.0**-53 if dtype == torch.float64 else 2.0**-24  # fp32 (fp64) accumulation
    rounding = UNIT_ROUNDOFF[dtype] * grad64.abs()  # of the result to the dtype
    return (OUTPUT_ERR[dtype] + (num_freqs + 4) * acc_u) * scale + rounding + 1e-300


def check_forward(out: torch.Tensor, x: torch.Tensor, freqs: torch.Tensor, inc: bool) -> None:
    want = reference64(x, freqs, inc)
    assert out.dtype == x.dtype
    assert out.shape == want.shape
    got = out.double().cpu()
    want = want.cpu()
    if inc:  # the input passes through bit-exactly
        channels = x.shape[-1]
        torch.testing.assert_close(
            got[..., :channels], want[..., :channels], rtol=0, atol=0, equal_nan=True
        )
        got, want = got[..., channels:], want[..., channels:]
    err = (got - want).abs()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), "NaN pattern differs from the reference"
    worst = err[~nan].max().item() if (~nan).any() else 0.0
    assert worst <= OUTPUT_ERR[x.dtype], f"max abs error {worst:.3g} for {x.dtype}"


def check_backward(
    grad_x: torch.Tensor, x: torch.Tensor, freqs: torch.Tensor, grad_out: torch.Tensor, inc: bool
) -> None:
    want = reference64_grad(x.cpu(), freqs.cpu(), grad_out.cpu(), inc)
    assert grad_x.dtype == x.dtype
    assert grad_x.shape == x.shape
    bound = grad_error_bound(freqs.cpu(), grad_out.cpu(), want, inc, x.dtype)
    err = (grad_x.double().cpu() - want).abs()
    excess = (err - bound).max().item() if err.numel() else 0.0
    assert excess <= 0.0, f"gradient error exceeds its bound by {excess:.3g} for {x.dtype}"


def make_x(shape: tuple[int, ...], dtype: torch.dtype, device: str, scale: float = 2.0):
    return ((torch.rand(shape, dtype=torch.float64) * 2 - 1) * scale).to(dtype).to(device)


def make_freqs(num: int, device: str, max_log2: float = 8.0) -> torch.Tensor:
    return op_samples.fourier_frequencies(num, max_log2, device)


SAMPLES = op_samples.fourier_embed()


def on(sample: Sample, device: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The sample's (x, freqs, include_input) on ``device`` (fresh tensors: tests may mutate)."""
    x, freqs, inc = sample.args
    return x.clone().to(device), freqs.clone().to(device), inc


# ------------------------------------------------------------------------------------------------
# Extension kernels (CPU; CUDA when present)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", SAMPLES, ids=op_samples.ids(SAMPLES))
def test_forward_backward_match_reference(device: str, sample: Sample) -> None:
    x, freqs, include_input = on(sample, device)
    out = fwd_op(x, freqs, include_input)
    check_forward(out, x, freqs, include_input)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(x.dtype).to(device)
    grad_x = bwd_op(grad_out, out, freqs, include_input)
    check_backward(grad_x, x, freqs, grad_out, include_input)


def _fourier_cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Random shapes, dtypes, layouts (contiguous, transposed, strided) and frequencies."""
    lead = draw(st.lists(st.integers(0, 4), max_size=3))
    channels = draw(st.integers(1, 5))
    num_freqs = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = [*lead, channels]
    if layout == "strided":  # every other element of a larger tensor
        x = torch.randn([*lead, 2 * channels], generator=gen)[..., ::2]
    elif layout == "transposed" and lead:  # leading dim swapped with the channel dim
        x = torch.randn([*lead[:-1], channels, lead[-1]], generator=gen).transpose(-1, -2)
    else:
        x = torch.randn(shape, generator=gen)
    x = (x * draw(st.floats(0.1, 4.0))).to(dtype)
    freqs = inrflow.ops.fourier_frequencies(
        num_freqs, draw(st.floats(0.0, 6.0)), log_sampling=draw(st.booleans())
    )
    return x, freqs, draw(st.booleans())


@requires_extension
@settings(max_examples=250, deadline=None)
@given(case=st.composite(_fourier_cases)())
def test_public_api_matches_reference_on_random_inputs(
    case: tuple[torch.Tensor, torch.Tensor, bool],
) -> None:
    """The public op on the extension, forward and autograd, against the fp64 reference."""
    x, freqs, include_input = case
    with inrflow.ops.use_backend("extension"):
        out = inrflow.ops.fourier_embed(x, freqs, include_input)
    check_forward(out, x, freqs, include_input)
    xg = x.detach().requires_grad_()
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    with inrflow.ops.use_backend("extension"):
        (gx,) = torch.autograd.grad(inrflow.ops.fourier_embed(xg, freqs, include_input), xg, grad)
    check_backward(gx, x, freqs, grad, include_input)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_inputs(device: str, dtype: torch.dtype) -> None:
    base = make_x((6, 9, 5), dtype, device)
    freqs_base = make_freqs(14, device)
    x = base.transpose(0, 2)[:, ::2]  # [5, 5, 6], no unit stride anywhere
    freqs = freqs_base[::2]
    assert not x.is_contiguous() and not freqs.is_contiguous()
    out = fwd_op(x, freqs, True)
    check_forward(out, x, freqs, True)
    assert torch.equal(out, fwd_op(x.contiguous(), freqs.contiguous(), True))
    grad_out = torch.randn(5, out.shape[-1], 5, dtype=torch.float64).to(dtype).to(device).mT
    out_nc = out.mT.contiguous().mT  # same values, transposed strides
    grad_x = bwd_op(grad_out, out_nc, freqs, True)
    check_backward(grad_x, x, freqs, grad_out, True)
    assert grad_x.is_contiguous()


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("low", "high"), [(0.0, 1.0), (1.0, 1e3), (1e3, FAST_RANGE), (FAST_RANGE, 1e8)]
)
def test_fp32_accuracy_over_argument_ranges(device: str, low: float, high: float) -> None:
    n = 20000
    mag = torch.rand(n, dtype=torch.float64) * (high - low) + low
    sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0).double()
    x = (mag * sign).float().reshape(-1, 1).to(device)
    freqs = torch.tensor([1.0, 0.5, 0.25, 1.0 / 3.0], device=device)
    out = fwd_op(x, freqs, False)
    check_forward(out, x, freqs, False)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_and_extreme_inputs(device: str) -> None:
    values = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -3e38, 1e-30, 65535.9]
    x = torch.tensor(values, device=device).reshape(-1, 1).expand(-1, 2)
    freqs = torch.tensor([1.0, 0.0, 3.0, 1e4], device=device)
    out = fwd_op(x, freqs, True)
    check_forward(out, x, freqs, True)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_huge_operands_with_moderate_products(device: str) -> None:
    # |x * f| is small although x (or f) alone would overflow an fp32 product split.
    x = torch.tensor([[3e37, -1e38], [2.5e-30, 1.0]], device=device)
    freqs = torch.tensor([1e-34, 2.0], device=device)
    check_forward(fwd_op(x, freqs, False), x, freqs, False)
    freqs = torch.tensor([4e33, 1e-3], device=device)
    check_forward(fwd_op(x[1:], freqs, False), x[1:], freqs, False)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_large_frequencies_take_the_exact_path(device: str) -> None:
    # One huge frequency sends whole rows to the fp64 fallback; the others must not change.
    x = make_x((64, 3), torch.float32, device)
    freqs = torch.tensor([1.0, 7.5, 3e6], device=device)
    check_forward(fwd_op(x, freqs, False), x, freqs, False)


@requires_extension
def test_cpu_baseline_dispatch_matches_reference() -> None:
    """The non-AVX2 loops (Dekker products), forced with INRFLOW_CPU_DISPATCH=baseline."""
    script = textwrap.dedent(
        """
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        import test_fourier_kernels as t
        t.test_huge_operands_with_moderate_products("cpu")
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for inc in (False, True):
                x = t.make_x((97, 3), dtype, "cpu", scale=50.0)
                freqs = t.make_freqs(37, "cpu")
                out = t.fwd_op(x, freqs, inc)
                t.check_forward(out, x, freqs, inc)
                g = torch.randn(out.shape, dtype=torch.float64).to(dtype)
                t.check_backward(t.bwd_op(g, out, freqs, inc), x, freqs, g, inc)
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
def test_outputs_repeat_bit_exactly(device: str) -> None:
    x = make_x((513, 3), torch.float32, device, scale=20.0)
    freqs = make_freqs(19, device)
    out = fwd_op(x, freqs, True)
    grad_out = torch.randn_like(out)
    grad_x = bwd_op(grad_out, out, freqs, True)
    for _ in range(3):
        assert torch.equal(fwd_op(x, freqs, True), out)
        assert torch.equal(bwd_op(grad_out, out, freqs, True), grad_x)


OPCHECK = op_samples.select(SAMPLES, "opcheck")
GRADCHECK = op_samples.select(SAMPLES, "gradcheck")
COMPILE = op_samples.select(SAMPLES, "compile")


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", OPCHECK, ids=op_samples.ids(OPCHECK))
def test_opcheck_raw_ops(device: str, sample: Sample) -> None:
    x, freqs, inc = on(sample, device)
    torch.library.opcheck(torch.ops.inrflow.fourier_embed.default, (x, freqs, inc))
    if x.dtype in (torch.float32, torch.float64):
        xg = x.clone().requires_grad_()
        torch.library.opcheck(torch.ops.inrflow.fourier_embed.default, (xg, freqs, inc))
    out = fwd_op(x, freqs, inc)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(x.dtype).to(device)
    torch.library.opcheck(
        torch.ops.inrflow.fourier_embed_backward.default, (grad_out, out, freqs, inc)
    )


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", GRADCHECK, ids=op_samples.ids(GRADCHECK))
@pytest.mark.parametrize(
    "check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck], ids=lambda c: c.__name__
)
def test_gradcheck_public_api_fp64(device: str, sample: Sample, check) -> None:
    """First and second derivatives (the backward op has its own autograd formula)."""
    x, freqs, include_input = on(sample, device)
    x.requires_grad_()
    with inrflow.ops.use_backend("extension"):
        assert check(lambda t: inrflow.ops.fourier_embed(t, freqs, include_input), (x,))
        out = inrflow.ops.fourier_embed(x, freqs, include_input)
    assert "inrflow" in type(out.grad_fn).__name__  # the registered autograd, not the reference


@requires_extension
def test_backward_takes_an_expanded_grad_out() -> None:
    # an expanded (stride-0) grad_out, as .sum() produces
    freqs = inrflow.ops.fourier_frequencies(3, 2)
    xs = torch.randn(6, 3, requires_grad=True)
    with inrflow.ops.use_backend("extension"):
        inrflow.ops.fourier_embed(xs, freqs, True).sum().backward()
    (want,) = torch.autograd.grad(reference.fourier_embed(xs, freqs, True).sum(), xs)
    torch.testing.assert_close(xs.grad, want, rtol=0, atol=1e-4)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_matches_reference(device: str) -> None:
    # A gradient penalty: d/dx of |d<w, emb(x)>/dx|^2, through the backward op's own autograd.
    x0 = make_x((5, 2), torch.float64, device)
    freqs = make_freqs(6, device, max_log2=4.0)
    w = torch.randn(5, 2 * 2 * 6 + 2, dtype=torch.float64, device=device)
    grads = {}
    for backend in ("extension", "reference"):
        x = x0.clone().requires_grad_()
        with inrflow.ops.use_backend(backend):
            (g,) = torch.autograd.grad(
                (inrflow.ops.fourier_embed(x, freqs, True) * w).sum(), x, create_graph=True
            )
            (grads[backend],) = torch.autograd.grad(g.square().sum(), x)
    torch.testing.assert_close(grads["extension"], grads["reference"], rtol=1e-10, atol=1e-10)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device: str) -> None:
    # Low frequencies: the fp32 reference's own error grows with |x*f| (it rounds the product).
    freqs = make_freqs(8, device, max_log2=3.0)

    def embed_sum(t: torch.Tensor) -> torch.Tensor:
        return (inrflow.ops.fourier_embed(t, freqs, True) * 1.5).sum(-1)

    compiled = torch.compile(embed_sum, fullgraph=True, dynamic=False)
    x = make_x((16, 3), torch.float32, device)
    with inrflow.ops.use_backend("extension"):
        xe = x.clone().requires_grad_()
        got = compiled(xe)
        (g_got,) = torch.autograd.grad(got.sum(), xe)
        eager = embed_sum(x)
    xr = x.clone().requires_grad_()
    with inrflow.ops.use_backend("reference"):
        want = embed_sum(xr)
    (g_want,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-5)


@requires_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", COMPILE, ids=op_samples.ids(COMPILE))
def test_torch_compile_traces_the_public_op(device: str, sample: Sample) -> None:
    x0, freqs, include_input = on(sample, device)
    _extension.clear_kernel_cache()  # the backend decision must be traceable from cold

    def fn(x: torch.Tensor) -> torch.Tensor:
        return inrflow.ops.fourier_embed(x, freqs, include_input=include_input).square().sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    x = x0.requires_grad_()
    y = compiled(x)
    torch.testing.assert_close(y, fn(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    (want,) = torch.autograd.grad(fn(x).sum(), x)
    torch.testing.assert_close(g, want)
    torch._dynamo.reset()


@requires_extension
def test_fake_kernel_gives_meta_outputs() -> None:
    freqs = inrflow.ops.fourier_frequencies(4, 3)
    with inrflow.ops.use_backend("extension"):
        meta = inrflow.ops.fourier_embed(
            torch.empty(2, 5, 3, device="meta"), freqs.to("meta"), True
        )
    assert meta.shape == (2, 5, 27) and meta.device.type == "meta"


# Bad inputs to the raw ops: TORCH_CHECK raises RuntimeError naming the problem.
BAD_FORWARD = [
    ("int-x", lambda: (torch.ones(3, 2, dtype=torch.int32), torch.ones(2)), "x must be float32"),
    ("scalar-x", lambda: (torch.tensor(1.0), torch.ones(2)), "at least one dimension"),
    ("freqs-2d", lambda: (torch.ones(3, 2), torch.ones(2, 2)), "freqs must be 1-D"),
    (
        "freqs-f64",
        lambda: (torch.ones(3, 2), torch.ones(2, dtype=torch.float64)),
        "freqs must be float32",
    ),
    ("freqs-empty", lambda: (torch.ones(3, 2), torch.ones(0)), "at least one frequency"),
    (
        "huge-row",
        lambda: (torch.ones(1, 1).expand(1, 2**30), torch.ones(2)),
        "exceeds the kernel limit",
    ),
]


@requires_extension
@pytest.mark.parametrize(("name", "make", "match"), BAD_FORWARD, ids=[b[0] for b in BAD_FORWARD])
def test_forward_rejects_bad_inputs(name: str, make, match: str) -> None:
    x, freqs = make()
    with pytest.raises(RuntimeError, match=match):
        fwd_op(x, freqs, False)


@requires_extension
@requires_cuda
def test_forward_rejects_mixed_devices() -> None:
    with pytest.raises(RuntimeError, match="same device"):
        fwd_op(torch.ones(3, 2, device="cuda"), torch.ones(2), False)
    with pytest.raises(RuntimeError, match="same device"):
        bwd_op(
            torch.ones(3, 4, device="cuda"), torch.ones(3, 4, device="cuda"), torch.ones(1), False
        )


def _bad_backward() -> list[tuple]:
    f = torch.ones(3)
    out = torch.ones(4, 12)
    return [
        ("shape", (torch.ones(4, 13), torch.ones(4, 13), f, False), "not a multiple of 2 \\* F"),
        ("shape-inc", (out, out, f, True), "not a multiple of 2 \\* F \\+ 1"),
        ("grad-shape", (torch.ones(3, 12), out, f, False), "same shape"),
        ("dtype", (out.double(), out, f, False), "same dtype"),
        ("int", (out.int(), out.int(), f, False), "out must be float32"),
        ("scalar", (torch.tensor(1.0), torch.tensor(1.0), f, False), "at least one dimension"),
        ("freqs", (out, out, f.double(), False), "freqs must be float32"),
    ]


@requires_extension
@pytest.mark.parametrize(("name", "args", "match"), _bad_backward(), ids=lambda v: str(v)[:12])
def test_backward_rejects_bad_inputs(name: str, args: tuple, match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        bwd_op(*args)


@requires_extension
def test_public_api_raises_value_error_for_empty_freqs() -> None:
    with pytest.raises(ValueError, match="at least one frequency"):
        inrflow.ops.fourier_embed(torch.ones(3, 2), torch.ones(0))


# ------------------------------------------------------------------------------------------------
# Emulated CUDA kernel (the unchanged csrc/kernels/fourier.cu on the CPU)

_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_PTR = ctypes.c_void_p


@pytest.fixture(scope="module")
def emulated():
    """(library, forward launcher, backward launcher) of the emulated fourier.cu."""
    lib = build_emulated([FOURIER_CU], "fourier")
    # (dtype code, inputs..., output, rows, channels, num_freqs, include_input, stream)
    sizes = (_I64, _I64, _I64, _I32, _PTR)
    fwd = lib.function("inrflow_fourier_embed_forward", _I32, _I32, *(_PTR,) * 3, *sizes)
    bwd = lib.function("inrflow_fourier_embed_backward", _I32, _I32, *(_PTR,) * 4, *sizes)
    return lib, fwd, bwd


def _ptr(t: torch.Tensor) -> int | None:
    return t.data_ptr() if t.numel() else None


def emulated_forward(emulated, x: torch.Tensor, freqs: torch.Tensor, inc: bool) -> torch.Tensor:
    lib, fwd, _ = emulated
    rows, channels = x.shape
    width = channels * (2 * freqs.shape[0] + int(inc))
    out = torch.full((rows, width), float("nan"), dtype=x.dtype)
    rc = fwd(
        DTYPE_CODE[x.dtype],
        _ptr(x),
        _ptr(freqs),
        _ptr(out),
        rows,
        channels,
        freqs.shape[0],
        int(inc),
        None,
    )
    assert rc == 0, lib.last_error()
    return out


def emulated_backward(emulated, grad_out, out, freqs, inc: bool, channels: int) -> torch.Tensor:
    lib, _, bwd = emulated
    grad_x = torch.full((out.shape[0], channels), float("nan"), dtype=out.dtype)
    rc = bwd(
        DTYPE_CODE[out.dtype],
        _ptr(grad_out),
        _ptr(out),
        _ptr(freqs),
        _ptr(grad_x),
        out.shape[0],
        channels,
        freqs.shape[0],
        int(inc),
        None,
    )
    assert rc == 0, lib.last_error()
    return grad_x


EMULATED = op_samples.select(SAMPLES, "emulator")


@requires_emulator
@pytest.mark.emulated
@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("include_input", [False, True])
def test_emulated_cuda_kernels_match_reference(
    emulated, order: str, seed: int, dtype: torch.dtype, include_input: bool
) -> None:
    lib = emulated[0]
    lib.set_schedule(order, seed)
    cases = [s for s in EMULATED if s.args[0].dtype == dtype and s.args[2] == include_input]
    assert cases
    for sample in cases:
        x, freqs, _ = on(sample, "cpu")
        x = x.reshape(-1, x.shape[-1])  # the launchers take [rows, channels]
        out = emulated_forward(emulated, x, freqs, include_input)
        check_forward(out, x, freqs, include_input)
        grad_out = torch.randn(out.shape, dtype=torch.float64).to(dtype)
        grad_x = emulated_backward(emulated, grad_out, out, freqs, include_input, x.shape[1])
        check_backward(grad_x, x, freqs, grad_out, include_input)


@requires_emulator
@pytest.mark.emulated
def test_emulated_large_and_non_finite_arguments(emulated) -> None:
    emulated[0].set_schedule("random", 3)
    values = [float("nan"), float("inf"), 0.0, 1e30, 7e4, 65535.9, -1e3, 3.25]
    x = torch.tensor(values).reshape(-1, 1).repeat(1, 3)
    freqs = torch.tensor([1.0, 0.0, 1e4, 0.125])
    check_forward(emulated_forward(emulated, x, freqs, True), x, freqs, True)


@requires_emulator
@pytest.mark.emulated
def test_emulated_launchers_reject_bad_arguments(emulated) -> None:
    lib, fwd, bwd = emulated
    x = torch.ones(4, 2)
    freqs = torch.ones(3)
    out = torch.empty(4, 12)
    p = x.data_ptr(), freqs.data_ptr(), out.data_ptr()
    assert fwd(7, *p, 4, 2, 3, 0, None) == CUDA_ERROR_INVALID_VALUE  # unknown dtype
    assert fwd(0, *p, 4, 2, 0, 0, None) == CUDA_ERROR_INVALID_VALUE  # no frequencies
    assert fwd(0, *p, -1, 2, 3, 0, None) == CUDA_ERROR_INVALID_VALUE  # negative rows
    assert fwd(0, None, p[1], p[2], 4, 2, 3, 0, None) == CUDA_ERROR_INVALID_VALUE
    assert fwd(0, *p, 1, 2**31, 3, 0, None) == CUDA_ERROR_INVALID_VALUE  # row too wide
    assert bwd(7, p[2], p[2], p[1], p[0], 4, 2, 3, 0, None) == CUDA_ERROR_INVALID_VALUE
    assert bwd(0, p[2], p[2], p[1], p[0], 4, 2, 0, 0, None) == CUDA_ERROR_INVALID_VALUE
    assert fwd(0, None, None, None, 0, 2, 3, 0, None) == 0  # nothing to do
    assert lib.last_error() is None


# ------------------------------------------------------------------------------------------------
# The shared header on its own

_PROBE_SOURCE = r"""
#include <cstdint>
#include "inrflow/fourier.h"

extern "C" uint32_t probe_div(uint32_t d, uint32_t n) {
  return inrflow::fourier::DivMod32::make(d).div(n);
}

// mode 0: FMA path (CUDA, AVX2 host); 1: no-FMA path (baseline host); 2: sincos_mul.
extern "C" void probe_sincos(const float* x, const float* f, float* s, float* c, int64_t n,
                             int32_t mode) {
  using namespace inrflow::fourier;
  for (int64_t i = 0; i < n; ++i) {
    if (mode == 2) {
      sincos_mul(x[i], f[i], s[i], c[i]);
      continue;
    }
    float lo;
    if (mode == 0) {
      const float hi = two_prod_fma(x[i], f[i], lo);
      sincos_reduced<true>(hi, lo, s[i], c[i]);
    } else {
      const float hi = two_prod_split(x[i], f[i], lo);
      sincos_reduced<false>(hi, lo, s[i], c[i]);
    }
  }
}
"""


@pytest.fixture(scope="module")
def probe():
    # A fixed path under build/ keeps the emulator's build cache valid across sessions.
    src = BUILD_DIR / "fourier_probe" / "fourier_probe.cu"
    if not src.is_file() or src.read_text() != _PROBE_SOURCE:
        src.parent.mkdir(parents=True, exist_ok=True)
        tmp = src.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_PROBE_SOURCE)
        os.replace(tmp, src)
    lib = build_emulated([src], "fourier_probe")
    div = lib.function("probe_div", ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32)
    sincos = lib.function("probe_sincos", None, _PTR, _PTR, _PTR, _PTR, _I64, _I32)
    return div, sincos


@requires_emulator
def test_divmod32_matches_integer_division(probe) -> None:
    div = probe[0]
    gen = torch.Generator().manual_seed(5)
    divisors = [1, 2, 3, 5, 7, 15, 64, 66, 641, 1400, 6700417, 2**31 - 1, 2**30 + 1, 2**16 + 1]
    divisors += torch.randint(1, 2**31 - 1, (40,), generator=gen).tolist()
    for d in divisors:
        numerators = [0, 1, d - 1, d, d + 1, 2**31 - 1, 2**32 - 1, 2**32 - 2, 4 * d - 1]
        numerators += torch.randint(0, 2**32 - 1, (50,), generator=gen).tolist()
        for n in numerators:
            n %= 2**32
            assert div(d, n) == n // d, (d, n)


@requires_emulator
@pytest.mark.parametrize("mode", [0, 1, 2], ids=["fma", "dekker", "sincos_mul"])
def test_shared_sincos_accuracy(probe, mode: int) -> None:
    sincos = probe[1]
    n = 200000
    high = FAST_RANGE if mode < 2 else 1e9
    x = ((torch.rand(n, dtype=torch.float64) * 2 - 1) * high).float()
    x[:8] = torch.tensor([0.0, -0.0, 1e-30, 0.7853982, 1.5707964, 3.1415927, -FAST_RANGE, 1.0])
    f = torch.ones(n)
    f[n // 2 :] = torch.rand(n - n // 2) * 3  # products that are not exact in fp32
    x[n // 2 :] /= 3.0
    s = torch.empty(n)
    c = torch.empty(n)
    sincos(x.data_ptr(), f.data_ptr(), s.data_ptr(), c.data_ptr(), n, mode)
    a = x.double() * f.double()
    err = torch.maximum((s.double() - a.sin()).abs(), (c.double() - a.cos()).abs())
    assert err.max().item() <= 2.5e-7, err.max().item()
