"""Python-side registrations of the compiled ``inrflow::*`` ops, in one place.

The schemas and the CPU/CUDA kernels come from ``inrflow._C`` (``csrc/ops.cpp`` and the device
files). What the dispatcher also needs is written in Python next to each op's wrapper and handed
to :func:`register_op`: a fake (meta) kernel so ``torch.compile``/FakeTensor can trace the op, an
autograd formula, an Autograd-key kernel for ops whose gradient runs through another op, and a
FLOP formula for ``FlopCounterMode``. Without the extension (or for an op this build of it lacks)
nothing is registered and the wrappers use :mod:`inrflow.ops.reference`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from inrflow import _extension

__all__ = ["register_op"]

# Keeps the Autograd-key kernels registered below alive (a Library deregisters when collected).
_IMPL_LIBRARY: torch.library.Library | None = None


def register_op(
    name: str,
    *,
    fake: Callable | None = None,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
    autograd_kernel: Callable | None = None,
    flops: Callable | None = None,
    needs: Sequence[str] = (),
) -> bool:
    """Attach the Python-side pieces of the compiled op ``inrflow::<name>``; idempotent.

    ``fake``: meta kernel (kept if the op already has one). ``backward`` + ``setup_context``:
    ``torch.library.register_autograd``. ``autograd_kernel``: a kernel for the ``Autograd`` key,
    for an op differentiated through another registered op. ``flops``: FLOP formula taking the
    argument shapes. ``needs``: other ops these pieces call; when the loaded ``_C`` lacks one of
    them (an older build), nothing is registered. Returns whether the op is registered.

    The set of registered ops lives in :mod:`inrflow._extension`, so re-importing an op module
    does not register twice.
    """
    if name in _extension.registered_ops:
        return True
    if not _extension.extension_available():
        return False
    if not all(_extension.has_op(op) for op in (name, *needs)):
        return False
    qualname = f"{_extension.NAMESPACE}::{name}"
    has_key = torch._C._dispatch_has_kernel_for_dispatch_key
    if fake is not None and not has_key(qualname, "Meta"):
        torch.library.register_fake(qualname)(fake)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    if autograd_kernel is not None and not has_key(qualname, "Autograd"):
        _impl_library().impl(name, autograd_kernel, "Autograd")
    if flops is not None:
        from torch.utils.flop_counter import register_flop_formula  # imports on first use only

        register_flop_formula(getattr(torch.ops.inrflow, name))(flops)
    _extension.registered_ops.add(name)
    _extension.clear_kernel_cache()
    return True


def _impl_library() -> torch.library.Library:
    global _IMPL_LIBRARY
    if _IMPL_LIBRARY is None:
        _IMPL_LIBRARY = torch.library.Library(_extension.NAMESPACE, "IMPL")
    return _IMPL_LIBRARY
