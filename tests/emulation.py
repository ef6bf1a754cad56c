"""Build and load CUDA kernel sources for the CPU SIMT emulator (test-only).

The unchanged ``csrc/kernels/*.cu`` files are compiled by g++ with ``tests/simt/prelude.h``
force-included and linked with ``tests/simt/runtime.cpp`` into a shared library that tests call
through ctypes. Each CUDA thread runs as a fiber, so ``__syncthreads`` and warp shuffles are real
rendezvous points; ``tests/simt/README.md`` says how the emulation works.

Typical use::

    from emulation import SCHEDULES, build_emulated, requires_emulator

    @requires_emulator
    @pytest.mark.parametrize(("order", "seed"), SCHEDULES)
    def test_kernel(order, seed):
        lib = build_emulated(["csrc/kernels/fourier.cu"], "fourier")
        lib.set_schedule(order, seed)
        rc = lib.inrflow_fourier_embed_forward(...)
        assert rc == 0, lib.last_error()
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SIMT_DIR = REPO_ROOT / "tests" / "simt"
PRELUDE = SIMT_DIR / "prelude.h"
RUNTIME = SIMT_DIR / "runtime.cpp"
INCLUDE_DIR = REPO_ROOT / "csrc" / "include"
BUILD_DIR = REPO_ROOT / "build" / "simt"

#: (order, seed) pairs to parametrise emulated-kernel tests with.
SCHEDULES = [("forward", 0), ("reverse", 0), ("random", 1), ("random", 7)]

_ORDERS = {"forward": 0, "reverse": 1, "random": 2}
_REQUIRED_HEADERS = (
    "cuda_fp16.h",
    "cuda_bf16.h",
    "driver_types.h",
    "vector_types.h",
    "vector_functions.h",
    "cuda_runtime_api.h",
)
# Flags shared by every emulated build. -fstack-clash-protection probes each page of large
# frames, so a fiber that overflows its stack always lands on the guard page below it.
# -fno-extern-tls-init: `extern __shared__` arrays are thread_local symbols defined at link time
# (and possibly in an anonymous namespace); they never need a dynamic-initialisation wrapper.
BASE_FLAGS = (
    "-std=c++17",
    "-O1",
    "-g",
    "-fno-strict-aliasing",
    "-fPIC",
    "-fstack-clash-protection",
    "-fno-extern-tls-init",
    "-U_FORTIFY_SOURCE",
)
SANITIZE_FLAGS = (
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=undefined",
    "-DSIMT_USE_SWAPCONTEXT=1",
)
# Every `extern __shared__` array aliases one buffer this large (the H100 per-block maximum plus
# room for the overrun red zone checked by the runtime).
DYNAMIC_SMEM_CAPACITY = 227 * 1024 + 4096


class EmulatorBuildError(RuntimeError):
    """Compiling or linking an emulated kernel library failed (the message holds g++'s output)."""


def _has_headers(include: Path) -> bool:
    return all((include / name).is_file() for name in _REQUIRED_HEADERS)


@functools.cache
def cuda_include_dir() -> Path | None:
    """Directory with the toolkit's host-safe headers (``cuda_fp16.h`` ...), or None.

    Looks at ``CUDA_HOME``, ``CUDA_PATH``, the toolkit of a real ``nvcc`` on PATH (wrapper scripts
    that ``exec`` a toolkit nvcc are followed), ``/usr/local/cuda`` and ``/usr/local/cuda-*``.
    """
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            candidates.append(Path(value) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent / "include")
        try:  # a small shell wrapper such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`
            if real.stat().st_size < 4096:
                match = re.search(r"(/\S+)/bin/nvcc\b", real.read_text(errors="ignore"))
                if match:
                    candidates.append(Path(match.group(1)) / "include")
        except OSError:
            pass
    candidates.append(Path("/usr/local/cuda/include"))
    versioned = sorted(
        Path("/usr/local").glob("cuda-*"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)],
        reverse=True,
    )
    candidates.extend(p / "include" for p in versioned)
    for include in candidates:
        if _has_headers(include):
            return include.resolve()
    return None


def _compiler() -> str | None:
    return os.environ.get("CXX_SIMT") or shutil.which("g++")


