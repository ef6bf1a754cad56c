"""The EMA model for sampling during and at the end of a run.

Sampling is the domain's (:meth:`~inrflow.domains.Domain.periodic`, ``final``); the trainer
only gathers the sharded EMA weights into a plain model on rank 0.
"""

from __future__ import annotations

import torch

from inrflow.model import INRFlow
from inrflow.model.config import INRFlowConfig

from .distributed import Dist
from .optim import EMA

__all__ = ["EMAModel"]


class EMAModel:
    """A plain (unsharded) copy of the model holding the EMA weights, built once on rank 0."""

    def __init__(self, config: INRFlowConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self._model: INRFlow | None = None

    def gather(self, ema: EMA, dist: Dist) -> INRFlow | None:
        """The EMA weights of now on rank 0, None elsewhere; a collective (every rank gathers
        its shards)."""
        full = ema.full_state(keep=dist.is_main)
        if not dist.is_main:
            return None
        if self._model is None:
            self._model = INRFlow(self.config).to(self.device).eval()
        params = dict(self._model.named_parameters())
        with torch.no_grad():
            for name, value in full.items():
                params[name].copy_(value)
        return self._model
