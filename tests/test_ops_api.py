"""The public op API: exports, backend choice, input validation, every op against its reference
through the public wrappers, and importing without the extension. The per-op kernel tests
(extension and emulated CUDA kernels, opcheck, gradcheck, compile) are in test_<op>_kernels.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import inrflow
from inrflow import _extension, nvtx, ops
from inrflow.ops import _backend, _registry
from inrflow.ops import reference as ref

EXT = ops.extension_available()
requires_extension = pytest.mark.skipif(
    not EXT, reason="inrflow._C is not built (pip install --no-build-isolation -e .)"
)
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("no_backend_env")


def test_public_names() -> None:
    assert set(ops.__all__) == {
        "fourier_embed",
        "fourier_frequencies",
        "nearest_assign",
        "grid_assign",
        "grid_centers",
        "group_layout",
        "grouped_cross_attention",
        "use_backend",
        "get_backend",
        "extension_available",
        "cpu_output_cache",
        "cpu_output_cache_stats",
        "set_cpu_output_cache_limit",
    }
    for name in ops.__all__:
        assert callable(getattr(ops, name))


# ------------------------------------------------------------------------------------------------
# Backend choice


def test_default_backend_is_auto() -> None:
    assert ops.get_backend() == "auto"


def test_env_var_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INRFLOW_BACKEND", "reference")
    assert ops.get_backend() == "reference"
    monkeypatch.setenv("INRFLOW_BACKEND", " Extension ")
    assert ops.get_backend() == "extension"
    monkeypatch.setenv("INRFLOW_BACKEND", "")
    assert ops.get_backend() == "auto"
    monkeypatch.setenv("INRFLOW_BACKEND", "cuda")
    with pytest.raises(ValueError, match="INRFLOW_BACKEND"):
        ops.get_backend()


def test_use_backend_nests_restores_and_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INRFLOW_BACKEND", "extension")
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
        with ops.use_backend("auto"):
            assert ops.get_backend() == "auto"
            with ops.use_backend("extension"):
                assert ops.get_backend() == "extension"
            assert ops.get_backend() == "auto"
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "extension"


def test_use_backend_restores_after_exception_and_works_as_decorator() -> None:
    with pytest.raises(KeyError), ops.use_backend("reference"):
        raise KeyError
    assert ops.get_backend() == "auto"

    @ops.use_backend("reference")
    def inner() -> str:
        return ops.get_backend()

    assert inner() == "reference" and ops.get_backend() == "auto"


def test_use_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="auto, reference, extension"), ops.use_backend("x"):
        pass


def test_use_backend_does_not_leak_into_other_threads() -> None:
    seen: list[str] = []
    with ops.use_backend("reference"):
        worker = threading.Thread(target=lambda: seen.append(ops.get_backend()))
        worker.start()
        worker.join()
    assert seen == ["auto"]


@pytest.fixture
def probe_op() -> Iterator[str]:
    """A throw-away inrflow op with a CPU kernel, registered from Python."""
    name = f"probe_{uuid.uuid4().hex[:8]}"
    lib = torch.library.Library("inrflow", "FRAGMENT")
    lib.define(f"{name}(Tensor x) -> Tensor")
    lib.impl(name, lambda x: x + 1, "CPU")
    _extension.clear_kernel_cache()
    yield name
    lib._destroy()
    _extension.clear_kernel_cache()


def test_backend_decision_follows_the_dispatcher(probe_op: str) -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert _backend.use_extension(probe_op, cpu)
    assert not _backend.use_extension(probe_op, meta)  # auto: no Meta kernel -> reference
    with ops.use_backend("reference"):
        assert not _backend.use_extension(probe_op, cpu)
    with ops.use_backend("extension"):
        assert _backend.use_extension(probe_op, cpu)
        expect = "no kernel for device type 'meta'" if EXT else "not loaded"
        with pytest.raises(RuntimeError, match=expect):
            _backend.use_extension(probe_op, meta)
    with (
        ops.use_backend("extension"),
        pytest.raises(RuntimeError, match=r"not loaded|does not implement"),
    ):
        _backend.use_extension("no_such_op", cpu)


@requires_extension
def test_register_op_registers_once_and_only_ops_that_exist(probe_op: str) -> None:
    calls: list[tuple[int, ...]] = []

    def fake(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return torch.empty_like(x)

    def never(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a second registration replaced the first")

    try:
        assert not _registry.register_op("no_such_op", fake=fake)
        assert not _registry.register_op(probe_op, fake=fake, needs=("no_such_op",))
        assert probe_op not in _extension.registered_ops
        assert _registry.register_op(probe_op, fake=fake)
        assert _registry.register_op(probe_op, fake=never)  # idempotent: the first one stays
        out = getattr(torch.ops.inrflow, probe_op)(torch.empty(2, 3, device="meta"))
        assert out.shape == (2, 3) and out.device.type == "meta" and calls == [(2, 3)]
    finally:
        _extension.registered_ops.discard(probe_op)


def test_every_compiled_op_is_registered_from_python() -> None:
    # Each schema of csrc/ops.cpp has its fake kernel (and autograd where differentiable) attached
    # by inrflow.ops at import, whenever the extension is loaded.
    ops_of_c = {
        "fourier_embed",
        "fourier_embed_backward",
        "nearest_assign",
        "grid_assign",
        "group_layout",
        "grouped_cross_attention",
        "grouped_cross_attention_forward",
        "grouped_cross_attention_backward",
    }
    if not EXT:
        assert not (ops_of_c & _extension.registered_ops)
        return
    assert ops_of_c <= _extension.registered_ops
    for op in ops_of_c:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"inrflow::{op}", "Meta"), op


@pytest.fixture
def kernelless_op() -> Iterator[torch.library.Library]:
    """A schema ``inrflow::_api_probe`` with no kernel yet, removed after the test."""
    lib = torch.library.Library("inrflow", "FRAGMENT")
    lib.define("_api_probe(Tensor x) -> Tensor")
    _extension.clear_kernel_cache()
    try:
        yield lib
    finally:
        lib._destroy()
        _extension.clear_kernel_cache()


def test_a_kernel_registered_later_is_used_without_changing_the_wrapper(
    kernelless_op: torch.library.Library,
) -> None:
    # Every wrapper asks _backend.use_extension(op, device) at each call, which looks the kernel
    # up in the dispatcher: registering one (then clearing the cache) switches "auto" over.
    cpu = torch.device("cpu")
    assert not _extension.has_kernel("_api_probe", "cpu")
    assert _backend.use_extension("_api_probe", cpu) is False
    kernelless_op.impl("_api_probe", lambda x: x + 1, "CPU")
    _extension.clear_kernel_cache()
    assert _extension.has_kernel("_api_probe", "cpu")
    assert _backend.use_extension("_api_probe", cpu) is True
    assert "_api_probe" in _extension.kernel_ops("cpu")
    with ops.use_backend("reference"):
        assert _backend.use_extension("_api_probe", cpu) is False


def test_forcing_the_extension_for_an_op_it_lacks_raises_clearly(
    kernelless_op: torch.library.Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ops.use_backend("extension"):
        expect = "has no kernel for device type 'cpu'" if EXT else "not loaded"
        with pytest.raises(RuntimeError, match=expect):
            _backend.use_extension("_api_probe", torch.device("cpu"))
    # The public wrappers: without a kernel, auto falls back to the reference and a forced
    # extension raises, naming the op.
    monkeypatch.setattr(_extension, "has_kernel", lambda op, device_type: False)
    calls: dict[str, Callable[[], object]] = {
        "group_layout": lambda: ops.group_layout(torch.zeros(3, dtype=torch.int64), 2),
        "grouped_cross_attention": lambda: ops.grouped_cross_attention(
            torch.randn(1, 1, 2), torch.randn(2, 1, 2), torch.randn(2, 1, 2), torch.tensor([0, 2])
        ),
        "nearest_assign": lambda: ops.nearest_assign(torch.randn(3, 2), torch.randn(2, 2)),
    }
    for op, call in calls.items():
        call()
        with ops.use_backend("extension"), pytest.raises(RuntimeError, match=f"ops.{op}"):
            call()


def test_reference_backend_calls_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ref.fourier_embed

    def spy(*args: object) -> torch.Tensor:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(ref, "fourier_embed", spy)
    x, freqs = torch.randn(4, 2), torch.tensor([1.0, 2.0])
    with ops.use_backend("reference"):
        ops.fourier_embed(x, freqs)
    assert len(calls) == 1
    ops.fourier_embed(x, freqs)
    assert len(calls) == (1 if EXT else 2)  # auto: the CPU kernel when built


def test_extension_available_by_device() -> None:
    assert ops.extension_available() == (_extension.load_error() is None)
    if EXT:
        assert ops.extension_available("cpu")
        assert ops.extension_available("cpu", op="fourier_embed")
        assert not ops.extension_available("cpu", op="no_such_op")
        assert ops.extension_available(torch.device("cuda")) == bool(_extension.kernel_ops("cuda"))
    else:
        assert not ops.extension_available("cpu", op="fourier_embed")


# ------------------------------------------------------------------------------------------------
# Importing without the extension (subprocess, with inrflow._C made unimportable)

_NO_EXTENSION_SCRIPT = r"""
import importlib.abc, json, sys, warnings

class BlockExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "inrflow._C":
            raise ImportError("blocked by the test: no inrflow._C here")
        return None

sys.meta_path.insert(0, BlockExtension())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import inrflow
    import inrflow.ops as ops
    import torch
    inrflow._extension._load()  # a second load attempt must not warn again
    x = torch.randn(3, 2)
    freqs = ops.fourier_frequencies(4, 3)
    same = torch.equal(ops.fourier_embed(x, freqs), ops.reference.fourier_embed(x, freqs))
    try:
        with ops.use_backend("extension"):
            ops.fourier_embed(x, freqs)
        forced = ""
    except RuntimeError as exc:
        forced = str(exc)
mine = [w for w in caught if issubclass(w.category, inrflow.ExtensionWarning)]
print(json.dumps({
    "warnings": [str(w.message) for w in mine],
    "where": [w.filename for w in mine],
    "available": ops.extension_available(),
    "same": same,
    "forced": forced,
    "wrapped": hasattr(ops.fourier_embed, "__wrapped__"),
}))
"""


def _run_python(script: str, **env: str) -> dict:
    full_env = {**os.environ, **env}
    full_env.pop("INRFLOW_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_without_extension_warns_once_and_falls_back() -> None:
    result = _run_python(_NO_EXTENSION_SCRIPT, INRFLOW_NVTX="0")
    assert len(result["warnings"]) == 1, result["warnings"]
    message = result["warnings"][0]
    assert "blocked by the test: no inrflow._C here" in message  # the import error text
    assert "pip install --no-build-isolation -e ." in message  # how to build
    assert result["where"] == ["<string>"]  # blamed on the importing code, not on inrflow
    assert result["available"] is False
    assert result["same"] is True
    assert "not loaded" in result["forced"] and "blocked by the test" in result["forced"]
    assert result["wrapped"] is False  # INRFLOW_NVTX=0: the op is the undecorated function


@requires_extension
def test_import_with_extension_does_not_warn() -> None:
    script = (
        "import json, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import inrflow\n"
        "n = sum(issubclass(w.category, inrflow.ExtensionWarning) for w in caught)\n"
        "print(json.dumps({'n': n, 'available': inrflow.ops.extension_available()}))\n"
    )
    assert _run_python(script) == {"n": 0, "available": True}


def test_ops_are_nvtx_wrapped_exactly_when_nvtx_is_enabled() -> None:
    # decorators were applied when inrflow was imported in this process
    if not os.environ.get("INRFLOW_NVTX"):
        assert hasattr(ops.nearest_assign, "__wrapped__") == nvtx.nvtx_enabled()


# ------------------------------------------------------------------------------------------------
# Input validation: every op, both backends see the same errors

F32 = torch.float32


def _gca(**over: object) -> Callable[[], object]:
    args: dict[str, object] = {
        "q": torch.randn(3, 4, 8),
        "k": torch.randn(10, 2, 8),
        "v": torch.randn(10, 2, 5),
        "offsets": torch.tensor([0, 4, 4, 10]),
    }
    args.update(over)
    return lambda: ops.grouped_cross_attention(**args)  # type: ignore[arg-type]


BAD_INPUTS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # fourier_embed
    ("fe-x-not-tensor", lambda: ops.fourier_embed([1.0], torch.ones(2)), TypeError, "x must"),
    (
        "fe-x-int",
        lambda: ops.fourier_embed(torch.ones(2, dtype=torch.int32), torch.ones(2)),
        TypeError,
        "dtype",
    ),
    (
        "fe-freqs-f64",
        lambda: ops.fourier_embed(torch.ones(2), torch.ones(2, dtype=torch.float64)),
        TypeError,
        "freqs must have dtype float32",
    ),
    ("fe-freqs-2d", lambda: ops.fourier_embed(torch.ones(2), torch.ones(2, 2)), ValueError, "1-D"),
    (
        "fe-freqs-empty",
        lambda: ops.fourier_embed(torch.ones(2), torch.ones(0)),
        ValueError,
        "at least one frequency",
    ),
    (
        "fe-x-0d",
        lambda: ops.fourier_embed(torch.tensor(1.0), torch.ones(2)),
        ValueError,
        "at least 1-D",
    ),
    (
        "fe-include-int",
        lambda: ops.fourier_embed(torch.ones(2), torch.ones(2), 1),
        TypeError,
        "include_input",
    ),
    (
        "fe-freqs-grad",
        lambda: ops.fourier_embed(torch.ones(2), torch.ones(2, requires_grad=True)),
        ValueError,
        "requires grad",
    ),
    (
        "fe-device",
        lambda: ops.fourier_embed(torch.ones(2, device="meta"), torch.ones(2)),
        ValueError,
        "same device",
    ),
    ("ff-num-0", lambda: ops.fourier_frequencies(0, 4), ValueError, "num must be >= 1"),
    ("ff-num-float", lambda: ops.fourier_frequencies(2.0, 4), TypeError, "num must be an int"),
    ("ff-num-bool", lambda: ops.fourier_frequencies(True, 4), TypeError, "num must be an int"),
    ("ff-nan", lambda: ops.fourier_frequencies(3, float("nan")), ValueError, "finite"),
    ("ff-scale-str", lambda: ops.fourier_frequencies(3, 2, scale="pi"), TypeError, "scale"),
    # nearest_assign
    (
        "na-int",
        lambda: ops.nearest_assign(
            torch.ones(3, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64)
        ),
        TypeError,
        "dtype",
    ),
    (
        "na-dtype-mismatch",
        lambda: ops.nearest_assign(torch.ones(3, 2), torch.ones(2, 2, dtype=torch.float64)),
        TypeError,
        "must match",
    ),
    ("na-rank", lambda: ops.nearest_assign(torch.ones(3), torch.ones(2, 1)), ValueError, "points"),
    (
        "na-rank-centers",
        lambda: ops.nearest_assign(torch.ones(3, 2), torch.ones(1, 1, 2, 2)),
        ValueError,
        "centers",
    ),
    (
        "na-d-mismatch",
        lambda: ops.nearest_assign(torch.ones(3, 2), torch.ones(4, 3)),
        ValueError,
        "coordinate dimension",
    ),
    (
        "na-d-zero",
        lambda: ops.nearest_assign(torch.ones(3, 0), torch.ones(4, 0)),
        ValueError,
        "coordinate dimension",
    ),
    (
        "na-k-zero",
        lambda: ops.nearest_assign(torch.ones(3, 2), torch.ones(0, 2)),
        ValueError,
        "K = 0",
    ),
    (
        "na-batch",
        lambda: ops.nearest_assign(torch.ones(2, 3, 2), torch.ones(3, 4, 2)),
        ValueError,
        "batch sizes differ",
    ),
    (
        "na-nan",
        lambda: ops.nearest_assign(torch.tensor([[0.0, float("nan")]]), torch.ones(2, 2)),
        ValueError,
        "points contains NaN",
    ),
    (
        "na-inf",
        lambda: ops.nearest_assign(torch.ones(3, 2), torch.tensor([[float("inf"), 0.0]])),
        ValueError,
        "centers contains NaN or inf",
    ),
    (
        "na-device",
        lambda: ops.nearest_assign(torch.ones(3, 2), torch.ones(2, 2, device="meta")),
        ValueError,
        "same device",
    ),
    # grid_assign / grid_centers
    (
        "ga-int",
        lambda: ops.grid_assign(torch.ones(3, 2, dtype=torch.int32), (2, 2), 0.0, 1.0),
        TypeError,
        "dtype",
    ),
    (
        "ga-axes",
        lambda: ops.grid_assign(torch.ones(3, 2), (2, 2, 2), 0.0, 1.0),
        ValueError,
        "3 axes but the points have d = 2",
    ),
    (
        "ga-zero-cells",
        lambda: ops.grid_assign(torch.ones(3, 2), (2, 0), 0.0, 1.0),
        ValueError,
        ">= 1",
    ),
    (
        "ga-float-cells",
        lambda: ops.grid_assign(torch.ones(3, 2), (2, 2.5), 0.0, 1.0),
        TypeError,
        "int",
    ),
    (
        "ga-shape-str",
        lambda: ops.grid_assign(torch.ones(3, 2), "ab", 0.0, 1.0),
        TypeError,
        "sequence of ints",
    ),
    (
        "ga-low-high",
        lambda: ops.grid_assign(torch.ones(3, 2), (2, 2), (0.0, 1.0), (1.0, 1.0)),
        ValueError,
        "low < high",
    ),
    (
        "ga-low-len",
        lambda: ops.grid_assign(torch.ones(3, 2), (2, 2), (0.0,), 1.0),
        ValueError,
        "low has 1 entries",
    ),
    (
        "ga-low-nan",
        lambda: ops.grid_assign(torch.ones(3, 2), (2, 2), float("nan"), 1.0),
        ValueError,
        "finite",
    ),
    ("ga-rank", lambda: ops.grid_assign(torch.ones(3), (3,), 0.0, 1.0), ValueError, "points"),
    (
        "ga-nan",
        lambda: ops.grid_assign(torch.tensor([[float("nan")]]), (3,), 0.0, 1.0),
        ValueError,
        "NaN",
    ),
    ("gc-dtype", lambda: ops.grid_centers((2,), 0.0, 1.0, dtype=torch.int64), TypeError, "dtype"),
    ("gc-empty", lambda: ops.grid_centers((), 0.0, 1.0), ValueError, "at least one axis"),
    # group_layout
    ("gl-float", lambda: ops.group_layout(torch.zeros(3), 2), TypeError, "int32, int64"),
    (
        "gl-rank",
        lambda: ops.group_layout(torch.zeros(1, 2, 3, dtype=torch.int64), 2),
        ValueError,
        r"\[N\] or \[B, N\]",
    ),
    (
        "gl-k-zero",
        lambda: ops.group_layout(torch.zeros(3, dtype=torch.int64), 0),
        ValueError,
        "num_groups must be >= 1",
    ),
    (
        "gl-k-float",
        lambda: ops.group_layout(torch.zeros(3, dtype=torch.int64), 2.0),
        TypeError,
        "num_groups must be an int",
    ),
    (
        "gl-negative",
        lambda: ops.group_layout(torch.tensor([0, -1, 1]), 2),
        ValueError,
        r"values in \[-1, 1\]",
    ),
    (
        "gl-too-big",
        lambda: ops.group_layout(torch.tensor([[0, 2], [1, 1]]), 2),
        ValueError,
        r"must lie in \[0, 2\)",
    ),
    (
        "gl-overflow",
        lambda: ops.group_layout(torch.zeros(4, 1, dtype=torch.int64), 2**30),
        ValueError,
        "int32",
    ),
    # grouped_cross_attention
    ("gca-heads", _gca(q=torch.randn(3, 3, 8)), ValueError, "multiple of kv heads"),
    ("gca-offsets-start", _gca(offsets=torch.tensor([1, 4, 4, 10])), ValueError, r"offsets\[0\]"),
    (
        "gca-offsets-monotone",
        _gca(offsets=torch.tensor([0, 5, 4, 10])),
        ValueError,
        "non-decreasing",
    ),
    ("gca-offsets-end", _gca(offsets=torch.tensor([0, 4, 4, 9])), ValueError, "T = 10"),
    ("gca-offsets-count", _gca(offsets=torch.tensor([0, 4, 10])), ValueError, "G \\+ 1 = 4"),
    ("gca-offsets-float", _gca(offsets=torch.tensor([0.0, 4, 4, 10])), TypeError, "offsets"),
    ("gca-offsets-2d", _gca(offsets=torch.tensor([[0, 4, 4, 10]])), ValueError, "1-D"),
    ("gca-dtype", _gca(k=torch.randn(10, 2, 8, dtype=torch.float64)), TypeError, "must match"),
    ("gca-int", _gca(q=torch.ones(3, 4, 8, dtype=torch.int64)), TypeError, "dtype"),
    ("gca-head-dim", _gca(k=torch.randn(10, 2, 7)), ValueError, "head dim"),
    ("gca-kv-tokens", _gca(v=torch.randn(9, 2, 5)), ValueError, "agree on"),
    ("gca-q-rank", _gca(q=torch.randn(3, 32)), ValueError, r"\[G, Hq, D\]"),
    (
        "gca-device",
        _gca(offsets=torch.tensor([0, 4, 4, 10], device="meta")),
        ValueError,
        "same device",
    ),
    ("gca-scale-type", _gca(scale="0.5"), TypeError, "scale"),
    ("gca-scale-nan", _gca(scale=float("nan")), ValueError, "finite"),
    ("gca-not-tensor", _gca(v=[1.0]), TypeError, "v must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize(
    ("call", "exc", "match"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_inputs_raise_clear_errors(
    call: Callable[[], object], exc: type[Exception], match: str, backend: str
) -> None:
    with ops.use_backend(backend), pytest.raises(exc, match=match):
        call()


def test_validate_false_skips_only_the_syncing_checks() -> None:
    nan_points = torch.tensor([[0.0, float("nan")]])
    ops.nearest_assign(nan_points, torch.ones(2, 2), validate=False)  # no value check
    ops.grid_assign(nan_points, (2, 2), 0.0, 1.0, validate=False)
    with pytest.raises(ValueError, match="multiple of kv heads"):  # shape checks stay
        _gca(q=torch.randn(3, 3, 8), validate=False)()


def test_value_checks_are_skipped_for_meta_tensors() -> None:
    assign = torch.zeros(2, 5, dtype=torch.int64, device="meta")
    perm, offsets = ops.group_layout(assign, 3)
    assert perm.shape == (2, 5) and offsets.shape == (7,) and offsets.dtype == torch.int32
    pts = torch.zeros(4, 2, device="meta")
    assert ops.nearest_assign(pts, torch.zeros(3, 2, device="meta")).shape == (4,)


# ------------------------------------------------------------------------------------------------
# Every op through the public API agrees with its reference (whichever backend "auto" picks)


def test_public_ops_agree_with_references() -> None:
    x, freqs = torch.randn(5, 3), ops.fourier_frequencies(4, 3)
    torch.testing.assert_close(ops.fourier_embed(x, freqs, True), ref.fourier_embed(x, freqs, True))
    pts, ctr = torch.rand(2, 64, 2), torch.rand(2, 9, 2)
    assert torch.equal(ops.nearest_assign(pts, ctr), ref.nearest_assign(pts, ctr))
    assert torch.equal(
        ops.grid_assign(pts, (3, 5), 0.0, 1.0), ref.grid_assign(pts, (3, 5), (0.0, 0.0), (1.0, 1.0))
    )
    assert torch.equal(
        ops.grid_centers((3, 5), 0.0, 1.0), ref.grid_centers((3, 5), (0.0, 0.0), (1.0, 1.0))
    )
    assign = ops.nearest_assign(pts, ctr)
    for got, want in zip(ops.group_layout(assign, 9), ref.group_layout(assign, 9), strict=True):
        assert torch.equal(got, want)
    q, k, v = torch.randn(4, 2, 8), torch.randn(12, 1, 8), torch.randn(12, 1, 3)
    offsets = torch.tensor([0, 5, 5, 6, 12], dtype=torch.int32)
    torch.testing.assert_close(
        ops.grouped_cross_attention(q, k, v, offsets, 0.5),
        ref.grouped_cross_attention(q, k, v, offsets, 0.5),
    )


def test_public_ops_accept_non_contiguous_inputs() -> None:
    pts = torch.rand(2, 3, 40).transpose(1, 2)  # [2, 40, 3], non-contiguous
    ctr = torch.rand(3, 9)[:, ::2].T  # [5, 3]
    assert not pts.is_contiguous() and not ctr.is_contiguous()
    want = ops.nearest_assign(pts.contiguous(), ctr.contiguous())
    assert torch.equal(ops.nearest_assign(pts, ctr), want)
    assert torch.equal(
        ops.grid_assign(pts, (2, 3, 4), 0.0, 1.0),
        ops.grid_assign(pts.contiguous(), (2, 3, 4), 0.0, 1.0),
    )
    assign = torch.randint(0, 4, (7, 3)).T  # [3, 7]
    for got, exp in zip(
        ops.group_layout(assign, 4), ops.group_layout(assign.contiguous(), 4), strict=True
    ):
        assert torch.equal(got, exp)
    q = torch.randn(4, 3, 8)[:, ::2]  # [4, 2, 8]
    k = torch.randn(16, 8, 2).transpose(1, 2)  # [16, 2, 8]
    v = torch.randn(16, 2, 10)[..., ::2]  # [16, 2, 5]
    offsets = torch.tensor([0, 0, 3, 9, 16, 99])[:5]
    torch.testing.assert_close(
        ops.grouped_cross_attention(q, k, v, offsets),
        ops.grouped_cross_attention(q.contiguous(), k.contiguous(), v.contiguous(), offsets),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_public_ops_on_cuda_match_cpu_references(backend: str) -> None:
    cuda = torch.device("cuda")
    x, freqs = torch.randn(33, 3), ops.fourier_frequencies(6, 5)
    with ops.use_backend(backend):
        out = ops.fourier_embed(x.to(cuda), freqs.to(cuda), True)
    torch.testing.assert_close(out.cpu(), ref.fourier_embed(x, freqs, True), rtol=0, atol=2e-4)
    pts, ctr = torch.rand(2, 500, 3), torch.rand(2, 37, 3)
    with ops.use_backend(backend):
        got = ops.nearest_assign(pts.to(cuda), ctr.to(cuda))
        grid = ops.grid_assign(pts.to(cuda), (3, 5, 7), -0.2, 1.1)
        perm, offsets = ops.group_layout(got, 37)
    assert torch.equal(got.cpu(), ref.nearest_assign(pts, ctr))
    assert torch.equal(grid.cpu(), ref.grid_assign(pts, (3, 5, 7), (-0.2,) * 3, (1.1,) * 3))
    want_perm, want_offsets = ref.group_layout(got.cpu(), 37)
    assert torch.equal(perm.cpu(), want_perm) and torch.equal(offsets.cpu(), want_offsets)
    q, k, v = torch.randn(74, 4, 16), torch.randn(1000, 2, 16), torch.randn(1000, 2, 8)
    offs = offsets.long()
    with ops.use_backend(backend):
        att = ops.grouped_cross_attention(q.to(cuda), k.to(cuda), v.to(cuda), offs.to(cuda))
    torch.testing.assert_close(att.cpu(), ref.grouped_cross_attention(q, k, v, offs))


def test_inrflow_exposes_warning_class() -> None:
    assert issubclass(inrflow.ExtensionWarning, UserWarning)
