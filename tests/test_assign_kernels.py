"""The assignment kernels (nearest_assign, grid_assign, group_layout) against the reference.

* The extension's CPU kernels through the raw ops ``torch.ops.inrflow.*``: every dtype, d = 1..8,
  ties, duplicate points and centres, K across centre tiles, N off the point blocks, B > 1 with
  per-sample and shared centres, empty groups, non-contiguous inputs, opcheck, torch.compile.
* The unchanged ``csrc/kernels/assign.cu`` run on the CPU by the SIMT emulator under every thread
  schedule in ``SCHEDULES`` (stability of group_layout must not depend on the order).
* Hypothesis property tests of both against the reference, input errors, the pseudo-coordinate
  generators, and the model's encoder using the kernels by default.

Results must be *identical* to the reference (indices, not approximations): the kernels evaluate
distances with the reference's rounded operations (csrc/include/inrflow/assign.h).
"""

from __future__ import annotations

import ctypes
import itertools

import op_samples
import pytest
import torch
from emulation import SCHEDULES, build_emulated, requires_emulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_samples import Sample, grid_cases, grid_points, rand, tie_points

import inrflow.ops as ops
from inrflow.ops import reference as ref

requires_extension = pytest.mark.skipif(
    not ops.extension_available("cpu", op="nearest_assign"),
    reason="inrflow._C with the assignment CPU kernels is not built "
    "(pip install --no-build-isolation -e .)",
)
requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.extension_available("cuda", op="nearest_assign")),
    reason="needs a CUDA GPU and the CUDA kernels",
)

