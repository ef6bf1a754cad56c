"""Faults that must not lose training or give silent wrong answers: corrupt checkpoints that a
later save must replace, pruning that must keep a valid checkpoint, two trainers on one run
folder, a re-run into a used folder, a full disk mid-save, a stalled step, SIGKILL during saves.

The tiny ~50k-parameter digits model of ``test_train``, a few steps, one thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    REPO,
    TINY_MODEL,
    ckpt_steps,
    copy_run,
    losses,
    requires_gloo,
    script_env,
    tiny_argv,
    tiny_config,
    train,
)

from inrflow.checkpoints import MANIFEST, CheckpointWarning, find_checkpoint, verify_checkpoint
from inrflow.data import DigitsDataset
from inrflow.train import Trainer, parse_args
from inrflow.train import checkpoint as ckpt_module
from inrflow.train.checkpoint import CheckpointSaveError, NoValidCheckpointError
from inrflow.train.cli import main as train_main
from inrflow.train.logging import MetricLogger
from inrflow.train.run_folder import LOCK_FILE, RunFolderError
from inrflow.train.watchdog import StallWatchdog


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 9-step run, checkpoints at 3, 6, 9 (all kept)."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny_config(out, steps=9, ckpt_every=3, keep_ckpts=10))
    return out


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:09d}"


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Change one byte of ``path`` in place (same size: only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def corrupt_manifest(path: Path) -> None:
    """Change one digit of the first file's recorded CRC32 (still valid JSON)."""
    text = (path / MANIFEST).read_text()
    i = text.index('"crc32": ') + len('"crc32": ')
    digit = text[i]
    text = text[:i] + ("1" if digit != "1" else "2") + text[i + 1 :]
    (path / MANIFEST).write_text(text)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``train.py`` in this process: (exit status, stdout + stderr)."""
    threads = torch.get_num_threads()
    try:
        code = train_main(argv)
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------------------------------------
# 1. corrupt checkpoints are replaced; pruning keeps a valid one; the log says what happened
# ------------------------------------------------------------------------------------------------


def test_a_save_replaces_a_corrupt_folder_of_the_same_step(tmp_path, reference, capsys) -> None:
    out = copy_run(reference, tmp_path / "run", [3, 6])
    flip_byte(next(step_dir(out, 6).glob("*.distcp")))  # same size: the old check passed it
    with pytest.warns(CheckpointWarning, match="step_000000006.*CRC32"):
        summary = train(tiny_config(out, steps=6, ckpt_every=3, resume=True, keep_ckpts=10))
    assert summary["resumed_from"].name == "step_000000003"
    assert verify_checkpoint(step_dir(out, 6)) is None  # the retrained step 6 is stored
    assert "replaced corrupt step_000000006" in capsys.readouterr().out
    assert losses(out) == losses(reference)[:6]


@pytest.mark.parametrize("kind", ["distcp", "metadata", "manifest"])
def test_a_flipped_byte_in_any_file_kind_falls_back_and_is_replaced(
    tmp_path, reference, kind
) -> None:
    out = copy_run(reference, tmp_path / "run", [3, 6])
    bad = step_dir(out, 6)
    if kind == "manifest":
        corrupt_manifest(bad)
    else:
        flip_byte(next(bad.glob("*.distcp" if kind == "distcp" else ".metadata")))
    with pytest.warns(CheckpointWarning, match="step_000000006"):
        summary = train(tiny_config(out, steps=6, ckpt_every=3, resume=True, keep_ckpts=10))
    assert summary["resumed_from"].name == "step_000000003"
    assert verify_checkpoint(bad) is None
    assert losses(out) == losses(reference)[:6]


def test_pruning_never_deletes_the_newest_valid_checkpoint(tmp_path, reference) -> None:
    # step 9 is corrupt; the run resumes at 6 and saves 7 and 8 with keep 1: a prune that keeps
    # "the newest folder" would keep only the corrupt step 9.
    out = copy_run(reference, tmp_path / "run", [6, 9])
    flip_byte(next(step_dir(out, 9).glob("*.distcp")))
    with pytest.warns(CheckpointWarning, match="step_000000009"):
        train(tiny_config(out, steps=8, ckpt_every=1, resume=True, keep_ckpts=1))
    with pytest.warns(CheckpointWarning, match="step_000000009"):
        assert find_checkpoint(out).name == "step_000000008"
    assert 8 in ckpt_steps(out) and 6 not in ckpt_steps(out)


def test_no_valid_checkpoint_is_an_error_not_a_restart(tmp_path, reference) -> None:
    out = copy_run(reference, tmp_path / "run", [3, 6])
    for step in (3, 6):
        flip_byte(next(step_dir(out, step).glob("*.distcp")))
    with (
        pytest.warns(CheckpointWarning),
        pytest.raises(NoValidCheckpointError, match="no valid checkpoint among 2 found"),
    ):
        train(tiny_config(out, steps=9, resume=True))
    assert len(losses(out)) == 9  # the old logs are untouched


def test_a_step_folder_without_manifest_is_named_in_a_warning(tmp_path, reference) -> None:
    out = copy_run(reference, tmp_path / "run", [3])
    step_dir(out, 6).mkdir()
    with pytest.warns(CheckpointWarning, match=f"step_000000006 has no {MANIFEST}"):
        summary = train(tiny_config(out, steps=6, resume=True))
    assert summary["resumed_from"].name == "step_000000003"


# ------------------------------------------------------------------------------------------------
# 2. one trainer per run folder
# ------------------------------------------------------------------------------------------------


def test_a_second_trainer_on_a_locked_folder_is_refused(tmp_path) -> None:
    first = Trainer(tiny_config(tmp_path, steps=2))
    try:
        with pytest.raises(RunFolderError, match=rf"in use by another trainer \(pid {os.getpid()}"):
            Trainer(tiny_config(tmp_path, steps=2, resume=True))
    finally:
        first.close()
    train(tiny_config(tmp_path, steps=2))  # released by close(): the folder is usable again
    assert losses(tmp_path) and ckpt_steps(tmp_path) == [2]


@pytest.mark.slow
def test_concurrent_trainers_and_a_stale_lock_of_a_killed_one(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_argv(out, steps=100_000, ckpt_every=2)]
    first = subprocess.Popen(
        cmd, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not ckpt_steps(out) and time.monotonic() < deadline:
            assert first.poll() is None, "the first trainer ended early"
            time.sleep(0.05)
        second = subprocess.run(
            [*cmd, "--resume"], env=script_env(), capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by another trainer (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first one was not disturbed
        os.kill(first.pid, signal.SIGKILL)
        first.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
    assert (out / LOCK_FILE).exists()  # left behind by the killed trainer: stale, not held
    newest = max(ckpt_steps(out))
    third = subprocess.run(
        [*cmd, "--resume", "--steps", str(newest + 2)],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"resumed from {step_dir(out, newest)}" in third.stdout
    rows = losses(out)  # one row per step, no duplicates from the two trainers
    assert len(rows) == newest + 2


# ------------------------------------------------------------------------------------------------
# 3. a used run folder is refused without --resume / --overwrite
# ------------------------------------------------------------------------------------------------


def test_rerunning_into_a_used_folder_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(tiny_argv(out, steps=3), capsys)[0] == 0
    before = (out / "metrics.csv").read_text()
    code, text = run_cli(tiny_argv(out, steps=5), capsys)
    assert code == 2
    assert "already holds a run (checkpoints up to step 3, metrics.csv" in text
    assert "--resume" in text and "--overwrite" in text and "Traceback" not in text
    assert (out / "metrics.csv").read_text() == before  # nothing touched
    assert ckpt_steps(out) == [3]


def test_overwrite_starts_again_and_keeps_nothing_of_the_old_run(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(tiny_argv(out, steps=6, ckpt_every=1, keep_ckpts=10), capsys)[0] == 0
    code, text = run_cli([*tiny_argv(out, steps=2, ckpt_every=1), "--overwrite"], capsys)
    assert code == 0, text
    assert "--overwrite: deleted the previous run's checkpoints" in text
    assert ckpt_steps(out) == [1, 2] and len(losses(out)) == 2
    code, text = run_cli([*tiny_argv(out, steps=2), "--overwrite", "--resume"], capsys)
    assert code == 2 and "pass one of them" in text


def test_the_demo_command_run_twice_continues_its_run(tmp_path, capsys) -> None:
    assert parse_args(["--preset", "digits"]).resume is True
    assert parse_args(["--preset", "digits", "--overwrite"]).resume is False
    demo = [*tiny_argv(tmp_path, steps=3), "--resume"]  # the demo presets' setting
    assert run_cli(demo, capsys)[0] == 0
    code, text = run_cli(demo, capsys)
    assert code == 0, text
    assert "resumed from" in text and "the run is already complete (step 3" in text
    assert len(losses(tmp_path)) == 3


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys) -> None:
    target = tmp_path / "a_file"
    target.write_text("x")
    code, text = run_cli(tiny_argv(target, steps=1), capsys)
    assert code == 2 and "exists and is not a folder" in text and "Traceback" not in text


# ------------------------------------------------------------------------------------------------
# 4. a full disk mid-save
# ------------------------------------------------------------------------------------------------


def failing_save_at(monkeypatch, step: int, exc: BaseException) -> None:
    """Make the DCP write of ``step`` write half a shard and then raise ``exc``."""
    real = ckpt_module.dcp.save

    def save(state, checkpoint_id):
        if f"step_{step:09d}" in str(checkpoint_id):
            (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"\0" * 4096)
            raise exc
        return real(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(ckpt_module.dcp, "save", save)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 1933"),
    ],
    ids=["ENOSPC", "torch-zip-writer"],
)
def test_disk_full_mid_save(tmp_path, monkeypatch, capsys, exc) -> None:
    out = tmp_path / "run"
    failing_save_at(monkeypatch, 6, exc)
    code, text = run_cli(tiny_argv(out, steps=8, ckpt_every=3), capsys)
    assert code == 1
    assert f"no space left while writing checkpoint step 6 to {step_dir(out, 6)}" in text
    assert "Traceback" not in text
    assert not list((out / "checkpoints").glob(".tmp_step_*"))  # the partial save is gone
    assert ckpt_steps(out) == [3] and verify_checkpoint(step_dir(out, 3)) is None
    monkeypatch.undo()
    code, text = run_cli([*tiny_argv(out, steps=6, ckpt_every=3), "--resume"], capsys)
    assert code == 0 and f"resumed from {step_dir(out, 3)}" in text


def test_any_failed_write_removes_the_partial_folder(tmp_path, monkeypatch) -> None:
    failing_save_at(monkeypatch, 2, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(CheckpointSaveError, match=r"could not write checkpoint step 2.*Permission"):
        train(tiny_config(tmp_path, steps=2, ckpt_every=1))
    assert ckpt_steps(tmp_path) == [1]
    assert not list((tmp_path / "checkpoints").glob(".tmp_step_*"))


def test_disk_full_on_a_real_small_tmpfs(tmp_path, capsys) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()[:200]}")
    try:
        out = mnt / "run"
        # ~1.4 MB per checkpoint: two fit, the third does not (keep 10: no pruning)
        code, text = run_cli(
            tiny_argv(out, steps=12, ckpt_every=1, keep_ckpts=10, sample_every=0), capsys
        )
        assert code == 1, text[-2000:]
        assert "no space left while writing checkpoint step" in text, text[-2000:]
        assert not list((out / "checkpoints").glob(".tmp_step_*"))
        steps = ckpt_steps(out)
        assert steps and all(verify_checkpoint(step_dir(out, s)) is None for s in steps)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ------------------------------------------------------------------------------------------------
# SIGKILL at random points, saves included
# ------------------------------------------------------------------------------------------------


# train.py whose os.replace SIGKILLs the process just before the rename onto a path ending in
# argv[1]: an exact point inside a checkpoint save.
KILL_AT_RENAME = """
import os, signal, sys
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
from inrflow.train.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "corrupt_6"),
    [
        ("checkpoints/step_000000006", False),  # manifest written, folder not yet renamed
        ("checkpoints/step_000000006", True),  # replacing a corrupt step 6: old moved, new not in
    ],
    ids=["before-commit", "mid-replace"],
)
def test_sigkill_inside_a_save_then_resume(tmp_path, reference, point, corrupt_6) -> None:
    out = copy_run(reference, tmp_path / "run", [3, 6] if corrupt_6 else [3])
    if corrupt_6:
        flip_byte(next(step_dir(out, 6).glob("*.distcp")))
    argv = [*tiny_argv(out, steps=9, ckpt_every=3, keep_ckpts=10), "--resume"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, point, *argv],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *argv],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {step_dir(out, 3)}" in done.stdout
    assert ckpt_steps(out) == [3, 6, 9]
    assert all(verify_checkpoint(step_dir(out, s)) is None for s in (3, 6, 9))
    assert not list((out / "checkpoints").glob(".*_step_*"))
    assert losses(out) == losses(reference)


