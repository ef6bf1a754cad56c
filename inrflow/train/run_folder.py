"""The run folder (``--out``): one trainer at a time, and never a silent restart over a used one.

* An exclusive lock (``fcntl.flock`` on ``<out>/.inrflow.lock``, taken by rank 0) keeps a second
  trainer out of a folder in use: two trainers writing one folder delete each other's temporary
  checkpoints, mix their checkpoints under keep-K pruning and write duplicate ``metrics.csv``
  rows. The kernel drops the lock when its process dies (even by SIGKILL), so the lock of a dead
  trainer is stale by construction and the next trainer takes it; the file keeps the holder's
  PID and host only for the message.
* A folder that already holds a run (checkpoints, ``metrics.csv`` or ``config.json``) is refused
  unless ``--resume`` (continue it) or ``--overwrite`` (delete the run's files, start at step 0)
  says what to do with it: starting again at step 0 in place truncated the old logs and let
  pruning mix the two runs' checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .distributed import Dist

__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "RunFolderError",
    "RunLock",
    "clear_run",
    "describe_run",
    "open_run_folder",
    "resume_conflicts",
]

LOCK_FILE = ".inrflow.lock"
# What a training run writes into its folder: the files --overwrite deletes (nothing else).
RUN_FILES = (
    "checkpoints",
    "metrics.csv",
    "config.json",
    "tensorboard",
    "samples",
    "loss.png",
    "final_scores.json",
    "profile",
)


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (in use, holds another run, not a folder)."""


class RunLock:
    """An exclusive, non-blocking lock on a run folder, held until :meth:`release`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunFolderError` naming the trainer that holds it."""
        import fcntl

        check_is_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        f = open(path, "a+")  # noqa: SIM115 - held open for the lifetime of the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            f.close()
            raise RunFolderError(
                f"run folder {self.folder} is in use by another trainer ({holder}); wait for it "
                "to end or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: unlinking it would let two trainers lock two files)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing the descriptor releases the flock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None


def check_is_folder(path: Path) -> None:
    """Raise a clear error when ``--out`` names something that is not a folder."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--out {path} exists and is not a folder; choose a folder path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"--out {path}: {parent} is a file, not a folder")
            break


def describe_run(folder: str | os.PathLike) -> str | None:
    """What of a previous run ``folder`` holds (e.g. "checkpoints up to step 1200,
    metrics.csv"), or None when it holds none of a run's files."""
    from inrflow.checkpoints import list_checkpoints

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    steps = [s for s, _ in list_checkpoints(folder / "checkpoints")]
    if steps:
        found.append(f"checkpoints up to step {max(steps)}")
    elif (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir()):
        found.append("checkpoints/")
    found += [name for name in ("metrics.csv", "config.json") if (folder / name).exists()]
    return ", ".join(found) or None


def clear_run(folder: str | os.PathLike) -> list[str]:
    """Delete the files a run wrote into ``folder`` (only :data:`RUN_FILES`); their names."""
    folder = Path(folder)
    removed = []
    for name in RUN_FILES:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def open_run_folder(
    folder: str | os.PathLike,
    *,
    resume: bool,
    overwrite: bool,
    dist: Dist,
    say: Callable[[str], None],
) -> RunLock | None:
    """Lock ``folder`` and settle what happens to a previous run in it, before anything is
    written; a collective. Rank 0 returns the held lock (release it at the end of the run),
    other ranks None; on refusal every rank raises the same :class:`RunFolderError`."""
    folder = Path(folder)
    lock: RunLock | None = None
    error: str | None = None
    if dist.is_main:
        try:
            lock = RunLock(folder).acquire()
            previous = describe_run(folder)
            if previous and overwrite:
                removed = clear_run(folder)
                say(f"--overwrite: deleted the previous run's {', '.join(removed)} in {folder}")
            elif previous and not resume:
                raise RunFolderError(
                    f"run folder {folder} already holds a run ({previous}). Pass --resume to "
                    "continue it, --overwrite to delete it and start again at step 0, or choose "
                    "another --out"
                )
        except (RunFolderError, OSError) as exc:
            if lock is not None:
                lock.release()
            lock = None
            error = str(exc) if isinstance(exc, RunFolderError) else f"--out {folder}: {exc}"
    error = dist.broadcast_object(error)
    if error:
        raise RunFolderError(error)
    return lock


# What the data decide about the model: a checkpoint trained on data that differ in any of these
# cannot continue on the new data (its first step would fail, or learn nonsense).
_DATA_KEYS = ("domain", "value_dim", "coord_dim", "cond_dim")


def resume_conflicts(
    manifest: dict[str, Any], info: dict[str, Any], domain_keys: tuple[str, ...] = ()
) -> list[str]:
    """How the data of a resumed run (``info``, :meth:`inrflow.domains.Domain.dataset_info`)
    differ from the data the checkpoint (its ``manifest``) was trained on, one line each.
    ``domain_keys``: what else the domain's data decide
    (:attr:`inrflow.domains.Domain.resume_keys`)."""
    stored = manifest.get("dataset") or {}
    keys = list(_DATA_KEYS)
    if int(manifest.get("model_config", {}).get("num_classes", 0) or 0) > 0:
        keys.append("num_classes")  # a class-conditional model needs the same classes
    keys += domain_keys
    out = []
    for key in keys:
        if key in stored and stored[key] != info.get(key):
            out.append(f"{key} {stored[key]} in the checkpoint, {info.get(key)} in --data")
    return out


def write_run_config(out: Path, cfg: Any, model_config: Any) -> None:
    """``config.json``: the train config and the model config of the run (rank 0)."""
    out.mkdir(parents=True, exist_ok=True)
    config = {"train": cfg.to_dict(), "model": dataclasses.asdict(model_config)}
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
