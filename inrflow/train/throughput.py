"""Throughput accounting of a training run, the torchtitan way: samples/s, achieved TFLOP/s per
device from the model's counted FLOPs per sample, and MFU against the device's bf16 peak.

The FLOPs per sample are counted once (:func:`inrflow.perf.training_flops_per_sample`, forward +
backward on meta tensors) at the shapes of the first batch; recomputation under activation
checkpointing is not model work and is not counted. The peak is the dense bf16 tensor-core peak
of the device (:data:`PEAK_BF16_TFLOPS`), or ``--peak-tflops``; on a device not in the table
(a CPU) the MFU is not available unless a peak is given.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PEAK_BF16_TFLOPS", "Throughput", "device_peak_tflops"]

#: Dense bf16 tensor-core peaks (TFLOP/s, no 2:4 sparsity) from the NVIDIA datasheets, matched
#: against ``torch.cuda.get_device_name`` in this order (the first match wins).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5
    ("A100", 312.0),
)


def device_peak_tflops(device: torch.device) -> float | None:
    """The bf16 peak of ``device`` from :data:`PEAK_BF16_TFLOPS`; None when it is not listed."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


class Throughput:
    """Turns a step's wall time into samples/s, TFLOP/s per device and MFU."""

    def __init__(self, global_batch: int, world: int, peak_tflops: float | None) -> None:
        if peak_tflops is not None and not peak_tflops > 0:
            raise ValueError(f"peak_tflops must be > 0, got {peak_tflops}")
        self.global_batch, self.world, self.peak_tflops = global_batch, world, peak_tflops
        self.flops_per_sample: float | None = None
        self.counted = False

    def count(self, model_config, batch: dict[str, torch.Tensor]) -> None:
        """Count the FLOPs per sample at the shapes of ``batch`` (a collated training batch)."""
        from inrflow.perf import training_flops_per_sample

        self.counted = True
        n = batch["values"].shape[1]
        context = batch["context_index"].shape[1] if "context_index" in batch else n
        queries = batch["query_index"].shape[1] if "query_index" in batch else n
        try:
            self.flops_per_sample = training_flops_per_sample(model_config, context, queries)
        except Exception:  # counting is best effort: a model that cannot run on meta
            self.flops_per_sample = None

    def rates(self, seconds_per_step: float) -> dict[str, float]:
        """``samples_per_s`` (global), ``tflops`` (achieved per device) and ``mfu`` (a fraction);
        NaN where not available."""
        seconds = max(seconds_per_step, 1e-12)
        samples = self.global_batch / seconds
        tflops = math.nan
        if self.flops_per_sample is not None:
            tflops = self.flops_per_sample * samples / self.world / 1e12
        mfu = tflops / self.peak_tflops if self.peak_tflops else math.nan
        return {"samples_per_s": samples, "tflops": tflops, "mfu": mfu}