# ------------------------------------------------------------------------------------------------
# 5. a stalled step is reported; --dist-timeout is an option
# ------------------------------------------------------------------------------------------------


def test_the_watchdog_reports_a_step_far_slower_than_the_median() -> None:
    now = [0.0]
    said: list[str] = []
    dog = StallWatchdog(said.append, factor=10, min_seconds=5, timeout_s=60, clock=lambda: now[0])
    dog.stop()  # driven by hand below, not by its thread
    for step in range(1, 6):
        now[0] += 1.0
        dog.beat(step)
    now[0] += 9.0
    assert dog.check() is None  # 9 s < 10 x the 1 s median
    now[0] += 2.0
    msg = dog.check()
    assert msg is not None and "step 6 has taken 11 s" in msg and "--dist-timeout 60" in msg
    now[0] += 1.0
    assert dog.check() is None  # said once, again only when the wait has doubled
    now[0] += 11.0
    assert "step 6 has taken 23 s" in dog.check()
    now[0] += 1.0
    dog.beat(6)
    assert said == ["step 6 finished after 24 s: the run goes on"]
    with dog.slow("saving a checkpoint"):  # the first save: nothing to compare with
        now[0] += 1000.0
        assert dog.check() is None
    with dog.slow("saving a checkpoint"):  # later saves: against the earlier ones
        now[0] += 9000.0
        assert dog.check() is None  # 9000 s < 10 x 1000 s
        now[0] += 2000.0
        assert "saving a checkpoint has taken 11000 s so far, 11x" in dog.check()
    assert said[-1] == "saving a checkpoint finished after 11000 s: the run goes on"
    now[0] += 1.0
    dog.beat(7)
    assert len(said) == 2 and dog.check() is None


