"""Loading of the compiled extension ``inrflow._C`` and questions to the op dispatcher.

``inrflow._C`` holds no Python API: importing it runs the static ``TORCH_LIBRARY`` initialisers
that define the ``inrflow::*`` op schemas and register the CPU (and, on CUDA builds, CUDA)
kernels. When it is missing or fails to load, ``import inrflow`` still works: the ops fall back to
the pure-PyTorch references in :mod:`inrflow.ops.reference` and one warning per process says why.

Whether an op runs on the extension is decided by the dispatcher, not by this module's idea of
what was built: an op "has a kernel" for a device type when ``inrflow::<op>`` has a kernel
registered for that dispatch key. Kernels added later (C++ or ``torch.library``) therefore plug in
without changes here. Dispatcher queries cost microseconds, so answers are cached; code that
registers kernels after the first op call must call :func:`clear_kernel_cache`.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType

import torch

__all__ = [
    "BUILD_HINT",
    "ExtensionWarning",
    "clear_kernel_cache",
    "extension_available",
    "has_kernel",
    "has_op",
    "kernel_ops",
    "load_error",
]

NAMESPACE = "inrflow"
BUILD_HINT = "build it with `pip install --no-build-isolation -e .` in the repository root"

# Device types whose dispatch key is not simply the upper-cased name.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta", "xpu": "XPU", "mps": "MPS"}


class ExtensionWarning(UserWarning):
    """Issued once per process when ``inrflow._C`` could not be loaded."""


_C: ModuleType | None = None
_load_error: str | None = None
_warned = False
_kernel_cache: dict[tuple[str, str], bool] = {}
# Ops whose Python-side registrations (autograd, fake, FLOPs: inrflow.ops._registry.register_op)
# are done; lives here, not in the registry module, so that reloading it does not register twice.
registered_ops: set[str] = set()


def _load() -> None:
    """Import ``inrflow._C`` once; on failure remember why and warn (once per process)."""
    global _C, _load_error, _warned
    try:
        _C = importlib.import_module("inrflow._C")
        _load_error = None
    except Exception as exc:  # any load failure (ImportError, OSError, ...) falls back
        _C = None
        _load_error = f"{type(exc).__name__}: {exc}"
        if not _warned:
            _warned = True
            warnings.warn(
                f"inrflow: the compiled extension inrflow._C could not be loaded ({_load_error}); "
                "inrflow.ops uses the slower pure-PyTorch reference implementations instead. "
                f"To use the C++/CUDA kernels, {BUILD_HINT}.",
                ExtensionWarning,
                stacklevel=_first_frame_outside_package(),
            )
    clear_kernel_cache()


def _first_frame_outside_package() -> int:
    """``stacklevel`` that points a warning issued by our caller at the code that imported
    inrflow, counting frames the way ``warnings`` does (importlib's own frames are skipped)."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)  # the caller of warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None:
        frame = frame.f_back
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            continue
        level += 1
        if not os.path.abspath(name).startswith(package_dir):
            break
    return level


def extension_available() -> bool:
    """True when ``inrflow._C`` was imported successfully."""
    return _C is not None


def load_error() -> str | None:
    """Why ``inrflow._C`` failed to load (``"ExcType: message"``), or None when it loaded."""
    return _load_error


def dispatch_key(device_type: str) -> str:
    """The dispatch key serving tensors of ``device_type`` (``"cuda"`` -> ``"CUDA"``)."""
    return _DISPATCH_KEYS.get(device_type, device_type.upper())


def has_op(op: str) -> bool:
    """True when the schema ``inrflow::<op>`` is defined (by ``_C`` or a ``torch.library``)."""
    try:
        torch._C._dispatch_find_schema_or_throw(f"{NAMESPACE}::{op}", "")
    except RuntimeError:
        return False
    return True


def has_kernel(op: str, device_type: str) -> bool:
    """True when ``inrflow::<op>`` has a kernel for tensors on ``device_type`` (cached).

    A kernel for the backend key itself (``CPU``, ``CUDA``, ``Meta``) or a
    ``CompositeExplicitAutograd`` kernel counts. Meta kernels come from ``register_fake``.
    """
    key = (op, device_type)
    cached = _kernel_cache.get(key)
    if cached is not None:
        return cached
    name = f"{NAMESPACE}::{op}"
    found = False
    if has_op(op):
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        found = has(name, dispatch_key(device_type)) or has(name, "CompositeExplicitAutograd")
    _kernel_cache[key] = found
    return found


# What torch.compiler.assume_constant_result does (dynamo calls the function while tracing and
# bakes the answer into the graph), without its import of torch._dynamo (~2 s) at inrflow import.
has_kernel._dynamo_marked_constant = True  # type: ignore[attr-defined]


def kernel_ops(device_type: str) -> set[str]:
    """Names (without namespace) of the ``inrflow`` ops with a kernel for ``device_type``."""
    prefix = f"{NAMESPACE}::"
    regs = torch._C._dispatch_get_registrations_for_dispatch_key(dispatch_key(device_type))
    return {r[len(prefix) :].split(".")[0] for r in regs if r.startswith(prefix)}


def clear_kernel_cache() -> None:
    """Forget cached :func:`has_kernel` answers (call after registering kernels at run time)."""
    _kernel_cache.clear()


_load()
