"""Fixtures every test module gets: a fixed RNG state, the single-thread fixture of
:mod:`helpers`, and an environment without the caller's ``INRFLOW_BACKEND``."""

from __future__ import annotations

import pytest
import torch
from helpers import one_thread  # noqa: F401  (a fixture: defined there, made visible here)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run without an INRFLOW_BACKEND from the caller's environment."""
    monkeypatch.delenv("INRFLOW_BACKEND", raising=False)
