"""Protein recipe experiments: how fast the demo model learns its training chains.

Trains the ``protein`` preset (with the changes given as JSON) on the bundled training chains
and scores one sampled structure per chain, for an evenly spread subset of the training chains,
every ``--every`` steps (mean Cα lDDT and TM-score; the same scoring as the trainer's). One
JSON line per run is appended to ``--results``. docs/DOMAINS.md records the runs::

    python benchmarks/protein_recipe.py rope_uniform --steps 600 --every 200 \\
        --cfg '{"time_dist": "uniform"}' --model '{"rope": true}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from inrflow.data.proteins import ProteinDataset
from inrflow.domains.folding import evaluate_structures, spaced
from inrflow.train.config import PRESETS, TrainConfig
from inrflow.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="run name (results line, run folder)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=200, help="score every N steps")
    p.add_argument("--chains", type=int, default=45, help="train on the first N training chains")
    p.add_argument("--eval-chains", type=int, default=12, help="training chains scored")
    p.add_argument("--cfg", default="{}", help="TrainConfig changes (JSON)")
    p.add_argument("--model", default="{}", help="model config changes (JSON)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--out", default="runs/protein_recipe")
    p.add_argument("--results", default="runs/protein_recipe/results.jsonl")
    a = p.parse_args()
    torch.set_num_threads(1)
    values = dict(PRESETS["protein"])
    values.update(json.loads(a.cfg))
    values["model"] = {**values["model"], **json.loads(a.model)}
    values.update(steps=a.steps, out=f"{a.out}/{a.name}", tensorboard=False, ckpt_every=0)
    cfg = TrainConfig(**values)
    ds = ProteinDataset("proteins", split="train", max_residues=cfg.max_residues)
    ds.indices = ds.indices[: a.chains]
    scored = ProteinDataset(
        "proteins", split="train", max_residues=cfg.max_residues, chains=ds.all_chains
    )
    scored.indices = [ds.indices[i] for i in spaced(len(ds.indices), a.eval_chains)]
    trainer = Trainer(cfg, dataset=ds)
    batches = iter(trainer.loader)
    train_s, losses, curve = 0.0, [], []

    def score() -> None:
        s = evaluate_structures(trainer.sample_model(), scored, steps=a.sample_steps, seed=1)
        recent = losses[-50:]
        loss = sum(recent) / len(recent) if recent else float("nan")
        curve.append((trainer.step, s["lddt_ca"], s["tm_score"], loss))
        print(
            f"{a.name} step {trainer.step}: lDDT {s['lddt_ca']:.3f} TM {s['tm_score']:.3f} "
            f"loss {loss:.4f} s/step {train_s / max(trainer.step, 1):.3f}",
            flush=True,
        )

    try:
        score()
        while trainer.step < a.steps:
            t0 = time.perf_counter()
            trainer.train_step(trainer._to_device(next(batches)))
            trainer.step += 1
            losses.append(trainer.read_steps()[-1].loss)  # read every step: the time includes it
            train_s += time.perf_counter() - t0
            if trainer.step % a.every == 0:
                score()
    finally:
        trainer.close()
    row = dict(name=a.name, cfg=a.cfg, model=a.model, chains=a.chains, params=trainer.num_params)
    row.update(s_per_step=train_s / max(trainer.step, 1), curve=curve)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
