"""Exported models: weights as ``safetensors`` plus the architecture as JSON, loadable without
the trainer (no distributed checkpoint, no process group).

Layout of an exported folder::

    model.safetensors   the state dict (the EMA weights of a training run)
    config.json         {"format", "model_config": INRFlowConfig fields, "step", "dataset",
                         "train_config"}: what sampling needs besides the weights

``python -m inrflow.export --ckpt RUN --out DIR`` writes one from a training run;
:func:`load_pretrained` rebuilds the model from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RETIRED_FIELDS, INRFlowConfig
from .network import INRFlow

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "is_pretrained",
    "load_pretrained",
    "read_pretrained_config",
    "save_pretrained",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "inrflow-pretrained-1"


def is_pretrained(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an exported folder (both files present)."""
    p = Path(path)
    return (p / WEIGHTS_FILE).is_file() and (p / CONFIG_FILE).is_file()


def save_pretrained(
    model: nn.Module, out: str | os.PathLike, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict and config (plus ``meta``: step, dataset, train config)
    to folder ``out``; returns it. The model is left as it is (its tensors are copied to the
    CPU)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        **(meta or {}),
        "model_config": dataclasses.asdict(model.config),
    }
    tmp = out / (WEIGHTS_FILE + ".part")
    # clone: tensors that share storage (views, tied weights) are saved as separate copies
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.chmod(tmp, 0o644)  # safetensors writes 0600; the point of an export is to be shared
    os.replace(tmp, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str) + "\n")
    return out


def read_pretrained_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of exported folder ``path`` (raises with the reason if unusable)."""
    p = Path(path)
    if not is_pretrained(p):
        raise FileNotFoundError(
            f"{p}: not an exported model (needs {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    config = json.loads((p / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT or not isinstance(config.get("model_config"), dict):
        raise ValueError(f"{p / CONFIG_FILE}: not an inrflow export ({FORMAT})")
    return config


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> INRFlow:
    """The :class:`~inrflow.model.INRFlow` of exported folder ``path``, in eval mode on
    ``device``. Every saved tensor must fit the rebuilt model and every model tensor must be
    saved (strict)."""
    from safetensors.torch import load_file

    config = read_pretrained_config(path)
    fields = {f.name for f in dataclasses.fields(INRFlowConfig)}
    unknown = sorted(set(config["model_config"]) - fields - set(RETIRED_FIELDS))
    if unknown:
        raise ValueError(f"{path}: model config fields unknown to this inrflow: {unknown}")
    model = INRFlow(INRFlowConfig.from_dict(config["model_config"]))
    model.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval()
