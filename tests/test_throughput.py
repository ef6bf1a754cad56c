"""Throughput accounting (samples/s, TFLOP/s, MFU) and the training run's logs of it, and the
peak-memory estimator checked against real CPU steps."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_config

from inrflow import memory, perf
from inrflow.model import get_config
from inrflow.train.config import TrainConfig
from inrflow.train.logging import CSV_FIELDS, read_metrics
from inrflow.train.throughput import Throughput, device_peak_tflops
from inrflow.train.trainer import Trainer


def test_rates_follow_their_definitions() -> None:
    tp = Throughput(global_batch=64, world=8, peak_tflops=989.4)
    tp.flops_per_sample = 3.0e12
    r = tp.rates(0.5)  # 64 samples in 0.5 s over 8 devices
    assert r["samples_per_s"] == pytest.approx(128.0)
    assert r["tflops"] == pytest.approx(3.0e12 * 128.0 / 8 / 1e12)
    assert r["mfu"] == pytest.approx(r["tflops"] / 989.4)


def test_rates_without_flops_or_peak_are_nan() -> None:
    tp = Throughput(global_batch=4, world=1, peak_tflops=None)
    r = tp.rates(2.0)
    assert r["samples_per_s"] == pytest.approx(2.0)
    assert math.isnan(r["tflops"]) and math.isnan(r["mfu"])
    tp.flops_per_sample = 1e9
    assert math.isnan(tp.rates(1.0)["mfu"])  # a CPU: no peak, no MFU
    with pytest.raises(ValueError, match="peak_tflops"):
        Throughput(4, 1, peak_tflops=0.0)


def test_cpu_has_no_table_peak() -> None:
    assert device_peak_tflops(torch.device("cpu")) is None


def test_flops_per_sample_match_the_image_cost_table() -> None:
    """The generic counter (any config) agrees with the table of docs/PERFORMANCE.md."""
    cfg = get_config("tiny")
    ours = perf.training_flops_per_sample(cfg, 16 * 16, 64)
    table = perf.model_costs("tiny", context_res=16, queries=64, training=True)["total"].flops
    assert ours == pytest.approx(table, rel=1e-9)
    assert perf.training_flops_per_sample(cfg, 16 * 16, 128) > ours  # more queries, more work


def test_training_logs_throughput_and_mfu(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path,
        model=dict(hidden=32, depth=1, heads=2, num_latents=16, encoder_heads=2),
        batch_size=4,
        steps=2,
        lr=1e-4,
        ckpt_every=0,
        peak_tflops=2.0,
    )
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.dist.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert set(CSV_FIELDS) <= set(rows[0]) and len(rows) == 2
    expected = perf.training_flops_per_sample(trainer.model_config, 64, 16)
    for r in rows:
        assert r["samples_per_s"] > 0
        assert r["tflops"] == pytest.approx(expected * r["samples_per_s"] / 1e12, rel=1e-3)
        assert r["mfu"] == pytest.approx(r["tflops"] / 2.0, rel=1e-3)
    with pytest.raises(ValueError, match="peak-tflops"):
        TrainConfig(peak_tflops=-1.0).validate()


@pytest.mark.slow
def test_memory_estimate_within_20_percent_of_a_real_cpu_step() -> None:
    r = memory.measure_cpu_step("tiny", 16, 32 * 32, 512)
    assert r["estimated"] == pytest.approx(r["measured"], rel=0.2)


def test_largest_batch_solves_the_line() -> None:
    one = memory.StepMemory(batch=1, peak=10, params=1)
    two = memory.StepMemory(batch=2, peak=30, params=1)
    # per GPU = 20 B/param / gpus + 10 + 20 (b - 1); budget 0.9 * 1000 = 900
    b = memory.largest_batch(one, two, gpus=1, capacity=1000)
    assert memory.per_gpu_bytes(memory.StepMemory(b, 10 + 20 * (b - 1), 1), 1) <= 900
    assert memory.per_gpu_bytes(memory.StepMemory(b + 1, 10 + 20 * b, 1), 1) > 900


def test_metrics_of_a_run_from_before_the_throughput_columns_still_read(tmp_path) -> None:
    from inrflow.train.logging import MetricLogger

    old = "step,loss,grad_norm,lr,skipped,time\n1,0.5,1.0,0.001,0,100.0\n2,0.4,1.0,0.001,0,101.0\n"
    (tmp_path / "metrics.csv").write_text(old)
    logger = MetricLogger(tmp_path, True, 3, 2, 4, 1, False, progress=False)
    logger.log_step(3, 0.3, 1.0, 1e-3, 0)
    logger.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1.0, 2.0, 3.0]
    assert "samples_per_s" not in rows[0] and rows[2]["samples_per_s"] > 0
