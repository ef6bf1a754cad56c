"""Sample inputs of every inrflow op: the specification the op tests run.

One function per op family returns a list of :class:`Sample` (the positional arguments of the raw
op ``torch.ops.inrflow.<op>``, a readable id, and the tests it drives). The same list feeds the
correctness-vs-reference test of the extension, ``torch.library.opcheck``, the fp64 gradcheck,
the ``torch.compile`` test and the emulated CUDA kernel test of that op, so an edge case added
here is checked everywhere it applies. The slow consumers (opcheck, compile, gradcheck, the
emulator) take only the samples tagged for them; every sample is checked against the reference.

Inputs are built from fixed seeds on the CPU and moved to ``device``; tensors are fresh on every
call, so tests may mutate them (``requires_grad_``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

import inrflow.ops

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Consumers a sample can be tagged for (every sample is also checked against the reference).
USES = frozenset({"opcheck", "compile", "gradcheck", "emulator"})


@dataclass(frozen=True)
class Sample:
    """One call of an op: ``args`` for ``torch.ops.inrflow.<op>``, plus ``meta`` the checks of
    that op read (e.g. the split size of the emulated attention kernel). ``meta["schedule_seed"]``
    pairs an emulator sample with the schedules of that seed (emulation.SCHEDULES), so each
    schedule sees its own data as well as its own thread order."""

    name: str
    args: tuple
    uses: frozenset[str] = frozenset()
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = self.uses - USES
        if unknown:
            raise ValueError(f"sample {self.name}: unknown uses {sorted(unknown)}")

    def __repr__(self) -> str:
        return self.name


_EMULATOR = frozenset({"emulator"})


def select(samples: Iterable[Sample], use: str) -> list[Sample]:
    """The samples tagged for ``use`` (one of :data:`USES`)."""
    if use not in USES:
        raise ValueError(f"unknown use {use!r}; expected one of {sorted(USES)}")
    return [s for s in samples if use in s.uses]


def ids(samples: Iterable[Sample]) -> list[str]:
    """pytest ids of ``samples``."""
    return [s.name for s in samples]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _uniform(shape: tuple[int, ...], dtype: torch.dtype, seed: int, scale: float) -> torch.Tensor:
    """Uniform in [-scale, scale], drawn in fp64 and rounded once to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)


