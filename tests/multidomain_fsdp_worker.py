"""A few AdamW steps of a two-domain model under FSDP2, one domain per step (run by
``tests/test_model_multidomain_fsdp.py`` under torchrun, 1 or 2 gloo processes).

Writes to ``argv[1]`` (rank 0): the losses, the full parameters after every step and, per step,
the names of the parameters that had a gradient on this rank.
"""

from __future__ import annotations

import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from inrflow.model import MultiDomainINRFlow, get_config, grid_coords
from inrflow.train.distributed import init_distributed
from inrflow.train.optim import build_optimizer, clean_name
from inrflow.train.parallelize import parallelize

WIDTHS = dict(hidden=32, depth=2, heads=2, encoder_heads=2, time_freq_dim=32)
SCHEDULE = ("digits", "shapes", "digits", "digits", "shapes")
GLOBAL_BATCH = 4


def configs() -> dict:
    return {
        "digits": get_config("tiny", "image", value_dim=1, num_latents=4, num_classes=3, **WIDTHS),
        "shapes": get_config("tiny", "pointcloud", num_latents=8, num_classes=2, **WIDTHS),
    }


def global_batch(cfg, step: int) -> dict:
    """The step's whole batch, the same on every rank (each takes its rows)."""
    g = torch.Generator().manual_seed(step)
    b, n = GLOBAL_BATCH, 16
    values = torch.randn(b, n, cfg.value_dim, generator=g)
    coords = None if cfg.coords_are_values else grid_coords((4, 4)).expand(b, -1, -1).contiguous()
    return dict(
        coords=coords,
        values=values,
        target=torch.randn(b, n, cfg.value_dim, generator=g),
        t=torch.rand(b, generator=g),
        labels=torch.randint(0, cfg.num_classes, (b,), generator=g),
    )


def full_params(model) -> dict[str, torch.Tensor]:
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v.clone() for k, v in get_model_state_dict(model, options=opts).items()}


def main(out: str) -> None:
    d = init_distributed("cpu")
    torch.manual_seed(0)
    model = parallelize(MultiDomainINRFlow(configs()), d.mesh)
    model.train()
    # eps 1e-3: near-zero gradients (the zero-initialised gates) would otherwise turn rounding
    # differences between 1 and 2 processes into full-size Adam steps
    optimizer = build_optimizer(model, 1e-2, (0.9, 0.999), 1e-3, 0.0)
    rows = slice(d.rank * GLOBAL_BATCH // d.world, (d.rank + 1) * GLOBAL_BATCH // d.world)
    record = {"losses": [], "params": [full_params(model)], "with_grad": []}
    for step, name in enumerate(SCHEDULE):
        x = {
            k: v[rows] if v is not None else None
            for k, v in global_batch(model.configs[name], step).items()
        }
        pred = model(
            x["coords"], x["values"], x["t"], x["coords"], x["values"], x["labels"], domain=name
        )
        loss = (pred - x["target"]).square().mean()
        loss.backward()
        record["with_grad"].append(
            sorted(clean_name(n) for n, p in model.named_parameters() if p.grad is not None)
        )
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        (total,) = d.all_reduce_sum([float(loss)])
        record["losses"].append(total / d.world)
        record["params"].append(full_params(model))
    if d.is_main:
        torch.save(record, out)
    d.close()


if __name__ == "__main__":
    main(sys.argv[1])
