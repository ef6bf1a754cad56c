"""Reading generated and reference sets for evaluation: point clouds (arrays, PLY), the files
of a samples path, and labels (which domain a samples path holds is for the domains to say:
:func:`inrflow.domains.domain_of_samples`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from inrflow.metrics.images import ARRAY_SUFFIXES, load_array_file

__all__ = [
    "check_labels",
    "first_array",
    "load_labels",
    "load_point_clouds",
    "read_ply",
    "sample_files",
    "stored_labels",
]

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """Vertex ``x, y, z`` of a PLY file (ascii, binary little or big endian) as float64 ``[P, 3]``.

    Only the vertex element is read (faces and other elements after it are ignored); list
    properties on vertices are not supported.
    """
    p = Path(path)
    with p.open("rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{p}: not a PLY file")
        fmt = None
        elements: list[tuple[str, int, list[tuple[str, str]]]] = []
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{p}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property":
                if words[1] == "list":
                    if elements and elements[-1][0] == "vertex":
                        raise ValueError(f"{p}: list properties on vertices are not supported")
                    continue
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{p}: the first PLY element must be 'vertex'")
        _, count, props = elements[0]
        names = [n for n, _ in props]
        if not {"x", "y", "z"} <= set(names):
            raise ValueError(f"{p}: vertices lack x, y, z properties ({names})")
        if fmt == "ascii":
            rows = [fh.readline().split() for _ in range(count)]
            arr = np.asarray(rows, dtype=np.float64).reshape(count, len(names))
            cols = [names.index(c) for c in "xyz"]
            return arr[:, cols]
        if fmt not in ("binary_little_endian", "binary_big_endian"):
            raise ValueError(f"{p}: unknown PLY format {fmt!r}")
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        data = np.frombuffer(fh.read(dtype.itemsize * count), dtype=dtype, count=count)
        return np.stack([data[c].astype(np.float64) for c in "xyz"], axis=1)


def _cloud_file(path: Path) -> torch.Tensor:
    if path.suffix.lower() == ".ply":
        return torch.from_numpy(read_ply(path)).unsqueeze(0)
    arr = load_array_file(path)
    return arr.unsqueeze(0) if arr.dim() == 2 else arr


def load_point_clouds(source: str | os.PathLike | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Clouds ``[N, P, 3]`` from a tensor/array, an array file (``[N, P, 3]`` or one ``[P, 3]``
    cloud), or a folder of ``.ply``/``.npy``/``.npz``/``.pt`` files (one or more clouds each,
    read in sorted order). Every cloud must have the same number of points."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(source)
        return x.unsqueeze(0) if x.dim() == 2 else x
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"point-cloud source not found: {path}")
    if path.is_dir():
        files = sorted(
            f
            for f in path.rglob("*")
            if f.is_file() and f.suffix.lower() in (".ply", *ARRAY_SUFFIXES)
        )
        if not files:
            raise FileNotFoundError(f"{path}: no .ply/.npy/.npz/.pt point-cloud files")
    else:
        files = [path]
    clouds = []
    for f in files:
        try:
            clouds.append(_cloud_file(f))
        except Exception as exc:
            raise ValueError(f"cannot read point clouds from {f}: {exc}") from exc
    sizes = {tuple(c.shape[1:]) for c in clouds}
    if len(sizes) != 1:
        raise ValueError(f"{path}: clouds differ in shape {sorted(sizes)}; resample them first")
    out = torch.cat(clouds)
    if out.dim() != 3 or out.shape[-1] != 3:
        raise ValueError(f"{path}: expected clouds [N, P, 3], got {tuple(out.shape)}")
    return out


def load_labels(source: str | os.PathLike) -> torch.Tensor:
    """Integer class labels from .npy, .npz (key ``labels`` or the first), .pt or .txt."""
    p = Path(source)
    if p.suffix.lower() == ".txt":
        return torch.as_tensor(np.loadtxt(p, dtype=np.int64).reshape(-1))
    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            key = "labels" if "labels" in npz.files else npz.files[0]
            return torch.as_tensor(np.asarray(npz[key]).astype(np.int64).reshape(-1))
    if p.suffix.lower() in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            obj = obj.get("labels", next(iter(obj.values())))
        return torch.as_tensor(obj).long().reshape(-1)
    return torch.as_tensor(np.load(p, allow_pickle=False).astype(np.int64).reshape(-1))


def sample_files(path: Path) -> list[Path]:
    """The files of a samples path, sorted: the path itself when it is a file, else every file
    below the folder."""
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def first_array(files: list[Path]) -> torch.Tensor | None:
    """The array of the first array file (``.npy``/``.npz``/``.pt``) of ``files``, or None."""
    arrays = [f for f in files if f.suffix.lower() in ARRAY_SUFFIXES]
    return load_array_file(arrays[0]) if arrays else None


def stored_labels(path: Path) -> torch.Tensor | None:
    """The class labels stored beside samples in an ``.npz`` or ``.pt`` file (key ``labels``),
    else None."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "labels" in npz.files:
                return torch.as_tensor(np.asarray(npz["labels"]).astype(np.int64))
    elif path.is_file() and suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "labels" in obj:
            return torch.as_tensor(obj["labels"]).long()
    return None


def check_labels(labels: torch.Tensor, num_classes: int, num_samples: int) -> None:
    """Labels must name a class of the classifier, one per sample: an out-of-range label would
    be scored as a miss (or, negative, silently as another class) instead of being reported."""
    if labels.numel() != num_samples:
        raise ValueError(f"{num_samples} samples but {labels.numel()} labels")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        shown = ", ".join(str(int(v)) for v in bad.unique()[:5])
        raise ValueError(
            f"labels must be classes 0..{num_classes - 1}; {bad.numel()} are not ({shown})"
        )
