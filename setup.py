"""Build of record for ``inrflow._C``.

The C++ CPU kernels are always built. The CUDA kernels are built whenever torch is a CUDA build
and a CUDA toolkit is found, even on a machine with no GPU (``INRFLOW_CUDA=0`` turns them off,
``INRFLOW_CUDA=1`` makes a missing toolkit an error). Install with
``pip install --no-build-isolation -e .`` so the extension is built against the torch you have.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_ARCH_LIST = "8.0;9.0"  # A100, H100/H200


def log(msg: str) -> None:
    print(f"[inrflow setup] {msg}", file=sys.stderr)


def _is_toolkit(path: Path) -> bool:
    """A usable toolkit has a real nvcc and the runtime library the extension links against."""
    has_nvcc = (path / "bin" / "nvcc").is_file()
    has_cudart = any(any((path / lib).glob("libcudart.so*")) for lib in ("lib64", "lib"))
    return has_nvcc and has_cudart


def find_cuda_home() -> Path | None:
    """Locate the CUDA toolkit directory (the one holding bin/nvcc and lib64/libcudart.so).

    torch guesses from the nvcc on PATH, which is wrong when that nvcc is a wrapper script living
    outside the toolkit (it then links against a directory with no libcudart), so every candidate
    is checked for the runtime library.
    """
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
        # A wrapper script such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"` names the real one.
        try:
            text = Path(nvcc).read_text(errors="ignore")[:4096]
        except OSError:
            text = ""
        for token in text.split():
            token = token.strip("'\"")
            if token.endswith("/bin/nvcc"):
                candidates.append(Path(token).parent.parent)
    try:
        import torch

        if torch.version.cuda:
            candidates.append(Path(f"/usr/local/cuda-{torch.version.cuda}"))
    except ImportError:
        pass
    candidates.append(Path("/usr/local/cuda"))
    candidates += sorted((Path(p) for p in glob.glob("/usr/local/cuda-*")), reverse=True)
    for path in candidates:
        if _is_toolkit(path):
            return path.resolve()
    return None


def nvidia_wheel_include_dirs() -> list[str]:
    """Include dirs of the pip `nvidia` packages (cuSPARSE/cuBLAS headers that torch includes).

    They also hold a partial copy of the runtime headers, so they must be searched *after* the
    toolkit's own include dir (``-idirafter``), never before it.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs: list[str] = []
    for base in spec.submodule_search_locations:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def want_cuda(torch_module) -> tuple[bool, Path | None]:
    """Decide whether to build the CUDA kernels; returns (build, toolkit dir)."""
    choice = os.environ.get("INRFLOW_CUDA", "auto").strip().lower()
    if choice in ("0", "off", "false", "no"):
        log("INRFLOW_CUDA=0: building the CPU kernels only")
        return False, None
    cuda_home = find_cuda_home()
    torch_has_cuda = torch_module.version.cuda is not None
    if choice in ("1", "on", "true", "yes"):
        if not torch_has_cuda:
            raise RuntimeError("INRFLOW_CUDA=1 but torch is a CPU-only build; install a CUDA torch")
        if cuda_home is None:
            raise RuntimeError(
                "INRFLOW_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME to the directory "
                "holding bin/nvcc and lib64/libcudart.so"
            )
        return True, cuda_home
    if not torch_has_cuda:
        log(f"torch {torch_module.__version__} is a CPU-only build: skipping the CUDA kernels")
        return False, None
    if cuda_home is None:
        log("no CUDA toolkit (nvcc + libcudart) found: skipping the CUDA kernels")
        return False, None
    return True, cuda_home


def build_extensions() -> tuple[list, dict]:
    try:
        import torch
    except ImportError:  # e.g. `python setup.py --version` before torch is installed
        log("torch is not installed: building no extension (install torch first)")
        return [], {}

    use_cuda, cuda_home = want_cuda(torch)
    if use_cuda:
        # cpp_extension reads CUDA_HOME when it is imported, so set it first.
        os.environ["CUDA_HOME"] = str(cuda_home)
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            if torch.cuda.is_available():
                log("TORCH_CUDA_ARCH_LIST unset: torch targets the visible GPUs")
            else:
                # Without a GPU torch's arch detection gets an empty list and crashes.
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
                log(f"no GPU visible: TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH_LIST}")
        log(
            f"building CUDA kernels with toolkit {cuda_home}, "
            f"archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'native')}"
        )

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    py_limited_api = True  # torch >= 2.6: one abi3 wheel per torch version
    # csrc/*.cpp: the schemas (ops.cpp) and the device-neutral argument checks (checks.cpp).
    sources = [
        *sorted(glob.glob(str(CSRC / "*.cpp"))),
        *sorted(glob.glob(str(CSRC / "cpu" / "*.cpp"))),
    ]
    include_dirs = [str(CSRC / "include")]
    debug = os.environ.get("INRFLOW_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = list(opt)  # torch adds -DPy_LIMITED_API itself for py_limited_api builds
    nvcc_flags = [*opt, "-lineinfo", "--expt-relaxed-constexpr"]
    define_macros = []
    link_flags: list[str] = []
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is an OpenMP loop in torch's headers: without -fopenmp it runs on one
        # thread.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if use_cuda:
        # Per-op CUDA registrations (csrc/cuda/*.cpp) are host code.
        sources += sorted(glob.glob(str(CSRC / "cuda" / "*.cpp")))
        sources += sorted(glob.glob(str(CSRC / "kernels" / "*.cu")))
        for inc in nvidia_wheel_include_dirs():
            cxx_flags += ["-idirafter", inc]
        define_macros.append(("WITH_CUDA", None))
        ext_cls = CUDAExtension
        extra = {"cxx": cxx_flags, "nvcc": nvcc_flags}
    else:
        ext_cls = CppExtension
        extra = {"cxx": cxx_flags}

    ext = ext_cls(
        name="inrflow._C",
        sources=[os.path.relpath(s, ROOT) for s in sources],
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=link_flags,
        py_limited_api=py_limited_api,
    )
    cmdclass = {"build_ext": BuildExtension}
    return [ext], cmdclass


ext_modules, cmdclass = build_extensions()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
