"""FSDP2 training: config and CLI, parallelisation, optimizer and EMA, checkpoints, logging, loop.

``train.py`` (the repository's entry point) calls :func:`inrflow.train.cli.main`.
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointManager,
    CheckpointSaveError,
    NoValidCheckpointError,
    find_checkpoint,
    list_checkpoints,
    load_ema_model,
    load_for_sampling,
    verify_checkpoint,
)
from .config import PRESETS, TrainConfig, parse_args
from .run_folder import RunFolderError
from .trainer import NonFiniteLossError, Trainer, run

__all__ = [
    "PRESETS",
    "CheckpointManager",
    "CheckpointSaveError",
    "NoValidCheckpointError",
    "NonFiniteLossError",
    "RunFolderError",
    "TrainConfig",
    "Trainer",
    "find_checkpoint",
    "list_checkpoints",
    "load_ema_model",
    "load_for_sampling",
    "parse_args",
    "run",
    "verify_checkpoint",
]
