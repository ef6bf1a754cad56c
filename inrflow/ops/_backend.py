"""Backend choice for :mod:`inrflow.ops`: compiled extension or pure-PyTorch reference.

The setting, highest priority first:

1. the innermost active ``with use_backend(name):`` block of the current thread / async task
   (a ``contextvars.ContextVar``: blocks nest, and other threads are not affected; new threads
   start without an override);
2. the environment variable ``INRFLOW_BACKEND`` (read at every op call, so setting it in a
   running process takes effect at once);
3. ``"auto"``.

``"auto"`` runs an op on the extension when ``inrflow::<op>`` has a kernel for the input's device
type, else on the reference. ``"reference"`` always uses the reference. ``"extension"`` uses the
extension and raises a :class:`RuntimeError` that says why when it has no kernel for that op and
device (not built, failed to load, op not implemented yet, no CUDA kernels in a CPU-only build).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

import torch

from inrflow import _extension

__all__ = ["BACKENDS", "get_backend", "use_backend", "use_extension"]

BACKENDS = ("auto", "reference", "extension")
ENV_VAR = "INRFLOW_BACKEND"

_override: ContextVar[str | None] = ContextVar("inrflow_backend_override", default=None)


def _forced() -> str | None:
    return _override.get()


# torch.compile traces ContextVar.get (and guards on it) from torch 2.14 on. Older Dynamo cannot,
# so there the override is read once at trace time and baked into the compiled graph (what
# torch.compiler.assume_constant_result does, without importing torch._dynamo here): a
# `use_backend` block entered *after* compiling does not change already-compiled code.
if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14):
    _forced._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _check_name(name: object, source: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name.strip().lower()


def get_backend() -> str:
    """The backend setting in force here: ``"auto"``, ``"reference"`` or ``"extension"``."""
    forced = _forced()
    if forced is not None:
        return forced
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return "auto"
    return _check_name(raw, f"environment variable {ENV_VAR}")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the backend of every inrflow op called inside the block (``"auto"`` un-forces).

    Overrides ``INRFLOW_BACKEND``; nests; affects only the current thread / async task. Also
    usable as a decorator.
    """
    token = _override.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _override.reset(token)


def use_extension(op: str, device: torch.device) -> bool:
    """Decide whether ``inrflow.ops.<op>`` on tensors of ``device`` runs on the extension."""
    backend = get_backend()
    if backend == "reference":
        return False
    if _extension.has_kernel(op, device.type):
        return True
    if backend == "auto":
        return False
    raise RuntimeError(_no_kernel_message(op, device))


def _no_kernel_message(op: str, device: torch.device) -> str:
    head = f"inrflow.ops.{op}: the backend is forced to 'extension' (use_backend or {ENV_VAR}) but "
    if not _extension.extension_available():
        return (
            head + f"the extension inrflow._C is not loaded ({_extension.load_error()}); "
            f"{_extension.BUILD_HINT}, or use the 'reference' backend"
        )
    if not _extension.has_op(op):
        return head + f"this build of inrflow._C does not implement inrflow::{op} yet"
    built = sorted(t for t in ("cpu", "cuda") if op in _extension.kernel_ops(t))
    hint = ""
    if device.type == "cuda":
        hint = " (CUDA kernels need a build with a CUDA torch and nvcc)"
    return (
        head + f"inrflow::{op} has no kernel for device type '{device.type}'{hint}; it has "
        f"kernels for: {', '.join(built) or 'none'}"
    )
