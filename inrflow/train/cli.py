"""``train.py``: command line -> :class:`~inrflow.train.TrainConfig` -> :class:`Trainer`."""

from __future__ import annotations

import signal
import sys

from .config import parse_args
from .trainer import run

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
  # CPU processes with gloo (tests, debugging)
  torchrun --nproc-per-node 2 train.py --device cpu --size tiny --data digits --steps 100
  # continue after a crash or preemption (newest valid checkpoint in --out)
  python train.py --preset digits --resume

Run folder (--out): checkpoints/step_*/ (DCP; SIGTERM/SIGINT also save one), metrics.csv,
tensorboard/, samples/, loss.png, config.json.
"""


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv, prog="train.py", description=DESCRIPTION)
    summary = run(cfg)
    sig = summary.get("interrupted_by")
    if sig is not None:  # stopped by a signal after checkpointing: report it in the exit code
        return 128 + int(signal.Signals(sig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
