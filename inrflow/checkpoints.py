"""The reading side of checkpoints: find, verify and load them for sampling and evaluation.

A training run writes ``<out>/checkpoints/step_N/`` folders (:mod:`inrflow.train.checkpoint`
writes them atomically, with a manifest ``inrflow_checkpoint.json`` holding the step, the
configs and every file's size and CRC32). Everything that only *reads* them lives here, below
the applications, so that the sampling and evaluation CLIs and ``python -m inrflow.export``
load weights without importing the trainer: listing and verifying checkpoints, finding the
newest valid one of a run, and loading the EMA weights into a plain :class:`~inrflow.model.INRFlow`
(also from an exported folder or a plain torch checkpoint file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from inrflow.model import INRFlow
from inrflow.model.config import INRFlowConfig
from inrflow.model.pretrained import is_pretrained, load_pretrained, read_pretrained_config

__all__ = [
    "FORMAT",
    "MANIFEST",
    "CheckpointWarning",
    "crc32",
    "find_checkpoint",
    "list_checkpoints",
    "load_checkpoint_model",
    "load_ema_model",
    "read_manifest",
    "stored_dataset_info",
    "unfinished_checkpoints",
    "verify_checkpoint",
]

MANIFEST = "inrflow_checkpoint.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CONFIG_KEYS = ("model_config", "config", "model_cfg")


class CheckpointWarning(UserWarning):
    """A checkpoint was unusable and an older one is used instead."""


def crc32(path: Path, chunk: int = 1 << 24) -> int:
    """The CRC32 of a file, read in ``chunk``-byte blocks (the manifest's checksum)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


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


def unfinished_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """``step_N`` folders without a manifest: never loaded, worth a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if _STEP_DIR.match(p.name) and p.is_dir() and not (p / MANIFEST).is_file()
    )


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
            if crc32(path / name) != meta["files"][name]["crc32"]:
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
        for unfinished in unfinished_checkpoints(folder):
            warnings.warn(
                f"{unfinished} has no {MANIFEST} (an unfinished save): ignored",
                CheckpointWarning,
                stacklevel=2,
            )
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
) -> tuple[INRFlow, dict[str, Any], Path]:
    """``(model, manifest, checkpoint folder)``: the EMA weights of checkpoint ``path`` (a
    checkpoint folder, or a run folder: its newest valid checkpoint) in a plain, unsharded
    :class:`~inrflow.model.INRFlow` in eval mode on ``device``.

    Works in one process whatever number of processes saved the checkpoint (DCP reshards).
    """
    ckpt = find_checkpoint(path, checksums)
    meta = read_manifest(ckpt)
    model = INRFlow(INRFlowConfig.from_dict(meta["model_config"]))
    state = {"ema": {n: p.detach() for n, p in model.named_parameters()}}
    no_dist = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=no_dist)
    return model.to(device).eval(), meta, ckpt


def _flat_meta(stored: dict[str, Any], source: str | os.PathLike, weights: str) -> dict[str, Any]:
    """The flat ``meta`` of :func:`load_checkpoint_model` from a manifest or an export's config:
    the stored dataset description with the run's ``--data`` as ``dataset``."""
    meta = dict(stored.get("dataset", {}))
    meta.update(
        dataset=stored.get("train_config", {}).get("data"),
        step=stored.get("step"),
        checkpoint=str(source),
        weights=weights,
        train_config=stored.get("train_config", {}),
    )
    return meta


def stored_dataset_info(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset description (``domain``, ``shape``, ...) of checkpoint metadata: nested under
    ``"dataset"`` (a manifest: :func:`load_ema_model`; an export's config) or flat
    (:func:`load_checkpoint_model`, where ``dataset`` is the run's ``--data``)."""
    info = meta.get("dataset")
    return info if isinstance(info, dict) else meta


def _is_state(d: object) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _find_states(obj: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """``(model state, EMA state)`` of a checkpoint dict (either may be None, not both)."""
    ema = next(
        (obj[k] for k in ("ema", "model_ema", "ema_state_dict") if _is_state(obj.get(k))), None
    )
    model = next(
        (obj[k] for k in ("model", "model_state_dict", "state_dict") if _is_state(obj.get(k))), None
    )
    if model is None and ema is None and _is_state(obj):
        model = obj
    if model is None and ema is None:
        raise ValueError(
            "no model weights found in the checkpoint (looked for keys ema, "
            "model_ema, model, model_state_dict, state_dict)"
        )
    return model, ema


def _find_config(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    for key in _CONFIG_KEYS:
        val = obj.get(key)
        if isinstance(val, dict):
            return val.get("model", val) if isinstance(val.get("model"), dict) else val
    raise ValueError(f"{path}: no model config found (keys {list(_CONFIG_KEYS)} in the checkpoint)")


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names without wrapper prefixes (DDP, torch.compile, activation checkpointing)."""
    out = {}
    for k, v in state.items():
        k = k.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
        k = k[len("module.") :] if k.startswith("module.") else k
        out[k] = v
    return out


def load_checkpoint_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", checksums: bool = True
) -> tuple[INRFlow, dict[str, Any]]:
    """``(model, meta)``: an INRFlow model in eval mode on ``device`` (EMA weights preferred)
    and its flat metadata, whatever ``--ckpt`` names. What both CLIs load.

    A folder is one of the trainer's checkpoints (a run folder, its ``checkpoints/`` or one
    ``step_*`` folder: :func:`load_ema_model`, files verified, ``checksums`` included) or an
    exported folder (``python -m inrflow.export``, :func:`inrflow.model.load_pretrained`). A
    file is a plain torch checkpoint ``{"config"|"model_config": INRFlowConfig fields,
    "ema"|"model": state dict, "meta"|"dataset": {"domain", "shape", "num_classes", ...}}``.

    ``meta`` is flat: the stored dataset description (``domain``, ``shape``, ``num_classes``,
    ...) with ``dataset`` = the run's ``--data``, ``step``, ``checkpoint`` (the folder or file
    loaded), ``weights`` (``"ema"`` or ``"model"``) and ``train_config`` when the checkpoint
    has them.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {str(p)!r} does not exist")
    if p.is_dir() and is_pretrained(p):
        config = read_pretrained_config(p)
        meta = _flat_meta(config, p, weights=config.get("weights", "ema"))
        return load_pretrained(p, device), meta
    if p.is_dir():
        model, manifest, ckpt = load_ema_model(p, device, checksums=checksums)
        return model, _flat_meta(manifest, ckpt, weights="ema")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: expected a dict checkpoint, got {type(obj).__name__}")
    fields = {f.name for f in dataclasses.fields(INRFlowConfig)}
    raw = _find_config(obj, p)
    cfg_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
    config = INRFlowConfig(**cfg_kw)
    model = INRFlow(config)
    model_state, ema_state = _find_states(obj)
    merged = {**_strip(model_state or {}), **_strip(ema_state or {})}  # EMA weights win
    missing, unexpected = model.load_state_dict(merged, strict=False)
    params = {n for n, _ in model.named_parameters()}
    missing_params = [k for k in missing if k in params]
    if missing_params or unexpected:
        raise ValueError(
            f"{p}: weights do not fit the config: missing {missing_params[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    meta: dict[str, Any] = {
        "weights": "ema" if ema_state is not None else "model",
        "checkpoint": str(p),
    }
    for key in ("meta", "data", "dataset"):
        if isinstance(obj.get(key), dict):
            meta.update(obj[key])
    if isinstance(obj.get("train_config"), dict) and "data" in obj["train_config"]:
        meta.setdefault("dataset", obj["train_config"]["data"])
    meta.setdefault("domain", "pointcloud" if config.coords_are_values else "image")
    meta.setdefault("num_classes", config.num_classes)
    return model.to(device).eval(), meta
