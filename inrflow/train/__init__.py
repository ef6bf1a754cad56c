"""FSDP2 training: config and CLI, parallelisation, optimizer and EMA, checkpoint writing, logging,
the loop (reading checkpoints back is :mod:`inrflow.checkpoints`).

``train.py`` (the repository's entry point) calls :func:`inrflow.train.cli.main`.
"""

from __future__ import annotations

from .checkpoint import CheckpointManager, CheckpointSaveError, NoValidCheckpointError
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
    "parse_args",
    "run",
]
