"""Where the time of a grouped-attention fwd+bwd goes on the CPU: per phase, side by side.

For the uniform yardstick (G groups of 64 keys, 12 heads, D = 64, fp32) this times, in one
process and interleaved round by round (the order alternates), the extension and batched SDPA
(``q [G, H, 1, D]``, ``k, v [G, H, 64, D]`` views; see ``test_bench_attention.batched_sdpa``):

* forward and backward separately (wall time, minor page faults from ``getrusage``, and the
  growth of ``AnonHugePages`` in ``/proc/self/smaps_rollup`` while the gradients are alive, i.e.
  how much of the fresh output memory landed on transparent huge pages);
* the cost of fresh memory alone: writing as many bytes as dk + dv into a new tensor (4 KiB pages),
  into a new tensor advised ``MADV_HUGEPAGE`` before the first write, and again into the same,
  already mapped tensor. Every implementation that returns fresh gradients pays one of the first
  two; the third is what is left once the pages exist.

Run: ``OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/attention_phases.py --groups 8192``
(about 10 GB of memory at that size). The extension's output cache
(``INRFLOW_CPU_OUTPUT_CACHE_MB``) is on or off as the environment says; ``--cache both`` times
the extension twice per round, with the cache at its start-up bound and switched off through
``inrflow.ops.cpu_output_cache``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_attention as tba

import inrflow.ops

MADV_HUGEPAGE = 14
_libc = ctypes.CDLL(None, use_errno=True)


def anon_huge_bytes() -> int:
    """AnonHugePages of this process in bytes (0 where the kernel does not report it)."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def advise_huge(t: torch.Tensor) -> None:
    """madvise(MADV_HUGEPAGE) on the 2 MiB-aligned interior of t's memory."""
    huge = 2 << 20
    start = t.data_ptr()
    first = (start + huge - 1) // huge * huge
    last = (start + t.nbytes) // huge * huge
    if last > first:
        _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_HUGEPAGE)


def fresh_write(nbytes: int) -> dict[str, float]:
    """Seconds to fill nbytes of fresh memory (4 KiB pages, huge pages) and of mapped memory."""
    n = nbytes // 4
    res = {}
    t = torch.empty(n)
    start = time.perf_counter()
    t.fill_(1.0)
    res["fresh 4k s"] = time.perf_counter() - start
    start = time.perf_counter()
    t.fill_(2.0)
    res["mapped s"] = time.perf_counter() - start
    del t
    t = torch.empty(n)
    advise_huge(t)
    huge0 = anon_huge_bytes()
    start = time.perf_counter()
    t.fill_(1.0)
    res["fresh huge s"] = time.perf_counter() - start
    res["huge share"] = (anon_huge_bytes() - huge0) / max(1, nbytes)
    del t
    return res


def phases(fn: Callable, inputs) -> dict[str, float]:
    limit = getattr(fn, "cache_limit", None)
    if limit is None:
        return _phases(fn, inputs)
    with inrflow.ops.cpu_output_cache(limit):
        if limit:  # the other variant emptied the cache: one untimed call refills it, as the
            _phases(fn, inputs)  # previous step of a training loop would have
        return _phases(fn, inputs)


def _phases(fn: Callable, inputs) -> dict[str, float]:
    q, k, v, offsets, grad = inputs
    f0, h0 = minor_faults(), anon_huge_bytes()
    start = time.perf_counter()
    out = fn(q, k, v, offsets)
    mid = time.perf_counter()
    f1 = minor_faults()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    end = time.perf_counter()
    f2, h2 = minor_faults(), anon_huge_bytes()
    fresh = out.nbytes + dq.nbytes + dk.nbytes + dv.nbytes
    del out, dq, dk, dv
    return {
        "fwd s": mid - start,
        "bwd s": end - mid,
        "total s": end - start,
        "fwd faults": f1 - f0,
        "bwd faults": f2 - f1,
        "huge share": (h2 - h0) / fresh,
    }


def extension(cache_limit: int | None) -> Callable:
    """The extension through the public op; ``cache_limit`` bounds the output cache (None: as
    set). The bound is set around the whole forward + backward by :func:`phases`."""

    def run(q, k, v, offsets):
        with inrflow.ops.use_backend("extension"):
            return inrflow.ops.grouped_cross_attention(q, k, v, offsets)

    run.cache_limit = cache_limit  # type: ignore[attr-defined]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", choices=["env", "both"], default="env")
    args = parser.parse_args()
    shape = (args.groups, 64, 12, 12, 64)
    inputs = tba.make_inputs(shape, "cpu")
    q, k, v, offsets, _ = inputs
    impls: dict[str, Callable] = {}
    if args.cache == "both":
        default = inrflow.ops.cpu_output_cache_stats()["limit_bytes"]
        impls["ext cache"] = extension(default)
        impls["ext no cache"] = extension(0)
    else:
        impls["extension"] = extension(None)
    impls["batched SDPA"] = tba.batched_sdpa
    print(
        f"groups {args.groups}, threads {torch.get_num_threads()}, "
        f"bytes {tba.bytes_moved(q, k, v, offsets) / 1e9:.2f} GB, "
        f"GFLOP {tba.flops_fwd_bwd(q, k, v) / 1e9:.2f}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for fn in impls.values():  # warm up
        phases(fn, inputs)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in impls}
    writes: list[dict[str, float]] = []
    names = list(impls)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            res = phases(impls[name], inputs)
            rows[name].append(res)
            print(f"round {r} {name:>13}: " + ", ".join(f"{key} {val:.3g}" for key, val in
                                                        res.items()), flush=True)  # fmt: skip
        writes.append(fresh_write(k.nbytes + v.nbytes))
        print(f"round {r} fresh write of dk+dv bytes: " + ", ".join(
            f"{key} {val:.3g}" for key, val in writes[-1].items()), flush=True)  # fmt: skip
    print(f"medians over {args.rounds} rounds (min-max), load {os.getloadavg()[0]:.1f}:")
    for name, res in rows.items():
        cells = []
        for key in res[0]:
            vals = [x[key] for x in res]
            cells.append(f"{key} {statistics.median(vals):.3g} ({min(vals):.3g}-{max(vals):.3g})")
        print(f"{name:>13}: " + ", ".join(cells))
    cells = []
    for key in writes[0]:
        vals = [x[key] for x in writes]
        cells.append(f"{key} {statistics.median(vals):.3g} ({min(vals):.3g}-{max(vals):.3g})")
    print(f"{'fresh write':>13}: " + ", ".join(cells))
    base = rows["batched SDPA"]
    for name in names[:-1]:
        ratios = [b["total s"] / x["total s"] for b, x in zip(base, rows[name], strict=True)]
        print(f"batched SDPA / {name}: median {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
