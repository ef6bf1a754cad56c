"""Rank-0 run logging: progress bar, CSV of every step, TensorBoard scalars, the loss plot.

``metrics.csv`` holds one row per step (loss written with full float precision, so runs can be
compared exactly) with that step's throughput: samples/s (global), achieved TFLOP/s per device
and MFU (:mod:`inrflow.train.throughput`; ``nan`` where not available, e.g. MFU on a CPU without
``--peak-tflops``). On resume, rows after the restored step are dropped first, and TensorBoard is
told to purge them, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .throughput import Throughput, device_peak_tflops

if TYPE_CHECKING:
    from .config import TrainConfig
    from .distributed import Dist

__all__ = ["CSV_FIELDS", "MetricLogger", "plot_loss", "read_metrics"]

CSV_FIELDS = (
    "step",
    "loss",
    "grad_norm",
    "lr",
    "skipped",
    "time",
    "samples_per_s",
    "tflops",
    "mfu",
)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats."""
    with open(path, newline="") as f:
        # a run resumed from before a column existed has rows without it: left out of the row
        return [
            {k: float(v) for k, v in row.items() if k is not None and v not in (None, "")}
            for row in csv.DictReader(f)
        ]


def plot_loss(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Loss per step (and its running mean) as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no loss plot", stacklevel=2)
        return None
    rows = [r for r in read_metrics(csv_path) if math.isfinite(r["loss"])]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    window = max(1, len(loss) // 50)
    smooth, acc = [], 0.0
    for i, v in enumerate(loss):
        acc += v - (loss[i - window] if i >= window else 0.0)
        smooth.append(acc / min(i + 1, window))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="loss")
    ax.plot(steps, smooth, lw=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def _show(value: float, fmt: str) -> str:
    """A rate for the console, ``n/a`` where it is not available."""
    return fmt.format(value) if math.isfinite(value) else "n/a"


class MetricLogger:
    """Does nothing on ranks other than 0.

    Console progress: a tqdm bar on a terminal; elsewhere (``progress=False``, or ``None`` with
    stdout not a terminal, e.g. a cluster job log) one plain line every ``log_every`` steps,
    since a bar redrawn every step fills a log file with carriage-return frames.
    """

    def __init__(
        self,
        out: Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        samples_per_step: int,
        log_every: int,
        tensorboard: bool,
        progress: bool | None = None,
        throughput: Throughput | None = None,
    ) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.throughput = throughput
        self.samples_per_step = samples_per_step
        self.log_every = log_every
        self.csv_path = out / "metrics.csv"
        self.writer = None
        self.bar = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self._truncate_csv(start_step)
        new = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(CSV_FIELDS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: no TensorBoard scalars "
                    "(pip install tensorboard, or pass --no-tensorboard)",
                    stacklevel=2,
                )
        if progress is None:
            progress = sys.stdout.isatty()
        if progress:
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                dynamic_ncols=True,
                smoothing=0.05,
                unit="step",
            )
        self._t_last, self._step_last = time.perf_counter(), start_step
        self._t_row = self._t_last
        self._losses: list[float] = []

    def _truncate_csv(self, start_step: int) -> None:
        if not self.csv_path.exists():
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        # the current header, also over rows of an older version with fewer columns
        kept = [list(CSV_FIELDS)] + [r for r in rows[1:] if r and int(float(r[0])) <= start_step]
        with open(self.csv_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def log_step(
        self,
        step: int,
        loss: float,
        grad_norm: float,
        lr: float,
        skipped: int,
        at: float | None = None,
        wall: float | None = None,
    ) -> None:
        """Record step ``step`` (1-based: the number of steps done), which ended at ``at``
        (``time.perf_counter()``) and ``wall`` (``time.time()``); now when not given. The
        trainer reads its steps in bunches, so it passes when each one ended."""
        if not self.enabled:
            return
        now = time.perf_counter() if at is None else at
        row = self._rates(now - self._t_row)
        self._t_row = now
        self._csv.writerow(
            [step, repr(loss), repr(grad_norm), repr(lr), skipped, f"{wall or time.time():.3f}"]
            + [f"{row[k]:.6g}" for k in ("samples_per_s", "tflops", "mfu")]
        )
        if self.bar is not None:
            self.bar.update(1)
        if math.isfinite(loss):
            self._losses.append(loss)
        if step % self.log_every == 0:
            steps_s = (step - self._step_last) / max(now - self._t_last, 1e-9)
            self._t_last, self._step_last = now, step
            mean = sum(self._losses) / max(len(self._losses), 1)
            self._losses.clear()
            rates = self._rates(1.0 / max(steps_s, 1e-12))
            tflops, mfu = _show(rates["tflops"], "{:.1f}"), _show(rates["mfu"], "{:.1%}")
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{mean:.4f}",
                    steps_s=f"{steps_s:.2f}",
                    samples_s=f"{rates['samples_per_s']:.0f}",
                    tflops=tflops,
                    mfu=mfu,
                    refresh=False,
                )
            else:
                print(
                    f"[inrflow] step {step}/{self.total_steps} loss {mean:.4f} "
                    f"{steps_s:.3g} steps/s {rates['samples_per_s']:.3g} samples/s "
                    f"{tflops} TFLOP/s MFU {mfu}",
                    flush=True,
                )
            self._csv_file.flush()
            self.scalars(
                step,
                {
                    "train/loss": mean,
                    "train/grad_norm": grad_norm,
                    "train/lr": lr,
                    "perf/steps_per_s": steps_s,
                    "perf/samples_per_s": rates["samples_per_s"],
                    "data/skipped_files": skipped,
                    **{f"perf/{k}": rates[k] for k in ("tflops", "mfu") if math.isfinite(rates[k])},
                },
            )

    def _rates(self, seconds_per_step: float) -> dict[str, float]:
        if self.throughput is not None:
            return self.throughput.rates(seconds_per_step)
        samples = self.samples_per_step / max(seconds_per_step, 1e-12)
        return {"samples_per_s": samples, "tflops": math.nan, "mfu": math.nan}

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if self.enabled and self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def write(self, msg: str) -> None:
        """A console line that does not break the progress bar."""
        if self.enabled:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        if not self.enabled:
            return
        self._csv_file.close()
        if self.writer is not None:
            self.writer.close()
        self.close_bar()


def run_logger(cfg: TrainConfig, dist: Dist, start_step: int) -> MetricLogger:
    """The logger of a training run (rank 0 writes), with its throughput meter."""
    peak = cfg.peak_tflops or device_peak_tflops(dist.device)
    return MetricLogger(
        Path(cfg.out),
        dist.is_main,
        cfg.steps,
        start_step,
        cfg.batch_size,
        cfg.log_every,
        cfg.tensorboard,
        throughput=Throughput(cfg.batch_size, dist.world, peak),
        progress=cfg.progress,
    )
