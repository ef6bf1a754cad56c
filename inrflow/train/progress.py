"""Signals of progress that the mean loss hides: the loss per band of flow time (here), and the
scores of the periodic samples (the domain's, e.g. :mod:`inrflow.domains.pointcloud`).

Why: with noise paired to data at random, the flow-matching loss has a high floor (the part of
``x1 - x0`` no predictor can know), and on point clouds all of a shape's detail is decided at
late times (t >= 0.7), where only a fraction of the training times fall. The mean loss can sit
flat while the late-time loss, and the samples, improve. Both are logged to TensorBoard and to
``progress.jsonl`` in the run folder (one JSON object per line: ``step`` and the values).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["TIME_EDGES", "TimeBucketLoss", "append_progress"]

TIME_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)


class TimeBucketLoss:
    """Sums of per-sample losses and counts per band of ``t``, kept on the device (no host
    sync per step) and read, all-reduced over ranks, every ``--log-every`` steps."""

    def __init__(self, device: torch.device, edges: tuple[float, ...] = TIME_EDGES) -> None:
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"edges must be increasing, at least two, got {edges}")
        self.edges = edges
        self._inner = torch.tensor(edges[1:-1], device=device)
        self._sums = torch.zeros(len(edges) - 1, dtype=torch.float64, device=device)
        self._counts = torch.zeros_like(self._sums)

    @property
    def names(self) -> list[str]:
        return [f"loss_t/{a:.1f}-{b:.1f}" for a, b in itertools.pairwise(self.edges)]

    def add(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        """Record ``[B]`` per-sample losses at times ``[B]``."""
        bucket = torch.bucketize(t.detach().to(self._inner.dtype), self._inner, right=True)
        self._sums.index_add_(0, bucket, per_sample.detach().double())
        self._counts.index_add_(0, bucket, torch.ones_like(self._sums[bucket]))

    def read(self, all_reduce_sum: Any = None) -> dict[str, float]:
        """Mean loss per band since the last read (NaN where no time fell), then reset.
        ``all_reduce_sum``: :meth:`Dist.all_reduce_sum` to pool the ranks (a collective)."""
        values = torch.cat([self._sums, self._counts]).tolist()
        if all_reduce_sum is not None:
            values = all_reduce_sum(values)
        k = len(self.names)
        sums, counts = values[:k], values[k:]
        self._sums.zero_()
        self._counts.zero_()
        return {
            name: (s / c if c > 0 else float("nan"))
            for name, s, c in zip(self.names, sums, counts, strict=True)
        }


def append_progress(out: Path, step: int, values: dict[str, float]) -> None:
    """One line ``{"step": step, **values}`` appended to ``out/progress.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "progress.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")
