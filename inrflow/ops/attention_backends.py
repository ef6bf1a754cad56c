"""Optional third-party GPU backends for :func:`inrflow.ops.grouped_cross_attention`.

``grouped_cross_attention_via(backend, q, k, v, offsets, scale=None)`` runs the same op (same
arguments, same result up to rounding) through:

- ``"flash_attn"``: ``flash_attn.flash_attn_varlen_func`` with one query per sequence;
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` with a ``BlockDiagonalMask``;
- ``"torch_varlen"``: ``torch.nn.attention.varlen.varlen_attn`` (recent PyTorch).

Each is imported lazily and only reported by :func:`available_backends` when its package imports
and the device is CUDA, so an install without them is unaffected. They need fp16/bf16 (and, for
the flash kernels, head dims up to 256), take the maximum group length on the host (one device
sync), and are not what the model uses: inrflow's own kernels handle every dtype and head dims
beyond 256 (the folded encoder uses 1152). Empty groups give zeros, as in the reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

__all__ = ["BACKENDS", "available_backends", "grouped_cross_attention_via"]

BACKENDS = ("flash_attn", "xformers", "torch_varlen")
_HALF = (torch.float16, torch.bfloat16)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # missing, or a broken binary install: treat as absent
        return None


def _has_torch_varlen() -> bool:
    varlen = _module("torch.nn.attention.varlen")
    return varlen is not None and hasattr(varlen, "varlen_attn")


def available_backends(device: torch.device | str = "cuda") -> list[str]:
    """The optional backends usable for tensors on ``device`` (none off CUDA)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return []
    found = []
    if _module("flash_attn") is not None:
        found.append("flash_attn")
    if _module("xformers.ops") is not None:
        found.append("xformers")
    if _has_torch_varlen():
        found.append("torch_varlen")
    return found


def _cu_seqlens(offsets: torch.Tensor, groups: int, device: torch.device):
    cu_k = offsets.to(device=device, dtype=torch.int32)
    cu_q = torch.arange(groups + 1, device=device, dtype=torch.int32)
    counts = offsets[1:] - offsets[:-1]
    return cu_q, cu_k, counts


def _flash_attn(q, k, v, offsets, scale):
    flash = importlib.import_module("flash_attn")
    cu_q, cu_k, counts = _cu_seqlens(offsets, q.shape[0], q.device)
    max_k = int(counts.max()) if counts.numel() else 0
    out = flash.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 1, max(max_k, 1), softmax_scale=scale)
    return out, counts


def _torch_varlen(q, k, v, offsets, scale):
    varlen = importlib.import_module("torch.nn.attention.varlen")
    cu_q, cu_k, counts = _cu_seqlens(offsets, q.shape[0], q.device)
    max_k = int(counts.max()) if counts.numel() else 0
    out = varlen.varlen_attn(
        q, k, v, cu_q, cu_k, 1, max(max_k, 1), scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
    return out, counts


def _xformers(q, k, v, offsets, scale):
    xops = importlib.import_module("xformers.ops")
    fmha = importlib.import_module("xformers.ops.fmha")
    counts = offsets[1:] - offsets[:-1]
    nonempty = torch.nonzero(counts > 0).flatten()
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    if nonempty.numel() == 0:
        return out, counts
    rep = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
    vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
    kv_lens = counts[nonempty].tolist()
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(
        q_seqlen=[1] * len(kv_lens), kv_seqlen=kv_lens
    )
    res = xops.memory_efficient_attention(
        q[nonempty][None], kk[None], vv[None], attn_bias=bias, scale=scale
    )[0]
    return out.index_copy(0, nonempty, res), counts


_IMPLS: dict[str, Callable] = {
    "flash_attn": _flash_attn,
    "xformers": _xformers,
    "torch_varlen": _torch_varlen,
}


def grouped_cross_attention_via(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`inrflow.ops.grouped_cross_attention` through an optional backend (differentiable
    where the backend is). Raises ``RuntimeError`` when ``backend`` is not usable here."""
    if backend not in _IMPLS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend not in available_backends(q.device):
        raise RuntimeError(
            f"attention backend {backend!r} is not available for tensors on {q.device} "
            f"(available: {available_backends(q.device) or 'none'})"
        )
    if q.dtype not in _HALF:
        raise TypeError(f"attention backend {backend!r} needs float16 or bfloat16, got {q.dtype}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, counts = _IMPLS[backend](q, k, v, offsets, scale)
    # Backends disagree on what a query with no keys gets; the op's contract is zeros.
    return torch.where((counts > 0)[:, None, None], out, torch.zeros((), dtype=out.dtype))
