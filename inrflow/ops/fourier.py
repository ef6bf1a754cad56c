"""Fourier feature embedding: public wrapper, autograd and fake (meta) registration."""

from __future__ import annotations

import math

import torch

from inrflow.nvtx import nvtx_range
from inrflow.ops import _checks, reference
from inrflow.ops._backend import use_extension
from inrflow.ops._registry import register_op

__all__ = ["fourier_embed", "fourier_frequencies"]

_OP = "inrflow.ops.fourier_embed"


def fourier_frequencies(
    num: int,
    max_log2: float,
    scale: float = math.pi,
    log_sampling: bool = True,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Frequencies for :func:`fourier_embed`, float32 ``[num]``.

    Log sampling: ``scale * 2**linspace(0, max_log2, num)``; linear:
    ``scale * linspace(1, 2**max_log2, num)``. ``device=None`` follows the default device (so it
    works under ``with torch.device("meta"):``).
    """
    op = "inrflow.ops.fourier_frequencies"
    _checks.integer(op, "num", num, minimum=1)
    for name, value in (("max_log2", max_log2), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{op}: {name} must be finite, got {value}")
    return reference.fourier_frequencies(num, max_log2, scale, bool(log_sampling), device=device)


def _check(x: object, freqs: object, include_input: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = _checks.tensor(_OP, "x", x)
    freqs = _checks.tensor(_OP, "freqs", freqs)
    _checks.dtype_in(_OP, "x", x, _checks.FLOAT_DTYPES)
    _checks.dtype_in(_OP, "freqs", freqs, (torch.float32,))
    if not isinstance(include_input, bool):
        raise TypeError(f"{_OP}: include_input must be a bool, got {type(include_input).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{_OP}: x must be [..., C] (at least 1-D); got a 0-d tensor")
    _checks.rank_in(_OP, "freqs", freqs, (1,), "1-D [F]")
    if freqs.shape[0] == 0:
        raise ValueError(f"{_OP}: freqs must hold at least one frequency; got shape (0,)")
    _checks.same_device(_OP, "x", x, freqs=freqs)
    if freqs.requires_grad:
        raise ValueError(
            f"{_OP}: freqs requires grad, but fourier_embed treats frequencies as constants "
            "and gives them no gradient; pass freqs.detach() or a buffer"
        )
    return x, freqs


@nvtx_range("inrflow.ops.fourier_embed")
def fourier_embed(
    x: torch.Tensor, freqs: torch.Tensor, include_input: bool = False
) -> torch.Tensor:
    """Fourier features ``[x (if include_input) | sin(x_c f_k) | cos(x_c f_k)]`` of ``x[..., C]``.

    ``freqs`` is float32 ``[F]`` on x's device (it is not copied for you: a per-call host->device
    copy would be a hidden sync). Output ``[..., C*2F (+C)]`` in x's dtype, channel-major inside
    each block (index ``c*F + k``); math in fp32. Differentiable in ``x``; ``freqs`` gets no
    gradient.
    """
    x, freqs = _check(x, freqs, include_input)
    if use_extension("fourier_embed", x.device):
        return torch.ops.inrflow.fourier_embed.default(x, freqs, include_input)
    return reference.fourier_embed(x, freqs, include_input)


# ------------------------------------------------------------------------------------------------
# Registrations for the compiled ops (only when inrflow._C defines them; see _registry.py).
#
# * autograd: the backward is itself a registered op, so it runs on the same device kernels.
#   It takes the forward *output* (d sin = f cos, d cos = -f sin are in it) rather than x. The
#   backward op has an autograd formula too (linear in grad_out and in the saved output), so
#   double backward (gradient penalties, Hessian-vector products) is exact.
# * fake: shape/dtype propagation without data, so torch.compile / FakeTensor can trace the op.


def _setup_context(ctx, inputs, output) -> None:  # torch.library callback
    _, freqs, include_input = inputs
    ctx.include_input = include_input
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(output, freqs)


def _backward(ctx, grad_out: torch.Tensor):  # torch.library callback
    if not ctx.needs_input_grad[0]:
        return None, None, None
    out, freqs = ctx.saved_tensors
    grad_x = torch.ops.inrflow.fourier_embed_backward.default(
        grad_out, out, freqs, ctx.include_input
    )
    return grad_x, None, None


def _split_blocks(t: torch.Tensor, num_freqs: int, include_input: bool):
    """``[..., C*2F (+C)]`` -> (x block or None, sin ``[..., C, F]``, cos ``[..., C, F]``)."""
    c = t.shape[-1] // (2 * num_freqs + (1 if include_input else 0))
    off = c if include_input else 0
    head = t[..., :off] if include_input else None
    sin = t[..., off : off + c * num_freqs].unflatten(-1, (c, num_freqs))
    cos = t[..., off + c * num_freqs :].unflatten(-1, (c, num_freqs))
    return head, sin, cos


def _setup_context_backward(ctx, inputs, output) -> None:  # torch.library callback
    grad_out, out, freqs, include_input = inputs
    ctx.include_input = include_input
    ctx.save_for_backward(grad_out, out, freqs)


def _backward_backward(ctx, gg: torch.Tensor):  # torch.library callback
    """Gradients of ``grad_x[c] = g_x[c] + sum_k f_k (g_sin cos - g_cos sin)[c, k]``."""
    grad_out, out, freqs = ctx.saved_tensors
    inc = ctx.include_input
    _, go_sin, go_cos = _split_blocks(grad_out, freqs.shape[0], inc)
    _, sin, cos = _split_blocks(out, freqs.shape[0], inc)
    gf = gg.unsqueeze(-1) * freqs.to(gg.dtype)  # [..., C, F]
    d_grad_out = [(gf * cos).flatten(-2), (-gf * sin).flatten(-2)]
    d_out = [(-gf * go_cos).flatten(-2), (gf * go_sin).flatten(-2)]
    if inc:
        d_grad_out.insert(0, gg)
        d_out.insert(0, torch.zeros_like(gg))
    return torch.cat(d_grad_out, -1), torch.cat(d_out, -1), None, None


def _embed_width(channels, num_freqs, include_input):  # ints or SymInts
    return channels * 2 * num_freqs + (channels if include_input else 0)


def _fake_forward(
    x: torch.Tensor, freqs: torch.Tensor, include_input: bool = False
) -> torch.Tensor:
    torch._check(x.dim() >= 1, lambda: "fourier_embed: x must be at least 1-D")
    torch._check(freqs.dim() == 1, lambda: "fourier_embed: freqs must be 1-D")
    torch._check(freqs.shape[0] >= 1, lambda: "fourier_embed: freqs must be non-empty")
    width = _embed_width(x.shape[-1], freqs.shape[0], include_input)
    return x.new_empty((*x.shape[:-1], width))


def _fake_backward(
    grad_out: torch.Tensor, out: torch.Tensor, freqs: torch.Tensor, include_input: bool
) -> torch.Tensor:
    torch._check(freqs.dim() == 1 and freqs.shape[0] >= 1, lambda: "freqs must be 1-D, non-empty")
    torch._check(grad_out.shape == out.shape, lambda: "grad_out must have the output's shape")
    per_channel = 2 * freqs.shape[0] + (1 if include_input else 0)
    torch._check(
        out.shape[-1] % per_channel == 0, lambda: "output width is not C*(2F + include_input)"
    )
    return out.new_empty((*out.shape[:-1], out.shape[-1] // per_channel))


register_op(
    "fourier_embed",
    fake=_fake_forward,
    backward=_backward,
    setup_context=_setup_context,
    needs=("fourier_embed_backward",),
)
register_op(
    "fourier_embed_backward",
    fake=_fake_backward,
    backward=_backward_backward,
    setup_context=_setup_context_backward,
)