def test_a_stalled_step_is_reported_by_the_trainer(tmp_path, capsys) -> None:
    class Slow(DigitsDataset):
        """Step 5's first item takes 4 s to load (a stand-in for a paused rank)."""

        calls = 0

        def load(self, index, rng):
            Slow.calls += 1
            if Slow.calls == 4 * 8 + 1:
                time.sleep(4.0)
            return super().load(index, rng)

    # steps take ~0.05-0.3 s here: 4 s is well past 3x the median even on a busy machine
    cfg = tiny_config(tmp_path, steps=6, stall_factor=3.0, stall_seconds=0.5, ckpt_every=0)
    train(cfg, dataset=Slow())
    text = capsys.readouterr().out
    assert "step 5 has taken" in text and "a process may be paused, stuck or dead" in text
    assert "step 5 finished after" in text


def test_slow_final_samples_are_not_reported_as_a_stall(tmp_path, capsys, monkeypatch) -> None:
    """The final samples and scores (a minute for two domains of a co-training run) are slow by
    design, not a stalled step."""
    from inrflow.train.trainer import Trainer

    real = Trainer.finish

    def slow_finish(self, logger):
        time.sleep(3.0)
        return real(self, logger)

    monkeypatch.setattr(Trainer, "finish", slow_finish)
    cfg = tiny_config(tmp_path, steps=6, stall_factor=3.0, stall_seconds=0.5, ckpt_every=0)
    train(cfg)
    text = capsys.readouterr().out
    assert "a process may be paused, stuck or dead" not in text


