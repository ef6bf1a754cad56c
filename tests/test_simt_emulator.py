"""Self-tests of the CPU SIMT emulator (tests/simt, tests/emulation.py).

The kernels in tests/simt_kernels/ are plain CUDA C++ (CI also compiles them with nvcc). Each
correct kernel must match a NumPy reference under every schedule in SCHEDULES; each seeded bug in
seeded_bugs.cu must be caught: wrong results under at least one schedule (missing barrier), or a
launch error whose message names the offending source line.
"""

from __future__ import annotations

import ctypes
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from emulation import (
    SCHEDULES,
    EmulatedLibrary,
    EmulatorBuildError,
    build_emulated,
    cuda_include_dir,
    emulated_library_path,
    requires_emulator,
    sanitize_enabled,
)

pytestmark = [requires_emulator, pytest.mark.emulated]
# Under INRFLOW_SIMT_SANITIZE=1, ASan itself reports (and aborts on) overruns and stack overflows,
# and every fiber switch is a slow swapcontext.
not_under_sanitizer = pytest.mark.skipif(
    sanitize_enabled(), reason="ASan reports this itself / swapcontext is slow"
)

KERNELS = Path(__file__).resolve().parent / "simt_kernels"
SOURCES = [KERNELS / "basics.cu", KERNELS / "seeded_bugs.cu", KERNELS / "group_attention.cu"]

CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_INVALID_CONFIGURATION = 9
CUDA_ERROR_ILLEGAL_ADDRESS = 700
CUDA_ERROR_ASSERT = 710
CUDA_ERROR_LAUNCH_FAILURE = 719

_P = ctypes.c_void_p
_I32 = ctypes.c_int32
_I64 = ctypes.c_int64
_SIGNATURES: dict[str, tuple[object, ...]] = {
    "simt_test_block_sum": (_P, _P, _I32, _I32, _I32),
    "simt_test_warp_ops": (_P, _P, _P, _P, _P, _P, _I32, _I32, _I32, _I32),
    "simt_test_reverse": (_P, _P, _I32, _I32),
    "simt_test_smem_probe": (_P, _I32, _I64, _I32),
    "simt_test_smem_write": (_I32, _I32, _I64),
    "simt_test_convert": (_P, _P, _P, _P, _P, _P, _I32),
    "simt_test_atomics": (_P, _P, _P, _P, _I32, _I32),
    "simt_test_transpose": (_P, _P, _I32, _I32, _I32),
    "simt_test_bad_block": (_I32,),
    "simt_test_misc_collectives": (_P, _P, _P, _P, _I32, _I32),
    "simt_test_group_attention": (_P, _P, _P, _P, _P, _P, _P, _I32, _I32, _I32, _I32),
    "simt_bug_reduce": (_P, _P, _I32, _I32, _I32),
    "simt_bug_early_return": (_P, _P, _I32, _I32),
    "simt_bug_shuffle_exited_full_mask": (_P, _P),
    "simt_bug_shuffle_reads_exited_lane": (_P, _P),
    "simt_bug_divergent_shuffle": (_P, _P),
    "simt_bug_split_barrier": (_P,),
    "simt_bug_assert": (_P, _I32),
    "simt_bug_trap": (_I32,),
    "simt_bug_big_stack": (_P, _I32),
    "simt_bug_partial_warp_full_mask": (_P, _P, _I32),
    "simt_bug_wild_read": (_P, _P),
    "simt_bug_int_div": (_P, _P, _I32),
}


@pytest.fixture(scope="module")
def lib() -> EmulatedLibrary:
    """All self-test kernels in one emulated library (three objects built in parallel)."""
    library = build_emulated(SOURCES, "simt_selftest")
    for name, argtypes in _SIGNATURES.items():
        library.function(name, ctypes.c_int32, *argtypes)
    return library


