"""FSDP2 training: config and CLI, parallelisation, optimizer and EMA, checkpoints, logging, loop.

``train.py`` (the repository's entry point) calls :func:`inrflow.train.cli.main`.
"""

from __future__ import annotations

from .checkpoint import (
    CheckpointManager,
    find_checkpoint,
    list_checkpoints,
    load_ema_model,
    load_for_sampling,
    verify_checkpoint,
)
from .config import PRESETS, TrainConfig, parse_args
from .trainer import NonFiniteLossError, Trainer, run

__all__ = [
    "PRESETS",
    "CheckpointManager",
    "NonFiniteLossError",
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
