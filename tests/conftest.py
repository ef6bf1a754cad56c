"""Shared pytest fixtures and markers for the inrflow test suite."""

from __future__ import annotations

import pytest
import torch

import inrflow.ops

EXTENSION_BUILT = inrflow.ops.extension_available()
CUDA = torch.cuda.is_available()

requires_extension = pytest.mark.skipif(
    not EXTENSION_BUILT,
    reason="inrflow._C is not built (pip install --no-build-isolation -e .)",
)
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def devices() -> list[str]:
    """Devices to run device-generic tests on: the CPU, plus the GPU when there is one."""
    return ["cpu", "cuda"] if CUDA else ["cpu"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without an INRFLOW_BACKEND from the caller's environment."""
    monkeypatch.delenv("INRFLOW_BACKEND", raising=False)
