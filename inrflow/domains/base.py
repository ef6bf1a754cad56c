"""The interface every domain implements: what the trainer and the CLIs ask of a kind of data.

A *domain* (images, point clouds, protein structures) is one small class: it recognises its
``--data``, builds the dataset, fits the model preset to it, describes it in a checkpoint,
generates and writes samples, and scores them. The trainer holds one domain object
(``Trainer.domain``) and never asks which domain it is; a new kind of data is a new module in
this package, registered in :mod:`inrflow.domains`.

Domains sit above the pure libraries (model, flow, sampling, data, metrics) and below the
applications, so the options they read are described here as protocols that the trainer's
``TrainConfig`` satisfies, not imported from it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from inrflow.data import CoordinateDataset, FlowCollate
from inrflow.generation import generate
from inrflow.model import INRFlow, get_config
from inrflow.model.config import INRFlowConfig
from inrflow.sampling import SolverStats

__all__ = [
    "DataOptions",
    "Domain",
    "ReferenceItems",
    "RunOptions",
    "SampleRequest",
    "SampleRun",
    "ScoreRequest",
    "image_scale",
    "score_final",
]


class DataOptions(Protocol):
    """The data options of a run (fields of :class:`~inrflow.train.TrainConfig`)."""

    resolution: int | None
    num_points: int | None
    hflip: bool
    field_resolution: int | None
    channels: int
    normalization: str
    max_residues: int | None
    residue_embeddings: str | None
    protein_frame: str
    rotate: bool


class RunOptions(Protocol):
    """The model, draw and sampling options of a run (fields of ``TrainConfig``)."""

    size: str
    model: dict[str, Any]
    class_conditional: bool
    num_queries: int | None
    num_context: int | None
    label_dropout: float
    time_dist: str
    time_loc: float
    pairing: str
    seed: int
    num_samples: int
    final_samples: int
    sample_steps: int
    sample_method: str
    cfg_scale: float


@dataclasses.dataclass
class SampleRun:
    """What a domain needs to sample, write and score during and at the end of a run (rank 0).

    ``model`` holds the EMA weights; ``log`` writes a console line, ``scalars`` records
    logged values (TensorBoard and ``progress.jsonl``) at ``step``.
    """

    model: INRFlow
    dataset: CoordinateDataset
    options: RunOptions
    out: Path
    step: int
    log: Callable[[str], None]
    scalars: Callable[[dict[str, float]], None]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def labels(self, num: int) -> torch.Tensor | None:
        """Classes ``0, 1, ..., k-1, 0, ...`` for ``num`` samples (None when unconditional)."""
        k = self.model.config.num_classes
        return torch.arange(num, device=self.device) % k if k > 0 else None


@dataclasses.dataclass
class SampleRequest:
    """What the sampling application asks of a domain (``sample.py``'s options, checked).

    ``labels`` / ``cond``: classes and condition tokens of the samples (None: unconditional);
    ``resolution`` / ``num_points``: the output grid or point count (None: the training one);
    ``solver``: the sampler options of :func:`inrflow.generation.generate` (``steps``,
    ``method``, ``time_shift``, ...); ``nrow``: images per grid row (None: one class per row
    when the labels cycle over all classes, ``class_rows``); ``structures``: proteins, the
    chains to predict (None: the run's held-out chains)."""

    num: int
    out: Path | None = None
    seed: int = 0
    labels: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    cfg_scale: float = 1.0
    resolution: tuple[int, ...] | None = None
    num_points: int | None = None
    batch_size: int = 64
    chunk_size: int = 1 << 16
    solver: dict[str, Any] = dataclasses.field(default_factory=dict)
    stats: SolverStats | None = None
    nrow: int | None = None
    class_rows: bool = True
    structures: str | None = None


@dataclasses.dataclass
class ScoreRequest:
    """What the evaluation application asks of a domain to score generated samples
    (``evaluate.py``'s options, checked).

    ``kind``: one of the domain's :attr:`Domain.sample_kinds`; ``reference``: the reference
    set (a path, or a name the domain knows such as ``digits``; None: the domain's default
    where it has one); ``value_range`` / ``ref_value_range``: the value ranges of image samples
    and references (None: inferred); ``metrics``: the image metrics asked for (None: the
    kind's default); ``emd``, ``cd_backend``, ``normalize``: the point-cloud metrics' options
    (:func:`inrflow.metrics.pointcloud.point_cloud_metrics`)."""

    kind: str
    reference: str | None
    value_range: tuple[float, float] | None = None
    ref_value_range: tuple[float, float] | None = None
    metrics: list[str] | None = None
    inception_weights: str | None = None
    rfid_seed: int = 0
    batch_size: int = 64
    emd: str = "auto"
    cd_backend: str = "auto"
    normalize: str | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True


@dataclasses.dataclass
class ReferenceItems:
    """Items of a reference set as the model takes them (the likelihood of real data):
    ``values`` ``[N, L, C]`` in the model's value range, ``coords`` ``[L, D]`` shared by every
    item (None when the values are the coordinates), ``labels`` ``[N]`` (None: unconditional),
    and ``source``, what was read."""

    values: torch.Tensor
    coords: torch.Tensor | None
    labels: torch.Tensor | None
    source: str


class Domain:
    """One kind of data. Subclasses set ``name`` (the model preset family) and override what
    differs; the defaults are those of data on a fixed set of coordinates with optional class
    labels and condition tokens."""

    name: ClassVar[str]
    #: bundled dataset names this domain builds (``--data NAME``)
    bundled: ClassVar[tuple[str, ...]] = ()
    #: keys of :meth:`dataset_info`, beyond the channels, classes and tokens, on which a
    #: checkpoint and new data must agree for a run to resume
    resume_keys: ClassVar[tuple[str, ...]] = ()

    # -- data --------------------------------------------------------------------------------
    def holds(self, path: Path) -> bool:
        """Whether the existing ``path`` is this domain's data (files are recognised by their
        suffixes)."""
        return False

    def build_dataset(self, spec: str, options: DataOptions, split: str) -> CoordinateDataset:
        """The dataset of ``--data spec`` (a bundled name or a path this domain holds)."""
        raise NotImplementedError

    def dataset_info(self, ds: CoordinateDataset) -> dict[str, Any]:
        """What sampling needs to know about the data (saved with every checkpoint)."""
        return {
            "domain": ds.domain,
            "shape": list(ds.shape),
            "value_dim": ds.value_dim,
            "coord_dim": ds.coord_dim,
            "num_classes": ds.num_classes,
            "class_names": list(ds.class_names),
            "cond_dim": int(getattr(ds, "cond_dim", 0)),
        }

    # -- model -------------------------------------------------------------------------------
    def fitted_fields(self, ds: CoordinateDataset) -> dict[str, Any]:
        """Model-config fields the data decides (beyond channels, classes, condition tokens)."""
        return {}

    def model_config(self, options: RunOptions, ds: CoordinateDataset) -> INRFlowConfig:
        """The preset ``options.size`` of this domain fitted to ``ds``, with ``options.model``
        overrides. (Labels and tokens are dropped for classifier-free guidance by the
        flow-matching draws of the collation, :meth:`collate`.)"""
        num_classes = ds.num_classes if options.class_conditional else 0
        fitted: dict[str, Any] = {"value_dim": ds.value_dim, "num_classes": num_classes}
        fitted.update(self.fitted_fields(ds))
        if getattr(ds, "cond_dim", 0):
            fitted["cond_dim"] = ds.cond_dim
            fitted["cond_tokens"] = ds.cond_tokens
        fitted.update(options.model)
        return get_config(options.size, self.name, **fitted)

    # -- training batches --------------------------------------------------------------------
    def collate(self, options: RunOptions, num_classes: int) -> FlowCollate:
        """The batch collation with its per-sample flow-matching draws."""
        return FlowCollate(
            options.num_queries,
            options.num_context,
            num_classes=num_classes,
            label_dropout=options.label_dropout,
            time_dist=options.time_dist,
            time_loc=options.time_loc,
            pairing=options.pairing,
        )

    # -- samples -----------------------------------------------------------------------------
    def samples_at_end(self, options: RunOptions) -> bool:
        """Whether :meth:`final` samples (so the periodic samples skip the last step)."""
        return options.final_samples > 0

    def generate(
        self, run: SampleRun, num: int, labels: torch.Tensor | None, seed: int
    ) -> torch.Tensor:
        """``num`` samples at the training resolution / point count, the condition tokens of
        the first items where the data have them (image-to-3D), through
        :func:`inrflow.generation.generate` (the sampling application's path)."""
        ds, o = run.dataset, run.options
        cond = None
        if getattr(ds, "cond_dim", 0):
            cond = torch.stack([torch.from_numpy(ds.condition(i % len(ds))) for i in range(num)])
        return generate(
            run.model,
            self.dataset_info(ds),
            num,
            labels=labels,
            cond=cond,
            cfg_scale=o.cfg_scale,
            steps=o.sample_steps,
            method=o.sample_method,
            seed=seed,
            batch_size=num,
            progress=False,
        )

    def periodic(self, run: SampleRun) -> Path | None:
        """Samples of the current step (``--sample-every``): written, and scored where the
        domain can score them quickly; returns where they went."""
        raise NotImplementedError

    def final(self, run: SampleRun) -> dict[str, Any]:
        """The end of a completed run: final samples, written and scored (the figures the
        domain's demo prints); returns the summary entries."""
        raise NotImplementedError

    # -- the sampling application ------------------------------------------------------------
    #: samples are written to a folder (else to one file); the output's name by default
    writes_folder: ClassVar[bool] = True
    default_out: ClassVar[str] = "samples"

    def sample_files(
        self,
        model: INRFlow,
        info: dict[str, Any],
        train: dict[str, Any],
        request: SampleRequest,
        log: Callable[[str], None],
    ) -> tuple[Path, torch.Tensor | None]:
        """``sample.py``: draw ``request.num`` samples from a checkpoint's model (``info``: the
        stored dataset description, ``train``: the run's train config) and write them; returns
        where, and the samples. Samples with NaN or infinite values raise ``ValueError``
        before anything is written."""
        out = generate(
            model,
            info,
            request.num,
            labels=request.labels,
            cond=request.cond,
            cfg_scale=request.cfg_scale,
            resolution=request.resolution,
            num_points=request.num_points,
            seed=request.seed,
            batch_size=request.batch_size,
            chunk_size=request.chunk_size,
            stats=request.stats,
            **request.solver,
        )
        if request.stats is not None:
            log(request.stats.describe())
        bad = int((~torch.isfinite(out.reshape(out.shape[0], -1))).any(1).sum())
        if bad:
            raise ValueError(
                f"{bad} of {out.shape[0]} samples contain NaN or infinite values (the "
                f"checkpoint's weights or the sampler settings are broken); nothing was written"
            )
        path = request.out or Path(self.default_out)
        self.write(out, info, path, request, model.config.num_classes)
        return path, out

    def write(
        self,
        samples: torch.Tensor,
        info: dict[str, Any],
        path: Path,
        request: SampleRequest,
        num_classes: int,
    ) -> None:
        """Write the samples of :meth:`sample_files` to ``path``."""
        raise NotImplementedError

    # -- the evaluation application ----------------------------------------------------------
    #: the scorings of sample files this domain offers (``evaluate.py --kind``); each name
    #: belongs to one domain. Empty: the domain scores no sample files.
    sample_kinds: ClassVar[tuple[str, ...]] = ()

    def recognises(self, path: Path) -> bool:
        """Whether the existing samples ``path`` (a file or folder, as ``evaluate.py
        --samples`` takes it) holds this domain's samples. Domains are asked in the order of
        ``DOMAINS``, so a domain need not rule out what an earlier one claims."""
        return False

    def read_samples(self, path: Path) -> torch.Tensor:
        """The samples at ``path`` (which :meth:`recognises`), shaped for :meth:`score`."""
        raise self._no_scoring()

    def scoring(self, reference: str | None, dataset: str | None) -> str:
        """Which of :attr:`sample_kinds` scores this domain's samples against ``reference``
        when ``--kind`` is not given (``dataset``: the ``--data`` of the samples' training run,
        when known)."""
        if not self.sample_kinds:
            raise self._no_scoring()
        return self.sample_kinds[0]

    def score(
        self, samples: torch.Tensor, labels: torch.Tensor | None, request: ScoreRequest
    ) -> dict[str, Any]:
        """Metrics of ``samples`` (asked for ``labels``, None: unconditional) against
        ``request.reference``: the figures of ``evaluate.py``'s table and report."""
        raise self._no_scoring()

    def reference_items(
        self,
        reference: str | None,
        num: int,
        config: INRFlowConfig,
        value_range: tuple[float, float] | None = None,
    ) -> ReferenceItems:
        """The first ``num`` items of ``reference`` as the model of ``config`` takes them (the
        bits per dimension of real data, ``evaluate.py --bpd``)."""
        raise self._no_scoring()

    def _no_scoring(self) -> ValueError:
        return ValueError(
            f"the {self.name} domain scores no sample files (known kinds: "
            f"{', '.join(self.sample_kinds) or 'none'})"
        )


def score_final(run: SampleRun, out: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Final class-conditional samples scored by the dataset's own scoring, where it has one
    (the digits' classifier accuracy, the shapes' recognition and 1-NNA): logged, written to
    ``final_scores.json`` and returned."""
    evaluate = getattr(run.dataset, "evaluate_samples", None)
    if evaluate is None or labels is None:
        return {}
    o = run.options
    scores = evaluate(out, labels)
    for key, value in scores.items():
        run.log(
            f"{key}: {value:.4f} over {len(out)} class-conditional samples "
            f"({o.sample_method}, {o.sample_steps} steps, CFG {o.cfg_scale})"
        )
    (run.out / "final_scores.json").write_text(json.dumps(scores, indent=1))
    return scores


def image_scale(shape: tuple[int, ...]) -> int:
    """Pixel repeat that makes a sample grid's tiles about 128 pixels wide."""
    return max(1, 128 // max(shape))