@pytest.fixture(autouse=True)
def _fresh_emulator(request: pytest.FixtureRequest) -> None:
    """Default emulator settings and no stale error before every test."""
    if "lib" in request.fixturenames:
        library = request.getfixturevalue("lib")
        library.set_strict(True)
        library.set_stack_size(64 * 1024)
        library.set_schedule("forward", 0)
        library.clear_error()


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def bug_line(tag: str) -> str:
    """`seeded_bugs.cu:<line>` of the line marked `SEEDED-BUG: <tag>`."""
    lines = (KERNELS / "seeded_bugs.cu").read_text().splitlines()
    (number,) = [i + 1 for i, text in enumerate(lines) if f"SEEDED-BUG: {tag}" in text]
    return f"seeded_bugs.cu:{number}"


def assert_launch_error(lib: EmulatedLibrary, rc: int, *fragments: str) -> str:
    assert rc == CUDA_ERROR_LAUNCH_FAILURE, (rc, lib.last_error())
    message = lib.last_error()
    assert message is not None
    for fragment in fragments:
        assert fragment in message, message
    return message


def block_sums(lib: EmulatedLibrary, x: np.ndarray, blocks: int, threads: int) -> np.ndarray:
    out = np.full(blocks, np.nan, np.float32)
    rc = lib.simt_test_block_sum(ptr(x), ptr(out), x.size, blocks, threads)
    assert rc == CUDA_SUCCESS, lib.last_error()
    return out


