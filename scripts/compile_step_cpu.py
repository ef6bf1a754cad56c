"""Eager vs whole-model compiled training step on the CPU, interleaved (docs/PERFORMANCE.md).

    OMP_NUM_THREADS=1 python scripts/compile_step_cpu.py SIZE RESOLUTION QUERIES BATCH ROUNDS
    e.g. python scripts/compile_step_cpu.py tiny 32 256 8 10

The trainer's model path (FSDP2 over one process, ``parallelize(compile=True)`` with Inductor)
and a step of loss, backward and fused AdamW (no clipping, no EMA). Eager and compiled steps
alternate, so a change in the machine's load hits both; prints the medians and their ratio.
"""

import statistics
import sys
import time

import torch

from inrflow.gpu_check import Plan, _one_step, _step_setup
from inrflow.memory import _batch
from inrflow.train.distributed import init_distributed


def main() -> None:
    size, res, q, b, rounds = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    plan = Plan(device="cpu", dry_run=False, size=size, resolution=res, queries=q)
    eager, eager_opt, _ = _step_setup(plan, 1, False, dist)
    comp, comp_opt, _ = _step_setup(plan, 1, True, dist)
    data = _batch(eager.config, b, res * res, q)
    for name, model, opt in (("eager", eager, eager_opt), ("compiled", comp, comp_opt)):
        t0 = time.perf_counter()
        _one_step(model, opt, data)
        print(f"{name} first step (compilation included): {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for name, model, opt in (("eager", eager, eager_opt), ("compiled", comp, comp_opt)):
            t0 = time.perf_counter()
            _one_step(model, opt, data)
            times[name].append(time.perf_counter() - t0)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"{size} {res}^2 q={q} b={b}: eager {e:.4f} s, compiled {c:.4f} s, ratio {e / c:.2f}x")
    for name, ts in times.items():
        print(name, [round(t, 4) for t in ts])
    dist.close()


if __name__ == "__main__":
    main()
