"""Structure prediction with a protein INRFlow model: sample atom positions for chains, score
them against the true structures (Cα lDDT and TM-score), write PDB files.

The model is conditioned on the sequence only through the atom features (coordinates); the
values (positions) start as noise and are integrated to t = 1, so a prediction is one sample of
the model's distribution of structures for that sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from inrflow.data.proteins import ProteinDataset, write_pdb
from inrflow.metrics.protein import lddt, tm_score
from inrflow.sampling import sample

__all__ = [
    "CA_CA_DISTANCE",
    "evaluate_structures",
    "ideal_chain",
    "ideal_chain_scores",
    "plot_traces",
    "predict_structures",
    "report_table",
    "spaced",
    "structure_report",
]

CA_CA_DISTANCE = 3.8  # Å between consecutive Cα atoms (trans peptide bonds)


@torch.no_grad()
def predict_structures(
    model: torch.nn.Module,
    dataset: ProteinDataset,
    indices: list[int] | None = None,
    *,
    steps: int = 50,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 8,
    **solver: Any,
) -> list[dict[str, Any]]:
    """Sample a structure for each chain ``indices`` of ``dataset`` (default all); ``solver``:
    further options of :func:`inrflow.sampling.sample` (``time_shift``, ``atol``, ``rtol``,
    ``stats``).

    Returns one dict per chain: ``name``, ``pred`` / ``true`` ``[A, 3]`` Å for the chain's real
    atoms (of its centre window when cropped), ``ca`` (indices of the Cα atoms among them),
    and the example itself.
    """
    device = next(model.parameters()).device
    indices = list(range(len(dataset))) if indices is None else list(indices)
    g = torch.Generator(device).manual_seed(seed)
    out = []
    for s in range(0, len(indices), batch_size):
        exs = [dataset.example(i) for i in indices[s : s + batch_size]]
        coords = torch.stack([e["coords"] for e in exs]).to(device)
        pred = (
            sample(model, None, coords, steps, method, generator=g, progress=False, **solver)
            .cpu()
            .double()
            * dataset.position_scale
        )
        for j, (i, e) in enumerate(zip(indices[s : s + batch_size], exs, strict=True)):
            real = e["num_real"]
            out.append(
                {
                    "name": dataset.chain(i).name,
                    "index": i,
                    "pred": pred[j][:real].numpy(),
                    "true": e["xyz"],
                    "ca": e["ca_index"][e["ca_index"] >= 0],
                    "example": e,
                }
            )
    return out


def evaluate_structures(
    model: torch.nn.Module,
    dataset: ProteinDataset,
    indices: list[int] | None = None,
    *,
    steps: int = 50,
    method: str = "euler",
    seed: int = 0,
    out_dir: str | Path | None = None,
    plot: str | Path | None = None,
    plot_chains: int = 4,
    **solver: Any,
) -> dict[str, Any]:
    """Predict chains ``indices`` of ``dataset`` (default all) and score them: mean and
    per-chain Cα lDDT / TM-score. ``solver``: see :func:`predict_structures`.

    With ``out_dir``, writes ``<name>_pred.pdb`` and ``<name>_true.pdb`` for each chain; with
    ``plot``, a PNG of the first ``plot_chains`` predicted Cα traces on the true ones
    (:func:`plot_traces`).
    """
    preds = predict_structures(
        model, dataset, indices, steps=steps, method=method, seed=seed, **solver
    )
    if plot is not None:
        plot_traces(
            [(p["name"], p["pred"][p["ca"]], p["true"][p["ca"]]) for p in preds],
            plot,
            most=plot_chains,
        )
    per_chain = {}
    for p in preds:
        ca_pred, ca_true = p["pred"][p["ca"]], p["true"][p["ca"]]
        per_chain[p["name"]] = {
            "lddt_ca": float(lddt(ca_pred, ca_true)),
            "tm_score": float(tm_score(ca_pred, ca_true)),
            "residues": int(ca_true.shape[0]),
        }
        if out_dir is not None:
            c = dataset.chain(p["index"])
            atoms = p["example"]["atom_index"]
            names = [c.atom_names[a] for a in atoms]
            res = c.atom_residue[atoms]
            write_pdb(Path(out_dir) / f"{p['name']}_pred.pdb", p["pred"], names, c.residues, res)
            write_pdb(Path(out_dir) / f"{p['name']}_true.pdb", p["true"], names, c.residues, res)
    return _summary(per_chain)


def ideal_chain(num_residues: int, kind: str = "helix") -> np.ndarray:
    """Cα trace ``[L, 3]`` Å of an idealised chain with the right Cα–Cα spacing (~3.8 Å).

    ``straight``: residues every 3.8 Å on a line. ``helix``: the ideal α-helix (radius 2.3 Å,
    rise 1.5 Å and 100° per residue, which puts consecutive Cα 3.8 Å apart). They are the
    baselines a structure predictor must beat: a chain that knows only its bond lengths (and,
    for the helix, the commonest secondary structure) but nothing of the fold.
    """
    if num_residues < 1:
        raise ValueError(f"num_residues must be >= 1, got {num_residues}")
    i = np.arange(num_residues, dtype=np.float64)
    if kind == "straight":
        return np.stack([i * CA_CA_DISTANCE, 0 * i, 0 * i], axis=1)
    if kind == "helix":
        phi = np.deg2rad(100.0) * i
        return np.stack([2.3 * np.cos(phi), 2.3 * np.sin(phi), 1.5 * i], axis=1)
    raise ValueError(f"kind must be helix or straight, got {kind!r}")


def ideal_chain_scores(
    dataset: ProteinDataset, kind: str = "helix", indices: list[int] | None = None
) -> dict[str, Any]:
    """Mean and per-chain Cα lDDT / TM-score of :func:`ideal_chain` against chains ``indices``
    of ``dataset`` (default all; the window :func:`evaluate_structures` scores), in its
    format."""
    per_chain = {}
    for i in range(len(dataset)) if indices is None else indices:
        e = dataset.example(i)
        ca_true = e["xyz"][e["ca_index"][e["ca_index"] >= 0]]
        ca_pred = ideal_chain(ca_true.shape[0], kind)
        per_chain[dataset.chain(i).name] = {
            "lddt_ca": float(lddt(ca_pred, ca_true)),
            "tm_score": float(tm_score(ca_pred, ca_true)),
            "residues": int(ca_true.shape[0]),
        }
    return _summary(per_chain)


def _summary(per_chain: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over chains beside the per-chain scores."""
    return {
        "lddt_ca": float(np.mean([v["lddt_ca"] for v in per_chain.values()])),
        "tm_score": float(np.mean([v["tm_score"] for v in per_chain.values()])),
        "chains": per_chain,
    }


