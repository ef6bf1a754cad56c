"""Learning-rate schedules: the values of ``lr_at`` against their formulas, the trainer's
logged rates, and exact resume under a decaying schedule."""

from __future__ import annotations

import itertools
import math
import signal

import pytest
from helpers import SigtermAtStep, losses, tiny_config, train

from inrflow.train import parse_args
from inrflow.train.logging import read_metrics
from inrflow.train.optim import lr_at


def expected(step: int, base: float, warmup: int, schedule: str, total: int) -> float:
    """The schedule written out step by step: ramp to ``base`` over the warm-up, then hold it
    or take it towards 0 at ``total`` along a half cosine or a straight line."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    fraction = (step - warmup) / (total - warmup)
    if schedule == "cosine":
        return base * (1 + math.cos(math.pi * fraction)) / 2
    return base * (1 - fraction)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_lr_at_follows_the_formula(schedule, warmup) -> None:
    total = 40
    got = [lr_at(s, 2e-3, warmup, schedule, total) for s in range(total)]
    want = [expected(s, 2e-3, warmup, schedule, total) for s in range(total)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_decays_reach_their_landmarks() -> None:
    total, warmup, base = 1000, 100, 1e-3
    assert lr_at(warmup - 1, base, warmup, "cosine", total) == base  # warm-up ends at the peak
    assert lr_at(warmup, base, warmup, "cosine", total) == base  # the decay starts there
    assert lr_at(550, base, warmup, "cosine", total) == pytest.approx(base / 2)  # half way
    assert lr_at(550, base, warmup, "linear", total) == pytest.approx(base / 2)
    assert lr_at(325, base, warmup, "cosine", total) > lr_at(325, base, warmup, "linear", total)
    for schedule in ("cosine", "linear"):
        last = lr_at(total - 1, base, warmup, schedule, total)
        assert 0 < last < base / 100  # the last step still moves, barely
        assert lr_at(total + 5, base, warmup, schedule, total) == 0.0  # past the end: stays 0
        rates = [lr_at(s, base, warmup, schedule, total) for s in range(warmup, total)]
        assert all(a > b for a, b in itertools.pairwise(rates))  # strictly falling
    assert lr_at(10**6, base, 0, "constant", 0) == base  # constant needs no total


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1e-3, 0, "step", 10)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(5, 1e-3, 0, "cosine", 0)
    with pytest.raises(ValueError, match="--lr-schedule"):
        parse_args(["--lr-schedule", "exponential"])
    with pytest.raises(ValueError, match="co-training"):
        parse_args(["--data", "digits,shapes", "--lr-schedule", "cosine"])
    assert parse_args(["--lr-schedule", "cosine"]).lr_schedule == "cosine"
    assert parse_args([]).lr_schedule == "constant"  # the paper's


def test_the_trainer_steps_along_the_schedule_and_resumes_on_it(tmp_path) -> None:
    cfg = dict(steps=12, lr_schedule="cosine", warmup_steps=3, keep_ckpts=10)
    train(tiny_config(tmp_path / "whole", **cfg))
    rows = read_metrics(tmp_path / "whole" / "metrics.csv")
    # row k logs step k, trained with the rate of 0-based step k - 1
    want = [expected(s, 1e-3, 3, "cosine", 12) for s in range(12)]
    assert [r["lr"] for r in rows] == pytest.approx(want, rel=1e-6)
    constant = tmp_path / "constant"
    train(tiny_config(constant, steps=12, warmup_steps=3, keep_ckpts=10))
    assert losses(constant)[:4] == losses(tmp_path / "whole")[:4]  # same until the decay
    assert losses(constant)[6:] != losses(tmp_path / "whole")[6:]  # the decay changes steps

    split = tmp_path / "split"
    summary = train(tiny_config(split, **cfg), dataset=SigtermAtStep(6))
    assert summary["interrupted_by"] == signal.SIGTERM and summary["step"] == 6
    train(tiny_config(split, **cfg, resume=True))
    assert losses(split) == losses(tmp_path / "whole")  # bit for bit, on the same curve
    assert [r["lr"] for r in read_metrics(split / "metrics.csv")] == [r["lr"] for r in rows]
