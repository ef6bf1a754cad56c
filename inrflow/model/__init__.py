"""INRFlow model: presets, ``build_model`` and ``count_parameters``."""

from __future__ import annotations

from .config import PAPER_PARAMS_M, INRFlowConfig, get_config, preset_names
from .latent_grouping import LatentGrouping, grid_coords, hash_assign, kmeans_pp
from .network import Encoded, INRFlow, count_parameters
from .pretrained import load_pretrained, save_pretrained

__all__ = [
    "PAPER_PARAMS_M",
    "Encoded",
    "INRFlow",
    "INRFlowConfig",
    "LatentGrouping",
    "build_model",
    "count_parameters",
    "get_config",
    "grid_coords",
    "hash_assign",
    "kmeans_pp",
    "load_pretrained",
    "preset_names",
    "save_pretrained",
]


def build_model(size: str, domain: str = "image", **overrides) -> INRFlow:
    """The ``size`` preset (tiny|S|B|L|XL) of ``domain`` (image|pointcloud|protein).

    ``overrides`` are :class:`INRFlowConfig` fields (e.g. ``num_classes=1000``). Works under
    ``with torch.device("meta"):`` (then call ``to_empty(device=...)`` and ``init_weights()``).
    """
    return INRFlow(get_config(size, domain, **overrides))
