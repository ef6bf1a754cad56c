"""Distributed checkpoints: written atomically, verified before use, the newest K kept.

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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .distributed import Dist

__all__ = [
    "MANIFEST",
    "CheckpointManager",
    "CheckpointWarning",
    "find_checkpoint",
    "list_checkpoints",
    "load_ema_model",
    "load_for_sampling",
    "read_manifest",
    "verify_checkpoint",
]

MANIFEST = "inrflow_checkpoint.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointWarning(UserWarning):
    """A checkpoint was unusable and an older one is used instead."""


def _crc32(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


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


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the folders that look finished (manifest present), newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of checkpoint folder ``path`` (raises if missing or unreadable)."""
    with open(Path(path) / MANIFEST) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or "files" not in meta or "step" not in meta:
        raise ValueError(
            f"{path}: not an inrflow checkpoint manifest (format {meta.get('format')})"
        )
    return meta


def verify_checkpoint(
    path: str | os.PathLike, checksums: bool = True, share: tuple[int, int] = (0, 1)
) -> str | None:
    """Why checkpoint ``path`` is unusable, or None when it is fine.

    Checks the manifest and every listed file's size; with ``checksums``, also the CRC32 of the
    files in this caller's ``share = (index, count)`` of them (ranks split the reading).
    """
    path = Path(path)
    try:
        meta = read_manifest(path)
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({type(exc).__name__}: {exc})"
    names = sorted(meta["files"])
    if ".metadata" not in names:
        return "the manifest lists no DCP .metadata file"
    for name in names:
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        size = f.stat().st_size
        if size != meta["files"][name]["size"]:
            return f"{name} has {size} bytes, expected {meta['files'][name]['size']} (truncated?)"
    if checksums:
        index, count = share
        for name in names[index::count]:
            if _crc32(path / name) != meta["files"][name]["crc32"]:
                return f"{name} fails its CRC32 check (corrupted)"
    return None


def find_checkpoint(path: str | os.PathLike, checksums: bool = True) -> Path:
    """A checkpoint folder, or the newest valid one under a run folder or its ``checkpoints/``.

    Raises FileNotFoundError with the reason when there is none.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    if (path / MANIFEST).exists():
        err = verify_checkpoint(path, checksums)
        if err:
            raise FileNotFoundError(f"checkpoint {path} is unusable: {err}")
        return path
    for folder in (path / "checkpoints", path):
        for _step, ckpt in list_checkpoints(folder):
            err = verify_checkpoint(ckpt, checksums)
            if err is None:
                return ckpt
            warnings.warn(
                f"checkpoint {ckpt} is unusable ({err}); trying an older one",
                CheckpointWarning,
                stacklevel=2,
            )
    raise FileNotFoundError(f"no valid checkpoint in {str(path)!r}")


def load_ema_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", checksums: bool = True
) -> tuple[Any, dict[str, Any], Path]:
    """``(model, manifest, checkpoint folder)``: the EMA weights of checkpoint ``path`` (a
    checkpoint folder, or a run folder: its newest valid checkpoint) in a plain, unsharded
    :class:`~inrflow.model.INRFlow` in eval mode on ``device``.

    Works in one process whatever number of processes saved the checkpoint (DCP reshards).
    """
    from inrflow.model import INRFlow
    from inrflow.model.config import INRFlowConfig

    ckpt = find_checkpoint(path, checksums)
    meta = read_manifest(ckpt)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model_config"].items()}
    model = INRFlow(INRFlowConfig(**fields))
    state = {"ema": {n: p.detach() for n, p in model.named_parameters()}}
    no_dist = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=no_dist)
    return model.to(device).eval(), meta, ckpt


def load_for_sampling(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """``(model, meta)`` for evaluation tools: :func:`load_ema_model` with a flat ``meta``
    (``domain``, ``shape``, ``num_classes``, ``value_dim``, ``class_names``, ``dataset`` = the
    ``--data`` of the run, ``step``, ``checkpoint``, ``weights`` = ``"ema"``)."""
    model, manifest, ckpt = load_ema_model(path, device)
    meta = dict(manifest.get("dataset", {}))
    meta.update(
        dataset=manifest.get("train_config", {}).get("data"),
        step=manifest["step"],
        checkpoint=str(ckpt),
        weights="ema",
        train_config=manifest.get("train_config", {}),
    )
    return model, meta


class CheckpointManager:
    """Save / restore a DCP state dict in ``folder`` with atomic commits and keep-last-K."""

    def __init__(
        self, folder: str | os.PathLike, dist_info: Dist, keep: int = 3, checksums: bool = True
    ) -> None:
        self.folder = Path(folder)
        self.dist = dist_info
        self.keep = keep
        self.checksums = checksums

    # -- save ------------------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write ``state`` (a DCP state dict) for ``step``; a collective over all ranks."""
        final = self.folder / f"step_{step:09d}"
        tmp = self.folder / f".tmp_step_{step:09d}"
        done = self.dist.broadcast_object(
            final.exists() and verify_checkpoint(final, checksums=False) is None
            if self.dist.is_main
            else None
        )
        if done:
            return final
        if self.dist.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)  # an unusable folder of the same step
            tmp.mkdir()
        self.dist.barrier()
        dcp.save(state, checkpoint_id=str(tmp))
        # Every rank checksums a share of the files, rank 0 writes the manifest and commits.
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        mine = {
            n: {"size": (tmp / n).stat().st_size, "crc32": _crc32(tmp / n)}
            for n in names[self.dist.rank :: self.dist.world]
        }
        shares: list[Any] = [mine]
        if self.dist.world > 1:
            shares = [None] * self.dist.world
            dist.all_gather_object(shares, mine)
        if self.dist.is_main:
            files = {k: v for share in shares for k, v in share.items()}
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
            os.replace(tmp, final)
            _fsync_dir(self.folder)
            self._prune()
        self.dist.barrier()
        return final

    def _prune(self) -> None:
        for _step, path in list_checkpoints(self.folder)[self.keep :]:
            shutil.rmtree(path, ignore_errors=True)
        for p in self.folder.iterdir():  # interrupted saves of earlier runs
            if p.name.startswith(".tmp_step_"):
                shutil.rmtree(p, ignore_errors=True)

    # -- load ------------------------------------------------------------------------------------
    def candidates(self) -> list[tuple[int, Path]]:
        return self.dist.broadcast_object(
            list_checkpoints(self.folder) if self.dist.is_main else None
        )

    def load_latest(self, build_state: Any) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
        """Restore the newest usable checkpoint; None when there is none.

        ``build_state(meta)`` returns the DCP state dict to load into (in place). A checkpoint
        that fails verification or whose load raises is skipped with a :class:`CheckpointWarning`.
        Returns ``(path, manifest, loaded state)``.
        """
        for _step, path in self.candidates():
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
