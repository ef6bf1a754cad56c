"""One command on a fresh GPU machine: ``python -m inrflow.gpu_check`` (``scripts/gpu_check.sh``).

Run in the repository with the venv the README makes, it does, each part within its own time
budget (9 minutes in all on one H100; a part that would overrun what is left is skipped and the
report says so):

1. ``build``: builds the extension (``pip install --no-build-isolation -e .``) when it has no CUDA
   kernels yet;
2. ``tests``: the GPU tests (the kernel and op test files, ``-k cuda``);
3. ``ops``: each op's kernel against its eager and ``torch.compile``-d reference (and, for the
   grouped attention, flash-attn varlen / xformers / torch varlen when installed): time, GB/s
   and the share of the HBM roofline (the datasheet bandwidth, and a large device copy measured
   in the same run);
4. ``step``: the XL training step at 256^2 in bf16 through the trainer's own path (FSDP2 mixed
   precision, fused AdamW), at the largest batch that fits (doubling until out of memory), eager
   and whole-model compiled: samples/s, TFLOP/s, MFU, peak memory;
5. ``demo``: the digits demo (``train.py --preset digits``) on the GPU.

It writes ``gpu_report.json`` and ``gpu_report.md`` into ``--out``. ``--dry-run`` (any machine, a
CPU suffices) prints the plan and runs every CPU-valid part at tiny sizes in under a minute:
ops (eager reference vs the CPU kernels), the training step of a tiny model eager and compiled
(``aot_eager``: the graphs are captured whole, no code is generated) and a two-step demo.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
GPU_TEST_FILES = (
    "tests/test_ops_api.py",
    "tests/test_assign_kernels.py",
    "tests/test_attention_kernels.py",
    "tests/test_fourier_kernels.py",
    "tests/test_nvtx.py",
)
#: seconds per part on one H100 (the sum stays under 9 minutes with the report written)
BUDGETS = {"build": 150.0, "tests": 60.0, "ops": 90.0, "step": 180.0, "demo": 50.0}
TOTAL_BUDGET = 540.0


@dataclasses.dataclass
class Plan:
    """Sizes and switches of one run: the GPU run or the CPU dry run."""

    device: str
    dry_run: bool
    size: str = "XL"
    resolution: int = 256
    queries: int = 16384
    op_batch: int = 8
    compile_backend: str = "inductor"
    max_batch: int = 512

    @classmethod
    def for_machine(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(
                device="cpu",
                dry_run=True,
                size="tiny",
                resolution=16,
                queries=64,
                op_batch=1,
                compile_backend="aot_eager",
                max_batch=4,
            )
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU is visible: run with --dry-run on a CPU machine")
        return cls(device="cuda", dry_run=False)


class Clock:
    """The run's time budget: what is left, and whether a part still fits."""

    def __init__(self, total: float) -> None:
        self.start, self.total = time.perf_counter(), total

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def fits(self, part: str) -> bool:
        return self.left() >= BUDGETS[part]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device: str, budget_s: float, warmup: int = 2) -> float:
    """Median seconds of ``fn`` over up to 20 runs within ``budget_s`` (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 20 and (len(times) < 3 or time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _hbm_spec(device: str) -> float | None:
    """Datasheet HBM bandwidth (bytes/s) of this GPU, None when unknown (or a CPU)."""
    from inrflow.perf import GPUS

    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((g.hbm_bytes_per_s for key, g in GPUS.items() if key in name), None)


def _copy_bandwidth(device: str, nbytes: int) -> float:
    """Achieved bytes/s of a large device copy (read + write), the measured roofline."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), device, 1.0)
    return 2 * nbytes / seconds


