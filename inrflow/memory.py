"""Peak memory of one training step, estimated without running it, and the largest batch per GPU.

A step runs under ``FakeTensorMode`` (shapes, no values: XL at 256^2 costs seconds of CPU and no
memory) inside torch's ``MemTracker``, which records every tensor allocation and free and reports
the peak of the live bytes. What the tracked step holds, and how the per-GPU figure is composed:

* ``fake step``: the model with its parameters in the compute dtype (bf16 on GPUs: the FSDP2
  all-gathered copy), forward with the activations autograd saves, backward with the gradients in
  the compute dtype; everything of the model and autograd is counted, including the inrflow
  ops' outputs (their fake kernels).
* ``state``: what FSDP2 with mixed precision keeps sharded over the GPUs, per parameter: fp32
  master weight, fp32 gradient (reduced in fp32), AdamW's two fp32 moments, the fp32 EMA:
  ``20 P / N`` bytes on each of N GPUs.

``per GPU = fake step + state``. This slightly overstates FSDP2, which frees each unit's
all-gathered bf16 parameters and gradients once it is done with them (the fake step keeps the
whole bf16 copy: 2 P bytes, about 1.5 GB for XL). Activations grow linearly with the batch, so
the step is tracked at two batch sizes and the largest batch that fits a budget follows from the
line through them. The budget is 90% of the GPU's memory (the caching allocator's fragmentation,
the CUDA context and NCCL buffers take the rest).

``validate`` runs real CPU steps (fp32, the trainer's fused AdamW) in a subprocess and compares
their peak resident memory with the tracked fake step of the same model and sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable

import torch

__all__ = [
    "GPU_MEMORY",
    "STATE_BYTES_PER_PARAM",
    "StepMemory",
    "fake_step_peak",
    "largest_batch",
    "measure_cpu_step",
    "memory_table",
    "per_gpu_bytes",
]

#: fp32 master weight + fp32 gradient + AdamW's two fp32 moments + fp32 EMA
STATE_BYTES_PER_PARAM = 20
#: GPU memory (bytes) the table is computed for: an 80 GB H100/A100 and a 141 GB H200
GPU_MEMORY = {"80 GB": 80e9, "141 GB": 141e9}
#: share of the GPU memory a step may use
BUDGET = 0.9


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Tracked peak of one fake step (bytes) and the model's parameter count."""

    batch: int
    peak: int
    params: int


def _batch(cfg, b: int, context: int, queries: int, device: str | torch.device | None = None):
    """A training batch of an image model: a full raster of ``context`` points, ``queries``
    queries drawn per sample (what the trainer's collate gives)."""
    from inrflow.model import grid_coords

    side = math.isqrt(context)
    if side * side != context:
        raise ValueError(f"context must be a square number of points, got {context}")
    coords = grid_coords((side, side), device=device).expand(b, -1, -1)
    values = torch.rand(b, context, cfg.value_dim, device=device)
    noise = torch.randn(b, context, cfg.value_dim, device=device)
    query_index = torch.rand(b, context, device=device).topk(min(queries, context), dim=1).indices
    return coords, values, noise, query_index


def _train_step(model, optimizer, batch) -> None:
    """Forward (CICFM loss), backward and, with an optimizer, its step: as the trainer runs it."""
    from inrflow.flow import FlowDraws, cicfm_loss

    coords, values, noise, query_index = batch
    t = torch.rand(values.shape[0], device=values.device)
    loss = cicfm_loss(model, coords, values, FlowDraws(t, noise, query_index=query_index))
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _build(size: str, form: str, dtype: torch.dtype, activation_checkpointing: bool, **over):
    from inrflow.model import build_model

    model = build_model(size, encoder_form=form, **over)
    if dtype != torch.float32:  # parameters only, buffers stay fp32: FSDP2's mixed precision
        for m in model.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[name] = torch.nn.Parameter(p.detach().to(dtype))
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            checkpoint_wrapper,
        )

        for i, block in enumerate(model.blocks):  # what inrflow.train.parallelize applies
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    return model


