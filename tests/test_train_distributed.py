"""FSDP2 over two CPU processes (torchrun, gloo) against one process with the same global batch,
and checkpoints moved between world sizes in both directions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    copy_run,
    losses,
    requires_gloo,
    script_env,
    tiny_argv,
    tiny_config,
    train,
)

from inrflow.checkpoints import load_ema_model

pytestmark = requires_gloo

RTOL = 1e-4


def torchrun(out: Path, nproc: int = 2, **overrides) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(REPO / "train.py"),
        *tiny_argv(out, **overrides),
    ]
    res = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same 8-step run in one process and in two (checkpoints at 4 and 8)."""
    one = tmp_path_factory.mktemp("one")
    train(tiny_config(one, steps=8, ckpt_every=4))
    two = tmp_path_factory.mktemp("two")
    res = torchrun(two, steps=8, ckpt_every=4)
    assert "over 2 process(es)" in res.stdout
    return one, two


def test_two_processes_give_the_single_process_losses(runs) -> None:
    one, two = runs
    l1, l2 = losses(one), losses(two)
    assert len(l1) == len(l2) == 8
    np.testing.assert_allclose(l2, l1, rtol=RTOL)
    assert len(set(l1)) == 8  # a real run: the loss changes every step


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path) -> None:
    one, two = runs
    out = copy_run(two, tmp_path / "run", [4])
    summary = train(tiny_config(out, steps=8, ckpt_every=4, resume=True))
    assert summary["resumed_from"].name == "step_000000004"
    np.testing.assert_allclose(losses(out), losses(one), rtol=RTOL)
    np.testing.assert_allclose(losses(out)[4:], losses(two)[4:], rtol=RTOL)
    # and the sampling CLI's loader reads the two-process checkpoint in a plain process
    ema2, meta2, _ = load_ema_model(two)
    ema1, _, _ = load_ema_model(one)
    assert meta2["world_size"] == 2 and meta2["step"] == 8
    for (name, p2), p1 in zip(ema2.named_parameters(), ema1.parameters(), strict=True):
        torch.testing.assert_close(p2, p1, rtol=1e-3, atol=1e-5, msg=name)


def test_a_one_process_checkpoint_resumes_in_two_processes(runs, tmp_path) -> None:
    one, _ = runs
    out = copy_run(one, tmp_path / "run", [4])
    res = torchrun(out, steps=8, ckpt_every=4, resume=True)
    assert "resumed from" in res.stdout and "written by 1 processes, now 2" in res.stdout
    np.testing.assert_allclose(losses(out), losses(one), rtol=RTOL)
