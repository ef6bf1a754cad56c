"""Bits per dimension of real and noise images under a digits checkpoint (docs/SAMPLING.md).

The checkpoint should be trained without the last ``--held-out`` digits (the demo trains on
all 1,797; ``--held-out 0`` then measures training digits only). Sets: held-out digits, as many
training digits, uniform noise images in [-1, 1], and held-out digits with their pixels
shuffled (same histogram, no digit structure). Exact divergence, Heun; a second step count
shows the integration error.

    python benchmarks/digits_likelihood.py --ckpt runs/digits_holdout --held-out 297
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from inrflow.checkpoints import load_ema_model
from inrflow.data.digits import load_real_digits
from inrflow.model import grid_coords
from inrflow.sampling import SolverStats, bits_per_dim, log_likelihood


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--held-out", type=int, default=297)
    p.add_argument("--num", type=int, default=40, help="images per set")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="Heun steps")
    p.add_argument("--out", default="digits_likelihood.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, manifest, _ = load_ema_model(args.ckpt)
    images, labels = load_real_digits()
    x = torch.from_numpy(images).float().reshape(len(images), 64, 1) * 2 - 1
    y = torch.from_numpy(labels)
    g = torch.Generator().manual_seed(0)
    n = args.num
    stride = max(1, args.held_out // n) if args.held_out else 1
    held = slice(len(x) - args.held_out, None, stride) if args.held_out else slice(0, 0)
    sets = {"training digits": (x[: n * 7 : 7], y[: n * 7 : 7])}
    if args.held_out:
        hx, hy = x[held][:n], y[held][:n]
        sets["held-out digits"] = (hx, hy)
        sets["held-out, pixels shuffled"] = (hx[:, torch.randperm(64, generator=g)], hy)
        sets["uniform noise"] = (torch.rand(hx.shape, generator=g) * 2 - 1, hy)
    coords = grid_coords((8, 8))
    res = {"checkpoint": args.ckpt, "step": manifest["step"], "num": n, "rows": []}
    for steps in args.steps:
        for name, (v, lab) in sets.items():
            stats = SolverStats()
            t0 = time.perf_counter()
            ll = log_likelihood(model, coords, v, lab, method="heun", steps=steps, stats=stats)
            bpd = bits_per_dim(ll, 64)
            row = {
                "set": name,
                "heun_steps": steps,
                "nfe": stats.nfe,
                "bpd_mean": float(bpd.mean()),
                "bpd_std": float(bpd.std()),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
