"""The pure-PyTorch references against naive loops: they are the ground truth of every other test,
so here they are checked against code too simple to be wrong."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from inrflow.ops import reference as ref

# ------------------------------------------------------------------------------------------------
# fourier_embed


def _fourier_loop(x: torch.Tensor, freqs: torch.Tensor, include_input: bool) -> torch.Tensor:
    """Element by element in Python floats (fp64), in the documented layout."""
    rows = x.reshape(-1, x.shape[-1]).tolist()
    fs = freqs.tolist()
    out = []
    for row in rows:
        sin = [math.sin(xc * f) for xc in row for f in fs]  # index c*F + k
        cos = [math.cos(xc * f) for xc in row for f in fs]
        out.append((row if include_input else []) + sin + cos)
    width = x.shape[-1] * (2 * len(fs) + include_input)
    return torch.tensor(out, dtype=torch.float64).reshape(*x.shape[:-1], width)


@pytest.mark.parametrize("include_input", [False, True])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2), (0, 3), (2, 0, 1)])
def test_fourier_embed_matches_loop_fp64(shape: tuple[int, ...], include_input: bool) -> None:
    x = torch.randn(shape, dtype=torch.float64) * 3
    freqs = torch.tensor([0.5, math.pi, 7.25], dtype=torch.float32)
    out = ref.fourier_embed(x, freqs, include_input)
    torch.testing.assert_close(out, _fourier_loop(x, freqs, include_input), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, 2e-5), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)]
)
def test_fourier_embed_low_precision(dtype: torch.dtype, atol: float) -> None:
    x = (torch.rand(6, 3) * 4 - 2).to(dtype)
    freqs = torch.tensor([1.0, 2.0, 4.0, 8.0])
    out = ref.fourier_embed(x, freqs, include_input=True)
    assert out.dtype == dtype and out.shape == (6, 3 * 9)
    assert torch.equal(out[:, :3], x)  # the input block is copied exactly
    expect = _fourier_loop(x.double(), freqs, True)
    torch.testing.assert_close(out.double(), expect, rtol=0, atol=atol)


def test_fourier_embed_layout_is_channel_major() -> None:
    x = torch.tensor([[0.25, -1.5]])
    freqs = torch.tensor([1.0, 3.0, 5.0])
    out = ref.fourier_embed(x, freqs)
    c, k = 1, 2  # sin block at c*F + k, cos block after all C*F sines
    assert out[0, c * 3 + k].item() == pytest.approx(math.sin(-1.5 * 5.0), abs=1e-6)
    assert out[0, 6 + c * 3 + k].item() == pytest.approx(math.cos(-1.5 * 5.0), abs=1e-6)


def test_fourier_embed_differentiable() -> None:
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    freqs = torch.tensor([1.0, 2.5])
    assert torch.autograd.gradcheck(lambda t: ref.fourier_embed(t, freqs, True), (x,))


@pytest.mark.parametrize("log_sampling", [True, False])
@pytest.mark.parametrize("num", [1, 2, 6])
def test_fourier_frequencies(num: int, log_sampling: bool) -> None:
    f = ref.fourier_frequencies(num, 5.0, scale=2.0, log_sampling=log_sampling)
    assert f.dtype == torch.float32 and f.shape == (num,)
    if log_sampling:
        expect = [2.0 * 2.0 ** (5.0 * i / (num - 1)) if num > 1 else 2.0 for i in range(num)]
    else:
        expect = [2.0 * (1 + 31.0 * i / (num - 1)) if num > 1 else 2.0 for i in range(num)]
    torch.testing.assert_close(f, torch.tensor(expect, dtype=torch.float32))


# ------------------------------------------------------------------------------------------------
# nearest_assign


def _nearest_loop(points: list[list[float]], centers: list[list[float]]) -> list[int]:
    """Double loop in Python floats; strict < keeps the lowest index on ties."""
    out = []
    for p in points:
        best, best_i = math.inf, -1
        for i, c in enumerate(centers):
            d = 0.0
            for pj, cj in zip(p, c, strict=True):
                d = d + (pj - cj) * (pj - cj)
            if d < best:
                best, best_i = d, i
        out.append(best_i)
    return out


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 5), (40, 13), (0, 3)])
def test_nearest_assign_matches_double_loop(n: int, k: int, d: int) -> None:
    points = torch.randn(n, d, dtype=torch.float64)
    centers = torch.randn(k, d, dtype=torch.float64)
    got = ref.nearest_assign(points, centers)
    assert got.dtype == torch.int64 and got.shape == (n,)
    assert got.tolist() == _nearest_loop(points.tolist(), centers.tolist())


def test_nearest_assign_matches_full_distance_matrix() -> None:
    points = torch.rand(300, 3)
    centers = torch.rand(64, 3)
    full = ((points.double()[:, None] - centers.double()[None]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(ref.nearest_assign(points, centers), full)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 11, 12, 13, 1 << 22])
def test_nearest_assign_ties_go_to_lowest_index(chunk: int) -> None:
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    centers = torch.cat([base, base, base])  # every centre three times: ties in every block
    points = torch.cat([base, torch.tensor([[0.5, 0.0], [0.5, 0.5], [0.0, 0.5], [9.0, 9.0]])])
    got = ref.nearest_assign(points, centers, max_chunk_elems=chunk)
    # exact halves: [0.5, 0] is equidistant from centres 0 and 1, [0.5, 0.5] from all four
    assert got.tolist() == [0, 1, 2, 3, 0, 0, 0, 3]


def test_nearest_assign_identical_centres_all_tie() -> None:
    centers = torch.full((9, 2), 0.3)
    points = torch.randn(50, 2)
    for chunk in (1, 4, 9, 100):
        assert ref.nearest_assign(points, centers, max_chunk_elems=chunk).eq(0).all()


@pytest.mark.parametrize("chunk", [1, 6, 7, 8, 48, 49, 50, 7 * 30, 7 * 30 + 1])
def test_nearest_assign_chunking_does_not_change_result(chunk: int) -> None:
    points = torch.randn(3, 30, 2)
    centers = torch.randn(3, 7, 2)
    expect = ref.nearest_assign(points, centers)
    assert torch.equal(ref.nearest_assign(points, centers, max_chunk_elems=chunk), expect)


def test_nearest_assign_batched_per_sample_and_shared_centres() -> None:
    points = torch.randn(4, 25, 3)
    centers = torch.randn(4, 6, 3)
    got = ref.nearest_assign(points, centers)
    assert got.shape == (4, 25)
    for b in range(4):
        assert got[b].tolist() == _nearest_loop(points[b].tolist(), centers[b].tolist())
    shared = centers[1]
    got_shared = ref.nearest_assign(points, shared)
    for b in range(4):
        assert torch.equal(got_shared[b], ref.nearest_assign(points[b], shared))
    got_points_shared = ref.nearest_assign(points[2], centers)
    assert got_points_shared.shape == (4, 25)
    for b in range(4):
        assert torch.equal(got_points_shared[b], ref.nearest_assign(points[2], centers[b]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nearest_assign_half_precision_computes_in_fp32(dtype: torch.dtype) -> None:
    points = torch.randn(100, 2).to(dtype)
    centers = torch.randn(16, 2).to(dtype)
    expect = ref.nearest_assign(points.float(), centers.float())
    assert torch.equal(ref.nearest_assign(points, centers), expect)


def test_nearest_assign_empty_batch() -> None:
    assert ref.nearest_assign(torch.zeros(0, 5, 2), torch.zeros(0, 3, 2)).shape == (0, 5)


# ------------------------------------------------------------------------------------------------
# grid_centers / grid_assign

GRIDS = [
    ((5,), (-1.0,), (1.0,)),
    ((4,), (0.0,), (1.0,)),
    ((3, 7), (-1.0, -1.0), (1.0, 1.0)),
    ((4, 4), (0.0, 0.0), (1.0, 1.0)),
    ((6, 5), (-0.3, 2.0), (1.7, 5.1)),
    ((1, 3), (0.0, 0.0), (1.0, 3.0)),
    ((3, 4, 5), (-1.0, 0.0, -2.5), (1.0, 0.7, 2.5)),
]


def test_grid_centers_values_and_order() -> None:
    c = ref.grid_centers((2, 3), (0.0, -1.0), (1.0, 2.0))
    assert c.shape == (6, 2) and c.dtype == torch.float32
    expect = [[0.25 if i < 3 else 0.75, [-0.5, 0.5, 1.5][i % 3]] for i in range(6)]
    assert c.tolist() == expect  # row-major: the last axis varies fastest


def _boundary_values(n: int, lo: float, hi: float, dtype: torch.dtype) -> torch.Tensor:
    """Cell edges (incl. the box edges), centres and fp midpoints of adjacent centres."""
    step = (hi - lo) / n
    edges = torch.tensor([lo + m * step for m in range(n + 1)], dtype=torch.float64).to(dtype)
    centres = ref.grid_centers((n,), (lo,), (hi,), dtype=dtype)[:, 0]
    mids = (centres[1:] + centres[:-1]) / 2
    return torch.cat([edges, centres, mids])


@pytest.mark.parametrize(("shape", "low", "high"), GRIDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_grid_assign_equals_brute_force_random(
    shape: tuple[int, ...], low: tuple[float, ...], high: tuple[float, ...], dtype: torch.dtype
) -> None:
    d = len(shape)
    lo, hi = torch.tensor(low), torch.tensor(high)
    # inside, and up to one box width outside on every side (clamping)
    points = (lo + (torch.rand(2, 500, d) * 3 - 1) * (hi - lo)).to(dtype)
    centers = ref.grid_centers(shape, low, high, dtype=dtype)
    got = ref.grid_assign(points, shape, low, high)
    assert got.dtype == torch.int64 and got.shape == (2, 500)
    assert torch.equal(got, ref.nearest_assign(points, centers))


@pytest.mark.parametrize(("shape", "low", "high"), GRIDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grid_assign_equals_brute_force_on_cell_boundaries(
    shape: tuple[int, ...], low: tuple[float, ...], high: tuple[float, ...], dtype: torch.dtype
) -> None:
    axes = [_boundary_values(n, lo, hi, dtype) for n, lo, hi in zip(shape, low, high, strict=True)]
    points = torch.cartesian_prod(*axes) if len(axes) > 1 else axes[0][:, None]
    # also boundary values on one axis combined with random values on the others
    rnd = torch.stack(
        [torch.empty(points.shape[0]).uniform_(lo, hi) for lo, hi in zip(low, high, strict=True)]
    )
    mixed = torch.where(torch.rand(points.shape) < 0.5, points.float(), rnd.T).to(dtype)
    for pts in (points, mixed):
        centers = ref.grid_centers(shape, low, high, dtype=dtype)
        assert torch.equal(ref.grid_assign(pts, shape, low, high), ref.nearest_assign(pts, centers))


def test_grid_assign_boundaries_go_to_lower_cell_and_outside_clamps() -> None:
    # 4 cells on [0, 1]: centres 1/8, 3/8, 5/8, 7/8 and edges 1/4, 1/2, 3/4 are exact in fp32
    pts = torch.tensor([[-5.0], [0.0], [0.25], [0.2500001], [0.5], [0.75], [1.0], [7.0]])
    assert ref.grid_assign(pts, (4,), (0.0,), (1.0,)).tolist() == [0, 0, 0, 1, 1, 2, 3, 3]
    pts2 = torch.tensor([[0.5, 0.5], [0.25, 0.75], [-1.0, 2.0]])
    # flat index = i0 * 4 + i1
    assert ref.grid_assign(pts2, (4, 4), (0.0, 0.0), (1.0, 1.0)).tolist() == [5, 2, 3]


# ------------------------------------------------------------------------------------------------
# group_layout


def _layout_loop(assign: list[list[int]], k: int) -> tuple[list[list[int]], list[int]]:
    perms, offsets, total = [], [0], 0
    for row in assign:
        perms.append(sorted(range(len(row)), key=lambda i, row=row: (row[i], i)))
        for g in range(k):
            total += sum(1 for a in row if a == g)
            offsets.append(total)
    return perms, offsets


@pytest.mark.parametrize(
    ("b", "n", "k"), [(1, 10, 3), (3, 17, 5), (2, 5, 9), (2, 0, 4), (4, 30, 1)]
)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_group_layout_matches_loop(b: int, n: int, k: int, dtype: torch.dtype) -> None:
    assign = torch.randint(0, k, (b, n), dtype=dtype)
    perm, offsets = ref.group_layout(assign, k)
    assert perm.dtype == torch.int64 and perm.shape == (b, n)
    assert offsets.dtype == torch.int32 and offsets.shape == (b * k + 1,)
    perms, offs = _layout_loop(assign.tolist(), k)
    assert perm.tolist() == perms and offsets.tolist() == offs
    # the obvious recipe: stable argsort + bincount + cumsum
    a64 = assign.long()
    assert torch.equal(perm, torch.argsort(a64, dim=-1, stable=True))
    counts = torch.bincount((a64 + torch.arange(b)[:, None] * k).flatten(), minlength=b * k)
    assert offsets[1:].tolist() == counts.cumsum(0).tolist()


def test_group_layout_empty_groups_and_1d_input() -> None:
    assign = torch.tensor([4, 0, 4, 4, 0, 2])
    perm, offsets = ref.group_layout(assign, 6)
    assert perm.tolist() == [1, 4, 5, 0, 2, 3]
    assert offsets.tolist() == [0, 2, 2, 3, 3, 6, 6]


# ------------------------------------------------------------------------------------------------
# grouped_cross_attention


def _attention_loop(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: list[int], scale: float
) -> torch.Tensor:
    """Per group and head: softmax(q k^T * scale) v in fp64; empty groups are zeros."""
    groups, hq, _ = q.shape
    rep = hq // k.shape[1]
    out = torch.zeros(groups, hq, v.shape[-1], dtype=torch.float64)
    for g in range(groups):
        s, e = offsets[g], offsets[g + 1]
        for h in range(hq):
            if e == s:
                continue
            kk, vv = k[s:e, h // rep].double(), v[s:e, h // rep].double()
            w = torch.softmax(kk @ q[g, h].double() * scale, dim=0)
            out[g, h] = w @ vv
    return out


def _random_offsets(groups: int, tokens: int) -> torch.Tensor:
    cuts = torch.sort(torch.randint(0, tokens + 1, (groups - 1,))).values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([tokens])])


@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 2), (4, 1), (6, 3), (1, 1)])
@pytest.mark.parametrize("chunk", [1 << 22, 100])
def test_grouped_cross_attention_matches_loop(hq: int, hkv: int, chunk: int) -> None:
    groups, tokens, dim, dv = 7, 40, 8, 5
    q = torch.randn(groups, hq, dim)
    k = torch.randn(tokens, hkv, dim)
    v = torch.randn(tokens, hkv, dv)
    offsets = torch.tensor([0, 3, 3, 4, 20, 20, 33, 40])  # empty and single-key groups
    out = ref.grouped_cross_attention(q, k, v, offsets, max_chunk_elems=chunk)
    expect = _attention_loop(q, k, v, offsets.tolist(), dim**-0.5)
    torch.testing.assert_close(out.double(), expect, rtol=1e-5, atol=1e-6)
    assert out.shape == (groups, hq, dv) and out.dtype == torch.float32
    assert out[1].eq(0).all() and out[4].eq(0).all()  # empty groups
    assert torch.equal(out[2], v[3].repeat_interleave(hq // hkv, dim=0))  # one key: its value


def test_grouped_cross_attention_custom_scale_and_random_offsets() -> None:
    q, k, v = torch.randn(12, 2, 16), torch.randn(90, 2, 16), torch.randn(90, 2, 3)
    offsets = _random_offsets(12, 90)
    out = ref.grouped_cross_attention(q, k, v, offsets.int(), scale=0.3)
    expect = _attention_loop(q, k, v, offsets.tolist(), 0.3)
    torch.testing.assert_close(out.double(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float64, 1e-12)]
)
def test_grouped_cross_attention_dtypes(dtype: torch.dtype, atol: float) -> None:
    q, k, v = (torch.randn(s).to(dtype) for s in ((5, 4, 8), (30, 2, 8), (30, 2, 8)))
    offsets = torch.tensor([0, 10, 10, 11, 25, 30])
    out = ref.grouped_cross_attention(q, k, v, offsets)
    assert out.dtype == dtype
    expect = _attention_loop(q, k, v, offsets.tolist(), 8**-0.5)
    torch.testing.assert_close(out.double(), expect, rtol=0, atol=atol)


def test_grouped_cross_attention_large_scores_are_stable() -> None:
    q = torch.full((2, 1, 4), 50.0)
    k = torch.full((5, 1, 4), 50.0)
    v = torch.randn(5, 1, 2)
    out = ref.grouped_cross_attention(q, k, v, torch.tensor([0, 2, 5]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0], v[:2, 0].mean(0))


def test_grouped_cross_attention_no_tokens_or_no_groups() -> None:
    out = ref.grouped_cross_attention(
        torch.randn(3, 2, 4), torch.randn(0, 1, 4), torch.randn(0, 1, 6), torch.zeros(4).long()
    )
    assert out.shape == (3, 2, 6) and out.eq(0).all()
    out = ref.grouped_cross_attention(
        torch.randn(0, 2, 4), torch.randn(0, 2, 4), torch.randn(0, 2, 6), torch.zeros(1).long()
    )
    assert out.shape == (0, 2, 6)


@pytest.mark.parametrize(
    ("hq", "hkv", "chunk"), [(2, 2, 1 << 22), (4, 2, 1 << 22), (4, 2, 25), (3, 1, 25)]
)
def test_grouped_cross_attention_gradcheck(hq: int, hkv: int, chunk: int) -> None:
    dim = 3
    q = torch.randn(5, hq, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(9, hkv, dim, dtype=torch.float64, requires_grad=True)
    v = torch.randn(9, hkv, 2, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([0, 4, 4, 5, 9, 9])  # empty (1, 4) and single-key (2) groups

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ref.grouped_cross_attention(q, k, v, offsets, max_chunk_elems=chunk)

    assert torch.autograd.gradcheck(fn, (q, k, v))
    out = fn(q, k, v)
    gq, _, _ = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert gq[1].eq(0).all() and gq[4].eq(0).all()  # empty groups get zero gradients
    assert gq[2].eq(0).all()  # a single key: the softmax is constant in q


def test_grouped_cross_attention_grads_match_loop_autograd() -> None:
    q = torch.randn(6, 4, 8, requires_grad=True)
    k = torch.randn(50, 2, 8, requires_grad=True)
    v = torch.randn(50, 2, 4, requires_grad=True)
    offsets = _random_offsets(6, 50)
    grad = torch.randn(6, 4, 4)
    got = torch.autograd.grad(ref.grouped_cross_attention(q, k, v, offsets), (q, k, v), grad)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    expect = _attention_loop(qd, kd, vd, offsets.tolist(), 8**-0.5)
    want = torch.autograd.grad(expect, (qd, kd, vd), grad.double())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_cross_attention_saves_o_t_h_for_backward(dtype: torch.dtype) -> None:
    """What autograd keeps is the inputs plus O(T*H) softmax state, never a per-token copy of
    the queries (T*Hq*D) or of the weighted values (T*Hq*Dv)."""
    groups, tokens, hq, dim, dv = 32, 1024, 16, 128, 64
    q = torch.randn(groups, hq, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(tokens, 1, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(tokens, 1, dv, dtype=dtype, requires_grad=True)
    offsets = torch.linspace(0, tokens, groups + 1).long()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ref.grouped_cross_attention(q, k, v, offsets)
    inputs_fp32 = 4 * (q.numel() + k.numel() + v.numel())
    softmax_state = 4 * tokens * hq * 4 + 8 * tokens
    assert sum(storages.values()) <= inputs_fp32 + softmax_state
    assert 4 * tokens * hq * min(dim, dv) > 2 * (inputs_fp32 + softmax_state)  # discriminates
    out.float().sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None


def test_grouped_cross_attention_half_grads_flow_in_input_dtype() -> None:
    q = torch.randn(3, 2, 4, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(8, 1, 4, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(8, 1, 4, dtype=torch.bfloat16, requires_grad=True)
    out = ref.grouped_cross_attention(q, k, v, torch.tensor([0, 3, 3, 8]))
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16
    assert k.grad is not None and v.grad is not None


def test_loops_are_exhaustive() -> None:
    """Sanity check of the brute-force oracle itself on an enumerable case."""
    pts = [list(p) for p in itertools.product([0.0, 1.0, 2.0], repeat=2)]
    assert _nearest_loop(pts, [[0.0, 0.0], [2.0, 2.0]]) == [0, 0, 0, 0, 0, 1, 0, 1, 1]