def test_dist_timeout_reaches_the_process_group(tmp_path, monkeypatch) -> None:
    from inrflow.train import trainer as trainer_module

    seen = {}
    real = trainer_module.init_distributed

    def spy(device, timeout_s=1800.0):
        seen["timeout"] = timeout_s
        return real(device, timeout_s)

    monkeypatch.setattr(trainer_module, "init_distributed", spy)
    assert parse_args(["--dist-timeout", "90"]).dist_timeout == 90.0
    with pytest.raises(ValueError, match="--dist-timeout must be > 0"):
        parse_args(["--dist-timeout", "0"])
    train(tiny_config(tmp_path, steps=1, dist_timeout=42.0))
    assert seen["timeout"] == 42.0


# ------------------------------------------------------------------------------------------------
# progress output for job logs
# ------------------------------------------------------------------------------------------------


def test_no_progress_logs_a_line_every_n_steps(tmp_path, capsys) -> None:
    assert parse_args(["--no-progress"]).progress is False
    assert parse_args([]).progress is None
    logger = MetricLogger(tmp_path, True, 10, 0, 8, 5, False, progress=False)
    for step in range(1, 11):
        logger.log_step(step, 0.5, 1.0, 1e-3, 0)
    logger.close()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[inrflow] step")]
    assert [x.split()[2] for x in lines] == ["5/10", "10/10"]
    assert "loss 0.5000" in lines[0]