def fake_step_peak(
    size: str,
    batch: int,
    context: int,
    queries: int,
    *,
    form: str = "folded",
    dtype: torch.dtype = torch.bfloat16,
    activation_checkpointing: bool = False,
    optimizer: bool = False,
    **overrides,
) -> StepMemory:
    """Peak live bytes of one training step of the ``size`` image model under FakeTensorMode.

    ``dtype`` is the parameter/compute dtype; ``optimizer=True`` adds the trainer's fused AdamW
    step (its state in ``dtype``), as a single-process CPU run has it.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from inrflow.model import count_parameters

    with FakeTensorMode():
        model = _build(size, form, dtype, activation_checkpointing, **overrides)
        opt = torch.optim.AdamW(model.parameters(), fused=True) if optimizer else None
        data = _batch(model.config, batch, context, queries)  # fp32, as the loader gives it
        tracker = MemTracker()
        tracker.track_external(model, *([opt] if opt is not None else []))
        with tracker:
            _train_step(model, opt, data)
        snap = tracker.get_tracker_snapshot("peak")
    peak = max(int(v["Total"]) for v in snap.values())
    return StepMemory(batch, peak, count_parameters(model))


def per_gpu_bytes(step: StepMemory, gpus: int) -> float:
    """Per-GPU peak: the fake step plus the sharded fp32 state (see the module docstring)."""
    return step.peak + STATE_BYTES_PER_PARAM * step.params / gpus


def largest_batch(one: StepMemory, two: StepMemory, gpus: int, capacity: float) -> int:
    """Largest batch per GPU whose estimate fits ``BUDGET * capacity``: the line through two
    tracked batch sizes (activations are linear in the batch). 0 when not even one fits."""
    slope = (two.peak - one.peak) / (two.batch - one.batch)
    fixed = per_gpu_bytes(one, gpus) - slope * one.batch
    if slope <= 0:
        raise ValueError("the tracked peak did not grow with the batch")
    return max(0, math.floor((BUDGET * capacity - fixed) / slope))


COMPOSITIONS = (("inrflow (folded)", "folded"), ("authors (dense)", "dense"))


def table_header(batch: int) -> list[str]:
    """The header rows of :func:`memory_table`."""
    return [
        f"| composition | AC | peak at batch {batch}, 1 / 8 GPUs (GB) | "
        + " | ".join(f"max batch/GPU {name}, 1 / 8 GPUs" for name in GPU_MEMORY)
        + " |",
        "|---|---|---|" + "---|" * len(GPU_MEMORY),
    ]


def table_row(who: str, ac: bool, one: StepMemory, two: StepMemory, batch: int) -> str:
    """One row of :func:`memory_table` from the steps tracked at batch 1 and 2."""
    slope = two.peak - one.peak
    at = StepMemory(batch, one.peak + slope * (batch - 1), one.params)
    peaks = " / ".join(f"{per_gpu_bytes(at, g) / 1e9:,.1f}" for g in (1, 8))
    fits = [
        " / ".join(str(largest_batch(one, two, g, cap)) for g in (1, 8))
        for cap in GPU_MEMORY.values()
    ]
    return f"| {who} | {'yes' if ac else 'no'} | {peaks} | " + " | ".join(fits) + " |"


def memory_table(
    size: str = "XL",
    resolution: int = 256,
    queries: int = 16384,
    batch: int = 32,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Markdown: per-GPU peak at ``batch`` and the largest batch per GPU for 80 / 141 GB, over
    1 and 8 GPUs, with and without activation checkpointing, inrflow vs the authors' composition."""
    rows = table_header(batch)
    context = resolution * resolution
    for who, form in COMPOSITIONS:
        for ac in (False, True):
            if progress:
                progress(f"tracking {size} {form} AC={ac}")
            one = fake_step_peak(size, 1, context, queries, form=form, activation_checkpointing=ac)
            two = fake_step_peak(size, 2, context, queries, form=form, activation_checkpointing=ac)
            rows.append(table_row(who, ac, one, two, batch))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------
# validation against real CPU steps

_MEASURE = r"""
import json, sys, torch
from inrflow import memory
torch.set_num_threads(1)
size, batch, context, queries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = memory._build(size, "folded", torch.float32, False)
opt = torch.optim.AdamW(model.parameters(), fused=True)
data = memory._batch(model.config, batch, context, queries)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the resident high-water mark (VmHWM) to the current resident set
before = status("VmRSS")
memory._train_step(model, opt, data)
high = status("VmHWM")
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"before": before, "high": high, "params": params}))
"""


def measure_cpu_step(size: str, batch: int, context: int, queries: int) -> dict[str, float]:
    """One real fp32 CPU training step (fused AdamW) in a fresh process: its peak resident memory
    above the resident memory before the step, plus the parameters that were already resident
    (the fake step's tracked peak counts them; the inputs it does not, they exist before).

    The high-water mark is reset just before the step (``/proc/self/clear_refs``: Linux), and
    large allocations are forced to ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so that freed memory
    leaves the resident set at once and the high-water mark is the peak of the live tensors.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, size, str(batch), str(context), str(queries)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    measured = r["high"] - r["before"] + r["params"]
    est = fake_step_peak(size, batch, context, queries, dtype=torch.float32, optimizer=True)
    return {"measured": float(measured), "estimated": float(est.peak)}
