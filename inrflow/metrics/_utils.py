"""Small helpers shared by the metric modules: device choice, float64 conversion, chunking."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def default_device() -> torch.device:
    """The GPU when there is one: feature extraction and pairwise searches are batched for it."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def as_numpy64(x: ArrayLike) -> np.ndarray:
    """A float64 numpy copy of a numpy array or a (possibly CUDA, possibly grad) tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def as_tensor(x: ArrayLike, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """A tensor view/copy of a numpy array or tensor on ``device`` with ``dtype``."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(n)``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
