"""Input checks shared by the public op wrappers (both backends see the same errors).

Conventions: a non-tensor argument or a wrong dtype raises ``TypeError``; a wrong rank, shape,
value or device raises ``ValueError``. Checks of tensor *values* (NaN coordinates, index ranges,
CSR offsets) need one device->host sync; the wrappers do them when ``validate=True`` (default)
and skip them under ``torch.compile`` tracing and for meta tensors, where values do not exist.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def tensor(op: str, name: str, value: object) -> torch.Tensor:
    """Return ``value`` if it is a tensor, else raise TypeError."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def dtype_in(op: str, name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"{op}: {name} must have dtype {_names(allowed)}; got {t.dtype}")


def rank_in(op: str, name: str, t: torch.Tensor, ranks: tuple[int, ...], layout: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{op}: {name} must be {layout}; got shape {tuple(t.shape)}")


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != ref.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                "all tensor arguments must be on the same device"
            )


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match"
            )


def integer(op: str, name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}; got {value}")
    return value


def assert_values(ok: torch.Tensor, message: str, error: type[Exception] = ValueError) -> None:
    """Check a boolean scalar tensor of *values* without stalling an accelerator.

    Reading a device tensor on the host waits for every queued kernel (a sync per call, per
    step). So: an eager host (CPU) tensor is read at once and raises ``error(message)`` there,
    where that read costs nothing; on an accelerator, under ``torch.compile`` tracing and for
    fake tensors the check is queued with ``torch._assert_async`` (the device fails with
    ``message`` when it reaches it, the host runs on); meta tensors have no values to check.
    """
    if ok.device.type == "meta":
        return
    if ok.device.type == "cpu" and not torch.compiler.is_compiling() and not is_fake(ok):
        if not bool(ok):
            raise error(message)
        return
    torch._assert_async(ok, message)


def values_checkable(validate: bool, *tensors: torch.Tensor) -> bool:
    """Whether value checks (which sync with the device) should and can run."""
    if not validate or torch.compiler.is_compiling():
        return False
    return all(t.device.type != "meta" for t in tensors)
