"""What a checkpoint holds of a run, writing it and restoring it.

The DCP state: model, optimizer and EMA (all sharded), the trainer's counters, each rank's RNG.
The manifest's metadata: the model and train configs, the dataset description (from the
domain), the unreadable data files met. On resume the stored architecture wins over the
command line's, and data the checkpoint cannot continue on are refused before anything is
written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from inrflow.checkpoints import read_manifest
from inrflow.model.config import INRFlowConfig

from .checkpoint import CheckpointManager
from .run_folder import RunFolderError, resume_conflicts

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["BadFiles", "adopt_stored_config", "checkpoint_meta", "checkpoint_state", "restore"]


class BadFiles:
    """The distinct unreadable data files met so far (dataset indices). ``count`` also holds
    the files of checkpoints from before the list was stored (``base``)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.base = 0

    @property
    def count(self) -> int:
        return self.base + len(self.seen)

    def new(self, index: torch.Tensor | None) -> set[int]:
        """Files of this batch not met before (``index``: a host tensor, no device sync)."""
        if index is None or index.numel() == 0:
            return set()
        return set(index.tolist()) - self.seen

    def record(self, new: set[int], world: int) -> None:
        """Add every rank's newly met files (a collective when ``world > 1``): a broken file met
        in every epoch counts once."""
        shares: list[Any] = [new]
        if world > 1:
            shares = [None] * world
            torch.distributed.all_gather_object(shares, new)
        for share in shares:
            self.seen |= share

    def restore(self, stored: list[int], count: int) -> None:
        self.seen = set(stored)
        self.base = count - len(self.seen)


def checkpoint_state(trainer: Trainer, rng_ranks: int | None = None) -> dict[str, Any]:
    """The DCP state dict; this rank's RNG only when the checkpoint has a slot for it."""
    state: dict[str, Any] = {
        "model": get_model_state_dict(trainer.model),
        "optim": trainer.optimizer_state(),
        "ema": trainer.ema.state_dict(),
        "trainer": {
            "step": trainer.step,
            "skipped_steps": trainer.guard.skipped,
            "skipped_files": trainer.bad_files.count,
        },
    }
    if rng_ranks is None or trainer.dist.rank < rng_ranks:
        state["rng"] = {f"rank{trainer.dist.rank}": CheckpointManager.rng_state()}
    return state


def checkpoint_meta(trainer: Trainer) -> dict[str, Any]:
    return {
        "model_config": dataclasses.asdict(trainer.model_config),
        "train_config": trainer.cfg.to_dict(),
        "dataset": trainer.domain.dataset_info(trainer.dataset),
        "num_params": trainer.num_params,
        "torch_version": torch.__version__,
        "skipped_data_files": sorted(trainer.bad_files.seen),
    }


def restore(trainer: Trainer) -> None:
    """Load the newest valid checkpoint of the run folder into ``trainer`` (if there is one)."""
    say, d = trainer.say, trainer.dist
    found = trainer.checkpoints.load_latest(
        lambda meta: checkpoint_state(trainer, rng_ranks=int(meta.get("world_size", 1)))
    )
    if found is None:
        say(f"--resume: no checkpoint in {trainer.checkpoints.folder} yet; starting at step 0")
        return
    path, meta, state = found
    set_model_state_dict(trainer.model, state["model"])
    trainer.load_optimizer_state(state["optim"])
    trainer.ema.load_state_dict(state["ema"])
    tr = state["trainer"]
    trainer.step, trainer.guard.skipped = int(tr["step"]), int(tr["skipped_steps"])
    trainer.bad_files.restore(meta.get("skipped_data_files", []), int(tr["skipped_files"]))
    if "rng" in state:
        CheckpointManager.set_rng_state(state["rng"][f"rank{d.rank}"])
    if int(meta.get("world_size", 1)) != d.world:
        say(
            f"checkpoint was written by {meta.get('world_size')} processes, now {d.world}: "
            "weights and optimizer are resharded; the data stream continues at the same sample"
        )
    trainer.resumed_from = path
    say(f"resumed from {path} at step {trainer.step}")
    if trainer.step >= trainer.cfg.steps:
        say(
            f"the run is already complete (step {trainer.step}, --steps {trainer.cfg.steps}): "
            "nothing to train; a larger --steps continues it, --overwrite starts again"
        )


def adopt_stored_config(trainer: Trainer, found: list[tuple[int, Path]]) -> None:
    """On resume: refuse data the checkpoint cannot continue on, and take the stored
    architecture (and the ``--size`` / ``--model`` that made it) over the command line's, so
    that ``config.json`` and the next checkpoints describe the model really trained."""
    for _step, path in found:
        try:
            manifest = read_manifest(path)
            stored = manifest["model_config"]
        except (OSError, ValueError, KeyError):
            continue
        info = trainer.domain.dataset_info(trainer.dataset)
        conflicts = resume_conflicts(manifest, info, trainer.domain.resume_keys)
        if conflicts:
            raise RunFolderError(
                f"cannot resume {path} on this --data ({trainer.cfg.data}): "
                + "; ".join(conflicts)
                + ". Use the run's data, or --overwrite / another --out for a new run"
            )
        stored_config = INRFlowConfig.from_dict(stored)
        if stored_config != trainer.model_config:
            trainer.say(
                "resuming: the model architecture stored in the checkpoint overrides "
                "the command line's"
            )
            trainer.model_config = stored_config
        train = manifest.get("train_config") or {}
        changed = {
            k: train[k]
            for k in ("size", "model")
            if k in train and train[k] != getattr(trainer.cfg, k)
        }
        if changed:
            trainer.say(
                "resuming: "
                + ", ".join(f"--{k} {v} from the checkpoint" for k, v in changed.items())
                + " (the command line's is ignored)"
            )
            trainer.cfg = dataclasses.replace(trainer.cfg, **changed)
        return
