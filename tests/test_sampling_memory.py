"""Decoding 1024x1024 queries with the ``tiny`` preset stays within a fixed memory bound because
``sample`` decodes in chunks. Measured as the growth of the peak resident set size of a fresh
process (Linux: ``/proc/self/clear_refs`` resets the peak), so other tests cannot disturb it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import torch
    from inrflow.model import build_model, grid_coords
    from inrflow.sampling import nested_grid_index, sample

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    model = build_model("tiny")
    torch.nn.init.normal_(model.final.linear.weight, std=0.1)  # a non-trivial output
    ctx = grid_coords((16, 16))
    queries = grid_coords((1024, 1024))
    noise = torch.randn(1, queries.shape[0], 3)
    # warm-up on a small problem: thread pools, allocator caches
    sample(model, ctx, grid_coords((64, 64)), 1, context_index=nested_grid_index((16, 16), 4),
           progress=False)
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    out = sample(model, ctx, queries, 2, context_index=nested_grid_index((16, 16), 64),
                 noise=noise, progress=False)
    assert out.shape == (1, 1024 * 1024, 3) and bool(torch.isfinite(out).all())
    print((status("VmHWM") - base) / 2**20)
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux procfs")
def test_decoding_a_megapixel_keeps_extra_peak_memory_under_1gb() -> None:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    extra_mib = float(res.stdout.strip().splitlines()[-1])
    print(f"\nextra peak memory decoding 1024x1024 queries: {extra_mib:.0f} MiB")
    assert extra_mib < 1024
