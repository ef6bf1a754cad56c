"""The CPU kernels' cache of large output buffers (``csrc/cpu/output_cache.h``).

A reused block holds the previous call's (here: poisoned) values, so the kernels must write every
element of every cached output; the cache must stay within its bound, give its idle blocks back
when disabled, read ``INRFLOW_CPU_OUTPUT_CACHE_MB`` and leave gradients that autograd can
accumulate into and resize.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import inrflow.ops
from inrflow.ops import reference

pytestmark = pytest.mark.skipif(
    not inrflow.ops.extension_available("cpu", op="grouped_cross_attention"),
    reason="inrflow._C with the grouped_cross_attention CPU kernel is not built",
)
MIB = 2**20


def case(dtype=torch.float32, hq=4, hkv=4, dim=32, seed=0):
    """4,094 groups of 4 keys, an empty group and a 600-key group (several splits): out and dq
    are 2 MiB and dk, dv 8.3 MiB in fp32, so all four come from the cache."""
    lens = [4] * 4094 + [0, 600]
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(lens)
    q = torch.randn(len(lens), hq, dim, generator=gen).to(dtype)
    k = torch.randn(tokens, hkv, dim, generator=gen).to(dtype)
    v = torch.randn(tokens, hkv, dim, generator=gen).to(dtype)
    offsets = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    grad = torch.randn(len(lens), hq, dim, generator=gen).to(dtype)
    return q, k, v, offsets, grad


def fwd_bwd(q, k, v, offsets, grad, scale):
    out, lse = torch.ops.inrflow.grouped_cross_attention_forward.default(q, k, v, offsets, scale)
    dq, dk, dv = torch.ops.inrflow.grouped_cross_attention_backward.default(
        grad, q, k, v, offsets, out, lse, scale
    )
    return out, lse, dq, dk, dv


def stats() -> dict[str, int]:
    return inrflow.ops.cpu_output_cache_stats()


@pytest.mark.parametrize(
    ("dtype", "hq", "hkv"),
    [(torch.float32, 4, 4), (torch.float32, 6, 6), (torch.float32, 4, 1), (torch.float64, 4, 2),
     (torch.bfloat16, 4, 4)],
)  # fmt: skip
def test_reused_blocks_are_overwritten_in_full(dtype, hq, hkv) -> None:
    q, k, v, offsets, grad = case(dtype, hq, hkv)
    scale = 32**-0.5
    with inrflow.ops.cpu_output_cache(256 * MIB):
        first = fwd_bwd(q, k, v, offsets, grad, scale)
        want = [t.clone() for t in first]
        pointers = {t.data_ptr() for t in first}
        cached = sum(t.nbytes >= 2 * MIB for t in first)
        assert cached >= 2  # dk and dv at least
        for t in first:
            t.fill_(math.nan)  # what a reused block holds if a kernel skips an element
        del first, t
        before = stats()
        second = fwd_bwd(q, k, v, offsets, grad, scale)
        after = stats()
        assert after["hits"] - before["hits"] == cached
        assert after["misses"] == before["misses"]
        assert {t.data_ptr() for t in second if t.nbytes >= 2 * MIB} <= pointers
        for got, expected, name in zip(second, want, ("out", "lse", "dq", "dk", "dv"), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    if dtype == torch.float64:  # and the values are right (the kernel tests cover the rest)
        q64, k64, v64 = (t.clone().requires_grad_() for t in (q, k, v))
        ref = reference.grouped_cross_attention(q64, k64, v64, offsets, scale)
        ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad)
        torch.testing.assert_close(second[0], ref, rtol=0, atol=1e-10)
        for got, ref_grad in zip(second[2:], ref_grads, strict=True):
            torch.testing.assert_close(got, ref_grad, rtol=0, atol=1e-10)


def test_idle_bytes_stay_within_the_limit() -> None:
    q, k, v, offsets, grad = case()
    with inrflow.ops.cpu_output_cache(3 * MIB):  # room for out or dq, never dk or dv
        outputs = fwd_bwd(q, k, v, offsets, grad, 0.2)
        assert stats()["live_bytes"] >= sum(t.nbytes for t in outputs if t.nbytes >= 2 * MIB)
        del outputs
        s = stats()
        assert s["live_bytes"] == 0
        assert 0 < s["idle_bytes"] <= 3 * MIB
    with inrflow.ops.cpu_output_cache(0):  # disabled: every idle block is given back
        s = stats()
        assert s["limit_bytes"] == 0 and s["idle_bytes"] == 0
        outputs = fwd_bwd(q, k, v, offsets, grad, 0.2)
        assert stats()["hits"] == s["hits"] and stats()["misses"] == s["misses"]
        assert stats()["live_bytes"] == 0  # at::empty served them
        del outputs


def test_limit_api_returns_and_restores_the_previous_bound() -> None:
    previous = inrflow.ops.set_cpu_output_cache_limit(5 * MIB)
    try:
        with inrflow.ops.cpu_output_cache(7 * MIB):
            assert stats()["limit_bytes"] == 7 * MIB
        assert stats()["limit_bytes"] == 5 * MIB
    finally:
        assert inrflow.ops.set_cpu_output_cache_limit(previous) == 5 * MIB
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="non-negative int"):
            inrflow.ops.set_cpu_output_cache_limit(bad)


def test_gradients_from_the_cache_accumulate_and_resize() -> None:
    q, k, v, offsets, grad = case(seed=3)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with inrflow.ops.cpu_output_cache(256 * MIB), inrflow.ops.use_backend("extension"):
        for _ in range(2):
            inrflow.ops.grouped_cross_attention(q, k, v, offsets).backward(grad)
        with inrflow.ops.use_backend("reference"):
            want = torch.autograd.grad(
                reference.grouped_cross_attention(q, k, v, offsets), (q, k, v), grad
            )
        for t, w in zip((q, k, v), want, strict=True):
            torch.testing.assert_close(t.grad, 2 * w, rtol=1e-5, atol=1e-5)
        dk = k.grad
        k.grad = None
        dk.resize_(dk.numel() * 2)  # the storage is an ordinary resizable one
        dk[-1] = 1.0
        assert dk.shape == (2 * k.numel(),)


def _run(code: str, env_value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INRFLOW_CPU_OUTPUT_CACHE_MB": env_value}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(("value", "limit"), [("0", 0), ("7", 7 * MIB)])
def test_env_var_sets_the_start_up_bound(value, limit) -> None:
    proc = _run("import inrflow.ops; print(inrflow.ops.cpu_output_cache_stats()['limit_bytes'])",
                value)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == limit


def test_env_var_rejects_bad_values() -> None:
    proc = _run("import inrflow.ops; inrflow.ops.cpu_output_cache_stats()", "lots")
    assert proc.returncode != 0
    assert "INRFLOW_CPU_OUTPUT_CACHE_MB must be a non-negative integer" in proc.stderr
