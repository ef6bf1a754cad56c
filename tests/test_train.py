"""The trainer in one process: config/CLI, outputs, exact resume (after SIGTERM and SIGKILL),
checkpoint verification and fallback, keep-last-K, non-finite steps, bad data.

Every run uses a ~50k-parameter model on 8x8 digits, a few steps, one thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    TINY_MODEL,
    Poisoned,
    SigtermAtStep,
    ckpt_steps,
    copy_run,
    losses,
    script_env,
    tiny_argv,
    tiny_config,
    train,
)
from PIL import Image

from inrflow.checkpoints import MANIFEST, CheckpointWarning
from inrflow.train import NonFiniteLossError, Trainer, parse_args
from inrflow.train.trainer import NonFiniteWarning


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 12-step run, checkpoints every 3 steps."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny_config(out, steps=12, keep_ckpts=10))
    return out


# ------------------------------------------------------------------------------------------------
# configuration and CLI
# ------------------------------------------------------------------------------------------------


def test_cli_help_lists_the_options(capsys) -> None:
    from inrflow.train.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--size",
        "--data",
        "--task",
        "--steps",
        "--batch-size",
        "--ckpt-every",
        "--out",
        "--resume",
        "--device",
        "--profile",
        "--preset",
        "torchrun",
    ):
        assert flag in text


def test_presets_and_overrides() -> None:
    cfg = parse_args(
        [
            "--preset",
            "digits",
            "--steps",
            "10",
            "--model",
            "depth=2,latent_grid=(4,4)",
            "--num-queries",
            "all",
            "--betas",
            "0.9,0.95",
            "--no-hflip",
        ]
    )
    assert cfg.steps == 10 and cfg.data == "digits" and cfg.batch_size == 32
    assert cfg.model["depth"] == 2 and cfg.model["hidden"] == 64
    assert cfg.model["latent_grid"] == (4, 4)
    assert cfg.num_queries is None and cfg.betas == (0.9, 0.95) and cfg.hflip is False
    xl = parse_args(["--preset", "imagenet256", "--data", "/data/in"])
    assert (xl.size, xl.batch_size, xl.lr, xl.ema_decay, xl.grad_clip) == (
        "XL",
        512,
        1e-4,
        0.999,
        2.0,
    )
    assert xl.betas == (0.9, 0.999) and xl.eps == 1e-8 and xl.weight_decay == 0.0
    with pytest.raises(ValueError, match="--steps"):
        parse_args(["--steps", "0"])
    with pytest.raises(ValueError, match="--device"):
        parse_args(["--device", "tpu"])
    with pytest.raises(SystemExit):
        parse_args(["--preset", "nope"])


# ------------------------------------------------------------------------------------------------
# a full run and its outputs
# ------------------------------------------------------------------------------------------------


def test_run_writes_checkpoints_logs_samples_plot_and_score(tmp_path) -> None:
    summary = train(
        tiny_config(
            tmp_path,
            steps=4,
            ckpt_every=2,
            sample_every=2,
            num_samples=10,
            final_samples=20,
            sample_steps=4,
            cfg_scale=2.0,
            tensorboard=True,
        )
    )
    assert summary["step"] == 4 and summary["interrupted_by"] is None
    assert len(losses(tmp_path)) == 4 and all(np.isfinite(losses(tmp_path)))
    assert ckpt_steps(tmp_path) == [2, 4]
    for name in (
        "loss.png",
        "config.json",
        "final_scores.json",
        "samples/step_000000002.png",
        "samples/final.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "samples" / "step_000000004.png").exists()  # the final grid instead
    assert any((tmp_path / "tensorboard").iterdir())
    assert 0.0 <= summary["classifier_accuracy"] <= 1.0
    meta = json.loads((tmp_path / "checkpoints" / "step_000000004" / MANIFEST).read_text())
    assert meta["step"] == 4 and meta["model_config"]["hidden"] == 32
    assert meta["dataset"]["shape"] == [8, 8] and meta["dataset"]["num_classes"] == 10
    with Image.open(tmp_path / "samples" / "final.png") as grid:  # 2 rows of 10 digits
        assert grid.size == ((10 * 9 + 1) * 16, (2 * 9 + 1) * 16)


def test_optimizer_is_fused_where_every_parameter_allows_it() -> None:
    from inrflow.train.optim import build_optimizer

    cpu = torch.nn.Linear(3, 4)
    opt = build_optimizer(cpu, 1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
    with torch.device("meta"):  # no fused kernel for meta tensors: foreach
        meta = torch.nn.Linear(3, 4)
    opt = build_optimizer(meta, 1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    # the fused step is the same update as the reference for-loop AdamW
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(a, 1e-2, (0.9, 0.99), 1e-8, 0.01)
    plain = torch.optim.AdamW(
        b.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01, foreach=False
    )
    for _ in range(3):
        x = torch.randn(5, 8)
        for m, o in ((a, fused), (b, plain)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "impl", [dict(fused=True), dict(foreach=True), dict(foreach=False, amsgrad=True)]
)
def test_eager_optimizer_state_trains_as_the_lazy_one(impl) -> None:
    """``init_state`` creates what the first step would, so the steps are bit-identical; and a
    checkpoint's state dict of a fresh optimizer then counts no step (the one DCP would take
    to fill an empty optimizer changes the bias correction of the real first step)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from inrflow.train.optim import init_state

    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    eager, lazy = (torch.optim.AdamW(m.parameters(), lr=1e-2, **impl) for m in (a, b))
    init_state(eager)
    get_optimizer_state_dict(a, eager)  # as a checkpoint before the first step does
    for _ in range(3):
        x = torch.randn(5, 8)
        for m, o in ((a, eager), (b, lazy)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        sa, sb = eager.state[pa], lazy.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device, key
            assert torch.equal(sa[key], sb[key]), key


def test_precision_and_activation_checkpointing_options(tmp_path) -> None:
    base = train(tiny_config(tmp_path / "a", steps=3, ckpt_every=0))
    ac = train(tiny_config(tmp_path / "b", steps=3, ckpt_every=0, activation_checkpointing=True))
    np.testing.assert_allclose(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-6)
    assert base["step"] == ac["step"] == 3
    train(tiny_config(tmp_path / "c", steps=3, ckpt_every=0, precision="bf16"))
    bf16 = losses(tmp_path / "c")
    assert all(np.isfinite(bf16))
    np.testing.assert_allclose(bf16[0], losses(tmp_path / "a")[0], rtol=0.05)


def test_profile_writes_a_trace(tmp_path) -> None:
    train(tiny_config(tmp_path, steps=11, ckpt_every=0, profile=True))
    traces = list((tmp_path / "profile").glob("*.json*"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000


def test_profile_window_is_bounded_and_traced_on_cpu(tmp_path) -> None:
    """--profile on the CPU: wait, measure a window of steps, stop; a Chrome trace with the
    step and phase ranges and an op summary; no checkpoint, no samples."""
    window = ["--profile", "--profile-wait", "1", "--profile-steps", "2"]
    cfg = parse_args([*tiny_argv(tmp_path, steps=50, ckpt_every=1), *window])
    summary = train(cfg)
    assert summary["step"] == 3 and summary["profile_steps"] == 2
    assert summary["profile_seconds"] > 0
    trace = json.loads((tmp_path / "profile" / "trace_rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"step 2", "step 3", "forward", "backward", "optimizer"} <= names
    assert "step 1" not in names  # the wait step is outside the window
    assert "steps/s" in (tmp_path / "profile" / "summary_rank0.txt").read_text()
    assert not (tmp_path / "checkpoints").exists() or not ckpt_steps(tmp_path)
    with pytest.raises(ValueError, match="profile-trace"):
        parse_args([*tiny_argv(tmp_path), "--profile-trace", "maybe"])


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_checkpoints_stay_portable(tmp_path) -> None:
    train(tiny_config(tmp_path / "eager", steps=2, ckpt_every=0))
    train(
        tiny_config(
            tmp_path / "compiled",
            steps=2,
            ckpt_every=0,
            compile=True,
            activation_checkpointing=True,
        )
    )
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-5)
    # the compiled run's checkpoint has plain names: it resumes without compile
    summary = train(tiny_config(tmp_path / "compiled", steps=3, resume=True))
    assert summary["resumed_from"].name == "step_000000002" and summary["step"] == 3


# ------------------------------------------------------------------------------------------------
# exact resume
# ------------------------------------------------------------------------------------------------


def test_resume_continues_exactly(tmp_path, reference) -> None:
    train(tiny_config(tmp_path, steps=5))  # a shorter run: checkpoints at 3 and 5
    summary = train(tiny_config(tmp_path, steps=12, resume=True))
    assert summary["resumed_from"].name == "step_000000005"
    assert losses(tmp_path) == losses(reference)  # bit for bit


def test_sigterm_checkpoints_and_the_resumed_run_matches(tmp_path, reference) -> None:
    summary = train(tiny_config(tmp_path, steps=12), dataset=SigtermAtStep(5))
    assert summary["interrupted_by"] == signal.SIGTERM
    assert summary["step"] == 5 and ckpt_steps(tmp_path) == [3, 5]
    train(tiny_config(tmp_path, steps=12, resume=True))
    assert losses(tmp_path) == losses(reference)


def test_sigkill_mid_run_then_resume_reproduces_the_losses(tmp_path, reference) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_argv(out, steps=400)]
    proc = subprocess.Popen(
        cmd, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not [s for s in ckpt_steps(out) if s >= 6] and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    newest = max(ckpt_steps(out))
    assert 6 <= newest < 12, "killed too late to test a resume"
    done = subprocess.run(
        [*cmd, "--steps", "12", "--resume"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints'}" in done.stdout
    assert losses(out) == losses(reference)


# ------------------------------------------------------------------------------------------------
# checkpoint integrity
# ------------------------------------------------------------------------------------------------


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference) -> None:
    out = copy_run(reference, tmp_path / "run", [6, 9])
    shard = next((out / "checkpoints" / "step_000000009").glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.warns(CheckpointWarning, match=r"step_000000009.*truncated"):
        summary = train(tiny_config(out, steps=12, resume=True, keep_ckpts=10))
    assert summary["resumed_from"].name == "step_000000006"
    assert losses(out) == losses(reference)


def test_corrupted_bytes_and_manifest_are_detected(tmp_path, reference) -> None:
    out = copy_run(reference, tmp_path / "run", [3, 6, 9])
    shard = next((out / "checkpoints" / "step_000000009").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(data))
    (out / "checkpoints" / "step_000000006" / MANIFEST).write_text("{not json")
    with pytest.warns(CheckpointWarning) as record:
        summary = train(tiny_config(out, steps=9, resume=True, keep_ckpts=10))
    text = " ".join(str(w.message) for w in record)
    assert "CRC32" in text and "manifest" in text
    assert summary["resumed_from"].name == "step_000000003"
    assert losses(out) == losses(reference)[:9]


def test_an_interrupted_save_is_ignored_and_cleaned_up(tmp_path, reference) -> None:
    out = copy_run(reference, tmp_path / "run", [3])
    partial = out / "checkpoints" / ".tmp_step_000000006"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half a checkpoint")
    unfinished = out / "checkpoints" / "step_000000009"  # renamed but no manifest: not complete
    unfinished.mkdir()
    with pytest.warns(CheckpointWarning, match="step_000000009 has no inrflow_checkpoint.json"):
        summary = train(tiny_config(out, steps=6, resume=True))
    assert summary["resumed_from"].name == "step_000000003"
    assert not partial.exists()
    assert losses(out) == losses(reference)[:6]


def test_keeps_only_the_newest_checkpoints(tmp_path) -> None:
    train(tiny_config(tmp_path, steps=5, ckpt_every=1, keep_ckpts=2))
    assert ckpt_steps(tmp_path) == [4, 5]


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys) -> None:
    summary = train(tiny_config(tmp_path, steps=2, resume=True))
    assert summary["step"] == 2 and summary["resumed_from"] is None
    assert "no checkpoint" in capsys.readouterr().out


def test_stored_architecture_wins_on_resume(tmp_path) -> None:
    train(tiny_config(tmp_path, steps=3))
    cfg = tiny_config(tmp_path, steps=4, resume=True, model={**TINY_MODEL, "depth": 3})
    summary = train(cfg)
    assert summary["resumed_from"].name == "step_000000003" and summary["step"] == 4
    meta = json.loads((tmp_path / "checkpoints" / "step_000000004" / MANIFEST).read_text())
    assert meta["model_config"]["depth"] == 1


# ------------------------------------------------------------------------------------------------
# non-finite steps and bad data
# ------------------------------------------------------------------------------------------------


def test_nonfinite_steps_are_skipped(tmp_path) -> None:
    ds = Poisoned({3}, size=16)  # exactly one of the two steps of every epoch is poisoned
    with pytest.warns(NonFiniteWarning, match="non-finite loss"):
        summary = train(tiny_config(tmp_path, steps=6, max_nonfinite=3), dataset=ds)
    got = losses(tmp_path)
    assert summary["step"] == 6 and summary["skipped_steps"] == 3
    assert sum(not np.isfinite(x) for x in got) == 3
    trainer = Trainer(tiny_config(tmp_path, steps=6, resume=True), dataset=ds)
    try:
        assert all(torch.isfinite(p.full_tensor()).all() for p in trainer.model.parameters())
        assert trainer.skipped_steps == 3
    finally:
        trainer.close()


def test_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path) -> None:
    with pytest.warns(NonFiniteWarning), pytest.raises(NonFiniteLossError, match="3 consecutive"):
        train(tiny_config(tmp_path, steps=10, max_nonfinite=3), dataset=Poisoned({"all"}))


def test_a_wrong_data_path_fails_before_training(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        train(tiny_config(tmp_path, data=str(tmp_path / "no-such-folder")))
    assert not (tmp_path / "metrics.csv").exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path) -> None:
    data = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(data / cls / f"{i}.png")
    (data / "a" / "9.png").write_bytes(b"corrupt")
    cfg = tiny_config(tmp_path / "run", data=str(data), channels=3, steps=3, resolution=8)
    with pytest.warns(UserWarning, match="9.png"):
        summary = train(cfg)
    assert summary["step"] == 3 and summary["skipped_files"] >= 1


def test_a_run_at_continuous_coordinates_stores_it_for_sampling(tmp_path) -> None:
    """``--field-resolution``: items of values between pixels train, the checkpoint's dataset
    description records the field, and sampling above the training grid joins early."""
    from inrflow.checkpoints import load_checkpoint_model, stored_dataset_info
    from inrflow.generation import FIELD_JOIN_TIME, default_join_time, generate

    data = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(data / cls / f"{i}.png")
    cfg = tiny_config(
        tmp_path / "run", data=str(data), resolution=4, field_resolution=16, steps=3, ckpt_every=0
    )
    summary = train(cfg)
    assert summary["step"] == 3 and summary["interrupted_by"] is None
    model, meta = load_checkpoint_model(tmp_path / "run", torch.device("cpu"))
    info = stored_dataset_info(meta)
    assert info["field_resolution"] == 16 and info["shape"] == [4, 4]
    assert default_join_time(info) == FIELD_JOIN_TIME
    x = generate(model, info, 2, labels=torch.arange(2), resolution=8, steps=3, progress=False)
    assert x.shape == (2, 64, 1) and bool(torch.isfinite(x).all())
