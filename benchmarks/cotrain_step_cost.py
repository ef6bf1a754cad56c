"""Parameters and per-step cost of the co-trained model (``--preset cotrain``) beside the two
single-domain demo models (``--preset digits``, ``--preset shapes``).

One process, one thread; the four kinds of step (digits alone, shapes alone, the co-trained
model on a digits batch and on a shapes batch) are timed in turn, round after round, so that a
busy machine slows them alike. A step is forward, backward, gradient clipping and the fused
AdamW update on a batch collated beforehand (data loading and the OT pairing are not timed: they
are the same for both). Prints a JSON summary (median and fastest step of each kind, and the
steps of the demo runs times the medians); ``--out`` also writes it.

    python benchmarks/cotrain_step_cost.py --rounds 30
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

from inrflow.data import StreamSampler, build_loader
from inrflow.data.schedule import DomainSchedule
from inrflow.domains import build_dataset, domain_for
from inrflow.flow import FlowDraws, cicfm_loss
from inrflow.model import INRFlow, MultiDomainINRFlow, count_parameters
from inrflow.train import parse_args
from inrflow.train.cotrain import default_weights


def batches(options, num: int) -> tuple[list[dict], object]:
    ds = build_dataset(options.data, task=options.task, split="train", **options.data_options())
    domain = domain_for(options.task or ds.domain)
    config = domain.model_config(options, ds)
    sampler = StreamSampler(len(ds), options.batch_size, seed=0)
    loader = build_loader(ds, sampler, domain.collate(options, config.num_classes))
    it = iter(loader)
    out = []
    for _ in range(num):
        b = next(it)
        b.pop("skipped", None)
        b.pop("skipped_index", None)
        out.append(b)
    return out, config


def step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = cicfm_loss(
        model,
        batch.get("coords"),
        batch["values"],
        FlowDraws.from_batch(batch),
        batch.get("labels"),
        cond=batch.get("cond"),
    )
    loss.backward()
    params = [p for p in optimizer.param_groups[0]["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, 2.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    co = parse_args(["--preset", "cotrain"])
    single = {n: parse_args(["--preset", n]) for n in co.domain_names()}
    data, configs, co_configs = {}, {}, {}
    for name in co.domain_names():
        data[name], configs[name] = batches(single[name], 8)
        _, co_configs[name] = batches(co.domain_options(name), 1)
    torch.manual_seed(0)
    models = {n: INRFlow(c).train() for n, c in configs.items()}
    multi = MultiDomainINRFlow(co_configs).train()
    opt = {n: torch.optim.AdamW(m.parameters(), fused=True) for n, m in models.items()}
    # as the trainer: one AdamW per domain over the parameters its steps train
    named = dict(multi.named_parameters())
    multi_opt = {
        n: torch.optim.AdamW([named[k] for k in sorted(multi.trained_parameters(n))], fused=True)
        for n in co.domain_names()
    }
    times: dict[str, list[float]] = {}
    for r in range(args.warmup + args.rounds):
        for name in co.domain_names():
            batch = data[name][r % len(data[name])]
            t_single = step(models[name], opt[name], batch)
            t_co = step(functools.partial(multi, domain=name), multi_opt[name], batch)
            if r >= args.warmup:
                times.setdefault(f"{name}/single", []).append(t_single)
                times.setdefault(f"{name}/cotrained", []).append(t_co)
    median = {k: statistics.median(v) for k, v in times.items()}
    steps = DomainSchedule(default_weights(co)).counts(co.steps)
    run = {
        kind: sum(steps[n] * median[f"{n}/{kind}"] for n in steps)
        for kind in ("single", "cotrained")
    }
    result = {
        "params": {
            **{f"{n}/single": count_parameters(m) for n, m in models.items()},
            "sum_of_single": sum(count_parameters(m) for m in models.values()),
            "cotrained": count_parameters(multi),
        },
        "median_step_ms": {k: round(v * 1e3, 2) for k, v in median.items()},
        # on a shared machine the fastest of many steps is the least disturbed one
        "min_step_ms": {k: round(min(v) * 1e3, 2) for k, v in times.items()},
        "steps_per_domain": steps,
        "run_seconds_from_medians": {k: round(v, 1) for k, v in run.items()},
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
