"""The optimizer half of a training step, without host-device synchronisation.

Why: reading a device value on the host (``loss.item()``, ``float(grad_norm)``) makes the CPU
wait until the GPU has finished the step, so the next step cannot be queued behind it and the
GPU idles while Python launches kernels. The step therefore decides nothing on the host:

- a non-finite loss or gradient norm skips the update *on the device*: the fused AdamW kernel
  takes a ``found_inf`` flag (the mechanism of :class:`torch.amp.GradScaler`) and leaves
  parameters, moments and step counts untouched when it is set, and the EMA moves by a weight
  multiplied by 0;
- loss, gradient norm and the skip flag of every step stay on the device in a
  :class:`StepRecord`, read on the host once per log step (one transfer for all the steps since
  the last read).

The price: a run that diverges stops (``NonFiniteLossError``) at the first read after the
``--max-nonfinite``-th consecutive skipped step, up to ``--log-every - 1`` steps later than a
step-by-step check would.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .optim import EMA

__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "NonFiniteWarning",
    "StepRecord",
    "StepRow",
    "optimizer_step",
]


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    loss: torch.Tensor,
    grad_clip: float,
    reduce_max: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip, AdamW, EMA after ``loss.backward()``; returns ``(grad_norm, skipped)`` as device
    scalars. ``skipped`` is 1 when this rank's loss or the global gradient norm is not finite,
    and then nothing changes. ``reduce_max``: an in-place MAX over ranks (so that every rank
    skips the same steps), ``None`` in one process."""
    params = [p for p in model.parameters() if p.grad is not None]
    clip = grad_clip if grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    bad = (~torch.isfinite(norm) | ~torch.isfinite(loss.detach())).float().reshape(())
    if reduce_max is not None:
        reduce_max(bad)
    if _takes_found_inf(optimizer):
        optimizer.found_inf = bad  # read by the fused kernel, as GradScaler passes it
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(bad):  # an optimizer without the flag: decided on the host (a sync)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(keep=1.0 - bad)
    return norm.detach(), bad


def _takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """The fused Adam/AdamW kernels skip a step on a device flag; the foreach ones cannot."""
    return all(g.get("fused", False) for g in optimizer.param_groups)


@dataclasses.dataclass(frozen=True)
class StepRow:
    """One step as the host sees it after a read (``loss``: the mean over ranks)."""

    step: int
    loss: float
    grad_norm: float
    skipped: bool
    lr: float
    skipped_files: int
    at: float  # time.perf_counter() when the step ended
    wall: float  # time.time() when the step ended


class StepRecord:
    """Each step's loss, gradient norm and skip flag, kept on the device until :meth:`read`.

    The host-side facts of a step (its number, learning rate, unreadable files so far, end
    time) are stored next to them, so the rows read later are those the step would have
    logged."""

    def __init__(self) -> None:
        self._device: list[torch.Tensor] = []
        self._host: list[tuple[int, float, int, float, float]] = []

    def __len__(self) -> int:
        return len(self._device)

    def add(
        self,
        step: int,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
        skipped: torch.Tensor,
        lr: float,
        skipped_files: int,
    ) -> None:
        stats = torch.stack([loss.detach().float(), grad_norm.float(), skipped.float()])
        self._device.append(stats.to(torch.float64))
        self._host.append((step, lr, skipped_files, time.perf_counter(), time.time()))

    def read(
        self, reduce_sum: Callable[[torch.Tensor], None] | None = None, world: int = 1
    ) -> list[StepRow]:
        """The rows since the last read (one host transfer), then empty. ``reduce_sum``: an
        in-place sum over the ``world`` ranks (a collective) that turns this rank's losses
        into their mean."""
        if not self._device:
            return []
        stats = torch.stack(self._device)
        if reduce_sum is not None:
            losses = stats[:, 0].contiguous()
            reduce_sum(losses)
            stats[:, 0] = losses
        values = stats.tolist()
        rows = [
            StepRow(step, loss / world, norm, bool(skip), lr, files, at, wall)
            for (loss, norm, skip), (step, lr, files, at, wall) in zip(
                values, self._host, strict=True
            )
        ]
        self._device.clear()
        self._host.clear()
        return rows


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class NonFiniteWarning(UserWarning):
    """A step was skipped because its loss or gradient norm was not finite."""


class NonFiniteGuard:
    """Counts the skipped steps of the rows read, warns of each (``warn``: rank 0) and raises
    :class:`NonFiniteLossError` once ``limit`` steps in a row were skipped."""

    def __init__(self, limit: int, hint: str, warn: bool = True) -> None:
        self.limit, self.hint, self.warn = limit, hint, warn
        self.skipped = 0  # in the run (restored from a checkpoint by the trainer)
        self.in_a_row = 0

    def check(self, row: StepRow) -> None:
        if not row.skipped:
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        if self.warn:
            warnings.warn(
                f"step {row.step}: non-finite loss {row.loss} or gradient norm {row.grad_norm}; "
                f"the update is skipped ({self.in_a_row} in a row)",
                NonFiniteWarning,
                stacklevel=4,
            )
        if self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"{self.in_a_row} consecutive steps had a non-finite loss or gradient "
                f"(last at step {row.step}): the run has diverged. {self.hint}"
            )