def test_resume_with_another_size_keeps_the_stored_size(tmp_path) -> None:
    train(tiny_config(tmp_path, steps=2))
    cfg = tiny_config(tmp_path, steps=3, resume=True, size="S", model={**TINY_MODEL, "depth": 2})
    trainer = Trainer(cfg)
    try:
        assert trainer.cfg.size == "tiny" and trainer.cfg.model["depth"] == 1
        trainer.train()
    finally:
        trainer.close()
    import json

    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["train"]["size"] == "tiny" and stored["model"]["depth"] == 1


def test_resume_on_other_data_fails_before_writing_anything(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(tiny_argv(out, steps=2), capsys)[0] == 0
    config = (out / "config.json").read_bytes()
    code, text = run_cli(
        [*tiny_argv(out, steps=4, data="shapes", num_points=32), "--resume"], capsys
    )
    assert code == 2 and "cannot resume" in text and "domain image in the checkpoint" in text
    assert (out / "config.json").read_bytes() == config
    assert len(losses(out)) == 2
    shutil.rmtree(out)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e[5:] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
@requires_gloo
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_paused_rank_is_reported_and_ends_the_run_after_dist_timeout(tmp_path) -> None:
    out = tmp_path / "run"
    argv = tiny_argv(out, steps=100_000, ckpt_every=2, log_every=1000)
    argv += ["--dist-timeout", "20", "--stall-factor", "5", "--stall-seconds", "2"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(REPO / "train.py"),
        *argv,
    ]
    proc = subprocess.Popen(
        cmd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    paused = None
    try:
        deadline = time.monotonic() + 300
        while max(ckpt_steps(out), default=0) < 4 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        paused = next(p for p in _descendants(proc.pid) if _rank_of(p) == 1)
        os.kill(paused, signal.SIGSTOP)
        t0 = time.monotonic()
        text, _ = proc.communicate(timeout=240)
        ended = time.monotonic() - t0
    finally:
        if paused is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(paused, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "has taken" in text and "a process may be paused, stuck or dead" in text, text[-3000:]
    assert "--dist-timeout 20 s" in text
    assert ended < 20 + 90, ended  # not the 30-minute default
