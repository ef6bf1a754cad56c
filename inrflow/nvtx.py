"""NVTX ranges for Nsight Systems, free when nobody can record them.

``nvtx_range(name)`` works as a context manager and as a decorator. Which emitter it uses is
decided once, when this module is imported:

* ``INRFLOW_NVTX=0`` (or ``off``/``false``): disabled.
* unset / ``auto``: the ``nvtx`` package when it imports and ``nvtx.enabled()`` (ranges go to the
  ``inrflow`` NVTX domain, with colours); else ``torch.cuda.nvtx`` when torch is a CUDA build and
  a GPU is visible; else disabled.
* ``INRFLOW_NVTX=1`` (or ``on``/``true``): as ``auto`` but ``torch.cuda.nvtx`` is used on any
  CUDA build of torch, GPU or not; disabled (with a warning) only when neither emitter exists.

When disabled, ``nvtx_range(...)`` returns a shared null object whose decorator form returns the
function unchanged, so decorated functions cost nothing. Because decorators are applied at
import, changing ``INRFLOW_NVTX`` later has no effect on already-decorated functions; set it
before importing inrflow. Without an attached profiler an NVTX push/pop costs ~0.1 us (domain
API) to ~1 us (``torch.cuda.nvtx``).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import torch

__all__ = ["nvtx_backend", "nvtx_enabled", "nvtx_range"]

F = TypeVar("F", bound=Callable[..., Any])

DOMAIN = "inrflow"

_backend = "none"  # "nvtx" | "torch" | "none"
_domain: Any = None  # nvtx Domain when _backend == "nvtx"


def _configure(setting: str | None = None) -> str:
    """(Re)decide the emitter from ``setting`` or ``$INRFLOW_NVTX``; returns the backend name."""
    global _backend, _domain
    raw = os.environ.get("INRFLOW_NVTX", "") if setting is None else setting
    value = raw.strip().lower()
    if value in ("0", "off", "false", "no"):
        _backend, _domain = "none", None
        return _backend
    forced = value in ("1", "on", "true", "yes")
    if not forced and value not in ("", "auto"):
        warnings.warn(f"INRFLOW_NVTX={raw!r} is not one of 0, 1, auto; using auto", stacklevel=2)
    _backend, _domain = "none", None
    try:
        import nvtx  # optional dependency

        if nvtx.enabled():
            _backend, _domain = "nvtx", nvtx.get_domain(DOMAIN)
            return _backend
    except Exception:  # a broken optional package must not break inrflow
        pass
    if torch.version.cuda is not None and (forced or torch.cuda.is_available()):
        _backend = "torch"
    elif forced:
        warnings.warn(
            "INRFLOW_NVTX=1 but neither the nvtx package nor a CUDA build of torch is "
            "available; NVTX ranges are disabled",
            stacklevel=2,
        )
    return _backend


def nvtx_enabled() -> bool:
    """True when :func:`nvtx_range` emits ranges."""
    return _backend != "none"


def nvtx_backend() -> str:
    """The emitter in use: ``"nvtx"`` (the nvtx package), ``"torch"`` (torch.cuda.nvtx) or
    ``"none"``."""
    return _backend


class _NullRange:
    """Disabled range: a no-op context manager whose decorator form is the identity."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, fn: F) -> F:
        return fn


_NULL_RANGE = _NullRange()


class _Range:
    """An enabled NVTX range: push on enter, pop on exit; as a decorator, wraps every call."""

    __slots__ = ("_attrs", "_domain", "_name")

    def __init__(self, name: str, color: str | None) -> None:
        self._name = name
        self._domain = _domain if _backend == "nvtx" else None
        self._attrs = None
        if self._domain is not None:
            try:
                self._attrs = self._domain.get_event_attributes(message=name, color=color)
            except Exception:  # unknown colour names: keep the range, drop colour
                self._attrs = self._domain.get_event_attributes(message=name)

    def __enter__(self) -> None:
        if torch.compiler.is_compiling():  # ranges are host calls that dynamo cannot trace
            return
        if self._domain is not None:
            self._domain.push_range(self._attrs)
        else:
            torch.cuda.nvtx.range_push(self._name)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if torch.compiler.is_compiling():
            return
        if self._domain is not None:
            self._domain.pop_range()
        else:
            torch.cuda.nvtx.range_pop()

    def __call__(self, fn: F) -> F:
        # Bind everything up front: the wrapper runs on every call of a hot op.
        if self._domain is not None:
            attrs, push_domain, pop = self._attrs, self._domain.push_range, self._domain.pop_range

            def push() -> None:
                push_domain(attrs)
        else:
            name, push_name, pop = self._name, torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop

            def push() -> None:
                push_name(name)

        is_compiling = torch.compiler.is_compiling

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if is_compiling():  # ranges are host calls that dynamo cannot trace
                return fn(*args, **kwargs)
            push()
            try:
                return fn(*args, **kwargs)
            finally:
                pop()

        return wrapper  # type: ignore[return-value]


def nvtx_range(name: str, color: str | None = None) -> Any:
    """An NVTX range named ``name``, usable as ``with nvtx_range("step"):`` or as
    ``@nvtx_range("encoder")``. ``color`` is a colour name (nvtx package only)."""
    if _backend == "none" or torch.compiler.is_compiling():
        return _NULL_RANGE
    return _Range(name, color)


_configure()