def sanitize_enabled() -> bool:
    """True when ``INRFLOW_SIMT_SANITIZE=1`` asks for an ASan+UBSan build."""
    return os.environ.get("INRFLOW_SIMT_SANITIZE", "") not in ("", "0")


def emulator_available() -> bool:
    """True when g++ and the CUDA headers needed by the prelude are present."""
    return _compiler() is not None and cuda_include_dir() is not None


requires_emulator = pytest.mark.skipif(
    not emulator_available(),
    reason="SIMT emulator needs g++ and the CUDA toolkit headers (set CUDA_HOME)",
)


class EmulatedLibrary:
    """A kernel library built for the emulator: exported C functions plus emulator controls.

    Attribute access falls through to the ``ctypes.CDLL``; set ``argtypes`` on launchers that take
    64-bit integers (ctypes passes plain Python ints as C ``int``), or use :meth:`function`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.cdll = ctypes.CDLL(str(self.path))
        lib = self.cdll
        lib.simt_set_schedule.argtypes = [ctypes.c_int, ctypes.c_uint64]
        lib.simt_set_schedule.restype = None
        lib.simt_last_error.argtypes = []
        lib.simt_last_error.restype = ctypes.c_char_p
        lib.simt_clear_error.argtypes = []
        lib.simt_clear_error.restype = None
        lib.simt_set_stack_size.argtypes = [ctypes.c_size_t]
        lib.simt_set_stack_size.restype = ctypes.c_int
        lib.simt_get_stack_size.argtypes = []
        lib.simt_get_stack_size.restype = ctypes.c_size_t
        lib.simt_set_strict.argtypes = [ctypes.c_int]
        lib.simt_set_strict.restype = None

    def set_schedule(self, order: str, seed: int = 0) -> None:
        """Resume runnable fibers in ``forward``, ``reverse`` or seeded ``random`` order."""
        if order not in _ORDERS:
            raise ValueError(f"unknown schedule {order!r}; expected one of {sorted(_ORDERS)}")
        self.cdll.simt_set_schedule(_ORDERS[order], seed & 0xFFFFFFFFFFFFFFFF)

    def last_error(self) -> str | None:
        """Message of the last failed launch (None if there was none since clear_error)."""
        raw = self.cdll.simt_last_error()
        return raw.decode(errors="replace") if raw else None

    def clear_error(self) -> None:
        """Forget the last error message and reset cudaGetLastError."""
        self.cdll.simt_clear_error()

    def set_stack_size(self, nbytes: int) -> None:
        """Per-fiber stack size (default 64 KiB, or INRFLOW_SIMT_STACK_SIZE)."""
        if self.cdll.simt_set_stack_size(nbytes) != 0:
            raise ValueError(f"stack size {nbytes} is too small")

    def stack_size(self) -> int:
        """Current per-fiber stack size in bytes."""
        return int(self.cdll.simt_get_stack_size())

    def set_strict(self, strict: bool) -> None:
        """Strict mode (default): divergent barriers and masks naming exited lanes are errors."""
        self.cdll.simt_set_strict(1 if strict else 0)

    def function(self, name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:
        """The exported function ``name`` with its ctypes signature set."""
        fn = getattr(self.cdll, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)
        return fn

    def __getattr__(self, name: str) -> object:
        if name == "cdll":  # not initialised yet (e.g. during copy); avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.cdll, name)

    def __repr__(self) -> str:
        return f"EmulatedLibrary({str(self.path)!r})"


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    h.update(str(path).encode())
    h.update(b"\0")
    h.update(path.read_bytes())
    h.update(b"\0")


@functools.cache
def _compiler_id(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def _header_files(sources: Sequence[Path]) -> list[Path]:
    """Files whose edits must rebuild: csrc/include, tests/simt and headers next to the sources."""
    files: set[Path] = set()
    for d in {INCLUDE_DIR, SIMT_DIR, *(s.parent for s in sources)}:
        if d.is_dir():
            for pattern in ("*.h", "*.hpp", "*.cuh", "*.inl"):
                files.update(p for p in d.rglob(pattern) if p.is_file())
    files.add(RUNTIME)
    return sorted(files)


def _build_flags() -> tuple[str, ...]:
    return (*BASE_FLAGS, *(SANITIZE_FLAGS if sanitize_enabled() else ()))


def _resolve_sources(sources: Sequence[str | Path]) -> list[Path]:
    paths = [p if p.is_absolute() else REPO_ROOT / p for p in map(Path, sources)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(p)
    return paths


def emulated_library_path(
    sources: Sequence[str | Path], name: str, extra_flags: Sequence[str] = ()
) -> Path:
    """Cache location of the library that :func:`build_emulated` makes from these inputs.

    The key hashes the sources, every header under csrc/include and tests/simt (and next to the
    sources), runtime.cpp, the flags, the CUDA include directory and the compiler version.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"library name {name!r} must be a plain file name")
    cxx = _compiler()
    include = cuda_include_dir()
    paths = _resolve_sources(sources)
    h = hashlib.sha256()
    for p in paths:
        _hash_file(h, p)
    for p in _header_files(paths):
        _hash_file(h, p)
    h.update(repr((_build_flags(), tuple(extra_flags), str(include), cxx)).encode())
    if cxx:
        h.update(_compiler_id(cxx).encode())
    return BUILD_DIR / f"lib{name}-{h.hexdigest()[:16]}.so"


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EmulatorBuildError(
            f"{what} failed (exit {proc.returncode}):\n  {' '.join(cmd)}\n{proc.stderr}"
        )


