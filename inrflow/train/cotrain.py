"""Co-training: one :class:`~inrflow.model.MultiDomainINRFlow` on several datasets in one run.

``--data digits,shapes``: every step trains one domain, the one
:class:`~inrflow.data.schedule.DomainSchedule` assigns to the step, on a whole global batch of
that domain's data with that domain's options (:meth:`TrainConfig.domain_options`: batch size,
learning rate, flow-matching draws, samples and scores). Each domain keeps its own data stream,
seeded as a single-domain run of the same seed, and standing at the number of steps the domain
has had: a domain of a co-training run sees the batches of its own single-domain run, in order,
and a resumed run continues every stream exactly. The step, the checkpoint and the loop are the
:class:`~inrflow.train.trainer.Trainer`'s; this class changes what depends on the domain.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from inrflow.checkpoints import read_manifest
from inrflow.data import CoordinateDataset, StreamSampler, build_loader
from inrflow.data.schedule import DomainSchedule, parse_weights
from inrflow.domains import Domain, SampleRun, build_dataset, domain_for
from inrflow.model import INRFlow, MultiDomainINRFlow, domain_state_dict
from inrflow.model.config import INRFlowConfig
from inrflow.model.multidomain import shared_trunk_configs
from inrflow.nvtx import nvtx_range

from .checkpoint import CheckpointManager
from .config import PRESETS, TrainConfig
from .distributed import usable_cpus
from .logging import MetricLogger
from .optim import build_optimizer, clean_name, init_state, lr_at
from .progress import TimeBucketLoss
from .run_folder import RunFolderError, open_run_folder
from .signals import StopRequest
from .state import checkpoint_state, restore
from .step import StepRecord, StepRow
from .trainer import Trainer

__all__ = ["CoTrainer", "DomainRun", "default_weights"]


@dataclasses.dataclass
class DomainRun:
    """One domain of a co-training run: its options, data, model config and data stream."""

    name: str
    options: TrainConfig
    domain: Domain
    dataset: CoordinateDataset
    config: INRFlowConfig
    loader: Any = None


def default_weights(cfg: TrainConfig) -> dict[str, int]:
    """``--domain-weights``, or the steps of each dataset's demo preset divided by their
    greatest common divisor (every domain gets its own demo's share), or equal weights."""
    names = cfg.domain_names()
    if cfg.domain_weights is not None:
        return parse_weights(cfg.domain_weights, names)
    steps = [next((p["steps"] for p in PRESETS.values() if p.get("data") == n), 0) for n in names]
    if not all(steps):
        return dict.fromkeys(names, 1)
    g = functools.reduce(math.gcd, steps)
    return {n: s // g for n, s in zip(names, steps, strict=True)}


class _ScheduledBatches:
    """The trainer's loader: each step's batch from the loader of the domain of that step."""

    def __init__(self, trainer: CoTrainer) -> None:
        self.trainer = trainer

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        t = self.trainer
        t.streams = {name: iter(run.loader) for name, run in t.runs.items()}
        while t.streams:
            t.current = t.schedule.domain_at(t.step)
            yield next(t.streams[t.current])


class _AnyDomain:
    """What the loop asks of "the domain": whether the run ends with final samples."""

    def __init__(self, runs: dict[str, DomainRun]) -> None:
        self.runs = runs
        self.name = "+".join(runs)

    def samples_at_end(self, options: Any) -> bool:
        return any(r.domain.samples_at_end(r.options) for r in self.runs.values())


class CoTrainer(Trainer):
    """A training run over several datasets (``cfg.cotraining``); used like :class:`Trainer`."""

    def _setup(self, dataset: CoordinateDataset | None) -> None:
        cfg, d = self.cfg, self.dist
        if dataset is not None:
            raise ValueError("a co-training run builds its datasets from --data")
        # 2. data and per-domain options; 3. model configs (a bad --model fails here)
        self.runs: dict[str, DomainRun] = {}
        for name in cfg.domain_names():
            opts = self.cfg.domain_options(name)
            if opts.batch_size % d.world:
                raise ValueError(
                    f"{name}: batch size {opts.batch_size} (global) is not divisible by "
                    f"{d.world} processes"
                )
            ds = build_dataset(name, task=opts.task, split="train", **opts.data_options())
            domain = domain_for(opts.task or ds.domain)
            self.runs[name] = DomainRun(name, opts, domain, ds, domain.model_config(opts, ds))
        self.schedule = DomainSchedule(default_weights(cfg), cfg.seed)
        model_configs = {n: r.config for n, r in self.runs.items()}
        with torch.device("meta"):  # the shared widths must agree: checked before any output
            MultiDomainINRFlow(model_configs)
        self.checkpoints = CheckpointManager(
            self.out / "checkpoints",
            d,
            keep=cfg.keep_ckpts,
            checksums=cfg.verify_checksums,
            log=self.say,
        )
        self._lock = open_run_folder(
            self.out, resume=cfg.resume, overwrite=cfg.overwrite, dist=d, say=self.say
        )
        found = self.checkpoints.candidates() if cfg.resume else []
        if found:
            self._check_stored(found[0][1])
        # 4. the model, identical on every rank, then sharded
        torch.manual_seed(cfg.seed)
        model = MultiDomainINRFlow(model_configs)
        self.model_configs = model.configs
        self.model_config = None  # several: no FLOP count (throughput shows n/a)
        # 5. optimizers and EMA: each domain's step moves the parameters it trains (the shared
        # ones and its own) with that domain's AdamW, and their EMA
        self._trained = {dom: model.trained_parameters(dom) for dom in self.runs}
        self._shard(model)
        # 6. restore
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
        self.resumed_from: Path | None = None
        if cfg.resume:
            restore(self)
        # 7. every domain's data stream at its own position: the steps it has had
        for name, run in self.runs.items():
            opts = run.options
            sampler = StreamSampler(
                len(run.dataset),
                opts.batch_size,
                d.rank,
                d.world,
                seed=cfg.seed,
                start_step=self.schedule.steps_before(name, self.step),
            )
            run.loader = build_loader(
                run.dataset,
                sampler,
                run.domain.collate(opts, run.config.num_classes),
                num_workers=min(opts.workers, usable_cpus()),
                pin_memory=self.device.type == "cuda",
            )
        self.loader = _ScheduledBatches(self)
        self.domain = _AnyDomain(self.runs)
        self.dataset = None
        self.current = self.schedule.domain_at(self.step)
        self._sample_models: dict[str, INRFlow] = {}
        self.streams: dict[str, Iterator[dict[str, torch.Tensor]]] = {}
        self._stop = StopRequest()
        self._stop_signal: int | None = None
        self._new_bad: set[int] = set()
        self._record = StepRecord()
        self._saved_step = self.step if self.resumed_from is not None else -1
        self._window = None
        self._time_losses = TimeBucketLoss(self.device)

    def _check_stored(self, path: Path) -> None:
        """On resume: the checkpoint must be a co-training run of the same domains and model."""
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError):
            return  # an unreadable manifest: the restore falls back to an older checkpoint
        stored = manifest.get("model_configs")
        mine = shared_trunk_configs({n: r.config for n, r in self.runs.items()})
        if stored is None or list(stored) != list(mine):
            raise RunFolderError(
                f"cannot resume {path}: it is not a co-training run of {list(mine)}. Use "
                "--overwrite or another --out for a new run"
            )
        if manifest.get("optimizers") != "per-domain":
            raise RunFolderError(
                f"cannot resume {path}: it was written by an earlier inrflow whose domains "
                "shared one optimizer state (each domain now has its own). Its weights still "
                "sample and export; use --overwrite or another --out to train again"
            )
        for name, fields in stored.items():
            kept = INRFlowConfig.from_dict(fields)
            if kept != mine[name]:
                raise RunFolderError(
                    f"cannot resume {path}: the {name} model of the checkpoint differs from this "
                    "command line's. Use the run's options, or --overwrite / another --out"
                )

    # -- the step's domain -----------------------------------------------------------------------
    def _loss_model(self) -> Any:
        return functools.partial(self.model, domain=self.current)

    def _lr(self) -> float:
        return lr_at(self.step, self.runs[self.current].options.lr, self.cfg.warmup_steps)

    def _row_domain(self, row: StepRow) -> str | None:
        return self.schedule.domain_at(row.step - 1)

    def train_step(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.optimizer = self.optimizers[self.current]
        self.ema.restrict(self._trained[self.current])
        return super().train_step(batch)

    def _build_optimizer(self) -> None:
        """One AdamW per domain over the parameters its steps train.

        Adam divides each step by the parameter's running gradient scale. Moments shared by the
        domains would divide the steps of one domain on the shared trunk by the other's scale:
        in the demo the digits gradients kept the shared moments 2-5x above the shapes run's
        own, and the shapes steps on the trunk were that much smaller. One AdamW per domain
        keeps every domain's steps as in its own run, for the price of one more pair of moments
        of the shared parameters per domain."""
        cfg = self.cfg
        params = {clean_name(n): p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizers = {
            dom: build_optimizer(
                [params[n] for n in names], cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay
            )
            for dom, names in self._trained.items()
        }
        for opt in self.optimizers.values():
            init_state(opt)
        self.optimizer = self.optimizers[self.schedule.domain_at(0)]

    def optimizer_state(self) -> dict[str, Any]:
        return {
            dom: get_optimizer_state_dict(self.model, opt) for dom, opt in self.optimizers.items()
        }

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        for dom, opt in self.optimizers.items():
            set_optimizer_state_dict(self.model, opt, state[dom])

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        meta = {
            "model_configs": {n: dataclasses.asdict(c) for n, c in self.model_configs.items()},
            "datasets": {n: r.domain.dataset_info(r.dataset) for n, r in self.runs.items()},
            "domain_options": {n: r.options.to_dict() for n, r in self.runs.items()},
            "domain_weights": self.schedule.weights,
            "optimizers": "per-domain",  # AdamW states by domain (see _setup)
            "train_config": self.cfg.to_dict(),
            "num_params": self.num_params,
            "torch_version": torch.__version__,
            "skipped_data_files": sorted(self.bad_files.seen),
        }
        with nvtx_range("checkpoint"):
            path = self.checkpoints.save(self.step, checkpoint_state(self), meta)
        self._saved_step = self.step
        self.say(f"saved checkpoint {path}")
        return path

    # -- what is said and written ----------------------------------------------------------------
    def _announce(self) -> None:
        cfg, d = self.cfg, self.dist
        if d.is_main:
            import json

            self.out.mkdir(parents=True, exist_ok=True)
            config = {
                "train": cfg.to_dict(),
                "domains": {
                    n: {"options": r.options.to_dict(), "model": dataclasses.asdict(c)}
                    for (n, r), c in zip(
                        self.runs.items(), self.model_configs.values(), strict=True
                    )
                },
            }
            (self.out / "config.json").write_text(json.dumps(config, indent=1, default=str))
        counts = self.schedule.counts(cfg.steps)
        parts = ", ".join(
            f"{n} ({r.domain.name}, {len(r.dataset)} samples, batch {r.options.batch_size}, "
            f"{counts[n]} steps)"
            for n, r in self.runs.items()
        )
        self.say(
            f"{self.num_params / 1e6:.2f}M parameters co-trained on {parts} over {d.world} "
            f"process(es) on {self.device.type}, {'bf16' if self.param_dtype else 'fp32'}; "
            f"steps {self.step}->{cfg.steps}"
        )

    def _domain_runs(self, logger: MetricLogger | None) -> dict[str, SampleRun] | None:
        """Per domain, what it samples with: its own INRFlow holding its EMA weights, its
        options, its data, a subfolder of the run folder; rank 0 only (a collective)."""
        full = self.ema.full_state(keep=self.dist.is_main)
        if full is None:
            return None
        out: dict[str, SampleRun] = {}
        for name, run in self.runs.items():
            model = self._sample_models.get(name)
            if model is None:
                model = INRFlow(self.model_configs[name]).to(self.device).eval()
                self._sample_models[name] = model
            with torch.no_grad():
                model.load_state_dict(domain_state_dict(full, name))
            say = logger.write if logger is not None else print

            def log(msg: str, name: str = name, say: Any = say) -> None:
                say(f"[inrflow] {name}: {msg}")

            def scalars(values: dict[str, float], name: str = name) -> None:
                if logger is not None:
                    self._log_progress(logger, {f"{name}/{k}": v for k, v in values.items()})

            out[name] = SampleRun(
                model, run.dataset, run.options, self.out / name, self.step, log, scalars
            )
        return out

    def sample_model(self) -> INRFlow | None:
        raise NotImplementedError("a co-training run samples each domain: see write_samples")

    def write_samples(self, logger: MetricLogger | None = None) -> Path | None:
        runs = self._domain_runs(logger)
        if runs is None:
            return None
        paths = [self.runs[n].domain.periodic(run) for n, run in runs.items()]
        return paths[-1] if paths else None

    def finish(self, logger: MetricLogger) -> dict[str, Any]:
        self.streams.clear()  # the data loaders' worker processes end before the final samples
        return super().finish(logger)

    def _final_scores(self) -> dict[str, Any]:
        """Each domain's final samples and scores, keyed ``<domain>/<score>``."""
        result: dict[str, Any] = {}
        for name, run in (self._domain_runs(None) or {}).items():
            if self.runs[name].domain.samples_at_end(self.runs[name].options):
                for key, value in self.runs[name].domain.final(run).items():
                    result[f"{name}/{key}"] = value
        return result