# ------------------------------------------------------------------------------------------------
# parts run as subprocesses


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in the repository; returns its status, seconds and the tail of its output."""
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        status = "ok" if out.returncode == 0 else f"failed (exit {out.returncode})"
        tail = (out.stdout + out.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {timeout:.0f} s"
        raw = e.stdout or ""
        tail = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw)[-2000:]
    return {
        "status": status,
        "seconds": time.perf_counter() - t0,
        "cmd": " ".join(cmd),
        "tail": tail,
    }


def part_build(plan: Plan, clock: Clock) -> dict[str, Any]:
    from inrflow import ops

    if ops.extension_available(plan.device):
        return {"status": f"ok (inrflow._C already has {plan.device} kernels)"}
    if plan.dry_run:
        return {
            "status": "skipped in the dry run (would run: pip install --no-build-isolation -e .)"
        }
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "-e", "."]
    result = _run(cmd, min(BUDGETS["build"], clock.left()))
    result["note"] = "built now: the check continues in a fresh process that loads the kernels"
    return result


def part_tests(plan: Plan, clock: Clock) -> dict[str, Any]:
    if plan.dry_run:
        return {"status": "skipped in the dry run (the CI runs the test suite on the CPU)"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *GPU_TEST_FILES,
        "-k",
        "cuda",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
    ]
    return _run(cmd, min(BUDGETS["tests"], clock.left()))


def part_demo(plan: Plan, clock: Clock, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "train.py", "--preset", "digits", "--device", plan.device]
    cmd += ["--out", str(out / "digits_demo"), "--no-tensorboard"]
    if plan.dry_run:
        cmd += ["--steps", "2", "--final-samples", "0", "--ckpt-every", "0", "--workers", "0"]
        cmd += ["--num-samples", "4", "--sample-steps", "2"]
    # the dry run's demo is two steps: its timeout only guards against a hang (a shared CI
    # machine can be several times slower than the minute the dry run takes on a quiet one)
    timeout = 600.0 if plan.dry_run else min(BUDGETS["demo"], clock.left())
    result = _run(cmd, timeout)
    metrics = out / "digits_demo" / "metrics.csv"
    if metrics.exists():
        from inrflow.train.logging import read_metrics

        rows = read_metrics(metrics)
        result["steps"] = len(rows)
        result["last_loss"] = rows[-1]["loss"] if rows else None
    return result


# ------------------------------------------------------------------------------------------------
# ops


def _op_cases(plan: Plan) -> list[tuple[str, str, Callable[[], tuple], dict]]:
    """(op, label, make_args, kwargs): the ops at the sizes of the model's forward."""
    from inrflow import ops
    from inrflow.model import get_config, grid_coords

    cfg = get_config(plan.size)
    dev, b, side = plan.device, plan.op_batch, plan.resolution
    n, k = side * side, cfg.num_latents
    grid = cfg.grid_shape()
    half = torch.bfloat16 if dev == "cuda" else torch.float32

    def points():
        return grid_coords((side, side), device=dev).expand(b, -1, -1).contiguous()

    def assign():
        return ops.grid_assign(points(), grid, 0.0, 1.0, validate=False)

    def folded():
        _, offsets = ops.group_layout(assign(), k, validate=False)
        h, heads = cfg.hidden, cfg.encoder_heads
        q = torch.randn(b * k, heads, h, device=dev, dtype=half, requires_grad=True)
        kv = torch.randn(b * n, 1, h, device=dev, dtype=half, requires_grad=True)
        return q, kv, kv, offsets

    def standard():  # multi-head groups: 12 heads, D = 64, 64 keys per group
        g, keys = (8192, 64) if not plan.dry_run else (64, 16)
        q = torch.randn(g, 12, 64, device=dev, dtype=half, requires_grad=True)
        kk = torch.randn(g * keys, 12, 64, device=dev, dtype=half, requires_grad=True)
        vv = torch.randn(g * keys, 12, 64, device=dev, dtype=half, requires_grad=True)
        offsets = torch.arange(g + 1, device=dev, dtype=torch.int32) * keys
        return q, kk, vv, offsets

    def fourier():
        x = torch.rand(b * n, 2, device=dev, requires_grad=True)
        freqs = ops.fourier_frequencies(cfg.num_freqs, cfg.max_log2, cfg.freq_scale, device=dev)
        return x, freqs

    def centers():
        return points(), ops.grid_centers(grid, 0.0, 1.0, device=dev)

    return [
        ("fourier_embed", f"{b * n:,} points x {cfg.num_freqs} freqs", fourier, {}),
        ("grid_assign", f"[{b}, {n:,}, 2] on {grid}", lambda: (points(), grid, 0.0, 1.0), {}),
        ("nearest_assign", f"[{b}, {n:,}, 2] vs {k} centres", centers, {}),
        ("group_layout", f"[{b}, {n:,}] into {k} groups", lambda: (assign(), k), {}),
        ("grouped_cross_attention", "folded encoder (MQA, width H)", folded, {}),
        ("grouped_cross_attention", "12 heads, D=64, 64 keys", standard, {}),
    ]


