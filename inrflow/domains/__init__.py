"""The domains (kinds of data) and how ``--data`` picks one.

``domain_for(name)`` gives the domain object of a name (``image``, ``pointcloud``,
``protein``; a dataset's ``.domain``, a checkpoint's ``dataset.domain``);
``domain_of_data(spec, task)`` the one that ``--data`` (and ``--task``) names;
``build_dataset(spec, ...)`` the dataset; ``domain_of_samples(path)`` the one whose samples a
path holds and ``domain_of_kind(kind)`` the one offering a scoring of sample files (both for
``evaluate.py``). Adding a domain: a module with a
:class:`~inrflow.domains.base.Domain` subclass, and one entry in ``DOMAINS`` below (see
``docs/ARCHITECTURE.md``).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from inrflow.data import BUNDLED, CoordinateDataset

from .base import (
    DataOptions,
    Domain,
    ReferenceItems,
    RunOptions,
    SampleRequest,
    SampleRun,
    ScoreRequest,
)
from .image import ImageDomain
from .pointcloud import PointCloudDomain
from .protein import ProteinDomain

__all__ = [
    "DOMAINS",
    "DataOptions",
    "Domain",
    "ReferenceItems",
    "RunOptions",
    "SampleRequest",
    "SampleRun",
    "ScoreRequest",
    "build_dataset",
    "domain_for",
    "domain_of_data",
    "domain_of_kind",
    "domain_of_samples",
    "sample_kinds",
]

#: every domain, in the order they are asked whether a ``--data`` path holds their data, or a
#: samples path their samples (the image domain, which takes any other folder, last)
DOMAINS: dict[str, Domain] = {
    d.name: d for d in (ProteinDomain(), PointCloudDomain(), ImageDomain())
}


def domain_for(name: str) -> Domain:
    """The domain called ``name``."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r} (known: {', '.join(DOMAINS)})") from None


def domain_of_data(spec: str | os.PathLike, task: str | None = None) -> Domain:
    """The domain of ``--data spec``: the one ``task`` names, else the one bundling a dataset of
    that name, else the first that recognises the files at the path. A path that does not exist
    raises ``FileNotFoundError``, with the path."""
    if task is not None:
        return domain_for(task)
    name = str(spec)
    for domain in DOMAINS.values():
        if name in domain.bundled:
            return domain
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--data {name!r}: no such file or directory (bundled datasets: {', '.join(BUNDLED)})"
        )
    for domain in DOMAINS.values():
        if domain.holds(path):
            return domain
    return DOMAINS["image"]  # its build_dataset says what a path it cannot read should be


def sample_kinds() -> tuple[str, ...]:
    """Every scoring of sample files the domains offer (``evaluate.py --kind``)."""
    return tuple(kind for domain in DOMAINS.values() for kind in domain.sample_kinds)


def domain_of_kind(kind: str) -> Domain:
    """The domain offering the scoring ``kind`` (one of :func:`sample_kinds`)."""
    for domain in DOMAINS.values():
        if kind in domain.sample_kinds:
            return domain
    raise ValueError(f"unknown kind {kind!r} (known: {', '.join(sample_kinds())})")


def domain_of_samples(path: str | os.PathLike) -> Domain:
    """The first domain that recognises the samples at ``path`` (``evaluate.py --samples``).
    A path that does not exist, or that no domain recognises, raises ``FileNotFoundError``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples not found: {path}")
    for domain in DOMAINS.values():
        if domain.recognises(path):
            return domain
    raise FileNotFoundError(
        f"{path}: no samples that a domain recognises (kinds: {', '.join(sample_kinds())})"
    )


def build_dataset(
    spec: str | os.PathLike,
    *,
    resolution: int | None = None,
    num_points: int | None = None,
    hflip: bool = True,
    field_resolution: int | None = None,
    channels: int = 3,
    normalization: str = "shape_bbox",
    task: str | None = None,
    max_residues: int | None = None,
    residue_embeddings: str | None = None,
    split: str = "all",
    protein_frame: str = "principal",
    rotate: bool = False,
) -> CoordinateDataset:
    """The dataset named by ``spec``: ``digits``, ``shapes``, ``proteins`` (the bundled
    structures), a folder of images (subfolders = classes), a folder/stack file of point clouds
    (.npy/.npz), or a folder of PDB/mmCIF files (or any path with ``task="protein"``).

    ``split`` (proteins): ``all``, ``train`` or ``test`` (every 10th chain held out);
    ``protein_frame`` and ``rotate``: see :class:`~inrflow.data.ProteinDataset` (``frame``,
    ``rotate``); ``rotate`` also gives the bundled shapes random orientations.
    A path that does not exist or holds no usable files raises at once, with the path.
    """
    options = SimpleNamespace(
        resolution=resolution,
        num_points=num_points,
        hflip=hflip,
        field_resolution=field_resolution,
        channels=channels,
        normalization=normalization,
        max_residues=max_residues,
        residue_embeddings=residue_embeddings,
        protein_frame=protein_frame,
        rotate=rotate,
    )
    return domain_of_data(spec, task).build_dataset(str(spec), options, split)
