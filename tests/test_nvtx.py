"""NVTX ranges: emitter choice, the INRFLOW_NVTX switch, and the zero-cost disabled path."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator

import pytest
import torch

from inrflow import nvtx


@pytest.fixture(autouse=True)
def _restore_nvtx(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("INRFLOW_NVTX", raising=False)
    yield
    monkeypatch.undo()
    nvtx._configure()


def _nvtx_usable() -> bool:
    try:
        import nvtx

        return bool(nvtx.enabled())
    except ImportError:
        return False


def _expected_auto() -> str:
    if _nvtx_usable():
        return "nvtx"
    return "torch" if torch.version.cuda is not None and torch.cuda.is_available() else "none"


def _configure_quietly(setting: str) -> str:
    """Configure without the 'no emitter' warning (covered by its own test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nvtx._configure(setting)


def _double(x: int) -> int:
    return 2 * x


def test_disabled_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INRFLOW_NVTX", "0")
    assert nvtx._configure() == "none" and not nvtx.nvtx_enabled()
    assert nvtx.nvtx_range("f")(_double) is _double  # the decorator is the identity
    with nvtx.nvtx_range("block", color="red") as value:
        assert value is None
    assert nvtx.nvtx_range("a") is nvtx.nvtx_range("b")  # one shared null object


def test_auto_choice() -> None:
    assert nvtx._configure() == _expected_auto()
    assert nvtx._configure("auto") == _expected_auto()


@pytest.mark.parametrize("setting", ["1", "on", "auto"])
def test_enabled_ranges_wrap_and_nest(setting: str) -> None:
    backend = _configure_quietly(setting)
    if backend == "none":
        pytest.skip("no NVTX emitter on this machine")
    decorated = nvtx.nvtx_range("double", color="green")(_double)
    assert decorated is not _double and decorated.__wrapped__ is _double
    assert decorated.__name__ == "_double"
    with nvtx.nvtx_range("outer"), nvtx.nvtx_range("inner", color="no-such-colour"):
        assert decorated(21) == 42
    with pytest.raises(ZeroDivisionError), nvtx.nvtx_range("raises"):
        _ = 1 / 0  # the range is popped on the way out
    with pytest.raises(ZeroDivisionError):
        nvtx.nvtx_range("raises-too")(lambda: 1 / 0)()


def test_without_nvtx_package_falls_back_to_torch_or_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nvtx", None)  # makes `import nvtx` raise ImportError
    cuda_build = torch.version.cuda is not None
    expect_auto = "torch" if cuda_build and torch.cuda.is_available() else "none"
    assert nvtx._configure("auto") == expect_auto
    if cuda_build:
        assert nvtx._configure("1") == "torch"  # forced: a CUDA build suffices
        with nvtx.nvtx_range("torch-range"):
            pass
    else:
        with pytest.warns(UserWarning, match="neither the nvtx package"):
            assert nvtx._configure("1") == "none"


def test_unknown_setting_warns_and_uses_auto() -> None:
    with pytest.warns(UserWarning, match="INRFLOW_NVTX"):
        assert nvtx._configure("sometimes") == _expected_auto()


def test_ranges_are_skipped_inside_compiled_code() -> None:
    if _configure_quietly("1") == "none":
        pytest.skip("no NVTX emitter on this machine")

    @nvtx.nvtx_range("decorated")
    def fn(x: torch.Tensor) -> torch.Tensor:
        with nvtx.nvtx_range("inner"):
            return x * 2

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="eager", fullgraph=True)  # no graph break on ranges
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))
    torch._dynamo.reset()