def _reference_fn(op: str) -> Callable:
    from inrflow.ops import reference

    fn = getattr(reference, op)
    if op == "grid_assign":
        return lambda p, shape, lo, hi: fn(p, list(shape), [lo] * len(shape), [hi] * len(shape))
    return fn


def part_ops(plan: Plan, clock: Clock) -> dict[str, Any]:
    """Kernel vs eager and compiled reference (+ third-party attention backends), forward."""
    from inrflow import ops
    from inrflow.ops import attention_backends
    from inrflow.perf import op_cost

    deadline = time.perf_counter() + min(BUDGETS["ops"], clock.left())
    spec = _hbm_spec(plan.device)
    copy = _copy_bandwidth(plan.device, (1 << 30) if plan.device == "cuda" else (64 << 20))
    rows = []
    for op, label, make, kwargs in _op_cases(plan):
        args = make()
        public = getattr(ops, op)
        impls: dict[str, Callable[[], object]] = {}
        if ops.extension_available(plan.device, op):
            kw = {} if op == "fourier_embed" else {"validate": False}  # no sync in the timing
            impls["kernel"] = lambda public=public, args=args, kw=kw: public(*args, **kw)
        ref = _reference_fn(op)
        impls["eager reference"] = lambda ref=ref, args=args: ref(*args)
        if not plan.dry_run:
            compiled = torch.compile(ref, dynamic=False)
            impls["compiled reference"] = lambda compiled=compiled, args=args: compiled(*args)
        if op == "grouped_cross_attention":
            for name in attention_backends.available_backends(plan.device):
                impls[name] = lambda name=name, args=args: (
                    attention_backends.grouped_cross_attention_via(name, *args)
                )
        with torch.no_grad():
            out = (impls.get("kernel") or impls["eager reference"])()
        cost = op_cost(op, args, kwargs, out)
        for impl, fn in impls.items():
            left = deadline - time.perf_counter()
            if left < 1.0:
                rows.append(
                    {"op": op, "case": label, "impl": impl, "status": "skipped: ops budget spent"}
                )
                continue
            try:
                with torch.no_grad(), ops.use_backend("extension" if impl == "kernel" else "auto"):
                    seconds = _time(fn, plan.device, min(2.0, left / 4))
            except Exception as e:  # a backend that rejects the shape or dtype
                rows.append({"op": op, "case": label, "impl": impl, "status": f"error: {e}"[:300]})
                continue
            gbps = cost.bytes / seconds
            rows.append(
                {
                    "op": op,
                    "case": label,
                    "impl": impl,
                    "status": "ok",
                    "ms": seconds * 1e3,
                    "GB/s": gbps / 1e9,
                    "GFLOP/s": cost.flops / seconds / 1e9,
                    "% HBM datasheet": 100 * gbps / spec if spec else None,
                    "% measured copy": 100 * gbps / copy,
                }
            )
    return {
        "status": "ok",
        "copy_GB/s": copy / 1e9,
        "hbm_datasheet_GB/s": spec / 1e9 if spec else None,
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------
# the training step


def _step_setup(plan: Plan, batch: int, compiled: bool, dist):
    """The trainer's model path: parallelize (FSDP2 mixed precision, compile) + fused AdamW."""
    from inrflow.memory import _batch
    from inrflow.model import INRFlow, get_config
    from inrflow.train.optim import build_optimizer
    from inrflow.train.parallelize import parallelize

    torch.manual_seed(0)
    with torch.device(plan.device):  # initialise on the device: XL on the CPU takes a while
        model = INRFlow(get_config(plan.size))
    model = parallelize(
        model,
        dist.mesh,
        param_dtype=torch.bfloat16 if plan.device == "cuda" else None,
        compile=compiled,
        compile_backend=plan.compile_backend,
    )
    opt = build_optimizer(model, 1e-4, (0.9, 0.95), 1e-8, 0.0)
    data = _batch(model.config, batch, plan.resolution**2, plan.queries, device=plan.device)
    return model, opt, data


def _one_step(model, opt, data) -> None:
    from inrflow.memory import _train_step

    _train_step(model, opt, data)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _largest_batch(plan: Plan, model, opt, deadline: float) -> tuple[int, list[int]]:
    """Double the batch from 1 until a step runs out of memory, the plan's cap or the deadline
    (one model: the optimizer state it allocates belongs to the footprint anyway)."""
    from inrflow.memory import _batch

    fits, b, tried = 0, 1, []
    while b <= plan.max_batch and time.perf_counter() < deadline:
        tried.append(b)
        try:
            data = _batch(model.config, b, plan.resolution**2, plan.queries, device=plan.device)
            _one_step(model, opt, data)
            _sync(plan.device)
            fits = b
        except Exception as e:
            if not _is_oom(e):
                raise
            break
        finally:
            data = None
            opt.zero_grad(set_to_none=True)
            if plan.device == "cuda":
                torch.cuda.empty_cache()
        b *= 2
    return fits, tried


def part_step(plan: Plan, clock: Clock) -> dict[str, Any]:
    from inrflow.memory import _batch
    from inrflow.model import get_config
    from inrflow.perf import training_flops_per_sample
    from inrflow.train.distributed import init_distributed
    from inrflow.train.throughput import device_peak_tflops

    deadline = time.perf_counter() + min(BUDGETS["step"], clock.left())
    dist = init_distributed(plan.device)
    result: dict[str, Any] = {"size": plan.size, "resolution": plan.resolution}
    try:
        flops = training_flops_per_sample(get_config(plan.size), plan.resolution**2, plan.queries)
        peak = device_peak_tflops(torch.device(plan.device))
        # leave room for the compiled run: the search may use at most a third of the budget
        search_end = time.perf_counter() + (deadline - time.perf_counter()) / 3
        model, opt, _ = _step_setup(plan, 1, False, dist)
        batch, tried = _largest_batch(plan, model, opt, search_end)
        result.update(batch=batch, batches_tried=tried, tflop_per_sample=flops / 1e12)
        if batch == 0:
            result["status"] = "no batch fits"
            return result
        for mode, compiled in (("eager", False), ("compiled", True)):
            if deadline - time.perf_counter() < 5:
                result[mode] = {"status": "skipped: step budget spent"}
                continue
            if plan.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if model is None:  # the eager model was freed after its timing
                model, opt, _ = _step_setup(plan, 1, compiled, dist)
            data = _batch(model.config, batch, plan.resolution**2, plan.queries, device=plan.device)
            t0 = time.perf_counter()
            _one_step(model, opt, data)  # compiles, when compiled
            _sync(plan.device)
            first = time.perf_counter() - t0
            left = deadline - time.perf_counter()
            # eager leaves most of what is left to the compiled run's compilation
            budget = left / 2 if compiled else min(left / 5, 30.0)
            seconds = _time(
                lambda m=model, o=opt, d=data: _one_step(m, o, d),
                plan.device,
                max(budget, 0.1),
                warmup=1,
            )
            tflops = flops * batch / seconds / 1e12
            result[mode] = {
                "status": "ok",
                "first_step_s": first,
                "step_s": seconds,
                "samples_per_s": batch / seconds,
                "tflops": tflops,
                "mfu": tflops / peak if peak else None,
                "peak_memory_GB": torch.cuda.max_memory_allocated() / 1e9
                if plan.device == "cuda"
                else None,
            }
            model = opt = data = None
        if result["eager"].get("status") == "ok" and result["compiled"].get("status") == "ok":
            result["compiled_speedup"] = result["eager"]["step_s"] / result["compiled"]["step_s"]
        result["status"] = "ok"
    finally:
        dist.close()
    return result


# ------------------------------------------------------------------------------------------------
# report


def _fmt(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    lines = [f"# inrflow GPU check{' (dry run)' if report['dry_run'] else ''}", ""]
    lines.append(
        f"- device: {report['device_name']}; torch {report['torch']}; {report['seconds']:.0f} s"
    )
    for part in ("build", "tests", "demo"):
        r = report["parts"].get(part, {})
        lines.append(
            f"- {part}: {r.get('status', 'not run')}"
            + (f" ({r['seconds']:.0f} s)" if "seconds" in r else "")
        )
    ops_part = report["parts"].get("ops", {})
    if "rows" in ops_part:
        lines += [
            "",
            f"## Ops (forward; measured copy {_fmt(ops_part['copy_GB/s'])} GB/s, datasheet HBM "
            f"{_fmt(ops_part['hbm_datasheet_GB/s'])} GB/s)",
            "",
            "| op | case | implementation | ms | GB/s | GFLOP/s | % HBM datasheet "
            "| % measured copy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in ops_part["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {r['status']} |||||")
                continue
            lines.append(
                f"| {r['op']} | {r['case']} | {r['impl']} | {_fmt(r['ms'])} | "
                f"{_fmt(r['GB/s'])} | {_fmt(r['GFLOP/s'])} | {_fmt(r['% HBM datasheet'])} | "
                f"{_fmt(r['% measured copy'])} |"
            )
    elif "ops" in report["parts"]:
        lines.append(f"- ops: {ops_part.get('status')}")
    step = report["parts"].get("step", {})
    if "batch" in step:
        lines += [
            "",
            f"## Training step: {step['size']} at {step['resolution']}^2, batch {step['batch']} "
            f"(largest that fit of {step['batches_tried']}), "
            f"{_fmt(step['tflop_per_sample'])} TFLOP/sample",
            "",
            "| mode | status | first step s | step s | samples/s | TFLOP/s | MFU | peak GB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode in ("eager", "compiled"):
            r = step.get(mode, {})
            lines.append(
                f"| {mode} | {r.get('status')} | {_fmt(r.get('first_step_s'))} | "
                f"{_fmt(r.get('step_s'))} | {_fmt(r.get('samples_per_s'))} | "
                f"{_fmt(r.get('tflops'))} | {_fmt(r.get('mfu'))} | "
                f"{_fmt(r.get('peak_memory_GB'))} |"
            )
        if "compiled_speedup" in step:
            lines.append(f"\neager / compiled step time: {step['compiled_speedup']:.2f}x")
    elif "step" in report["parts"]:
        lines.append(f"- step: {step.get('status')}")
    return "\n".join(lines) + "\n"


def run(plan: Plan, out: Path, parts: tuple[str, ...] = tuple(BUDGETS)) -> dict[str, Any]:
    """Run the ``parts`` of the check in order within :data:`TOTAL_BUDGET`; write the report."""
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(TOTAL_BUDGET)
    report: dict[str, Any] = {
        "dry_run": plan.dry_run,
        "device_name": torch.cuda.get_device_name()
        if plan.device == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "plan": dataclasses.asdict(plan),
        "budgets_s": BUDGETS,
        "parts": {},
    }
    runners = {
        "build": lambda: part_build(plan, clock),
        "tests": lambda: part_tests(plan, clock),
        "ops": lambda: part_ops(plan, clock),
        "step": lambda: part_step(plan, clock),
        "demo": lambda: part_demo(plan, clock, out),
    }
    resumed = json.loads(os.environ.get(_RESUME_ENV, "{}"))
    if resumed:  # after a build: what the first process did, on the same clock
        clock.start -= resumed["seconds"]
        report["parts"].update(resumed["parts"])
    for part in parts:
        if part in report["parts"]:
            continue
        if (
            part != "build"
            and report["parts"].get("build", {}).get("status") == "ok"
            and ("note" in report["parts"]["build"] and not resumed)
        ):
            _reexec(report, clock, out, parts)  # does not return
        if not plan.dry_run and not clock.fits(part):
            report["parts"][part] = {
                "status": f"skipped: {clock.left():.0f} s left, budget {BUDGETS[part]:.0f} s"
            }
            continue
        print(f"[gpu_check] {part} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = runners[part]()
        except Exception as e:  # one broken part must not hide the others' results
            result = {"status": f"error: {type(e).__name__}: {e}"[:1000]}
        result.setdefault("seconds", time.perf_counter() - t0)
        report["parts"][part] = result
        print(f"[gpu_check] {part}: {result.get('status')} ({result['seconds']:.1f} s)", flush=True)
    report["seconds"] = time.perf_counter() - clock.start
    (out / "gpu_report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_report.md").write_text(markdown(report))
    return report


_RESUME_ENV = "INRFLOW_GPU_CHECK_RESUME"


def _reexec(report: dict[str, Any], clock: Clock, out: Path, parts: tuple[str, ...]) -> None:
    """Continue in a fresh interpreter (the extension just built cannot be reloaded here)."""
    state = {"seconds": time.perf_counter() - clock.start, "parts": report["parts"]}
    os.environ[_RESUME_ENV] = json.dumps(state, default=str)
    argv = [
        sys.executable,
        "-m",
        "inrflow.gpu_check",
        "--out",
        str(out),
        "--parts",
        ",".join(parts),
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def plan_text(plan: Plan) -> str:
    lines = [f"inrflow GPU check plan ({'dry run on the CPU' if plan.dry_run else 'one GPU'}):"]
    what = {
        "build": "build the extension if it has no kernels for the device",
        "tests": "GPU tests: " + " ".join(GPU_TEST_FILES) + " -k cuda",
        "ops": "each op: kernel vs eager/compiled reference (+ attention backends), GB/s, roofline",
        "step": f"{plan.size} training step at {plan.resolution}^2, {plan.queries} queries, "
        f"largest batch that fits (<= {plan.max_batch}), eager and compiled "
        f"({plan.compile_backend})",
        "demo": "the digits demo (train.py --preset digits)"
        + (" for 2 steps" if plan.dry_run else ""),
    }
    for part, budget in BUDGETS.items():
        lines.append(f"  {part:<6} budget {budget:>4.0f} s  {what[part]}")
    lines.append(f"  total budget {TOTAL_BUDGET:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="plan + CPU-valid parts at tiny sizes"
    )
    parser.add_argument("--out", default="gpu_check", help="folder of gpu_report.json / .md")
    parser.add_argument(
        "--parts", default=",".join(BUDGETS), help="comma-separated subset of parts"
    )
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(BUDGETS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {list(BUDGETS)}")
    plan = Plan.for_machine(args.dry_run)
    print(plan_text(plan), flush=True)
    report = run(plan, Path(args.out), parts)
    print(markdown(report), flush=True)
    failed = [
        p
        for p, r in report["parts"].items()
        if str(r.get("status", "")).startswith(("error", "failed", "timed"))
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
