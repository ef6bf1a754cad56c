"""Protein structures: atom positions as values at per-atom template features; samples are one
predicted structure per chain, scored against the true one (Cα lDDT and TM-score) and written
as PDB files with trace pictures (:mod:`inrflow.domains.folding`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inrflow.data import CoordinateDataset, ProteinDataset
from inrflow.data.proteins import _is_structure
from inrflow.model import INRFlow
from inrflow.nvtx import nvtx_range

from .base import DataOptions, Domain, RunOptions, SampleRequest, SampleRun
from .folding import evaluate_structures, report_table, spaced, structure_report

__all__ = ["SCORED_TRAIN_CHAINS", "SCORED_TRAIN_CHAINS_PERIODIC", "ProteinDomain"]

# training chains scored at the end of a protein run (all of the bundled set's 45), and at
# the periodic evaluations (--sample-every) that trace the learning curve
SCORED_TRAIN_CHAINS = 64
SCORED_TRAIN_CHAINS_PERIODIC = 12


# the sampler options a structure prediction takes (no resolution, no guidance)
_STRUCTURE_SOLVER = ("steps", "method", "time_shift", "atol", "rtol")


class ProteinDomain(Domain):
    """The bundled structures and folders of PDB/mmCIF files (``--task protein``: any path)."""

    name = "protein"
    bundled = ("proteins",)
    resume_keys = ("max_residues",)  # one latent per residue

    def holds(self, path: Path) -> bool:
        if path.is_file():
            return _is_structure(path.name)
        for _dirpath, _dirs, files in os.walk(path, followlinks=True):
            for f in files:
                if _is_structure(f):
                    return True
                if f.lower().endswith((".npy", ".npz", ".jpg", ".jpeg", ".png", ".bmp", ".webp")):
                    return False
        return False

    def build_dataset(self, spec: str, options: DataOptions, split: str) -> CoordinateDataset:
        return ProteinDataset(
            spec,
            max_residues=options.max_residues,
            residue_embeddings=options.residue_embeddings,
            split=split,
            frame=options.protein_frame,
            rotate=options.rotate,
        )

    def dataset_info(self, ds: CoordinateDataset) -> dict[str, Any]:
        info = super().dataset_info(ds)
        if isinstance(ds, ProteinDataset):
            info.update(
                max_residues=ds.max_residues,
                position_scale=ds.position_scale,
                residue_embeddings=ds.embeddings_path,
                frame=ds.frame,
                rotate=ds.rotate,
            )
        return info

    def fitted_fields(self, ds: CoordinateDataset) -> dict[str, Any]:
        """The atom-feature width; with structures, one latent per residue and the residue-type
        table."""
        fields: dict[str, Any] = {"coord_dim": ds.coord_dim}
        if isinstance(ds, ProteinDataset):
            fields.update(num_latents=ds.max_residues, residue_vocab=ds.residue_vocab)
        return fields

    def samples_at_end(self, options: RunOptions) -> bool:
        return True  # a protein run always scores its chains at the end

    def periodic(self, run: SampleRun) -> Path | None:
        return self._evaluate(run, f"step_{run.step:09d}", final=False)[0]

    def final(self, run: SampleRun) -> dict[str, Any]:
        folder, result = self._evaluate(run, "final", final=True)
        if folder is not None:
            result["samples"] = str(folder)
        return result

    default_out = "predicted"

    def sample_files(
        self,
        model: INRFlow,
        info: dict[str, Any],
        train: dict[str, Any],
        request: SampleRequest,
        log: Callable[[str], None],
    ) -> tuple[Path, torch.Tensor | None]:
        """One predicted structure per chain of ``request.structures`` (default: the run's
        held-out chains), scored against the true one (Cα lDDT, TM-score): PDB files and
        ``scores.json`` in the output folder."""
        source = request.structures or train.get("data", "proteins")
        ds = ProteinDataset(
            source,
            max_residues=info["max_residues"],
            split="all" if request.structures else "test",
            position_scale=info["position_scale"],
            residue_embeddings=info.get("residue_embeddings"),
            frame=info.get("frame", "file"),  # checkpoints from before the frame option
        )
        if ds.coord_dim != model.config.coord_dim:
            raise ValueError(
                f"the structures give {ds.coord_dim} feature channels, the model "
                f"takes {model.config.coord_dim}"
            )
        out = request.out or Path(self.default_out)
        log(f"{len(ds)} chains from {source}")
        solver = {k: v for k, v in request.solver.items() if k in _STRUCTURE_SOLVER}
        scores = evaluate_structures(
            model, ds, seed=request.seed, out_dir=out, stats=request.stats, **solver
        )
        if request.stats is not None:
            log(request.stats.describe())
        for name, sc in scores["chains"].items():
            print(
                f"  {name}: {sc['residues']} residues, Cα lDDT {sc['lddt_ca']:.3f}, "
                f"TM-score {sc['tm_score']:.3f}"
            )
        log(
            f"mean Cα lDDT {scores['lddt_ca']:.3f}, TM-score {scores['tm_score']:.3f}; "
            f"PDBs in {out}"
        )
        (out / "scores.json").write_text(json.dumps(scores, indent=1))
        return out, None

    def _evaluate(self, run: SampleRun, tag: str, final: bool) -> tuple[Path | None, dict]:
        """Sample one structure per held-out chain and per training chain (at most
        ``SCORED_TRAIN_CHAINS``, evenly spread; ``SCORED_TRAIN_CHAINS_PERIODIC`` before the
        end); score, write PDBs and trace pictures, and append the means to
        ``protein_scores.csv`` (the learning curve). At the end of the run the untrained model
        and the idealised chains are scored too: a model that learns beats them on its
        training chains."""
        ds, o = run.dataset, run.options
        most = SCORED_TRAIN_CHAINS if final else SCORED_TRAIN_CHAINS_PERIODIC
        splits: dict[str, tuple[Any, list[int] | None]] = {"training": (ds, spaced(len(ds), most))}
        heldout = ds.heldout() if ds.split == "train" else None
        if heldout is not None and len(heldout):
            splits["held-out"] = (heldout, None)
        untrained = None
        if final:
            torch.manual_seed(o.seed)  # the initial weights of this run (step 0)
            untrained = INRFlow(run.model.config).to(run.device).eval()
        folder = run.out / "samples" / tag
        t0 = time.perf_counter()
        with nvtx_range("sample"):
            report = structure_report(
                run.model,
                splits,
                untrained=untrained,
                steps=o.sample_steps,
                method=o.sample_method,
                seed=o.seed + 1,
                out_dir=folder,
            )
        seconds = time.perf_counter() - t0
        run.log(
            f"step {run.step}: structures sampled ({o.sample_method}, "
            f"{o.sample_steps} steps, {seconds:.0f} s); PDBs and traces in {folder}\n"
            + report_table(report, f"model (step {run.step})")
        )
        append_scores(run.out / "protein_scores.csv", run.step, report)
        result: dict[str, Any] = {}
        if final:
            main = report.get("held-out", report["training"])["model"]
            scores = {**main, "train": report["training"]["model"], "report": report}
            result.update(lddt_ca=main["lddt_ca"], tm_score=main["tm_score"])
            result["train_lddt_ca"] = report["training"]["model"]["lddt_ca"]
            result["sample_seconds"] = seconds
            (run.out / "final_scores.json").write_text(json.dumps(scores, indent=1))
        return folder, result


def append_scores(path: Path, step: int, report: dict[str, Any]) -> None:
    """One row per evaluation: step, then mean Cα lDDT and TM-score of the model per split."""
    cols = [f"{split}_{m}" for split in report for m in ("lddt_ca", "tm_score", "chains")]
    row = [str(step)]
    for split in report.values():
        s = split["model"]
        row += [f"{s['lddt_ca']:.4f}", f"{s['tm_score']:.4f}", str(len(s["chains"]))]
    new = not path.exists()
    with path.open("a") as fh:
        if new:
            fh.write(",".join(["step", *cols]) + "\n")
        fh.write(",".join(row) + "\n")
