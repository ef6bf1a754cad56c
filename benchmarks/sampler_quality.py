"""Quality per model call of inrflow's samplers on a digits or shapes demo checkpoint
(docs/SAMPLING.md).

For every sampler setting and CFG scale, ``--num`` class-balanced samples are drawn in one
batch from the same seed and scored with the demo's own judge; the NFE is what the sampler
reports. Digits: classifier accuracy and the Fréchet distance in the classifier's feature space
(:mod:`inrflow.metrics.digits`). Shapes (point clouds): the score of the demo's final samples,
``ShapesDataset.evaluate_samples`` (recognition by the shape classifier, and the mean per-class
Chamfer 1-NNA against fresh held-out real shapes). The reference quality is Euler with 100
steps, the authors' default; its spread over ``--noise-seeds`` seeds is the metric's noise.
On digits the solver's own cost per dopri5 step is measured against a model call on the same
state.

    python benchmarks/sampler_quality.py --ckpt runs/digits --cfg 1.5 --out q15.json
    python benchmarks/sampler_quality.py --plot q1.json q15.json q3.json --png quality.png
    python benchmarks/sampler_quality.py --ckpt runs/digits --cfg 1.5 --grids samples.png
    python benchmarks/sampler_quality.py --ckpt runs/shapes --cfg 1.5 --num 140 --noise-seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from inrflow.checkpoints import load_ema_model, stored_dataset_info
from inrflow.generation import generate
from inrflow.metrics.digits import digits_metrics
from inrflow.sampling import DOPRI5_ATOL, DOPRI5_RTOL, SolverStats, integrate

# (label, method, {steps | atol/rtol}, time_shift)
SETTINGS: list[tuple[str, str, list[dict[str, Any]], float]] = [
    ("euler", "euler", [{"steps": n} for n in (4, 6, 8, 12, 16, 25, 50, 100)], 1.0),
    ("euler, shift 0.5", "euler", [{"steps": n} for n in (4, 8, 12, 16, 25)], 0.5),
    ("euler, shift 3", "euler", [{"steps": n} for n in (4, 8, 12, 16, 25)], 3.0),
    ("heun", "heun", [{"steps": n} for n in (2, 3, 4, 6, 8, 12)], 1.0),
    ("dopri5", "dopri5", [{"atol": a, "rtol": a} for a in (1e-1, 3e-2, 1e-2, 1e-3)], 1.0),
    ("sde", "sde", [{"steps": n} for n in (10, 25, 50, 100)], 1.0),
]
# the point-cloud demo: a slower model call, so fewer points per sampler
SHAPES_SETTINGS: list[tuple[str, str, list[dict[str, Any]], float]] = [
    ("euler", "euler", [{"steps": n} for n in (2, 3, 4, 6, 10, 25, 50, 100)], 1.0),
    ("euler, shift 3", "euler", [{"steps": 25}], 3.0),
    ("heun", "heun", [{"steps": n} for n in (5, 12)], 1.0),
    ("dopri5", "dopri5", [{"atol": a, "rtol": a} for a in (1e-1, 1e-2)], 1.0),
    ("sde", "sde", [{"steps": n} for n in (25, 50, 100)], 1.0),
]


class Judge:
    """A demo's scores of ``[num, Q, c]`` samples asked for ``labels``: ``up`` (higher is
    better, a fraction of the samples) and ``down`` (lower is better), with display names."""

    up: tuple[str, str] = ("accuracy", "accuracy")
    down: tuple[str, str] = ("fd", "FD-digits")
    classes = 10
    settings = SETTINGS
    name = "digits demo"

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def __call__(self, out: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        m = digits_metrics(out.reshape(len(out), 8, 8), labels, value_range=(-1.0, 1.0))
        return {"accuracy": m["digits-accuracy"], "fd": m["FD-digits"]}


class ShapesJudge(Judge):
    """The shapes demo's final score (``final_scores.json`` of a run): recognition, and the mean
    over classes of the Chamfer 1-NNA (percent, ideal 50) against fresh held-out shapes."""

    up = ("recognition", "recognition")
    down = ("nna", "1-NNA-CD (class mean, %)")
    classes = 7
    settings = SHAPES_SETTINGS
    name = "shapes demo"

    def __call__(self, out: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from inrflow.data.demo import ShapesDataset

        info = stored_dataset_info(self.meta)
        rotate = bool(self.meta.get("train_config", {}).get("rotate", False))
        m = ShapesDataset(int(info["shape"][0]), rotate=rotate).evaluate_samples(out, labels)
        return {"recognition": m["recognition"], "nna": m["1-NNA-CD_mean"], "scores": m}


def judge_for(meta: dict[str, Any]) -> Judge:
    return (
        ShapesJudge(meta)
        if stored_dataset_info(meta).get("domain") == "pointcloud"
        else Judge(meta)
    )


def judge_of(res: dict[str, Any]) -> type[Judge]:
    return ShapesJudge if res.get("judge") == ShapesJudge.name else Judge


def solver_kwargs(method: str, kw: dict[str, Any], shift: float) -> dict[str, Any]:
    """``generate``'s solver arguments for one setting of the tables (``steps`` for the
    fixed-step methods, ``atol``/``rtol`` for dopri5)."""
    return dict(
        method=method,
        steps=kw.get("steps", 1),
        atol=kw.get("atol", DOPRI5_ATOL),
        rtol=kw.get("rtol", DOPRI5_RTOL),
        time_shift=shift,
    )


def run_one(model, judge: Judge, num: int, cfg: float, method: str, kw: dict, shift: float, seed):
    """Draw ``num`` samples with one setting; their metrics, NFE and wall time."""
    stats = SolverStats()
    labels = torch.arange(num) % judge.classes
    t0 = time.perf_counter()
    out = generate(
        model,
        stored_dataset_info(judge.meta),
        num,
        labels=labels,
        cfg_scale=cfg,
        **solver_kwargs(method, kw, shift),
        seed=seed,
        batch_size=num,
        progress=False,
        stats=stats,
    )
    wall = time.perf_counter() - t0
    return {
        **judge(out, labels),
        "nfe": stats.nfe,
        "rejected": stats.rejected,
        "wall_s": round(wall, 3),
    }


def solver_overhead(model, num: int) -> dict[str, float]:
    """Seconds per dopri5 step of the solver alone (a free velocity) and of a model call."""
    x = torch.randn(num, 64, 1)
    zero = torch.zeros_like(x)
    stats = SolverStats()
    t0 = time.perf_counter()
    for _ in range(20):
        integrate(lambda s, t: zero - 0.1 * s, x, 0, "dopri5", atol=1e-6, rtol=1e-6, stats=stats)
    solver = (time.perf_counter() - t0) / (stats.steps + stats.rejected)
    coords = torch.rand(num, 64, 2)
    t = torch.full((num,), 0.5)
    labels = torch.arange(num) % 10
    with torch.no_grad():
        model(coords, x, t, coords, x, labels=labels)
        t0 = time.perf_counter()
        for _ in range(10):
            model(coords, x, t, coords, x, labels=labels)
    call = (time.perf_counter() - t0) / 10
    return {"solver_s_per_step": solver, "model_s_per_call": call, "stages_per_step": 6}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    model, manifest, ckpt = load_ema_model(args.ckpt)
    judge = judge_for(manifest)
    up, down = judge.up[0], judge.down[0]
    res: dict[str, Any] = {
        "judge": judge.name,
        "checkpoint": str(ckpt),
        "step": manifest["step"],
        "num_samples": args.num,
        "threads": 1,
        "rows": [],
        "reference": {},
    }
    for cfg in args.cfg:
        ref = [
            run_one(model, judge, args.num, cfg, "euler", {"steps": 100}, 1.0, s)
            for s in range(args.noise_seeds)
        ]
        res["reference"][str(cfg)] = {"runs": ref}
        for key in (up, down):
            res["reference"][str(cfg)][f"{key}_mean"] = statistics.mean(r[key] for r in ref)
            res["reference"][str(cfg)][f"{key}_std"] = statistics.stdev(r[key] for r in ref)
        print(f"CFG {cfg}: Euler-100 over {args.noise_seeds} seeds {res['reference'][str(cfg)]}")
        for label, method, grid, shift in judge.settings:
            for kw in grid:
                if seeded := (method == "euler" and kw.get("steps") == 100 and shift == 1.0):
                    r = dict(ref[0])  # the reference's seed 0 is this row
                else:
                    r = run_one(model, judge, args.num, cfg, method, kw, shift, 0)
                r.update(cfg=cfg, setting=label, method=method, shift=shift, **kw)
                res["rows"].append(r)
                print(json.dumps(r) + (" (reference seed 0)" if seeded else ""), flush=True)
                Path(args.out).write_text(json.dumps(res, indent=1) + "\n")  # partial results
    if judge.classes == 10:
        res["overhead"] = solver_overhead(model, args.num)
        print(res["overhead"])
    return res


def plot(res: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judge = judge_of(res)
    cfgs = sorted({r["cfg"] for r in res["rows"]})
    fig, axes = plt.subplots(2, len(cfgs), figsize=(5.5 * len(cfgs), 7.5), squeeze=False)
    for j, cfg in enumerate(cfgs):
        ref = res["reference"][str(cfg)]
        for i, (key, name) in enumerate((judge.down, judge.up)):
            ax = axes[i][j]
            for label, *_ in judge.settings:
                rows = [r for r in res["rows"] if r["cfg"] == cfg and r["setting"] == label]
                rows.sort(key=lambda r: (r["nfe"], -r.get("atol", 0.0)))
                ax.plot([r["nfe"] for r in rows], [r[key] for r in rows], "o-", label=label, ms=4)
            m, s = ref[f"{key}_mean"], ref[f"{key}_std"]
            ax.axhspan(m - 2 * s, m + 2 * s, color="grey", alpha=0.25, label="Euler-100 ± 2 std")
            ax.axvline(25, color="k", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("NFE (model calls)")
            ax.set_ylabel(name)
            ax.set_title(f"{name}, CFG {cfg:g}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{judge.name} ({res['num_samples']} samples per point), quality per NFE")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


GRID_SETTINGS = [  # (title, method, kw, shift): the reference and each method's fast point
    ("euler, 100 steps (NFE 100)", "euler", {"steps": 100}, 1.0),
    ("euler, 16 steps (NFE 16)", "euler", {"steps": 16}, 1.0),
    ("euler, shift 3, 12 steps (NFE 12)", "euler", {"steps": 12}, 3.0),
    ("heun, 3 steps (NFE 6)", "heun", {"steps": 3}, 1.0),
    ("heun, 12 steps (NFE 24)", "heun", {"steps": 12}, 1.0),
    ("dopri5, atol=rtol=0.1", "dopri5", {"atol": 0.1, "rtol": 0.1}, 1.0),
    ("sde, 10 steps (NFE 10)", "sde", {"steps": 10}, 1.0),
]


def grids(ckpt: str, cfg: float, png: Path, num: int = 30) -> None:
    """One row of ``num`` samples (same seed, labels 0..9 cycled) per setting of GRID_SETTINGS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(1)
    model, meta, _ = load_ema_model(ckpt)
    labels = torch.arange(num) % 10
    fig, axes = plt.subplots(len(GRID_SETTINGS), 1, figsize=(num * 0.32, len(GRID_SETTINGS) * 0.75))
    for ax, (title, method, kw, shift) in zip(axes, GRID_SETTINGS, strict=True):
        x = generate(
            model,
            meta["dataset"],
            num,
            labels=labels,
            cfg_scale=cfg,
            **solver_kwargs(method, kw, shift),
            batch_size=num,
            progress=False,
        ).reshape(num, 8, 8)
        row = torch.cat([torch.nn.functional.pad(im, (0, 1), value=1.0) for im in x], dim=1)
        ax.imshow(row.clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def reached(res: dict[str, Any]) -> str:
    """Per setting and CFG, the fewest NFE whose FD (1-NNA) is at most the Euler-100 mean + 2 std
    and whose accuracy (recognition) is at least its mean - 2 max(std, 1 / num_samples)."""
    judge = judge_of(res)
    up, down = judge.up[0], judge.down[0]
    lines = [
        f"| sampler | CFG | fewest NFE at Euler-100 quality | {judge.down[1]} | {judge.up[1]} |",
        "|---" * 5 + "|",
    ]
    for cfg in sorted({r["cfg"] for r in res["rows"]}):
        ref = res["reference"][str(cfg)]
        down_max = ref[f"{down}_mean"] + 2 * ref[f"{down}_std"]
        up_min = ref[f"{up}_mean"] - 2 * max(ref[f"{up}_std"], 1 / res["num_samples"])
        for label, *_ in judge.settings:
            rows = [r for r in res["rows"] if r["cfg"] == cfg and r["setting"] == label]
            ok = [r for r in rows if r[down] <= down_max and r[up] >= up_min]
            best = min(ok, key=lambda r: r["nfe"]) if ok else None
            cell = (
                f"{best['nfe']} | {best[down]:.2f} | {best[up]:.3f}"
                if best
                else "not reached | - | -"
            )
            lines.append(f"| {label} | {cfg:g} | {cell} |")
    return "\n".join(lines)


def table(res: dict[str, Any]) -> str:
    """Markdown rows: setting, CFG, NFE, accuracy (recognition), FD (1-NNA)."""
    judge = judge_of(res)
    up, down = judge.up[0], judge.down[0]
    lines = [
        f"| sampler | setting | CFG | NFE | {judge.up[1]} | {judge.down[1]} |",
        "|---" * 6 + "|",
    ]
    for r in sorted(res["rows"], key=lambda r: (r["cfg"], r["setting"], r["nfe"])):
        knob = f"atol=rtol={r['atol']:g}" if "atol" in r else f"{r['steps']} steps"
        lines.append(
            f"| {r['setting']} | {knob} | {r['cfg']:g} | {r['nfe']} | {r[up]:.3f} | {r[down]:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="a digits or shapes run or checkpoint folder")
    p.add_argument("--out", default="sampler_quality.json")
    p.add_argument("--num", type=int, default=200, help="samples per point (class-balanced)")
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--noise-seeds", type=int, default=4, help="seeds of the Euler-100 reference")
    p.add_argument(
        "--plot", nargs="+", help="results JSONs (merged) to plot and tabulate instead of measuring"
    )
    p.add_argument("--png", default="sampler_quality.png")
    p.add_argument("--grids", help="write sample rows of GRID_SETTINGS (at --cfg) to this PNG")
    args = p.parse_args()
    if args.grids:
        grids(args.ckpt, args.cfg[-1], Path(args.grids))
        return
    if args.plot:
        parts = [json.loads(Path(f).read_text()) for f in args.plot]
        res = parts[0]
        for more in parts[1:]:
            res["rows"] += more["rows"]
            res["reference"].update(more["reference"])
        plot(res, Path(args.png))
        print(reached(res))
        print()
        print(table(res))
        return
    res = measure(args)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
