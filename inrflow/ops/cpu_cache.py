"""Control of the CPU kernels' cache of large output buffers.

The extension's CPU grouped attention returns gigabyte-sized gradients at large sizes; a fresh
allocation of that size is a fresh mapping, whose pages the OS faults in and zero-fills on every
call (that cost more than the kernel itself on a 2-core VM). The extension therefore keeps the
blocks of freed outputs of at least 2 MiB and reuses them, like the CUDA caching allocator, but
bounded: the idle (freed, kept) bytes never exceed a limit, by default
``min(4 GiB, physical memory / 4)``, set at start-up by ``INRFLOW_CPU_OUTPUT_CACHE_MB`` (0
disables the cache) and at run time with :func:`set_cpu_output_cache_limit` or
:func:`cpu_output_cache`. Memory held by live tensors is the caller's as usual; only idle blocks
count against the limit. The process allocator and other tensors are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from inrflow import _extension

_FIELDS = ("limit_bytes", "idle_bytes", "live_bytes", "hits", "misses")


def _require() -> None:
    if not _extension.has_op("cpu_output_cache_limit"):
        raise RuntimeError(
            "inrflow: the CPU output cache needs the compiled extension inrflow._C "
            f"({_extension.load_error() or 'this build has no cpu_output_cache_limit op'})"
        )


def set_cpu_output_cache_limit(limit_bytes: int) -> int:
    """Set the bound on idle cached bytes (0 disables the cache and frees its idle blocks);
    returns the previous bound."""
    if not isinstance(limit_bytes, int) or isinstance(limit_bytes, bool) or limit_bytes < 0:
        raise ValueError(f"limit_bytes must be a non-negative int, got {limit_bytes!r}")
    _require()
    return int(torch.ops.inrflow.cpu_output_cache_limit(limit_bytes))


def cpu_output_cache_stats() -> dict[str, int]:
    """``limit_bytes``, ``idle_bytes``, ``live_bytes`` (held by tensors now), ``hits`` and
    ``misses`` (allocations served from an idle block / by a new mapping) of the cache."""
    _require()
    return dict(zip(_FIELDS, torch.ops.inrflow.cpu_output_cache_stats(), strict=True))


@contextmanager
def cpu_output_cache(limit_bytes: int) -> Iterator[None]:
    """Run a block with the cache bounded by ``limit_bytes`` (0: disabled), then restore the
    previous bound (blocks evicted meanwhile are not brought back)."""
    previous = set_cpu_output_cache_limit(limit_bytes)
    try:
        yield
    finally:
        set_cpu_output_cache_limit(previous)