def _normal(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------------
# fourier_embed (and fourier_embed_backward, whose inputs come from the forward's output)

# (leading shape, channels, num_freqs, scale of x): edge shapes of the CPU kernels (no rows, no
# channels, more frequencies than one fp16/bf16 scratch chunk), then shapes around the CUDA
# kernel's blocks and row tiles (rows 0 and 1, F = 1, F just above a warp, one row wider than a
# tile), whose |x| reaches 30 so the arguments span many periods.
FOURIER_SHAPES: list[tuple[tuple[int, ...], int, int, float]] = [
    ((7,), 3, 5, 2.0),
    ((2, 5), 4, 16, 2.0),
    ((), 1, 1, 2.0),  # x of shape [1]
    ((0,), 3, 4, 2.0),  # no rows
    ((4,), 0, 3, 2.0),  # no channels
    ((33,), 2, 64, 2.0),
    ((3,), 2, 300, 2.0),  # more frequencies than one fp16/bf16 scratch chunk
    ((0,), 3, 4, 30.0),
    ((1,), 1, 1, 30.0),
    ((1,), 2, 33, 30.0),
    ((300,), 3, 5, 30.0),
    ((97,), 2, 64, 30.0),
    ((3,), 700, 2, 30.0),
]

# Emulating a launch costs about a CUDA thread's worth of fiber switches per element, so the
# emulator takes the shapes chosen for the CUDA kernel's blocks (and the two smallest others).
_FOURIER_EMULATED = {((0,), 3, 4, 30.0), ((1,), 1, 1, 30.0), ((1,), 2, 33, 30.0)}
_FOURIER_EMULATED |= {((300,), 3, 5, 30.0), ((97,), 2, 64, 30.0), ((3,), 700, 2, 30.0)}


def fourier_frequencies(num: int, max_log2: float = 8.0, device: str = "cpu") -> torch.Tensor:
    return inrflow.ops.fourier_frequencies(num, max_log2).to(device)


def fourier_embed(device: str = "cpu") -> list[Sample]:
    """``(x, freqs, include_input)``: every dtype and include_input on every FOURIER_SHAPES entry,
    then the small samples opcheck / compile / gradcheck use (a non-contiguous x, fp64 and
    requires_grad ones among them)."""
    samples = []
    for lead, channels, num_freqs, scale in FOURIER_SHAPES:
        for dtype in FLOAT_DTYPES:
            for inc in (False, True):
                shape = (*lead, channels)
                x = _uniform(shape, dtype, len(samples), scale).to(device)
                uses = (
                    {"emulator"}
                    if (lead, channels, num_freqs, scale) in _FOURIER_EMULATED
                    else set()
                )
                samples.append(
                    Sample(
                        f"x{list(shape)}-F{num_freqs}-s{scale:g}-{_dtype_name(dtype)}-inc{int(inc)}",
                        (x, fourier_frequencies(num_freqs, device=device), inc),
                        frozenset(uses),
                    )
                )
    # (name, shape, dtype, F, max_log2 of the frequencies, include_input, strided, uses); the
    # gradcheck takes fp64 samples with low frequencies only (finite differences of sin(x f)).
    oc, occ, ocg = {"opcheck"}, {"opcheck", "compile"}, {"opcheck", "gradcheck"}
    small = [
        ("f32-4x3", (4, 3), torch.float32, 5, 8.0, False, False, oc),
        ("f64-2x3x2", (2, 3, 2), torch.float64, 5, 8.0, True, False, oc),
        ("bf16-5x1", (5, 1), torch.bfloat16, 5, 8.0, True, False, oc),
        ("f16-0x2", (0, 2), torch.float16, 5, 8.0, False, False, oc),
        ("f32-5x3-F3", (5, 3), torch.float32, 3, 2.0, False, False, oc),
        ("bf16-3x2-F3", (3, 2), torch.bfloat16, 3, 2.0, False, False, occ),
        ("f64-4x2-F3-inc", (4, 2), torch.float64, 3, 2.0, True, False, ocg),
        ("f64-3x2x3-F4", (3, 2, 3), torch.float64, 4, 3.0, False, False, ocg),
        ("f64-3x2x3-F4-inc", (3, 2, 3), torch.float64, 4, 3.0, True, False, ocg | {"compile"}),
        ("f32-16x3-F8-inc", (16, 3), torch.float32, 8, 3.0, True, False, occ),
        ("f32-4x3-strided", (4, 6), torch.float32, 3, 2.0, True, True, oc),
    ]
    for name, shape, dtype, num_freqs, max_log2, inc, strided, uses in small:
        x = _uniform(shape, dtype, len(samples), 2.0)
        x = x[:, ::2] if strided else x  # non-contiguous
        freqs = fourier_frequencies(num_freqs, max_log2, device)
        samples.append(Sample(f"small-{name}", (x.to(device), freqs, inc), frozenset(uses)))
    return samples


# ------------------------------------------------------------------------------------------------
# nearest_assign, grid_assign, group_layout

MAX_ASSIGN_DIM = 8


def tie_points(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Small-integer coordinates: many exactly equal distances (ties) and duplicate points."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, shape, generator=g).to(dtype)


def rand(shape: tuple[int, ...], dtype: torch.dtype, seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _nearest_variants(points, centers):
    """Per-sample centres, shared (2-D) centres, unbatched points, 2-D points / batched centres."""
    return [
        ("batched", points, centers),
        ("shared", points, centers[0]),
        ("unbatched", points[1], centers[0]),
        ("points2d", points[1], centers),
    ]


def nearest_assign(device: str = "cpu") -> list[Sample]:
    """``(points, centers)``: every dtype and d = 1..8 with random and tied coordinates (N = 301
    off the 128-point CPU blocks, K = 37 off the 16 lanes) in all four batch layouts; the shapes
    of the CUDA kernel's blocks and shared tiles (N = K = 300); empty inputs, equidistant and
    overflowing distances, non-contiguous inputs."""
    samples = []
    for dtype in FLOAT_DTYPES:
        for d in range(1, MAX_ASSIGN_DIM + 1):
            for make in (rand, tie_points):
                points = make((3, 301, d), dtype, d)
                centers = make((3, 37, d), dtype, d + 100)
                for layout, p, c in _nearest_variants(points, centers):
                    name = f"{_dtype_name(dtype)}-d{d}-{make.__name__}-{layout}"
                    samples.append(Sample(name, (p.to(device), c.to(device))))
    # N = 300 is off the 256-thread blocks, K = 300 crosses the 256-centre shared tiles.
    for d, dtype in [
        (2, torch.float32),
        (3, torch.float16),
        (1, torch.float64),
        (5, torch.bfloat16),
    ]:
        for seed in (0, 1, 7):
            points = None
            for make in (rand, tie_points):
                points = make((2, 300, d), dtype, seed + d)
                centers = make((2, 300, d), dtype, seed + d + 1)
                name = f"cuda-tiles-{_dtype_name(dtype)}-d{d}-{make.__name__}-seed{seed}"
                args = (points.to(device), centers.to(device))
                samples.append(Sample(name, args, _EMULATOR, {"schedule_seed": seed}))
            shared = rand((70, d), dtype, 5)
            tag = f"cuda-tiles-{_dtype_name(dtype)}-d{d}"
            for name, args in [
                (f"{tag}-shared-seed{seed}", (points, shared)),
                (f"{tag}-points2d-seed{seed}", (points[0], centers)),
            ]:
                args = tuple(a.to(device) for a in args)
                samples.append(Sample(name, args, _EMULATOR, {"schedule_seed": seed}))
    # d = 8 and duplicated centres: the first copy wins
    centers = rand((40, 8), torch.float32, 9).repeat(2, 1)
    points = torch.cat([rand((30, 8), torch.float32, 8), centers[:10]])
    # meta["first_copy_below"]: every index must fall on the first copy of the centres
    samples.append(
        Sample(
            "duplicated-centres-d8",
            (points.to(device), centers.to(device)),
            _EMULATOR,
            {"first_copy_below": 40},
        )
    )
    centers4 = rand((4, 2), torch.float32, 0)
    edge = [
        ("no-points", torch.empty(0, 2), centers4),
        ("no-points-batched", torch.empty(3, 0, 2), centers4),
        ("equidistant", torch.zeros(5, 3), torch.ones(7, 3)),
        ("overflow-ties", torch.full((2, 2), 3e38), torch.full((2, 2), -3e38)),
        (
            "non-contiguous",
            rand((2, 50, 6), torch.float32, 3)[..., ::2],
            rand((2, 9, 3), torch.float32, 4).transpose(0, 1).contiguous().transpose(0, 1),
        ),
    ]
    for name, p, c in edge:
        samples.append(Sample(name, (p.to(device), c.to(device))))
    opcheck_points, opcheck_centers = torch.randn(2, 33, 3), torch.randn(2, 9, 3)
    for name, p, c in [
        ("small-batched", opcheck_points, opcheck_centers),
        ("small-points2d", opcheck_points[0], opcheck_centers),
    ]:
        samples.append(
            Sample(name, (p.to(device), c.to(device)), frozenset({"opcheck", "compile"}))
        )
    return samples


def nearest_assign_centre_tiles(device: str = "cpu") -> list[Sample]:
    """K = 5000 centres spanning several 16 KiB CPU centre tiles, every centre twice (index i and
    i + 2500 identical: ties resolve to the first), and points on 300 of the centres."""
    samples = []
    for d in (2, 3, 5):
        centers = rand((2500, d), torch.float32, 1)
        centers = torch.cat([centers, centers])
        points = torch.cat([rand((700, d), torch.float32, 2), centers[:300]])
        samples.append(Sample(f"tiles-d{d}", (points.to(device), centers.to(device))))
    return samples


def grid_cases() -> list[tuple[tuple[int, ...], list[float], list[float]]]:
    return [
        ((7,), [0.0], [1.0]),
        ((4, 5), [-1.0, 0.0], [1.0, 2.0]),
        ((3, 4, 2), [0.0, 0.0, -0.5], [1.0, 3.0, 0.5]),
        ((2, 2, 2, 2), [0.0] * 4, [1.0] * 4),
    ]


def grid_points(shape, low, high, dtype, seed) -> torch.Tensor:
    """Points inside, outside, on cell boundaries and on centres of the grid."""
    d = len(shape)
    lo = torch.tensor(low, dtype=torch.float64)
    hi = torch.tensor(high, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    inside = lo + (hi - lo) * torch.rand(200, d, generator=g, dtype=torch.float64)
    outside = lo + (hi - lo) * (torch.rand(60, d, generator=g, dtype=torch.float64) * 3 - 1)
    n = torch.tensor(shape, dtype=torch.float64)
    cells = torch.randint(0, 8, (60, d), generator=g).to(torch.float64)
    boundaries = lo + (hi - lo) * cells / (2 * n)  # cell edges and centres (ties)
    return torch.cat([inside, outside, boundaries]).to(dtype)


def grid_assign(device: str = "cpu") -> list[Sample]:
    """``(points, grid_shape, low, high)``: every dtype on 1- to 4-axis grids with points inside,
    outside, on cell edges and on centres, unbatched and batched; the emulator takes each grid
    in one dtype under several seeds."""
    samples = []
    for dtype in FLOAT_DTYPES:
        for shape, low, high in grid_cases():
            points = grid_points(shape, low, high, dtype, len(shape))
            tag = f"{_dtype_name(dtype)}-grid{'x'.join(map(str, shape))}"
            args = (list(shape), list(low), list(high))
            samples.append(Sample(tag, (points.to(device), *args)))
            batched = points.reshape(2, -1, len(shape))
            samples.append(Sample(f"{tag}-batched", (batched.to(device), *args)))
    for (shape, low, high), dtype in zip(grid_cases(), FLOAT_DTYPES, strict=True):
        for seed in (0, 1, 7):
            points = grid_points(shape, low, high, dtype, seed)
            tag = f"cuda-{_dtype_name(dtype)}-grid{'x'.join(map(str, shape))}-seed{seed}"
            args = (points.to(device), list(shape), list(low), list(high))
            samples.append(Sample(tag, args, _EMULATOR, {"schedule_seed": seed}))
    points = torch.randn(2, 33, 3)
    samples.append(
        Sample(
            "small-batched",
            (points.to(device), [2, 3, 4], [0.0] * 3, [1.0] * 3),
            frozenset({"opcheck"}),
        )
    )
    return samples


# (batch, n, k): several 16384-token CPU tiles per row with few keys (stability across tiles);
# K > N with most groups empty; no tokens; one group; and the CUDA kernel's 1024-token tiles.
GROUP_LAYOUT_SIZES = [(1, 0, 3), (2, 1, 1), (3, 100, 7), (2, 40000, 5), (2, 3000, 20000)]
GROUP_LAYOUT_SIZES += [(1, 70000, 1)]
_GROUP_LAYOUT_EMULATED = [(2, 2500, 5), (3, 37, 1100), (2, 0, 4), (1, 100, 1)]


def group_layout(device: str = "cpu") -> list[Sample]:
    """``(assign, num_groups)``: int32 and int64 rows of the GROUP_LAYOUT_SIZES as [B, N] and
    [N], with only a few groups used (empty groups between full ones) and non-contiguous; the
    CUDA kernel's tile shapes (emulator); a small sample for opcheck and compile."""
    samples = []
    for index_dtype in (torch.int32, torch.int64):
        dt = _dtype_name(index_dtype)
        for batch, n, k in GROUP_LAYOUT_SIZES:
            g = torch.Generator().manual_seed(n + k)
            assign = torch.randint(0, k, (batch, n), generator=g).to(index_dtype)
            sparse = (assign // 3) * 3 % k
            wide = torch.randint(0, k, (batch, 2 * n), generator=g).to(index_dtype)[:, ::2]
            tag = f"{dt}-b{batch}-n{n}-k{k}"
            for name, a in [("", assign), ("-1d", assign[0]), ("-sparse", sparse)]:
                samples.append(Sample(tag + name, (a.to(device), k)))
            samples.append(Sample(f"{tag}-strided", (wide.to(device), k)))
        for seed in (0, 1, 7):
            g = torch.Generator().manual_seed(seed)
            for batch, n, k in _GROUP_LAYOUT_EMULATED:
                assign = torch.randint(0, k, (batch, n), generator=g).to(index_dtype)
                name = f"cuda-{dt}-b{batch}-n{n}-k{k}-seed{seed}"
                samples.append(
                    Sample(name, (assign.to(device), k), _EMULATOR, {"schedule_seed": seed})
                )
    samples.append(
        Sample("small", (torch.randint(0, 5, (3, 17)).to(device), 5), frozenset({"opcheck"}))
    )
    return samples


# ------------------------------------------------------------------------------------------------
# grouped_cross_attention (and its _forward / _backward ops)

# Group-length patterns: empty, single key, long (several splits of 256 keys) and mixed.
ATTENTION_LENGTHS = {
    "mixed": [3, 0, 1, 7, 64, 2],
    "long": [0, 600, 1, 5],
    "all_empty": [0, 0, 0],
    "single_keys": [1, 1, 1, 1],
}
ATTENTION_HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (6, 1)}


def attention_case(
    lens, hq, hkv, dim, dim_v, dtype, device="cpu", seed=0, offsets_dtype=torch.int64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [G, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], offsets [G+1]) for groups of ``lens`` keys."""
    gen = torch.Generator().manual_seed(seed)
    groups, tokens = len(lens), sum(lens)
    offsets = torch.tensor([0, *torch.tensor(lens, dtype=torch.int64).cumsum(0).tolist()])

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)

    q, k, v = rnd(groups, hq, dim), rnd(tokens, hkv, dim), rnd(tokens, hkv, dim_v)
    return q, k, v, offsets.to(offsets_dtype).to(device)


def _attention_sample(name, lens, hq, hkv, dim, dim_v, dtype, device, scale, seed=0, **kw):
    uses = frozenset(kw.pop("uses", ()))
    offsets_dtype = kw.pop("offsets_dtype", torch.int64)
    q, k, v, offsets = attention_case(lens, hq, hkv, dim, dim_v, dtype, device, seed, offsets_dtype)
    return Sample(name, (q, k, v, offsets, scale), uses, {"lens": list(lens), **kw})


def grouped_cross_attention(device: str = "cpu") -> list[Sample]:
    """``(q, k, v, offsets, scale)``: every dtype, MHA/GQA/MQA and group-length pattern; head dims
    16 / 72 / 1152; the emulator cases, whose ``meta["max_split"]`` forces several splits per
    group on small shapes; small samples for opcheck, compile and the fp64 gradcheck."""
    samples = []
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for heads, (hq, hkv) in ATTENTION_HEADS.items():
            for pattern, lens in ATTENTION_LENGTHS.items():
                name = f"{_dtype_name(dtype)}-{heads}-{pattern}"
                samples.append(_attention_sample(name, lens, hq, hkv, 24, 12, dtype, device, 0.3))
    for dim, hq, hkv in [(16, 2, 2), (72, 4, 1), (1152, 16, 1)]:
        name = f"headdim{dim}-hq{hq}-hkv{hkv}"
        lens = [5, 0, 40, 300]
        samples.append(
            _attention_sample(name, lens, hq, hkv, dim, dim, torch.float32, device, dim**-0.5, 3)
        )
    emulated = {
        "mha_d16_mixed": ([3, 0, 1, 37, 2], 2, 2, 16, 16, torch.float32, 8),
        "gqa_d72_long": ([0, 70, 1], 4, 2, 72, 40, torch.float32, 16),
        "mqa_d72_fp64": ([5, 0, 33], 6, 1, 72, 72, torch.float64, 8),
        "mqa_d1152": ([2, 40], 16, 1, 1152, 1152, torch.float32, 32),
        "bf16_default_split": ([1, 300, 0], 2, 1, 16, 8, torch.bfloat16, 0),
        "fp16_single_keys": ([1, 1, 1], 3, 3, 20, 4, torch.float16, 0),
    }
    for name, (lens, hq, hkv, dim, dim_v, dtype, max_split) in emulated.items():
        for seed in (0, 1):  # the seeds of the schedules "forward"/"reverse" (0) and "random" (1)
            samples.append(
                _attention_sample(
                    f"emulated-{name}-seed{seed}",
                    lens,
                    hq,
                    hkv,
                    dim,
                    dim_v,
                    dtype,
                    device,
                    dim**-0.5,
                    seed + 11,
                    uses={"emulator"},
                    max_split=max_split,
                    schedule_seed=seed,
                )
            )
    small = [
        ("small-mqa", [3, 0, 1, 6], 4, 1, 8, 4, torch.float32, 0.5, 2, {"opcheck"}),
        ("small-gqa", [3, 0, 1, 6], 4, 2, 8, 4, torch.float32, 0.5, 2, {"opcheck"}),
        ("small-compile", [3, 0, 9], 4, 1, 8, 8, torch.float32, 0.4, 0, {"compile"}),
        ("small-fp64", [3, 0, 1, 6], 4, 2, 5, 3, torch.float64, 0.7, 7, {"gradcheck"}),
    ]
    for name, lens, hq, hkv, dim, dim_v, dtype, scale, seed, uses in small:
        samples.append(
            _attention_sample(
                name, lens, hq, hkv, dim, dim_v, dtype, device, scale, seed, uses=uses
            )
        )
    return samples


#: op family -> sample function, for tests that walk every op.
SAMPLES: dict[str, Callable[..., list[Sample]]] = {
    "fourier_embed": fourier_embed,
    "nearest_assign": nearest_assign,
    "grid_assign": grid_assign,
    "group_layout": group_layout,
    "grouped_cross_attention": grouped_cross_attention,
}