ASSIGN_CU = "csrc/kernels/assign.cu"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
CUDA_ERROR_INVALID_VALUE = 1
MAX_DIM = 8
HYPO = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def nearest_op(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    return torch.ops.inrflow.nearest_assign.default(points, centers)


def grid_op(points, shape, low, high) -> torch.Tensor:
    return torch.ops.inrflow.grid_assign.default(points, list(shape), list(low), list(high))


def layout_op(assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.inrflow.group_layout.default(assign, k)


NEAREST = op_samples.nearest_assign()
GRID = op_samples.grid_assign()
LAYOUT = op_samples.group_layout()


def check_nearest(sample: Sample, out: torch.Tensor) -> None:
    points, centers = sample.args
    assert torch.equal(out, ref.nearest_assign(points, centers))
    if "first_copy_below" in sample.meta:
        assert (out < sample.meta["first_copy_below"]).all()


# ------------------------------------------------------------------------------------------------
# CPU kernels


@requires_extension
@pytest.mark.parametrize("sample", NEAREST, ids=op_samples.ids(NEAREST))
def test_cpu_nearest_matches_reference(sample: Sample) -> None:
    check_nearest(sample, nearest_op(*sample.args))


@requires_extension
@pytest.mark.parametrize("d", [2, 3, 5])
def test_cpu_nearest_across_centre_tiles_and_duplicates(d: int) -> None:
    # K = 5000 spans several 16 KiB centre tiles; duplicated centres must resolve to the first.
    centers = rand((2500, d), torch.float32, 1)
    centers = torch.cat([centers, centers])  # index i and i + 2500 are identical
    points = torch.cat([rand((700, d), torch.float32, 2), centers[:300]])
    out = nearest_op(points, centers)
    assert torch.equal(out, ref.nearest_assign(points, centers))
    assert (out < 2500).all()
    assert torch.equal(out[700:], torch.arange(300))


@requires_extension
def test_cpu_nearest_edge_cases() -> None:
    # known answers (the samples compare the same inputs with the reference)
    centers = rand((4, 2), torch.float32, 0)
    assert nearest_op(torch.empty(0, 2), centers).shape == (0,)
    assert nearest_op(torch.empty(3, 0, 2), centers).shape == (3, 0)
    # all points equidistant from all centres (single centre repeated): index 0
    assert nearest_op(torch.zeros(5, 3), torch.ones(7, 3)).eq(0).all()
    # overflowing distances tie at +inf: index 0, as the reference
    assert nearest_op(torch.full((2, 2), 3e38), torch.full((2, 2), -3e38)).eq(0).all()


@requires_extension
@pytest.mark.parametrize("sample", GRID, ids=op_samples.ids(GRID))
def test_cpu_grid_matches_reference(sample: Sample) -> None:
    points, shape, low, high = sample.args
    out = grid_op(*sample.args)
    assert torch.equal(out, ref.grid_assign(points, shape, low, high))
    # identical to the brute force on the grid's centres
    centers = ref.grid_centers(shape, low, high, dtype=points.dtype)
    assert torch.equal(out, nearest_op(points, centers))


def check_layout(assign: torch.Tensor, k: int, perm: torch.Tensor, offsets: torch.Tensor) -> None:
    p_ref, o_ref = ref.group_layout(assign, k)
    assert perm.dtype == torch.int64 and offsets.dtype == torch.int32
    assert torch.equal(perm, p_ref)
    assert torch.equal(offsets, o_ref)


@requires_extension
@pytest.mark.parametrize("sample", LAYOUT, ids=op_samples.ids(LAYOUT))
def test_cpu_group_layout_matches_reference(sample: Sample) -> None:
    check_layout(*sample.args, *layout_op(*sample.args))


@requires_extension
def test_cpu_raw_ops_reject_bad_input() -> None:
    p, c = torch.randn(5, 2), torch.randn(3, 2)
    with pytest.raises(RuntimeError, match="same coordinate dimension"):
        nearest_op(p, torch.randn(3, 3))
    with pytest.raises(RuntimeError, match="K = 0"):
        nearest_op(p, torch.randn(0, 2))
    with pytest.raises(RuntimeError, match="d <= 8"):
        nearest_op(torch.randn(5, 9), torch.randn(3, 9))
    with pytest.raises(RuntimeError, match="same dtype"):
        nearest_op(p, c.double())
    with pytest.raises(RuntimeError, match="batch sizes differ"):
        nearest_op(torch.randn(2, 5, 2), torch.randn(3, 3, 2))
    with pytest.raises(RuntimeError, match="float32, float16"):
        nearest_op(p.int(), c.int())
    with pytest.raises(RuntimeError, match="low < high"):
        grid_op(p, (2, 2), (0.0, 1.0), (1.0, 1.0))
    with pytest.raises(RuntimeError, match="axes but the points"):
        grid_op(p, (2, 2, 2), (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(RuntimeError, match="outside"):
        layout_op(torch.tensor([[0, 3]]), 3)
    with pytest.raises(RuntimeError, match="outside"):
        layout_op(torch.tensor([[-1, 0]]), 3)
    with pytest.raises(RuntimeError, match="overflow"):
        layout_op(torch.zeros(3, 1, dtype=torch.int64), 2**30)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        layout_op(torch.zeros(3), 2)


def test_public_api_rejects_bad_input() -> None:
    p = torch.randn(5, 2)
    with pytest.raises(ValueError, match="NaN"):
        ops.nearest_assign(torch.tensor([[0.0, float("nan")]]), p)
    with pytest.raises(ValueError, match="K = 0"):
        ops.nearest_assign(p, torch.empty(0, 2))
    with pytest.raises(ValueError, match="same coordinate dimension"):
        ops.nearest_assign(p, torch.randn(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        ops.grid_assign(torch.tensor([[float("nan"), 0.0]]), (2, 2), 0.0, 1.0)
    with pytest.raises(ValueError, match="must lie in"):
        ops.group_layout(torch.tensor([[0, 5]]), 3)
    with pytest.raises(ValueError, match="overflow"):
        ops.group_layout(torch.zeros(3, 1, dtype=torch.int64), 2**30)


def test_public_api_takes_high_d_on_the_reference() -> None:
    points, centers = torch.randn(40, 10), torch.randn(6, 10)
    assert torch.equal(ops.nearest_assign(points, centers), ref.nearest_assign(points, centers))


OPCHECK = [
    (name, sample)
    for name, samples in (
        ("nearest_assign", NEAREST),
        ("grid_assign", GRID),
        ("group_layout", LAYOUT),
    )
    for sample in op_samples.select(samples, "opcheck")
]
COMPILE = op_samples.select(NEAREST, "compile")


@requires_extension
@pytest.mark.parametrize(("op", "sample"), OPCHECK, ids=[f"{o}-{s.name}" for o, s in OPCHECK])
def test_opcheck(op: str, sample: Sample) -> None:
    torch.library.opcheck(getattr(torch.ops.inrflow, op).default, sample.args)


@requires_extension
@pytest.mark.parametrize("sample", COMPILE, ids=op_samples.ids(COMPILE))
def test_compile_assign_then_layout(sample: Sample) -> None:
    points, centers = sample.args

    def fn(p, c):
        idx = ops.nearest_assign(p, c, validate=False)
        return ops.group_layout(idx, c.shape[-2], validate=False)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    perm, offsets = compiled(points, centers)
    p_ref, o_ref = ref.group_layout(ref.nearest_assign(points, centers), centers.shape[-2])
    assert torch.equal(perm, p_ref) and torch.equal(offsets, o_ref)


@requires_extension
@HYPO
@given(
    batch=st.integers(1, 3),
    n=st.integers(0, 300),
    k=st.integers(1, 70),
    d=st.integers(1, MAX_DIM),
    shared=st.booleans(),
    ties=st.booleans(),
    dtype=st.sampled_from(ALL_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_cpu_nearest_property(batch, n, k, d, shared, ties, dtype, seed) -> None:
    make = tie_points if ties else rand
    points = make((batch, n, d), dtype, seed)
    centers = make((k, d) if shared else (batch, k, d), dtype, seed + 1)
    assert torch.equal(nearest_op(points, centers), ref.nearest_assign(points, centers))


@requires_extension
@HYPO
@given(
    batch=st.integers(1, 3),
    n=st.integers(0, 400),
    k=st.integers(1, 50),
    seed=st.integers(0, 2**16),
    int32=st.booleans(),
)
def test_cpu_group_layout_property(batch, n, k, seed, int32) -> None:
    g = torch.Generator().manual_seed(seed)
    used = torch.randint(0, k, (max(1, k // 3),), generator=g)  # some groups stay empty
    assign = used[torch.randint(0, used.numel(), (batch, n), generator=g)]
    assign = assign.to(torch.int32 if int32 else torch.int64)
    check_layout(assign, k, *layout_op(assign, k))


# ------------------------------------------------------------------------------------------------
# Emulated CUDA kernels

_I32, _I64, _PTR = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p


class GridSpec(ctypes.Structure):
    _fields_ = [  # ctypes layout of inrflow::assign::GridSpec
        ("dims", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIM),
        ("axis_offset", ctypes.c_int64 * MAX_DIM),
        ("low", ctypes.c_double * MAX_DIM),
        ("step", ctypes.c_double * MAX_DIM),
    ]


class Emulated:
    def __init__(self) -> None:
        self.lib = build_emulated([ASSIGN_CU], "assign")
        f = self.lib.function
        self.nearest = f("inrflow_nearest_assign", _I32, _I32, _PTR, _PTR, _PTR, *[_I64] * 6, _PTR)
        self.grid = f("inrflow_grid_assign", _I32, _I32, _PTR, _PTR, GridSpec, _PTR, _I64, _PTR)
        self.workspace = f("inrflow_group_layout_workspace", _I64, _I64, _I64, _I64)
        self.layout = f(
            "inrflow_group_layout", _I32, _I32, _PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _I64, _PTR
        )


@pytest.fixture(scope="module")
def emulated() -> Emulated:
    return Emulated()


def _ptr(t: torch.Tensor) -> int | None:
    return t.data_ptr() if t.numel() else None


def emulated_nearest(em: Emulated, points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    batched = points.dim() == 3 or centers.dim() == 3
    pts = points.contiguous()
    ctr = centers.contiguous()
    n, d, k = pts.shape[-2], pts.shape[-1], ctr.shape[-2]
    batch = max(pts.shape[0] if pts.dim() == 3 else 1, ctr.shape[0] if ctr.dim() == 3 else 1)
    out = torch.full((batch, n), -7, dtype=torch.int64)
    rc = em.nearest(
        DTYPE_CODE[pts.dtype],
        _ptr(pts),
        _ptr(ctr),
        _ptr(out),
        batch,
        n,
        k,
        d,
        n * d if pts.dim() == 3 else 0,
        k * d if ctr.dim() == 3 else 0,
        None,
    )
    assert rc == 0, em.lib.last_error()
    return out if batched else out[0]


def emulated_grid(em: Emulated, points: torch.Tensor, shape, low, high) -> torch.Tensor:
    compute = torch.float64 if points.dtype == torch.float64 else torch.float32
    table = torch.cat(
        [
            ref._axis_centers(n, lo, hi, points.dtype, "cpu").to(compute)
            for n, lo, hi in zip(shape, low, high, strict=True)
        ]
    )
    spec = GridSpec()
    spec.dims = len(shape)
    offset = 0
    for j, (n, lo, hi) in enumerate(zip(shape, low, high, strict=True)):
        spec.shape[j], spec.axis_offset[j] = n, offset
        spec.low[j], spec.step[j] = lo, (hi - lo) / n
        offset += n
    pts = points.contiguous()
    out = torch.full(pts.shape[:-1], -7, dtype=torch.int64)
    rc = em.grid(DTYPE_CODE[pts.dtype], _ptr(pts), _ptr(table), spec, _ptr(out), out.numel(), None)
    assert rc == 0, em.lib.last_error()
    return out


def emulated_layout(em: Emulated, assign: torch.Tensor, k: int):
    rows = assign.contiguous() if assign.dim() == 2 else assign.reshape(1, -1)
    batch, n = rows.shape
    slots = em.workspace(batch, n, k)
    assert slots >= 0
    workspace = torch.full((max(slots, 1),), 12345, dtype=torch.int32)  # garbage: must be reset
    perm = torch.full(assign.shape, -7, dtype=torch.int64)
    offsets = torch.full((batch * k + 1,), -7, dtype=torch.int32)
    rc = em.layout(
        rows.element_size(),
        _ptr(rows),
        batch,
        n,
        k,
        _ptr(perm),
        _ptr(offsets),
        workspace.data_ptr(),
        slots,
        None,
    )
    assert rc == 0, em.lib.last_error()
    return perm, offsets


def for_schedule(samples: list[Sample], seed: int) -> list[Sample]:
    """The emulator samples paired with the schedules of ``seed`` (see op_samples.Sample)."""
    chosen = op_samples.select(samples, "emulator")
    return [s for s in chosen if s.meta.get("schedule_seed", seed) == seed]


@requires_emulator
@pytest.mark.emulated
@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_emulated_nearest_matches_reference(emulated, order: str, seed: int) -> None:
    emulated.lib.set_schedule(order, seed)
    for sample in for_schedule(NEAREST, seed):
        check_nearest(sample, emulated_nearest(emulated, *sample.args))


@requires_emulator
@pytest.mark.emulated
@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_emulated_grid_matches_reference(emulated, order: str, seed: int) -> None:
    emulated.lib.set_schedule(order, seed)
    for sample in for_schedule(GRID, seed):
        points, shape, low, high = sample.args
        expect = ref.grid_assign(points, shape, low, high)
        assert torch.equal(emulated_grid(emulated, *sample.args), expect)


@requires_emulator
@pytest.mark.emulated
@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_emulated_group_layout_is_a_stable_sort(emulated, order: str, seed: int) -> None:
    emulated.lib.set_schedule(order, seed)
    for sample in for_schedule(LAYOUT, seed):
        check_layout(*sample.args, *emulated_layout(emulated, *sample.args))


@requires_emulator
@pytest.mark.emulated
def test_emulated_launchers_reject_bad_arguments(emulated) -> None:
    em = emulated
    buf = torch.zeros(64, dtype=torch.float32)
    out = torch.zeros(64, dtype=torch.int64)
    p = buf.data_ptr()
    bad = [
        em.nearest(0, p, p, out.data_ptr(), 1, 4, 0, 2, 0, 0, None),  # K = 0
        em.nearest(0, p, p, out.data_ptr(), 1, 4, 2, 9, 0, 0, None),  # d > 8
        em.nearest(9, p, p, out.data_ptr(), 1, 4, 2, 2, 0, 0, None),  # dtype code
        em.nearest(0, None, p, out.data_ptr(), 1, 4, 2, 2, 0, 0, None),  # null pointer
        em.layout(2, p, 1, 4, 3, out.data_ptr(), p, p, 64, None),  # index size
        em.layout(8, p, 1, 4, 3, out.data_ptr(), p, p, 0, None),  # workspace too small
        em.layout(8, p, 2, 4, 2**30, out.data_ptr(), p, p, 2**40, None),  # int32 offsets overflow
    ]
    assert bad == [CUDA_ERROR_INVALID_VALUE] * len(bad)
    spec = GridSpec()
    spec.dims = 9
    assert em.grid(0, p, p, spec, out.data_ptr(), 4, None) == CUDA_ERROR_INVALID_VALUE


@requires_emulator
@pytest.mark.emulated
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 300),
    k=st.integers(1, 300),
    d=st.integers(1, MAX_DIM),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_emulated_property(emulated, n, k, d, ties, seed) -> None:
    emulated.lib.set_schedule("random", seed)
    make = tie_points if ties else rand
    points = make((2, n, d), torch.float32, seed)
    centers = make((2, k, d), torch.float32, seed + 1)
    expect = ref.nearest_assign(points, centers)
    assert torch.equal(emulated_nearest(emulated, points, centers), expect)
    g = torch.Generator().manual_seed(seed)
    assign = torch.randint(0, k, (2, n), generator=g)
    check_layout(assign, k, *emulated_layout(emulated, assign, k))


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@requires_cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_cuda_kernels_match_reference(dtype: torch.dtype) -> None:
    for d, make in itertools.product(range(1, MAX_DIM + 1), (rand, tie_points)):
        points = make((3, 1000, d), dtype, d).cuda()
        centers = make((3, 300, d), dtype, d + 1).cuda()
        assert torch.equal(nearest_op(points, centers), ref.nearest_assign(points, centers))
        assert torch.equal(nearest_op(points, centers[0]), ref.nearest_assign(points, centers[0]))
    for shape, low, high in grid_cases():
        points = grid_points(shape, low, high, dtype, 0).cuda()
        expect = ref.grid_assign(points, shape, low, high)
        assert torch.equal(grid_op(points, shape, low, high), expect)
    for batch, n, k in [(2, 70000, 5), (3, 1000, 3000), (2, 0, 4)]:
        assign = torch.randint(0, k, (batch, n), device="cuda")
        check_layout(assign, k, *layout_op(assign, k))
        check_layout(assign.int(), k, *layout_op(assign.int(), k))


# ------------------------------------------------------------------------------------------------
# Generators and the model


def test_generators_are_deterministic_per_seed() -> None:
    from inrflow.ops import pseudo_coords as pc

    a = pc.kmeans_pp_centers(32, 3, -1.0, 1.0, seed=3, sample=2000, lloyd_steps=3)
    b = pc.kmeans_pp_centers(32, 3, -1.0, 1.0, seed=3, sample=2000, lloyd_steps=3)
    c = pc.kmeans_pp_centers(32, 3, -1.0, 1.0, seed=4, sample=2000, lloyd_steps=3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with ops.use_backend("reference"):  # the kernels are bit-identical: same centres
        assert torch.equal(
            a, pc.kmeans_pp_centers(32, 3, -1.0, 1.0, seed=3, sample=2000, lloyd_steps=3)
        )
    pts = torch.rand(3000, 3) * 2 - 1
    h1, c1 = pc.hash_assign(pts, 8, 64, -1.0, 1.0, seed=1)
    h2, c2 = pc.hash_assign(pts, 8, 64, -1.0, 1.0, seed=1)
    h3, _ = pc.hash_assign(pts, 8, 64, -1.0, 1.0, seed=2)
    assert torch.equal(h1, h2) and torch.equal(c1, c2) and not torch.equal(h1, h3)
    # the voxel is the grid cell of grid_assign: its centre is the nearest voxel centre
    centres = ops.grid_centers((8, 8, 8), -1.0, 1.0)
    vox = ops.grid_assign(pts, (8, 8, 8), -1.0, 1.0)
    torch.testing.assert_close(c1, centres[vox])


def test_model_reexports_the_generators() -> None:
    from inrflow.model import latent_grouping as model_pc
    from inrflow.ops import pseudo_coords as pc

    for name in ("grid_coords", "random_centers", "kmeans_pp", "kmeans_pp_centers", "hash_assign"):
        assert getattr(model_pc, name) is getattr(pc, name)


@requires_extension
@pytest.mark.parametrize("kind", ["grid", "kmeans++"])
def test_encoder_uses_the_kernels_by_default(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    from inrflow.model import build_model

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reference was called although a kernel is registered")

    model = build_model("tiny", pseudo_coords=kind).eval()
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(2, 64, 2, generator=g)
    values = torch.randn(2, 64, 3, generator=g)
    t = torch.rand(2, generator=g)
    with torch.no_grad(), ops.use_backend("reference"):
        expect = model(coords, values, t, coords, values)
    for name in ("nearest_assign", "grid_assign", "group_layout"):
        monkeypatch.setattr(ref, name, boom)
    with torch.no_grad():
        out = model(coords, values, t, coords, values)
    torch.testing.assert_close(out, expect)