# --------------------------------------------------------------------------------------------
# Correct kernels match NumPy under every schedule.


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
@pytest.mark.parametrize(
    ("n", "blocks", "threads"), [(1000, 3, 100), (4096, 4, 256), (77, 2, 33), (5000, 2, 1024)]
)
def test_block_reduction(
    lib: EmulatedLibrary, order: str, seed: int, n: int, blocks: int, threads: int
) -> None:
    lib.set_schedule(order, seed)
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    owner = (np.arange(n) // threads) % blocks  # grid-stride loop: element i -> block
    expected = np.array([x[owner == b].astype(np.float64).sum() for b in range(blocks)])
    np.testing.assert_allclose(block_sums(lib, x, blocks, threads), expected, rtol=1e-5, atol=1e-4)


def warp_reference(x: np.ndarray, width: int, src_lane: int) -> dict[str, np.ndarray]:
    """Expected outputs of warp_ops_kernel for blocks whose size is a multiple of 32."""
    seg = x.reshape(-1, width).astype(np.float64)
    lane = np.arange(width)
    # shfl_down tree: lane 0 of a segment ends with the sum, the others with partial sums (a lane
    # whose source is past the segment keeps its own value).
    v = seg.copy()
    offset = width // 2
    while offset > 0:
        shifted = np.where(lane + offset < width, np.roll(v, -offset, axis=1), v)
        v = v + shifted
        offset //= 2
    warps = x.reshape(-1, 32) > 0
    ballot = (warps * (1 << np.arange(32, dtype=np.uint64))).sum(1).astype(np.uint32)
    return {
        "xor": np.repeat(seg.sum(1), width),
        "down": v.ravel(),
        "scan": np.cumsum(seg, axis=1).ravel(),
        "bcast": np.repeat(seg[:, src_lane % width], width),
        "ballot": np.repeat(ballot, 32),
        "any": np.repeat(warps.any(1), 32).astype(np.uint32),
        "all": np.repeat(warps.all(1), 32).astype(np.uint32),
        "popc": np.repeat(warps.sum(1), 32).astype(np.uint32),
    }


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
@pytest.mark.parametrize(("width", "threads"), [(32, 64), (16, 96), (8, 64), (4, 32), (1, 32)])
def test_warp_shuffles_and_votes(
    lib: EmulatedLibrary, order: str, seed: int, width: int, threads: int
) -> None:
    lib.set_schedule(order, seed)
    blocks = 2
    n = blocks * threads
    x = np.random.default_rng(width).integers(-8, 9, n).astype(np.float32)
    x[:32] = np.abs(x[:32]) + 1  # one warp where all(x > 0) holds
    outs = [np.full(n, np.nan, np.float32) for _ in range(4)]
    votes = np.zeros((n, 4), np.uint32)
    src_lane = 3 + width  # out of range on purpose: taken modulo width
    rc = lib.simt_test_warp_ops(
        ptr(x), *map(ptr, outs), ptr(votes), blocks, threads, width, src_lane
    )
    assert rc == CUDA_SUCCESS, lib.last_error()
    ref = warp_reference(x, width, src_lane)
    np.testing.assert_array_equal(outs[0], ref["xor"])
    np.testing.assert_array_equal(outs[1], ref["down"])
    np.testing.assert_array_equal(outs[2], ref["scan"])
    np.testing.assert_array_equal(outs[3], ref["bcast"])
    np.testing.assert_array_equal(votes[:, 0], ref["ballot"])
    np.testing.assert_array_equal(votes[:, 1], ref["any"])
    np.testing.assert_array_equal(votes[:, 2], ref["all"])
    np.testing.assert_array_equal(votes[:, 3], ref["popc"])


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_barrier_reductions_and_other_collectives(
    lib: EmulatedLibrary, order: str, seed: int
) -> None:
    lib.set_schedule(order, seed)
    blocks, threads = 2, 64
    n = blocks * threads
    x = np.random.default_rng(3).integers(-9, 9, n).astype(np.int32)
    out = np.zeros((n, 8), np.uint32)
    doubles = np.full(n, np.nan)
    halves = np.full(n, np.nan, np.float32)
    rc = lib.simt_test_misc_collectives(
        ptr(x), ptr(out), ptr(doubles), ptr(halves), blocks, threads
    )
    assert rc == CUDA_SUCCESS, lib.last_error()
    per_block = x.reshape(blocks, threads)
    np.testing.assert_array_equal(out[:, 0], np.repeat((per_block > 0).sum(1), threads))
    np.testing.assert_array_equal(out[:, 1], 1)
    np.testing.assert_array_equal(out[:, 2], np.repeat((per_block > 5).any(1), threads))
    lane = np.arange(n) % 32
    every_third = sum(1 << i for i in range(0, 32, 3))
    np.testing.assert_array_equal(out[:, 3], np.where(lane % 3 == 0, every_third, 0))
    warps = x.reshape(-1, 32)
    key = warps & 3
    match = [
        sum(1 << j for j in range(32) if key[w, j] == key[w, i]) for w, i in np.ndindex(key.shape)
    ]
    np.testing.assert_array_equal(out[:, 4], match)
    np.testing.assert_array_equal(out[:, 5], np.repeat((warps & 0xFF).sum(1), 32))
    np.testing.assert_array_equal(out[:, 6].view(np.int32), np.repeat(warps.max(1), 32))
    np.testing.assert_array_equal(out[:, 7].view(np.int32), np.repeat(warps.min(1), 32))
    np.testing.assert_array_equal(doubles, 0.5 * x[np.arange(n) ^ 1])
    down = np.where(lane < 31, np.arange(n) + 1, np.arange(n))
    np.testing.assert_array_equal(halves, x[down].astype(np.float32))


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_dynamic_shared_memory(lib: EmulatedLibrary, order: str, seed: int) -> None:
    lib.set_schedule(order, seed)
    n, threads = 1000, 128
    x = np.arange(n, dtype=np.float32)
    out = np.full(n, np.nan, np.float32)
    assert lib.simt_test_reverse(ptr(x), ptr(out), n, threads) == CUDA_SUCCESS, lib.last_error()
    padded = np.concatenate([x, np.zeros(-n % threads, np.float32)])
    expected = padded.reshape(-1, threads)[:, ::-1].ravel()[:n]
    np.testing.assert_array_equal(out, expected)


def test_dynamic_shared_memory_starts_as_nan(lib: EmulatedLibrary) -> None:
    out = np.zeros(64, np.float64)
    assert lib.simt_test_smem_probe(ptr(out), 64, 64 * 8, 0) == CUDA_SUCCESS, lib.last_error()
    assert np.isnan(out).all()


@not_under_sanitizer
def test_dynamic_shared_memory_overrun_is_reported(lib: EmulatedLibrary) -> None:
    assert lib.simt_test_smem_write(0, 64, 256) == CUDA_SUCCESS, lib.last_error()
    rc = lib.simt_test_smem_write(60, 8, 256)  # floats 64..67 lie past the 256 bytes
    assert_launch_error(lib, rc, "dynamic shared memory overrun", "byte 256")
    assert lib.simt_test_smem_write(0, 64, 256) == CUDA_SUCCESS, lib.last_error()


def test_large_dynamic_shared_memory_needs_the_attribute(lib: EmulatedLibrary) -> None:
    out = np.zeros(64, np.float64)
    big = 100 * 1024
    assert lib.simt_test_smem_probe(ptr(out), 64, big, 0) == CUDA_ERROR_INVALID_VALUE
    assert "cudaFuncSetAttribute" in (lib.last_error() or "")
    assert lib.simt_test_smem_probe(ptr(out), 64, big, 1) == CUDA_SUCCESS, lib.last_error()
    too_big = 228 * 1024
    assert lib.simt_test_smem_probe(ptr(out), 64, too_big, 1) == CUDA_ERROR_INVALID_VALUE


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float32, NaN kept NaN."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def test_half_and_bfloat16_conversions(lib: EmulatedLibrary) -> None:
    rng = np.random.default_rng(5)
    special = [0.0, -0.0, 1 / 3, 65504.0, 65520.0, 7e4, 1e-8, 6e-5, -2.5, np.inf, -np.inf, np.nan]
    x = np.concatenate([special, rng.standard_normal(200) * 100]).astype(np.float32)
    n = x.size
    as_half, as_bf16, half_math = (np.zeros(n, np.float32) for _ in range(3))
    raw_half = np.zeros(n, np.float16)
    raw_bf16 = np.zeros(n, np.uint16)
    rc = lib.simt_test_convert(
        ptr(x), ptr(as_half), ptr(as_bf16), ptr(half_math), ptr(raw_half), ptr(raw_bf16), n
    )
    assert rc == CUDA_SUCCESS, lib.last_error()
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    np.testing.assert_array_equal(as_half, h.astype(np.float32))
    np.testing.assert_array_equal(
        raw_half.view(np.uint16)[~np.isnan(x)], h.view(np.uint16)[~np.isnan(x)]
    )
    np.testing.assert_array_equal(as_bf16, bf16_round(x))
    np.testing.assert_array_equal(
        (raw_bf16.astype(np.uint32) << 16).view(np.float32), bf16_round(x)
    )
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(half_math, (h + h * h).astype(np.float32))


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_atomics_across_blocks(lib: EmulatedLibrary, order: str, seed: int) -> None:
    lib.set_schedule(order, seed)
    n = 1000
    x = np.random.default_rng(1).random(n).astype(np.float32)
    total = np.zeros(1, np.float32)
    count = np.zeros(1, np.uint32)
    max_index = np.full(1, -1, np.int32)
    rc = lib.simt_test_atomics(ptr(x), ptr(total), ptr(count), ptr(max_index), n, 96)
    assert rc == CUDA_SUCCESS, lib.last_error()
    assert count[0] == n
    assert max_index[0] == n - 1
    np.testing.assert_allclose(total[0], x.astype(np.float64).sum(), rtol=1e-5)


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
@pytest.mark.parametrize("block_y", [16, 5])
def test_transpose_with_2d_blocks(
    lib: EmulatedLibrary, order: str, seed: int, block_y: int
) -> None:
    lib.set_schedule(order, seed)
    rows, cols = 37, 50
    x = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    out = np.full((cols, rows), np.nan, np.float32)
    rc = lib.simt_test_transpose(ptr(x), ptr(out), rows, cols, block_y)
    assert rc == CUDA_SUCCESS, lib.last_error()
    np.testing.assert_array_equal(out, x.T)


def attention_inputs(groups: int, keys: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, keys + 1, groups) if seed else np.full(groups, keys)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    total = int(offsets[-1])
    return {
        "q": rng.standard_normal((groups, dim)).astype(np.float32),
        "k": rng.standard_normal((total, dim)).astype(np.float32),
        "v": rng.standard_normal((total, dim)).astype(np.float32),
        "offsets": offsets,
    }


def run_attention(
    lib: EmulatedLibrary, inputs: dict[str, np.ndarray], threads: int = 64
) -> tuple[int, np.ndarray, np.ndarray, float, float]:
    groups, dim = inputs["q"].shape
    max_keys = int(np.diff(inputs["offsets"]).max())
    out = np.full((groups, dim), np.nan, np.float32)
    lse = np.full(groups, np.nan, np.float32)
    key_count = np.zeros(1, np.float32)
    start = time.perf_counter()
    rc = lib.simt_test_group_attention(
        ptr(inputs["q"]), ptr(inputs["k"]), ptr(inputs["v"]), ptr(inputs["offsets"]),
        ptr(out), ptr(lse), ptr(key_count), groups, max_keys, dim, threads,
    )  # fmt: skip
    return rc, out, lse, float(key_count[0]), time.perf_counter() - start


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_group_attention(lib: EmulatedLibrary, order: str, seed: int) -> None:
    lib.set_schedule(order, seed)
    inputs = attention_inputs(groups=12, keys=70, dim=48, seed=seed + 1)
    rc, out, lse, key_count, _ = run_attention(lib, inputs, threads=96)
    assert rc == CUDA_SUCCESS, lib.last_error()
    offsets = inputs["offsets"]
    for g in range(len(offsets) - 1):
        k = inputs["k"][offsets[g] : offsets[g + 1]].astype(np.float64)
        v = inputs["v"][offsets[g] : offsets[g + 1]].astype(np.float64)
        s = k @ inputs["q"][g].astype(np.float64) / np.sqrt(k.shape[1])
        p = np.exp(s - s.max())
        np.testing.assert_allclose(out[g], p @ v / p.sum(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(lse[g], s.max() + np.log(p.sum()), rtol=1e-5, atol=1e-5)
    assert key_count == offsets[-1]


@not_under_sanitizer
def test_group_attention_speed(lib: EmulatedLibrary) -> None:
    """64 groups x 64 keys x 64 dims take ~45 ms on a 2-core VM; the 1 s bound only catches
    pathological slow-downs of the emulator (e.g. a system call per fiber switch)."""
    inputs = attention_inputs(groups=64, keys=64, dim=64, seed=0)
    timings = []
    for _ in range(3):
        rc, out, *_, seconds = run_attention(lib, inputs)
        assert rc == CUDA_SUCCESS, lib.last_error()
        timings.append(seconds)
    assert np.isfinite(out).all()
    # Loose bound against pathological regressions (e.g. a syscall per fiber switch).
    assert min(timings) < 1.0, timings


def test_concurrent_launches_from_python_threads(lib: EmulatedLibrary) -> None:
    """ctypes releases the GIL: launches from several threads are serialised by the runtime."""
    x = np.random.default_rng(4).standard_normal(3000).astype(np.float32)
    expected = x.reshape(3, 1000).astype(np.float64).sum(1)

    def work(_: int) -> np.ndarray:
        return np.stack([block_sums(lib, x, 3, 1000) for _ in range(5)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        for sums in pool.map(work, range(4)):
            np.testing.assert_allclose(sums, np.broadcast_to(expected, sums.shape), rtol=1e-5)


def test_invalid_launch_configuration(lib: EmulatedLibrary) -> None:
    assert lib.simt_test_bad_block(2048) == CUDA_ERROR_INVALID_CONFIGURATION
    assert "block size" in (lib.last_error() or "")
    assert lib.simt_test_bad_block(0) == CUDA_ERROR_INVALID_CONFIGURATION


# --------------------------------------------------------------------------------------------
# Seeded bugs are caught.


def test_missing_syncthreads_gives_wrong_results(lib: EmulatedLibrary) -> None:
    n, threads = 512, 128
    x = np.random.default_rng(2).random(n).astype(np.float32)
    expected = x.reshape(-1, threads).astype(np.float64).sum(1)
    wrong_under = []
    for order, seed in SCHEDULES:
        lib.set_schedule(order, seed)
        for with_sync in (1, 0):
            out = np.full(n // threads, np.nan, np.float32)
            rc = lib.simt_bug_reduce(ptr(x), ptr(out), n, threads, with_sync)
            assert rc == CUDA_SUCCESS, lib.last_error()
            if with_sync:
                np.testing.assert_allclose(out, expected, rtol=1e-5)
            elif not np.allclose(out, expected, rtol=1e-5):
                wrong_under.append((order, seed))
    assert wrong_under, "the missing __syncthreads went unnoticed under every schedule"


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_early_return_before_barrier_is_reported(
    lib: EmulatedLibrary, order: str, seed: int
) -> None:
    lib.set_schedule(order, seed)
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(32, np.float32)
    rc = lib.simt_bug_early_return(ptr(x), ptr(out), 20, 32)
    assert_launch_error(
        lib, rc, "barrier in divergent code", bug_line("early-return barrier"), "exited"
    )
    # The emulator stays usable after a failed launch.
    lib.clear_error()
    assert lib.last_error() is None
    np.testing.assert_allclose(block_sums(lib, x, 1, 32), [x.sum()])


def test_early_return_is_tolerated_when_not_strict(lib: EmulatedLibrary) -> None:
    lib.set_strict(False)
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(32, np.float32)
    assert lib.simt_bug_early_return(ptr(x), ptr(out), 20, 32) == CUDA_SUCCESS, lib.last_error()
    np.testing.assert_array_equal(out[:20], x[:20][::-1])


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_shuffle_from_exited_lane_is_reported(lib: EmulatedLibrary, order: str, seed: int) -> None:
    lib.set_schedule(order, seed)
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    rc = lib.simt_bug_shuffle_exited_full_mask(ptr(x), ptr(out))
    message = assert_launch_error(lib, rc, "0xffffffff", bug_line("full mask names exited lanes"))
    assert "exited" in message
    lib.clear_error()
    rc = lib.simt_bug_shuffle_reads_exited_lane(ptr(x), ptr(out))
    assert_launch_error(lib, rc, "reads lane 16", bug_line("reads an exited lane"), "0x0000ffff")


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_divergent_full_mask_shuffle_deadlock_is_reported(
    lib: EmulatedLibrary, order: str, seed: int
) -> None:
    lib.set_schedule(order, seed)
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    rc = lib.simt_bug_divergent_shuffle(ptr(x), ptr(out))
    message = assert_launch_error(
        lib,
        rc,
        "deadlock",
        bug_line("divergent full-mask shuffle"),
        bug_line("deadlock partner"),
    )
    assert re.search(r"threads 0-15 wait at __shfl_xor_sync", message), message
    assert re.search(r"threads 16-31 wait at __syncthreads", message), message


@pytest.mark.parametrize(("order", "seed"), SCHEDULES)
def test_split_barrier_is_reported(lib: EmulatedLibrary, order: str, seed: int) -> None:
    lib.set_schedule(order, seed)
    out = np.zeros(32, np.float32)
    rc = lib.simt_bug_split_barrier(ptr(out))
    assert_launch_error(
        lib, rc, "divergent", bug_line("split barrier A"), bug_line("split barrier B")
    )


def test_mask_naming_absent_lanes_is_reported(lib: EmulatedLibrary) -> None:
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    rc = lib.simt_bug_partial_warp_full_mask(ptr(x), ptr(out), 40)
    assert_launch_error(lib, rc, "do not exist", "8-31", bug_line("absent lanes"))
    lib.clear_error()
    assert lib.simt_bug_partial_warp_full_mask(ptr(x), ptr(out), 64) == CUDA_SUCCESS


def test_device_assert_and_trap(lib: EmulatedLibrary) -> None:
    x = np.arange(32, dtype=np.float32) - 5
    rc = lib.simt_bug_assert(ptr(x), 32)
    assert rc == CUDA_ERROR_ASSERT
    message = lib.last_error() or ""
    assert "in[i] >= 0.0f" in message and bug_line("device assert") in message, message
    assert lib.simt_bug_assert(ptr(x + 5), 32) == CUDA_SUCCESS
    lib.clear_error()
    assert_launch_error(lib, lib.simt_bug_trap(7), "__trap()", "thread (7,0,0)", bug_line("trap"))


@not_under_sanitizer
def test_fiber_stack_overflow_is_reported(lib: EmulatedLibrary) -> None:
    out = np.zeros(4, np.float32)
    lib.set_stack_size(16 * 1024)
    assert lib.stack_size() == 16 * 1024
    assert_launch_error(lib, lib.simt_bug_big_stack(ptr(out), 8000), "overflowed", "16384-byte")
    lib.clear_error()
    lib.set_stack_size(64 * 1024)
    assert lib.simt_bug_big_stack(ptr(out), 8000) == CUDA_SUCCESS, lib.last_error()
    np.testing.assert_array_equal(out, 7999.0)


@not_under_sanitizer
def test_faults_in_kernels_are_reported(lib: EmulatedLibrary) -> None:
    out = np.zeros(32, np.float32)
    assert lib.simt_bug_wild_read(None, ptr(out)) == CUDA_ERROR_ILLEGAL_ADDRESS
    message = lib.last_error() or ""
    assert "illegal memory access" in message and "thread (0,0,0)" in message, message
    lib.clear_error()
    ints = np.arange(32, dtype=np.int32)
    int_out = np.zeros(32, np.int32)
    assert_launch_error(lib, lib.simt_bug_int_div(ptr(ints), ptr(int_out), 0), "division by zero")
    lib.clear_error()
    assert lib.simt_bug_int_div(ptr(ints), ptr(int_out), 3) == CUDA_SUCCESS, lib.last_error()
    np.testing.assert_array_equal(int_out, ints // 3)


# --------------------------------------------------------------------------------------------
# Harness.


def test_cuda_include_dir_has_the_headers() -> None:
    include = cuda_include_dir()
    assert include is not None and (include / "cuda_fp16.h").is_file()


def test_unknown_schedule_is_rejected(lib: EmulatedLibrary) -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        lib.set_schedule("backwards")


def test_cache_key_follows_source_and_flags(tmp_path: Path) -> None:
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k() {}\n")
    first = emulated_library_path([src], "k")
    assert emulated_library_path([src], "k") == first
    assert emulated_library_path([src], "k", ["-DX=1"]) != first
    src.write_text("__global__ void k() { __syncthreads(); }\n")
    assert emulated_library_path([src], "k") != first


def test_build_errors_carry_the_compiler_message(tmp_path: Path) -> None:
    src = tmp_path / "broken.cu"
    src.write_text("__global__ void k() { undeclared_name = 1; }\n")
    with pytest.raises(EmulatorBuildError, match="undeclared_name"):
        build_emulated([src], "broken")
