"""``python -m inrflow.export --ckpt RUN --out DIR``: a training run's EMA weights as
``safetensors`` plus the model config as JSON, for :func:`inrflow.model.load_pretrained`
(no trainer, no distributed checkpoint) and ``sample.py --ckpt DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inrflow.checkpoints import MANIFEST, load_ema_model
from inrflow.model.pretrained import save_pretrained

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inrflow.export", description=__doc__)
    p.add_argument(
        "--ckpt",
        required=True,
        help="a run folder (its newest valid checkpoint) or a step_* folder",
    )
    p.add_argument("--out", required=True, help="folder to write model.safetensors and config.json")
    p.add_argument(
        "--no-checksums", action="store_true", help="skip the CRC32 check of the checkpoint"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "checkpoints").exists() or (out / MANIFEST).exists():
        raise SystemExit(f"inrflow.export: {out} is a training run or checkpoint; export elsewhere")
    try:
        model, manifest, ckpt = load_ema_model(args.ckpt, "cpu", checksums=not args.no_checksums)
    except FileNotFoundError as exc:
        raise SystemExit(f"inrflow.export: {exc}") from None
    meta = {
        "step": manifest["step"],
        "source": str(ckpt),
        "weights": "ema",
        "dataset": manifest.get("dataset", {}),
        "train_config": manifest.get("train_config", {}),
    }
    save_pretrained(model, out, meta)
    print(f"[inrflow] exported {ckpt} (step {meta['step']}, EMA weights) to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