def spaced(count: int, most: int) -> list[int]:
    """At most ``most`` indices spread evenly over ``range(count)`` (all of them when fewer):
    a bounded, representative set of training chains to score at the end of a run."""
    if most < 1:
        raise ValueError(f"most must be >= 1, got {most}")
    if count <= most:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, most).round()})


def plot_traces(
    chains: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, most: int = 4
) -> Path | None:
    """Predicted Cα traces (coloured N to C) superposed on the true ones (grey), one panel per
    chain ``(name, ca_pred [L, 3], ca_true [L, 3])``, as a PNG; None without matplotlib.

    The prediction is moved by TM-score's best superposition, so the picture shows what the
    score rewards; the panel title gives both scores.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    chains = chains[:most]
    if not chains:
        raise ValueError("plot_traces: no chains to plot")
    fig = plt.figure(figsize=(3.2 * len(chains), 3.6), dpi=110)
    for k, (name, pred, true) in enumerate(chains):
        tm, rot, trans = tm_score(pred, true, return_transform=True)
        moved = (torch.as_tensor(pred, dtype=torch.float64) @ rot.T + trans).numpy()
        true = np.asarray(true, dtype=np.float64)
        ax = fig.add_subplot(1, len(chains), k + 1, projection="3d")
        ax.plot(*true.T, color="0.6", lw=1.2, label="true")
        colours = plt.cm.viridis(np.linspace(0, 1, len(moved)))
        for i in range(len(moved) - 1):
            ax.plot(*moved[i : i + 2].T, color=colours[i], lw=1.6)
        ax.set_title(f"{name}\nlDDT {lddt(pred, true):.2f}  TM {tm:.2f}", fontsize=9, pad=0)
        ax.set_box_aspect(None, zoom=1.35)
        ax.set_axis_off()
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.86, wspace=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


BASELINES = {
    "untrained": "untrained model",
    "helix": "ideal helix (3.8 Å)",
    "straight": "straight chain (3.8 Å)",
}


def structure_report(
    model: torch.nn.Module,
    splits: dict[str, tuple[ProteinDataset, list[int] | None]],
    *,
    untrained: torch.nn.Module | None = None,
    steps: int = 50,
    method: str = "euler",
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Scores of ``model`` on each split ``{name: (dataset, indices)}`` beside the baselines.

    Returns ``{split: {"model": scores, "untrained": ..., "helix": ..., "straight": ...}}``
    (scores as :func:`evaluate_structures`; ``untrained`` only when that model is given: the
    same architecture and seed before any step, sampled the same way). A model that learns
    must beat all three on the chains it trained on; the idealised chains show what the
    right bond lengths alone (and an α-helix) score. ``out_dir``: PDBs and a trace picture
    per split in ``out_dir/<split>/``.
    """
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (ds, indices) in splits.items():
        folder = None if out_dir is None else Path(out_dir) / name
        kw = dict(steps=steps, method=method, seed=seed)
        rows = {
            "model": evaluate_structures(
                model,
                ds,
                indices,
                **kw,
                out_dir=folder,
                plot=None if folder is None else folder / "traces.png",
            )
        }
        if untrained is not None:
            rows["untrained"] = evaluate_structures(untrained, ds, indices, **kw)
        for kind in ("helix", "straight"):
            rows[kind] = ideal_chain_scores(ds, kind, indices)
        report[name] = rows
    return report


def report_table(report: dict[str, dict[str, dict[str, Any]]], model: str = "model") -> str:
    """:func:`structure_report` as a text table: rows = model and baselines, columns = splits,
    cells = mean Cα lDDT / TM-score."""
    splits = list(report)
    head = ["Cα lDDT / TM-score"] + [
        f"{s} chains ({len(report[s]['model']['chains'])})" for s in splits
    ]
    rows = [head]
    for key, label in [("model", model), *BASELINES.items()]:
        if all(key in report[s] for s in splits):
            rows.append(
                [label]
                + [
                    f"{report[s][key]['lddt_ca']:.3f} / {report[s][key]['tm_score']:.3f}"
                    for s in splits
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
