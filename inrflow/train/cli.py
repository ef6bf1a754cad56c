"""``train.py``: command line -> :class:`~inrflow.train.TrainConfig` -> :class:`Trainer`."""

from __future__ import annotations

import signal
import sys

from .checkpoint import CheckpointSaveError
from .config import parse_args
from .cotrain import CoTrainer
from .run_folder import RunFolderError
from .trainer import Trainer

__all__ = ["main"]

DESCRIPTION = """\
Train INRFlow with FSDP2 on GPUs (NCCL) or CPUs (gloo).

examples:
  # the CPU demo: class-conditional 8x8 digits, samples + loss plot + classifier score
  python train.py --preset digits
  # ImageNet 256, XL, 8 GPUs (folder tree: one subfolder per class)
  torchrun --nproc-per-node 8 train.py --preset imagenet256 --data /data/imagenet/train
  # several nodes: the same on every node, with a rendezvous
  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      train.py --preset imagenet256 --data /data/imagenet/train --out runs/in256
  # one model co-trained on the digits and shapes demos (docs/COTRAINING.md)
  python train.py --preset cotrain
  # CPU processes with gloo (tests, debugging)
  torchrun --nproc-per-node 2 train.py --device cpu --size tiny --data digits --steps 100
  # continue after a crash or preemption (newest valid checkpoint in --out)
  python train.py --size tiny --data digits --steps 100 --out runs/mine --resume
  # start again in a used run folder (without --resume or --overwrite it is refused)
  python train.py --size tiny --data digits --steps 100 --out runs/mine --overwrite

The demo presets (digits, shapes, protein) set --resume: their command run again continues
its run, or, when it is complete, draws and scores the final samples again.

Run folder (--out): checkpoints/step_*/ (DCP; SIGTERM/SIGINT also save one), metrics.csv,
tensorboard/, samples/, loss.png, config.json.
"""


def main(argv: list[str] | None = None) -> int:
    """Train; the exit status: 0 done, 2 refused before training (bad options, data or run
    folder), 1 a failed checkpoint write, 128 + N stopped by signal N after checkpointing."""
    try:
        cfg = parse_args(argv, prog="train.py", description=DESCRIPTION)
        trainer = CoTrainer(cfg) if cfg.cotraining else Trainer(cfg)
    except (ValueError, OSError, RunFolderError) as exc:  # OSError: missing data, --out a file
        return _fail(exc, 2)
    try:
        summary = trainer.train()
    except CheckpointSaveError as exc:
        return _fail(exc, 1)
    finally:
        trainer.close()
    sig = summary.get("interrupted_by")
    if sig is not None:  # stopped by a signal after checkpointing: report it in the exit code
        return 128 + int(signal.Signals(sig))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _fail(exc: BaseException, code: int) -> int:
    """One clear line on stderr instead of a traceback, and the exit status ``code``."""
    print(f"train.py: error: {exc}", file=sys.stderr, flush=True)
    return code
