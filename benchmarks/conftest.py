"""Shared fixtures of the pytest-benchmark suites.

Every op is timed side by side in one run as three implementations of the same call (the
``impl`` fixture): the eager pure-PyTorch reference, ``torch.compile`` of that reference, and the
compiled extension through the public ``inrflow.ops`` API (so its autograd registration is timed
too). Give the three one ``@pytest.mark.benchmark(group=...)`` and read the ratios off the
group's table.

``pytest benchmarks/ --benchmark-only`` times them at sizes chosen so that the whole CPU suite
finishes in under 15 minutes on 2 cores. ``INRFLOW_BENCH_LARGE=1`` (the ``large`` fixture; an
hour or more on 2 cores) switches three suites to the full sizes their yardsticks are stated
for: ``grouped_cross_attention`` fwd+bwd with all 8,192 groups (1,024 for the folded shape)
instead of 1/8 of them, the pairwise Chamfer matrix of 256 x 256 clouds of 2,048 points, and the
S whole training step, inrflow's path vs the authors' composition, at a 256^2 context with
16,384 queries. Under ``--benchmark-disable`` (CI) each benchmark runs its function once as a
plain test, at the small size chosen when ``smoke`` is true.

Every CPU kernel benchmark also reports its achieved GB/s and GFLOP/s and its share of a roofline
measured in the same session (``benchmarks/roofline.py``); the table is printed at the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import pytest
import roofline
import torch

import inrflow.ops

IMPLS = ("eager", "compile", "extension")

_compiled: dict[Callable, Callable] = {}


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    """Which implementation a benchmark times: ``eager``, ``compile`` or ``extension``."""
    return request.param


def bench_large() -> bool:
    """True with ``INRFLOW_BENCH_LARGE=1``: time the full yardstick sizes (module docstring)."""
    return os.environ.get("INRFLOW_BENCH_LARGE") == "1"


@pytest.fixture
def large(benchmark) -> bool:
    """True when timing (not ``--benchmark-disable``) with ``INRFLOW_BENCH_LARGE=1``."""
    return bench_large() and not benchmark.disabled


@pytest.fixture
def smoke(benchmark) -> bool:
    """True when the benchmark only runs once as a test: use a small size then."""
    return bool(benchmark.disabled)


def _make_impl(
    kind: str, public_fn: Callable, reference_fn: Callable, op: str, device: torch.device | str
) -> Callable:
    if kind == "eager":
        backend: str | None = "reference"
        fn = public_fn
    elif kind == "compile":
        backend = None
        if reference_fn not in _compiled:  # compile once per process
            _compiled[reference_fn] = torch.compile(reference_fn, dynamic=False)
        fn = _compiled[reference_fn]
    elif kind == "extension":
        if not inrflow.ops.extension_available(device, op=op):
            pytest.skip(f"inrflow._C has no {torch.device(device).type} kernel for {op}")
        backend = "extension"
        fn = public_fn
    else:
        raise ValueError(f"unknown implementation {kind!r}; expected one of {IMPLS}")

    def run(*args: object, **kwargs: object) -> object:
        scope = inrflow.ops.use_backend(backend) if backend else contextlib.nullcontext()
        with scope:
            return fn(*args, **kwargs)

    return run


@pytest.fixture
def make_impl() -> Callable[..., Callable]:
    """Factory ``make_impl(kind, public_fn, reference_fn, op, device) -> callable``.

    ``public_fn`` is the ``inrflow.ops`` function and ``reference_fn`` its pure-PyTorch
    reference; ``kind="extension"`` skips the test when the extension has no kernel for ``op`` on
    ``device``.
    """
    return _make_impl


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work so that a timed function covers its kernels (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture
def synchronize() -> Callable[[torch.device | str], None]:
    """:func:`sync` as a fixture: call it at the end of a timed function."""
    return sync


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the roofline table of the benchmarks timed in this session."""
    lines = roofline.table()
    if lines:
        terminalreporter.section("roofline (bound = max(bytes / copy rate, FLOPs / GEMM rate))")
        for line in lines:
            terminalreporter.write_line(line)
