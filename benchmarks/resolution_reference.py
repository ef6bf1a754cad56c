"""How far the any-resolution yardstick can reward native sampling: a real high-resolution
reference, where the digits have none.

sklearn's digits exist only at 8 x 8, so ``evaluate.py --compare-upsampling`` scores higher
resolutions against real digits upsampled bicubically, which favours the bicubic baseline by
construction. This script builds the yardstick again on digits that *do* exist at every
resolution: glyphs of Pillow's embedded scalable font, each instance with its own size, offset,
stroke, rotation and shear, rendered at 128 x 128 and area-averaged to any side. A classifier of
the same kind as the digits judge (sklearn MLP, 64 ReLU units) is trained on real renders at the
high side ``R``; the Fréchet distance of its features against fresh real renders at ``R`` is
the figure.

Rows without a model: fresh real renders at ``R`` (the sampling floor of the figure), and
the same instances rendered at the base side and upsampled bicubically, bilinearly and by
nearest neighbour. If bicubic upsampling of real base images already scores at
the floor, no sampler can beat interpolation on this figure through detail, only through better
base content. With ``--ckpt`` (a model trained at the base side on ``--write-train``'s folder)
the rows of ``evaluate.py --compare-upsampling`` follow: its base samples upsampled, and native
sampling at ``R`` (``join``, at ``--join-times`` too, and per-query ``noise``); ``--picture``
draws ten of each row.

    python benchmarks/resolution_reference.py --base 8 --size 16      # no model, ~1 min
    # a model trained at the pixel centres of 8x8 glyphs
    python benchmarks/resolution_reference.py --base 8 --write-train runs/glyphs8
    python train.py --preset digits --data runs/glyphs8 --out runs/glyph_model --no-resume
    python benchmarks/resolution_reference.py --base 8 --size 16 --ckpt runs/glyph_model \\
        --join-times 0.9,0.7,0.5,0.3
    # one trained at continuous coordinates of the 32x32 renders, 8x8 pairs an item
    python benchmarks/resolution_reference.py --write-train runs/glyphs32 --write-side 32
    python train.py --preset digits --data runs/glyphs32 --resolution 8 \\
        --field-resolution 32 --num-context 64 --num-queries 64 --model max_log2=5 \\
        --steps 6000 --out runs/glyph_field --no-resume
    python benchmarks/resolution_reference.py --base 8 --size 32 --ckpt runs/glyph_field \\
        --join-times 0.5,0.1 --picture glyphs32.png

docs/RESOLUTION.md records the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inrflow.metrics.digits import upsample_digits

RENDER = 128  # side of the rendering canvas; every side used is area-averaged from it


def render_glyphs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` digit glyphs (labels ``i % 10``) as float64 ``[count, 128, 128]`` in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = []
    for label in labels:
        font = ImageFont.load_default(size=int(rng.uniform(70, 100)))
        im = Image.new("L", (RENDER, RENDER), 0)
        dx, dy = rng.uniform(-10, 10, 2)
        ImageDraw.Draw(im).text(
            (RENDER / 2 + dx, RENDER / 2 + dy),
            str(label),
            font=font,
            fill=255,
            anchor="mm",
            stroke_width=int(rng.integers(0, 6)),
            stroke_fill=255,
        )
        im = im.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC)
        shear = rng.uniform(-0.25, 0.25)
        im = im.transform(
            (RENDER, RENDER),
            Image.AFFINE,
            (1, shear, -shear * RENDER / 2, 0, 1, 0),
            resample=Image.BICUBIC,
        )
        images.append(np.asarray(im, dtype=np.float64) / 255.0)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(labels)


def area(images: torch.Tensor, side: int) -> torch.Tensor:
    """``[N, H, W]`` -> ``[N, side, side]`` by area averaging (what a camera of that
    resolution records)."""
    return F.adaptive_avg_pool2d(images.unsqueeze(1), side)[:, 0]


class Judge:
    """An MLP trained on real renders at ``side`` (the digits judge's kind), with the Fréchet
    distance of its hidden features against a fixed set of fresh real renders."""

    def __init__(self, side: int, train: int = 3000, refs: int = 1000) -> None:
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        from inrflow.metrics.frechet import feature_statistics

        images, labels = render_glyphs(train, seed=1)
        x = area(images, side).reshape(train, -1).numpy()
        n = round(0.8 * train)
        self.clf = MLPClassifier((64,), solver="lbfgs", alpha=1e-2, max_iter=1000, random_state=0)
        with threadpool_limits(1):
            self.clf.fit(x[:n], labels[:n].numpy())
        self.test_accuracy = float((self.clf.predict(x[n:]) == labels[n:].numpy()).mean())
        ref, _ = render_glyphs(refs, seed=2)
        self.side = side
        self.ref = feature_statistics(self._features(area(ref, side)))

    def _features(self, images: torch.Tensor) -> np.ndarray:
        x = images.reshape(len(images), -1).double().numpy()
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """FD and accuracy of ``[N, side, side]`` images in [0, 1]."""
        from inrflow.metrics.frechet import feature_statistics, frechet_distance

        fd = frechet_distance(*feature_statistics(self._features(images)), *self.ref)
        pred = self.clf.predict(images.reshape(len(images), -1).double().numpy())
        return {"FD": fd, "accuracy": float((pred == labels.numpy()).mean())}


def speckle(images: torch.Tensor, base: int) -> float:
    """:func:`inrflow.metrics.images.upsampling_residual` of ``[N, H, W]`` images in [0, 1]:
    for real renders, the detail above ``base`` that a sampler should reproduce."""
    from inrflow.metrics.images import upsampling_residual

    return upsampling_residual(images.unsqueeze(1), (base, base), value_range=(0.0, 1.0))


def write_train(folder: Path, side: int, count: int) -> None:
    """A folder of ``count`` PNGs at ``side``, one subfolder per class, for ``train.py --data``
    (read at the base side, or above it with ``--field-resolution``)."""
    from PIL import Image

    images, labels = render_glyphs(count, seed=0)
    for i, (im, label) in enumerate(zip(area(images, side), labels, strict=True)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        pixels = (im.numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / str(int(label)) / f"{i:05d}.png")
    print(f"{count} glyphs at {side}x{side} in {folder}")


def model_rows(
    args: argparse.Namespace, judge: Judge, shown: dict[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """``evaluate.py --compare-upsampling``'s rows for a checkpoint trained at ``--base``;
    each row's first ten images (one per digit) go to ``shown``."""
    from inrflow.checkpoints import load_checkpoint_model
    from inrflow.generation import sample_from_model

    model, meta = load_checkpoint_model(args.ckpt, torch.device("cpu"))
    kw = dict(steps=args.steps, cfg_scale=args.cfg_scale, batch_size=100, seed=0, progress=False)
    low, labels = sample_from_model(model, meta, args.num, resolution=(args.base,) * 2, **kw)

    def unit(x: torch.Tensor) -> torch.Tensor:  # [N, 1, H, W] in [-1, 1] -> [N, H, W] in [0, 1]
        return ((x[:, 0].double() + 1) / 2).clamp(0, 1)

    rows = {}
    for mode in ("bicubic", "bilinear"):
        up = upsample_digits(unit(low), args.size, mode)
        rows[f"{mode} of base samples"] = judge.score(up, labels)
        shown[f"{mode} of base samples"] = up[:10]
    runs = [("native, join (default)", {})]
    runs += [(f"native, join at t = {j:g}", {"join_time": j}) for j in args.join_times]
    runs += [("native, per-query noise", {"resolution_mode": "noise"})]
    for name, extra in runs:
        x, _ = sample_from_model(model, meta, args.num, resolution=(args.size,) * 2, **kw, **extra)
        rows[name] = judge.score(unit(x), labels)
        rows[name]["speckle"] = speckle(unit(x), args.base)
        shown[name] = unit(x)[:10]
    return rows


def save_picture(shown: dict[str, torch.Tensor], path: Path) -> None:
    """One row of ten images (digits 0-9) per entry of ``shown``, in its order."""
    from inrflow.data.io import save_image_grid

    stack = torch.cat(list(shown.values())).float()  # [R*10, H, W] in [0, 1]
    side = stack.shape[-1]
    values = (stack * 2 - 1).reshape(len(stack), side * side, 1)
    save_image_grid(values, (side, side), path, nrow=10, scale=max(1, 64 // side))
    print(f"picture (rows: {', '.join(shown)}): {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=int, default=16, help="training side")
    p.add_argument("--size", type=int, default=32, help="the higher side scored")
    p.add_argument("--write-train", type=Path, help="write a training folder and exit")
    p.add_argument(
        "--write-side",
        type=int,
        help="side of --write-train's images (default: --base; larger for --field-resolution)",
    )
    p.add_argument("--count", type=int, default=3000, help="glyphs in --write-train's folder")
    p.add_argument("--ckpt", help="a model trained at --base: add its rows")
    p.add_argument("--num", type=int, default=300, help="samples per model row")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--join-times", type=lambda s: [float(t) for t in s.split(",")], default=[])
    p.add_argument("--picture", type=Path, help="write the rows' first ten images as a PNG")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.write_train:
        write_train(args.write_train, args.write_side or args.base, args.count)
        return
    judge = Judge(args.size)
    # fresh instances (not the judge's references): at the high side itself, then from the base
    real, labels = render_glyphs(1000, seed=3)
    high = area(real, args.size)
    rows = {f"real {args.size}x{args.size}": judge.score(high, labels)}
    rows[f"real {args.size}x{args.size}"]["speckle"] = speckle(high, args.base)
    shown = {f"real {args.size}x{args.size}": high[:10]}
    for mode in ("bicubic", "bilinear", "nearest"):
        up = upsample_digits(area(real, args.base), args.size, mode)
        rows[f"real {args.base}x{args.base}, {mode}"] = judge.score(up, labels)
    if args.ckpt:
        rows.update(model_rows(args, judge, shown))
    print(
        f"judge: MLP on real {args.size}x{args.size} renders, "
        f"held-out accuracy {judge.test_accuracy:.3f}"
    )
    width = max(map(len, rows))
    for name, row in rows.items():
        cells = "  ".join(f"{k} {v:8.3f}" for k, v in row.items())
        print(f"{name:<{width}}  {cells}", flush=True)
    if args.picture:
        save_picture(shown, args.picture)


if __name__ == "__main__":
    main()
