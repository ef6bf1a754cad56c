"""The inrflow ops: C++/CUDA kernels with pure-PyTorch references.

Each op validates its inputs, then runs on the compiled extension ``inrflow._C`` when it has a
kernel for the input's device, else on :mod:`inrflow.ops.reference`. ``use_backend(name)`` and
the ``INRFLOW_BACKEND`` environment variable force ``"reference"`` or ``"extension"``.
"""

from __future__ import annotations

import torch

from inrflow import _extension
from inrflow.ops import reference  # noqa: F401 - inrflow.ops.reference is public
from inrflow.ops._backend import get_backend, use_backend
from inrflow.ops.assign import grid_assign, grid_centers, group_layout, nearest_assign
from inrflow.ops.attention import grouped_cross_attention
from inrflow.ops.cpu_cache import (
    cpu_output_cache,
    cpu_output_cache_stats,
    set_cpu_output_cache_limit,
)
from inrflow.ops.fourier import fourier_embed, fourier_frequencies

__all__ = [
    "cpu_output_cache",
    "cpu_output_cache_stats",
    "extension_available",
    "fourier_embed",
    "fourier_frequencies",
    "get_backend",
    "grid_assign",
    "grid_centers",
    "group_layout",
    "grouped_cross_attention",
    "nearest_assign",
    "set_cpu_output_cache_limit",
    "use_backend",
]


def extension_available(device: torch.device | str | None = None, op: str | None = None) -> bool:
    """Whether the compiled extension can serve calls.

    No arguments: whether ``inrflow._C`` loaded. With ``device`` (``"cuda"``, ``torch.device``):
    whether it has a kernel of ``op`` (e.g. ``"fourier_embed"``) for that device type, or, with
    ``op=None``, of any inrflow op (i.e. whether that part of the extension was built).
    """
    if not _extension.extension_available():
        return False
    if device is None and op is None:
        return True
    device_type = torch.device(device).type if device is not None else "cpu"
    if op is None:
        return bool(_extension.kernel_ops(device_type))
    return _extension.has_kernel(op, device_type)