def _runtime_object(cxx: str, include: Path, flags: tuple[str, ...]) -> Path:
    """runtime.cpp compiled once per flag set (cached beside the libraries)."""
    # The runtime is the hot path of every emulated kernel: optimise it harder.
    rt_flags = [("-O2" if f == "-O1" else f) for f in flags]
    h = hashlib.sha256()
    _hash_file(h, RUNTIME)
    _hash_file(h, PRELUDE)
    h.update(repr((rt_flags, str(include), _compiler_id(cxx))).encode())
    out = BUILD_DIR / f"runtime-{h.hexdigest()[:16]}.o"
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(dir=BUILD_DIR, suffix=".o.tmp")
    os.close(fd)
    try:
        cmd = [cxx, "-x", "c++", *rt_flags, "-I", str(SIMT_DIR), "-I", str(include)]
        _run([*cmd, "-c", str(RUNTIME), "-o", tmp], "compiling the SIMT runtime")
        os.replace(tmp, out)  # atomic: concurrent builders never see a partial file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


_READELF_TLS = re.compile(r"^\s*\d+:\s+\S+\s+\d+\s+TLS\s+\S+\s+\S+\s+(\S+)\s+(\S+)\s*$")


def _dynamic_smem_symbols(objects: Sequence[Path]) -> list[str]:
    """Thread-local symbols referenced but never defined: the `extern __shared__` arrays."""
    readelf = shutil.which("readelf") or "readelf"
    proc = subprocess.run(
        [readelf, "-sW", *map(str, objects)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise EmulatorBuildError(f"readelf failed:\n{proc.stderr}")
    undefined: set[str] = set()
    defined: set[str] = set()
    for line in proc.stdout.splitlines():
        if m := _READELF_TLS.match(line):
            (undefined if m.group(1) == "UND" else defined).add(m.group(2))
    return sorted(undefined - defined)


def _dynamic_smem_source(symbols: Sequence[str]) -> str:
    """C++ defining every dynamic-shared-memory symbol as an alias of one buffer (as on a GPU,
    all `extern __shared__` arrays of a kernel start at the same address)."""
    first, rest = symbols[0], symbols[1:]
    lines = [
        "// Generated by tests/emulation.py: backing store of the `extern __shared__` arrays.",
        "#include <cstddef>",
        'extern "C" void simt_register_dynamic_smem(unsigned char* (*)(), std::size_t,'
        " const char*);",
        f"alignas(128) thread_local unsigned char simt_dynamic_smem[{DYNAMIC_SMEM_CAPACITY}]"
        f' asm("{first}");',
    ]
    lines += [
        f'extern thread_local unsigned char simt_dynamic_smem_alias{i}[] asm("{sym}")'
        f' __attribute__((alias("{first}")));'
        for i, sym in enumerate(rest)
    ]
    lines += [
        "static unsigned char* simt_dynamic_smem_get() { return simt_dynamic_smem; }",
        "namespace {",
        "struct Register {",
        "  Register() {",
        f"    simt_register_dynamic_smem(&simt_dynamic_smem_get, {DYNAMIC_SMEM_CAPACITY},"
        f' "{" ".join(symbols)}");',
        "  }",
        "} register_dynamic_smem;",
        "}  // namespace",
        "",
    ]
    return "\n".join(lines)


def _max_jobs() -> int:
    """Parallel compiler processes: MAX_JOBS when set, else the number of CPUs."""
    try:
        jobs = int(os.environ.get("MAX_JOBS", "0"))
    except ValueError:
        jobs = 0
    return max(1, jobs or os.cpu_count() or 1)


def _check_sanitizer_runtime() -> None:
    if sanitize_enabled() and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        raise EmulatorBuildError(
            "INRFLOW_SIMT_SANITIZE=1 builds need the ASan runtime loaded first, e.g.\n"
            "  LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 "
            "INRFLOW_SIMT_SANITIZE=1 python -m pytest ..."
        )


def build_emulated(
    sources: Sequence[str | Path], name: str, extra_flags: Sequence[str] = ()
) -> EmulatedLibrary:
    """Compile CUDA sources for the CPU emulator into a cached shared library and load it.

    Relative source paths are taken from the repository root. Edits to the sources, to the
    headers under csrc/include and tests/simt or to the flags rebuild (see
    :func:`emulated_library_path`); concurrent pytest processes publish by atomic rename.
    Raises EmulatorBuildError, with g++'s messages, when compiling or linking fails.
    """
    cxx = _compiler()
    include = cuda_include_dir()
    if cxx is None or include is None:
        raise EmulatorBuildError("the SIMT emulator needs g++ and the CUDA toolkit headers")
    _check_sanitizer_runtime()
    lib_path = emulated_library_path(sources, name, extra_flags)
    if lib_path.exists():
        return EmulatedLibrary(lib_path)

    paths = _resolve_sources(sources)
    flags = _build_flags()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    compile_cmd = [cxx, "-x", "c++", *flags, "-include", str(PRELUDE), "-I", str(INCLUDE_DIR)]
    compile_cmd += ["-I", str(include), *extra_flags]
    with tempfile.TemporaryDirectory(dir=BUILD_DIR, prefix=f"{name}-") as tmp_dir:
        tmp = Path(tmp_dir)
        objects = [tmp / f"{i}-{p.stem}.o" for i, p in enumerate(paths)]
        jobs = _max_jobs()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runtime = pool.submit(_runtime_object, cxx, include, flags)
            compiles = [
                pool.submit(
                    _run, [*compile_cmd, "-c", str(src), "-o", str(obj)], f"compiling {src}"
                )
                for src, obj in zip(paths, objects, strict=True)
            ]
            for job in compiles:
                job.result()
            link_inputs = [*map(str, objects), str(runtime.result())]
        symbols = _dynamic_smem_symbols(objects)
        if symbols:
            gen = tmp / "dynamic_smem.cpp"
            gen.write_text(_dynamic_smem_source(symbols))
            _run(
                [cxx, *flags, "-c", str(gen), "-o", str(tmp / "dynamic_smem.o")],
                "compiling the dynamic shared memory definitions",
            )
            link_inputs.append(str(tmp / "dynamic_smem.o"))
        sanitize_link = [f for f in flags if f.startswith("-fsanitize")]
        tmp_lib = tmp / "lib.so"
        link = [cxx, "-shared", "-fPIC", *sanitize_link, "-o", str(tmp_lib), *link_inputs]
        # -Bsymbolic: the library's own runtime (and __assert_fail) win over any other copy.
        link += ["-Wl,--no-undefined", "-Wl,-Bsymbolic", "-lm", "-lpthread"]
        _run(link, f"linking {name}")
        os.replace(tmp_lib, lib_path)  # atomic publish
    return EmulatedLibrary(lib_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Build an emulated library from the command line (CMake's ``inrflow_simt`` target uses it)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="CUDA source files (.cu)")
    parser.add_argument("--name", default="kernels", help="library name in the cache")
    args = parser.parse_args(argv)
    try:
        lib = build_emulated(args.sources, args.name)
    except EmulatorBuildError as err:
        print(err)
        return 1
    print(lib.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
