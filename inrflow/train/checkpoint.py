"""Writing distributed checkpoints: atomically, verified before use, the newest K kept.

This is the trainer's side (saving, pruning, resuming); finding, verifying and loading a
checkpoint for sampling or evaluation is :mod:`inrflow.checkpoints`, which this module uses.

Layout of ``<out>/checkpoints/``::

    step_000001000/            a complete checkpoint
        .metadata, __0_0.distcp, ...   torch.distributed.checkpoint (DCP) files
        inrflow_checkpoint.json        step, configs, and every file's size and CRC32
    .tmp_step_000002000/       a save in progress (or interrupted): never loaded

A save goes to the temporary folder; once every rank has written its shards, rank 0 checksums
nothing itself (each rank checksums a share of the files), writes the manifest and renames the
folder. A crash at any point leaves either the previous set of checkpoints or the new complete
one. Loading walks the checkpoints from the newest, skips any whose manifest is missing or whose
files are truncated or altered, and falls back to the previous one with a warning.

A save of a step whose folder already exists (a corrupt one that a resume fell back past)
replaces it: the old folder is moved aside to ``.old_step_N``, the new one renamed in, the old
deleted, and the log says "replaced corrupt step_N". Pruning keeps the newest K checkpoints that
pass the size check, the one just saved always among them. A failed write (a full disk shows up
as ``OSError(ENOSPC)`` or as torch's zip writer's "unexpected pos") deletes the temporary folder
and raises :class:`CheckpointSaveError` naming the step and the path; older checkpoints stay.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from inrflow.checkpoints import (
    FORMAT,
    MANIFEST,
    CheckpointWarning,
    crc32,
    list_checkpoints,
    read_manifest,
    unfinished_checkpoints,
    verify_checkpoint,
)

from .distributed import Dist

__all__ = ["CheckpointManager", "CheckpointSaveError", "NoValidCheckpointError"]


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (its partial folder is removed, older ones kept)."""


class NoValidCheckpointError(FileNotFoundError):
    """Checkpoints exist but none of them can be loaded."""


# How a full disk shows up: OSError(ENOSPC) from Python's writes, a short write inside
# torch.save's zip writer ("[enforce fail at inline_container.cc] . unexpected pos"), or the
# C library's message inside a wrapped (e.g. DCP's CheckpointException) error.
_NO_SPACE_TEXT = ("No space left on device", "unexpected pos", "Disk quota exceeded")


def _is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it wraps) says the disk or the quota is full."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(e) for t in _NO_SPACE_TEXT):
            return True
        failures = getattr(e, "failures", None)  # DCP CheckpointException: {rank: exception}
        if isinstance(failures, dict):
            for f in failures.values():
                todo.append(f[0] if isinstance(f, tuple) else f)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return False


