"""``train.py --profile``: a bounded, measured window of training steps for Nsight or torch.

The run skips ``--profile-wait`` steps (warm-up: allocator, autotuning, ``torch.compile``), then
measures ``--profile-steps`` steps and stops (no checkpoint, no samples). Around the window:

* CUDA: ``torch.cuda.profiler.start()`` / ``stop()`` (cudaProfilerStart/Stop), so
  ``nsys profile --capture-range=cudaProfilerApi`` and ``ncu --profile-from-start off`` record
  only the window; an NVTX range ``profile-window`` and one ``step N`` range per step (the
  trainer's ``data``/``forward``/``backward``/``optimizer`` ranges and the ops' ranges nest in
  them); with ``--profile-nvtx-ops``, ``torch.autograd.profiler.emit_nvtx`` adds a range per aten
  op (shapes included) that Nsight correlates with the kernels, at a large host overhead.
* ``--profile-trace`` (default on the CPU, off on CUDA where it would compete with Nsight for
  CUPTI): a ``torch.profiler`` recording of the window, written as a Chrome/Perfetto trace
  ``<out>/profile/trace_rank<r>.json`` plus ``summary_rank<r>.txt``, the ops sorted by self time.

The summary of the run gets ``profile_steps``, ``profile_seconds`` and ``profile_steps_per_second``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from inrflow.nvtx import nvtx_range

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["ProfileWindow"]


class ProfileWindow:
    """Decides when the window opens and closes; the trainer calls :meth:`step` per step."""

    def __init__(
        self,
        first_step: int,
        wait: int,
        steps: int,
        device: torch.device,
        out: Path,
        rank: int,
        trace: str = "auto",
        nvtx_ops: bool = False,
    ) -> None:
        self.start = first_step + wait  # index of the first measured step (0-based count)
        self.stop = self.start + steps
        self.steps = steps
        self.device = device
        self.out = out
        self.rank = rank
        self.trace = device.type != "cuda" if trace == "auto" else trace == "on"
        self.nvtx_ops = nvtx_ops
        self._stack: contextlib.ExitStack | None = None
        self._prof: Any = None
        self._t0 = 0.0
        self.seconds: float | None = None
        self.files: list[Path] = []

    @property
    def done(self) -> bool:
        return self.seconds is not None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _open(self) -> None:
        stack = contextlib.ExitStack()
        self._sync()
        if self.trace:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                acts.append(ProfilerActivity.CUDA)
            self._prof = stack.enter_context(profile(activities=acts, record_shapes=True))
        if self.device.type == "cuda":
            torch.cuda.profiler.start()
            stack.callback(torch.cuda.profiler.stop)
        if self.nvtx_ops:
            stack.enter_context(torch.autograd.profiler.emit_nvtx(record_shapes=True))
        stack.enter_context(nvtx_range("profile-window"))
        self._stack = stack
        self._t0 = time.perf_counter()

    def _close(self) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0
        assert self._stack is not None
        self._stack.close()  # leaves the ranges, stops the CUDA profiler and torch.profiler
        self._stack = None
        if self._prof is not None:
            folder = self.out / "profile"
            folder.mkdir(parents=True, exist_ok=True)
            trace = folder / f"trace_rank{self.rank}.json"
            self._prof.export_chrome_trace(str(trace))
            table = self._prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            summary = folder / f"summary_rank{self.rank}.txt"
            summary.write_text(
                f"{self.steps} steps in {self.seconds:.3f} s "
                f"({self.steps / self.seconds:.3g} steps/s)\n\n{table}\n"
            )
            self.files = [trace, summary]
            self._prof = None

    @contextlib.contextmanager
    def step(self, index: int):
        """Wrap the step with 0-based ``index`` (since the start of this process)."""
        if index == self.start:
            self._open()
        inside = self.start <= index < self.stop
        name = f"step {index + 1}"
        ranges = contextlib.ExitStack()
        if inside:
            ranges.enter_context(nvtx_range(name))
            if self.trace:
                ranges.enter_context(torch.profiler.record_function(name))
        with ranges:
            yield
        if index + 1 == self.stop:
            self._close()

    def phase(self, name: str) -> Any:
        """A ``record_function`` range for the trainer's phases while tracing (else a no-op)."""
        if self._stack is not None and self.trace:
            return torch.profiler.record_function(name)
        return contextlib.nullcontext()

    def summary(self) -> dict[str, Any]:
        if self.seconds is None:
            return {}
        return {
            "profile_steps": self.steps,
            "profile_seconds": self.seconds,
            "profile_steps_per_second": self.steps / self.seconds,
            "profile_files": [str(f) for f in self.files],
        }

    @staticmethod
    def describe(summary: dict[str, Any]) -> str:
        """A console line of :meth:`summary`."""
        return (
            f"profiled {summary['profile_steps']} steps in {summary['profile_seconds']:.3f} s "
            f"({summary['profile_steps_per_second']:.3g} steps/s)"
            + "".join(f"; {f}" for f in summary["profile_files"])
        )

    def abort(self) -> None:
        """Close an open window (the run ended early, e.g. on a signal)."""
        if self._stack is not None:
            self._close()


def profile_window(
    cfg: TrainConfig, device: torch.device, out: Path, rank: int
) -> ProfileWindow | None:
    """The window of a ``--profile`` run (None otherwise)."""
    if not cfg.profile:
        return None
    return ProfileWindow(
        0,
        cfg.profile_wait,
        cfg.profile_steps,
        device,
        out,
        rank,
        trace=cfg.profile_trace,
        nvtx_ops=cfg.profile_nvtx_ops,
    )


def phase_range(window: ProfileWindow | None, name: str) -> contextlib.ExitStack:
    """The NVTX range of a step phase, also a torch.profiler range inside a traced window."""
    stack = contextlib.ExitStack()
    stack.enter_context(nvtx_range(name))
    if window is not None:
        stack.enter_context(window.phase(name))
    return stack