def _save_error(exc: BaseException, step: int, tmp: Path) -> CheckpointSaveError:
    """A clear error for a failed save of ``step`` (its partial folder ``tmp`` is gone)."""
    final = tmp.with_name(f"step_{step:09d}")
    if _is_no_space(exc):
        try:
            free = f"{shutil.disk_usage(tmp.parent).free / 2**20:.0f} MiB free now"
        except OSError:
            free = "free space unknown"
        return CheckpointSaveError(
            f"no space left while writing checkpoint step {step} to {final} ({free} after "
            f"removing the partial save); the older checkpoints in {tmp.parent} are intact. "
            "Free some space (or lower --keep-ckpts) and continue with --resume"
        )
    return CheckpointSaveError(
        f"could not write checkpoint step {step} to {final}: {type(exc).__name__}: "
        f"{str(exc)[:500]}; the partial save was removed, the older checkpoints are intact"
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Save / restore a DCP state dict in ``folder`` with atomic commits and keep-last-K."""

    def __init__(
        self,
        folder: str | os.PathLike,
        dist_info: Dist,
        keep: int = 3,
        checksums: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.log = log  # where "replaced corrupt step_N" and the like are said (rank 0)
        self.folder = Path(folder)
        self.dist = dist_info
        self.keep = keep
        self.checksums = checksums

    # -- save ------------------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write ``state`` (a DCP state dict) for ``step``; a collective over all ranks.

        Always writes: a ``step_N`` folder already there (a corrupt one a resume fell back
        past, or an earlier save of this step) is replaced by the new, verified one. A failed
        write (e.g. a full disk) removes its temporary folder and raises
        :class:`CheckpointSaveError` on every rank; the older checkpoints are left as they were.
        """
        final = self.folder / f"step_{step:09d}"
        tmp = self.folder / f".tmp_step_{step:09d}"
        if self.dist.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.dist.barrier()
        try:
            dcp.save(state, checkpoint_id=str(tmp))
            files = self._checksum_files(tmp)
        except BaseException as exc:  # DCP's CheckpointException is not an Exception
            self._abandon(tmp)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _save_error(exc, step, tmp) from exc
        error = None
        if self.dist.is_main:
            try:
                self._commit(tmp, final, step, meta, files)
            except Exception as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                error = str(_save_error(exc, step, tmp))
        error = self.dist.broadcast_object(error)
        if error is not None:
            raise CheckpointSaveError(error)
        self.dist.barrier()
        return final

    def _checksum_files(self, tmp: Path) -> dict[str, dict[str, int]] | None:
        """Size and CRC32 of every file in ``tmp`` (each rank reads a share); rank 0 gets all."""
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        mine = {
            n: {"size": (tmp / n).stat().st_size, "crc32": crc32(tmp / n)}
            for n in names[self.dist.rank :: self.dist.world]
        }
        shares: list[Any] = [mine]
        if self.dist.world > 1:
            shares = [None] * self.dist.world
            dist.all_gather_object(shares, mine)
        return {k: v for share in shares for k, v in share.items()}

    def _commit(
        self, tmp: Path, final: Path, step: int, meta: dict[str, Any], files: dict[str, Any]
    ) -> None:
        """Rank 0: write the manifest, move ``tmp`` into place (replacing an older folder of
        the same step), prune."""
        manifest = {
            "format": FORMAT,
            "step": step,
            "world_size": self.dist.world,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            **meta,
            "files": files,
        }
        part = tmp / (MANIFEST + ".part")
        with open(part, "w") as f:
            json.dump(manifest, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, tmp / MANIFEST)
        _fsync_dir(tmp)
        if final.exists():
            why = verify_checkpoint(final, checksums=True)
            old = self.folder / f".old_{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            self._log(
                f"replaced corrupt {final.name} ({why})"
                if why
                else f"replaced {final.name} (an earlier save of the same step)"
            )
        else:
            os.replace(tmp, final)
        _fsync_dir(self.folder)
        self._prune(step)

    def _abandon(self, tmp: Path) -> None:
        """After a failed write on any rank: rank 0 deletes the partial folder (it holds the
        space a full disk needs)."""
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)

    def _prune(self, saved: int) -> None:
        """Keep the newest ``keep`` checkpoints that pass the size check, counting the one just
        saved (step ``saved``, verified as it was written). Folders of later steps are not
        this run's past (a resume fell back past them): they stay until the run replaces them.
        Older folders that fail the check are deleted (they are unusable)."""
        kept = 0
        for step, path in list_checkpoints(self.folder):
            if step > saved:
                continue
            if step == saved or (
                kept < self.keep and verify_checkpoint(path, checksums=False) is None
            ):
                kept += 1
                continue
            shutil.rmtree(path, ignore_errors=True)
        for p in self.folder.iterdir():  # interrupted saves and replacements of earlier runs
            if p.name.startswith((".tmp_step_", ".old_step_")):
                shutil.rmtree(p, ignore_errors=True)

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
        else:
            print(f"[inrflow] {msg}", flush=True)

    # -- load ------------------------------------------------------------------------------------
    def candidates(self) -> list[tuple[int, Path]]:
        return self.dist.broadcast_object(
            list_checkpoints(self.folder) if self.dist.is_main else None
        )

    def load_latest(self, build_state: Any) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
        """Restore the newest usable checkpoint; None when there is none.

        ``build_state(meta)`` returns the DCP state dict to load into (in place). A checkpoint
        that fails verification or whose load raises is skipped with a :class:`CheckpointWarning`,
        as is (with a warning) a ``step_N`` folder without a manifest. When there are
        checkpoints but none is usable, raises :class:`NoValidCheckpointError` rather than let
        the run start again over them. Returns ``(path, manifest, loaded state)``.
        """
        if self.dist.is_main:
            for path in unfinished_checkpoints(self.folder):
                self._warn(
                    f"{path} has no {MANIFEST} (a save that never finished, or not an inrflow "
                    "checkpoint): ignored"
                )
        found = self.candidates()
        for _step, path in found:
            share = (self.dist.rank, self.dist.world)
            err = verify_checkpoint(path, self.checksums, share)
            errors = self.dist.all_reduce_sum([0.0 if err is None else 1.0])[0]
            if errors:
                reason = err or "a file failed verification on another rank"
                self._warn(
                    f"checkpoint {path} is unusable ({reason}); falling back to an older one"
                )
                continue
            meta = read_manifest(path)
            try:
                state = build_state(meta)
                dcp.load(state, checkpoint_id=str(path))
            except Exception as exc:  # DCP raises on every rank when any rank fails
                self._warn(
                    f"checkpoint {path} could not be loaded ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); falling back to an older one"
                )
                continue
            return path, meta, state
        if found:
            raise NoValidCheckpointError(
                f"no valid checkpoint among {len(found)} found in {self.folder} (the reasons are "
                "in the warnings above); --overwrite starts the run again at step 0"
            )
        return None

    def _warn(self, msg: str) -> None:
        if self.dist.is_main:
            warnings.warn(msg, CheckpointWarning, stacklevel=3)

    @staticmethod
    def rng_state() -> bytes:
        import pickle
        import random

        import numpy as np

        state = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }
        return pickle.dumps(state)

    @staticmethod
    def set_rng_state(blob: bytes) -> None:
        import pickle
        import random

        import numpy as np

        state = pickle.loads(blob)
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
