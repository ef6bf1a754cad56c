"""The trainer: setup as an ordered recipe, ``train_step`` as one optimizer step, ``train`` as the
loop around it (checkpoints, signals, samples, logs).

Setup order (torchtitan's): process group + mesh -> seed -> data -> model -> parallelize (AC,
compile, FSDP2) -> optimizer + EMA -> checkpoint restore -> loader at the restored step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from inrflow.data import CoordinateDataset, FlowCollate, StreamSampler, build_dataset, build_loader
from inrflow.data.io import save_image_grid
from inrflow.flow import cicfm_loss
from inrflow.model import INRFlow, count_parameters, get_config
from inrflow.model.config import INRFlowConfig
from inrflow.model.latent_grouping import grid_coords
from inrflow.nvtx import nvtx_range
from inrflow.sampling import sample

from .checkpoint import CheckpointManager
from .config import TrainConfig
from .distributed import Dist, init_distributed
from .logging import MetricLogger, plot_loss
from .optim import EMA, build_optimizer, lr_at
from .profiler import ProfileWindow
from .progress import HEADLINE, TimeBucketLoss, append_progress, class_picture, save_class_clouds
from .run_folder import RunFolderError, RunLock, open_run_folder, resume_conflicts
from .throughput import Throughput, device_peak_tflops
from .watchdog import StallWatchdog

__all__ = ["NonFiniteLossError", "Trainer", "dataset_info", "model_config_for"]

# The model's modules return views (chunks, reshapes) that nothing modifies in place, which is
# what FSDP2 warns about on every forward.
_FSDP_VIEW_WARNING = r"FSDP2-wrapped module .* returned a view tensor"


# training chains scored at the end of a protein run (all of the bundled set's 45), and at
# the periodic evaluations (--sample-every) that trace the learning curve
SCORED_TRAIN_CHAINS = 64
SCORED_TRAIN_CHAINS_PERIODIC = 12


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class NonFiniteWarning(UserWarning):
    """A step was skipped because its loss or gradient norm was not finite."""


def dataset_info(ds: CoordinateDataset) -> dict[str, Any]:
    """What sampling needs to know about the data (saved with every checkpoint)."""
    return {
        "domain": ds.domain,
        "shape": list(ds.shape),
        "value_dim": ds.value_dim,
        "coord_dim": ds.coord_dim,
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names),
        "cond_dim": int(getattr(ds, "cond_dim", 0)),
        **(
            {
                "max_residues": ds.max_residues,
                "position_scale": ds.position_scale,
                "residue_embeddings": ds.embeddings_path,
                "frame": ds.frame,
                "rotate": ds.rotate,
            }
            if ds.domain == "protein"
            else {}
        ),
    }


def model_config_for(cfg: TrainConfig, ds: CoordinateDataset) -> INRFlowConfig:
    """The preset ``cfg.size`` of the dataset's domain, fitted to the data, with overrides.

    Label and condition-token dropout are done by the data pipeline (per sample, from its
    seed), so the model's own random dropout is switched off (``class_dropout=0``,
    ``cond_dropout=0``; the null class and null token still exist). Proteins: one latent per
    residue and the dataset's feature width and residue-type table.
    """
    domain = cfg.task or ds.domain
    num_classes = ds.num_classes if cfg.class_conditional else 0
    fitted: dict[str, Any] = {"value_dim": ds.value_dim, "num_classes": num_classes}
    if domain == "protein":
        fitted["coord_dim"] = ds.coord_dim
        if ds.domain == "protein":
            fitted["num_latents"] = ds.max_residues
            fitted["residue_vocab"] = ds.residue_vocab
    if getattr(ds, "cond_dim", 0):
        fitted["cond_dim"] = ds.cond_dim
        fitted["cond_tokens"] = ds.cond_tokens
    fitted.update(cfg.model)
    fitted["class_dropout"] = 0.0
    fitted["cond_dropout"] = 0.0
    return get_config(cfg.size, domain, **fitted)


class Trainer:
    """One training run. ``Trainer(cfg).train()``; ``dataset`` replaces ``cfg.data`` (tests)."""

    def __init__(self, cfg: TrainConfig, dataset: CoordinateDataset | None = None) -> None:
        self.cfg = cfg.validate()
        self.out = Path(cfg.out)
        self._logger: MetricLogger | None = None
        self._lock: RunLock | None = None
        # 1. process group, device mesh
        self.dist: Dist = init_distributed(cfg.device, cfg.dist_timeout)
        self.device = self.dist.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            self._setup(dataset)
        except BaseException:
            self.close()
            raise

    def _setup(self, dataset: CoordinateDataset | None) -> None:
        cfg, d = self.cfg, self.dist
        if cfg.batch_size % d.world:
            raise ValueError(
                f"--batch-size {cfg.batch_size} (global) is not divisible by {d.world} processes"
            )
        # 2. data (a wrong path fails here, before anything is built)
        self.dataset = dataset or build_dataset(
            cfg.data,
            resolution=cfg.resolution,
            num_points=cfg.num_points,
            hflip=cfg.hflip,
            channels=cfg.channels,
            normalization=cfg.normalization,
            task=cfg.task,
            max_residues=cfg.max_residues,
            residue_embeddings=cfg.residue_embeddings,
            split="train",  # proteins: every 10th chain is held out for the final evaluation
            protein_frame=cfg.protein_frame,
            rotate=cfg.rotate,
        )
        self.checkpoints = CheckpointManager(
            self.out / "checkpoints",
            d,
            keep=cfg.keep_ckpts,
            checksums=cfg.verify_checksums,
            log=self._say,
        )
        # 3. model config (a bad --model fails here, before the run folder is made); on resume
        # the stored architecture wins over the command line
        self.model_config = model_config_for(cfg, self.dataset)
        # the run folder: locked, and a previous run in it settled, before anything is written
        self._lock = open_run_folder(
            self.out, resume=cfg.resume, overwrite=cfg.overwrite, dist=d, say=self._say
        )
        found = self.checkpoints.candidates() if cfg.resume else []
        if found:
            self._adopt_stored_config(found)
        # 4. the model, identical on every rank (same seed), then sharded
        torch.manual_seed(cfg.seed)
        model = INRFlow(self.model_config)
        self.num_params = count_parameters(model)
        self.param_dtype = self._param_dtype()
        from .parallelize import parallelize

        self.model = parallelize(
            model,
            d.mesh,
            param_dtype=self.param_dtype,
            activation_checkpointing=cfg.activation_checkpointing,
            compile=cfg.compile,
        )
        self.model.train()
        # 5. optimizer and EMA (after sharding: both hold the shards)
        self.optimizer = build_optimizer(
            self.model, cfg.lr, tuple(cfg.betas), cfg.eps, cfg.weight_decay
        )
        self.ema = EMA(self.model, cfg.ema_decay)
        self.step = 0
        self.skipped_steps = 0
        self.skipped_files = 0  # distinct unreadable data files met so far
        self._bad_files: set[int] = set()  # their dataset indices
        self._bad_files_base = 0
        # 6. restore (the global RNG only serves stray uses: every draw of the training stream
        # comes from per-sample seeds; a checkpoint's RNG state replaces this seeding)
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
        self.resumed_from: Path | None = None
        if cfg.resume:
            self._restore()
        # 7. the data stream, at the restored position
        self.sampler = StreamSampler(
            len(self.dataset),
            cfg.batch_size,
            d.rank,
            d.world,
            seed=cfg.seed,
            start_step=self.step,
        )
        collate = FlowCollate(
            cfg.num_queries,
            cfg.num_context,
            num_classes=self.model_config.num_classes,
            label_dropout=cfg.label_dropout,
            time_dist=cfg.time_dist,
            time_loc=cfg.time_loc,
            pairing=cfg.pairing,
        )
        workers = min(cfg.workers, _cpus())  # more workers than cores only adds processes
        if workers < cfg.workers:
            self._say(f"--workers {cfg.workers} capped at {workers}: the CPUs this process may use")
        self.loader = build_loader(
            self.dataset,
            self.sampler,
            collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        self._sample_model: INRFlow | None = None
        self._stop_signal: int | None = None
        self._nonfinite_run = 0
        self._saved_step = self.step if self.resumed_from is not None else -1
        self._window: ProfileWindow | None = None
        self._time_losses = TimeBucketLoss(self.device)

    # -- helpers ---------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self._logger is not None and self._logger.bar is not None:
            self._logger.write(f"[inrflow] {msg}")  # above the progress bar, not through it
        else:
            print(f"[inrflow] {msg}", flush=True)

    def _param_dtype(self) -> torch.dtype | None:
        p = self.cfg.precision
        if p == "auto":
            p = "bf16" if self.device.type == "cuda" else "fp32"
        return torch.bfloat16 if p == "bf16" else None

    def _adopt_stored_config(self, found: list[tuple[int, Path]]) -> None:
        """On resume: refuse data the checkpoint cannot continue on, and take the stored
        architecture (and the ``--size`` / ``--model`` that made it) over the command line's, so
        that ``config.json`` and the next checkpoints describe the model really trained."""
        from inrflow.checkpoints import read_manifest

        for _step, path in found:
            try:
                manifest = read_manifest(path)
                stored = manifest["model_config"]
            except (OSError, ValueError, KeyError):
                continue
            conflicts = resume_conflicts(manifest, dataset_info(self.dataset))
            if conflicts:
                raise RunFolderError(
                    f"cannot resume {path} on this --data ({self.cfg.data}): "
                    + "; ".join(conflicts)
                    + ". Use the run's data, or --overwrite / another --out for a new run"
                )
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
            stored_config = INRFlowConfig(**fields)
            if stored_config != self.model_config:
                self._say(
                    "resuming: the model architecture stored in the checkpoint overrides "
                    "the command line's"
                )
                self.model_config = stored_config
            train = manifest.get("train_config") or {}
            changed = {
                k: train[k]
                for k in ("size", "model")
                if k in train and train[k] != getattr(self.cfg, k)
            }
            if changed:
                self._say(
                    "resuming: "
                    + ", ".join(f"--{k} {v} from the checkpoint" for k, v in changed.items())
                    + " (the command line's is ignored)"
                )
                self.cfg = dataclasses.replace(self.cfg, **changed)
            return

    # -- checkpoint state ------------------------------------------------------------------------
    def _state(self, rng_ranks: int | None = None) -> dict[str, Any]:
        """The DCP state dict: model, optimizer, EMA (all sharded), trainer scalars, this rank's
        RNG (only when the checkpoint has a slot for this rank)."""
        state: dict[str, Any] = {
            "model": get_model_state_dict(self.model),
            "optim": get_optimizer_state_dict(self.model, self.optimizer),
            "ema": self.ema.state_dict(),
            "trainer": {
                "step": self.step,
                "skipped_steps": self.skipped_steps,
                "skipped_files": self.skipped_files,
            },
        }
        if rng_ranks is None or self.dist.rank < rng_ranks:
            state["rng"] = {f"rank{self.dist.rank}": CheckpointManager.rng_state()}
        return state

    def _meta(self) -> dict[str, Any]:
        return {
            "model_config": dataclasses.asdict(self.model_config),
            "train_config": self.cfg.to_dict(),
            "dataset": dataset_info(self.dataset),
            "num_params": self.num_params,
            "torch_version": torch.__version__,
            "skipped_data_files": sorted(self._bad_files),
        }

    def save_checkpoint(self) -> Path:
        with nvtx_range("checkpoint"):
            path = self.checkpoints.save(self.step, self._state(), self._meta())
        self._saved_step = self.step
        self._say(f"saved checkpoint {path}")
        return path

    def _restore(self) -> None:
        def build(meta: dict[str, Any]) -> dict[str, Any]:
            return self._state(rng_ranks=int(meta.get("world_size", 1)))

        found = self.checkpoints.load_latest(build)
        if found is None:
            folder = self.checkpoints.folder
            self._say(f"--resume: no checkpoint in {folder} yet; starting at step 0")
            return
        path, meta, state = found
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])
        self.ema.load_state_dict(state["ema"])
        tr = state["trainer"]
        self.step = int(tr["step"])
        self.skipped_steps, self.skipped_files = int(tr["skipped_steps"]), int(tr["skipped_files"])
        self._bad_files = set(meta.get("skipped_data_files", ()))
        # checkpoints from before the file list: their count, plus the files met from now on
        self._bad_files_base = self.skipped_files - len(self._bad_files)
        if "rng" in state:
            CheckpointManager.set_rng_state(state["rng"][f"rank{self.dist.rank}"])
        if int(meta.get("world_size", 1)) != self.dist.world:
            self._say(
                f"checkpoint was written by {meta.get('world_size')} processes, now "
                f"{self.dist.world}: weights and optimizer are resharded; the data stream "
                "continues at the same sample"
            )
        self.resumed_from = path
        self._say(f"resumed from {path} at step {self.step}")
        if self.step >= self.cfg.steps:
            self._say(
                f"the run is already complete (step {self.step}, --steps {self.cfg.steps}): "
                "nothing to train; a larger --steps continues it, --overwrite starts again"
            )

    # -- signals ---------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:  # second signal: stop now
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
                raise KeyboardInterrupt
            self._stop_signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                previous[sig] = signal.signal(sig, handler)
        return previous

    # -- one step --------------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        # the skip count stays on the host: it is read there every step
        return {
            k: v if k.startswith("skipped") else v.to(self.device, non_blocking=nb)
            for k, v in batch.items()
        }

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The CICFM loss of this rank's batch (the hook a new domain would replace); the
        per-sample losses also go, by time band, to the logged ``loss_t/*``."""
        per_sample = cicfm_loss(
            self.model,
            batch.get("coords"),
            batch["values"],
            None,
            batch.get("labels"),
            cond=batch.get("cond"),
            force_drop=batch.get("cond_drop"),
            t=batch["t"],
            noise=batch["noise"],
            query_index=batch.get("query_index"),
            context_index=batch.get("context_index"),
            reduction="per_sample",
        )
        self._time_losses.add(per_sample, batch["t"])
        return per_sample.mean()

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float, bool]:
        """Forward, backward, clip, AdamW, EMA. Returns (mean loss over ranks, grad norm,
        whether the update was skipped). Also agrees on stop requests across ranks."""
        batch.pop("skipped", None)
        new_bad = self._new_bad_files(batch.pop("skipped_index", None))
        lr = lr_at(self.step, self.cfg.lr, self.cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._range("forward"):
            loss = self.compute_loss(batch)
        # one collective: the mean loss (finite on all ranks or not), any stop request, and the
        # unreadable files the ranks' loaders passed over
        loss_sum, stop, skipped = self.dist.all_reduce_sum(
            [loss.detach().float().item(), float(self._stop_signal is not None), len(new_bad)]
        )
        if skipped:  # some rank met a file none had met before: all ranks learn which
            self._record_bad_files(new_bad)
        mean_loss = loss_sum / self.dist.world
        if stop and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM
        if not math.isfinite(mean_loss):
            self._skip(f"non-finite loss {mean_loss}")
            return mean_loss, float("nan"), True
        with self._range("backward"):
            loss.backward()
        with self._range("optimizer"):
            params = [p for p in self.model.parameters() if p.grad is not None]
            clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            grad_norm = float(norm)
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                self._skip(f"non-finite gradient norm {grad_norm}")
                return mean_loss, grad_norm, True
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.update()
        self._nonfinite_run = 0
        return mean_loss, grad_norm, False

    def _new_bad_files(self, index: torch.Tensor | None) -> set[int]:
        """Unreadable files of this batch not met before (a host tensor: no device sync)."""
        if index is None or index.numel() == 0:
            return set()
        return set(index.tolist()) - self._bad_files

    def _record_bad_files(self, new: set[int]) -> None:
        """Add every rank's newly met unreadable files; ``skipped_files`` counts distinct
        files, so a broken file met in every epoch counts once."""
        shares: list[Any] = [new]
        if self.dist.world > 1:
            shares = [None] * self.dist.world
            torch.distributed.all_gather_object(shares, new)
        for share in shares:
            self._bad_files |= share
        self.skipped_files = self._bad_files_base + len(self._bad_files)

    def _range(self, name: str) -> contextlib.ExitStack:
        """The NVTX range of a step phase, also a torch.profiler range inside a traced window."""
        stack = contextlib.ExitStack()
        stack.enter_context(nvtx_range(name))
        if self._window is not None:
            stack.enter_context(self._window.phase(name))
        return stack

    def _skip(self, why: str) -> None:
        self.skipped_steps += 1
        self._nonfinite_run += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist.is_main:
            warnings.warn(
                f"step {self.step + 1}: {why}; the update is skipped "
                f"({self._nonfinite_run} in a row)",
                NonFiniteWarning,
                stacklevel=3,
            )
        if self._nonfinite_run >= self.cfg.max_nonfinite:
            raise NonFiniteLossError(
                f"{self._nonfinite_run} consecutive steps had a non-finite loss or gradient "
                f"(last at step {self.step + 1}): the run has diverged. Lower --lr, check the "
                f"data, or resume from an earlier checkpoint in {self.checkpoints.folder}"
            )

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run to ``cfg.steps`` (or until SIGTERM/SIGINT); returns a summary dict."""
        cfg, d = self.cfg, self.dist
        if d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(
                json.dumps(
                    {"train": cfg.to_dict(), "model": dataclasses.asdict(self.model_config)},
                    indent=1,
                    default=str,
                )
            )
        self._say(
            f"{self.num_params / 1e6:.2f}M parameters ({cfg.size} {self.model_config.value_dim}-"
            f"channel {cfg.task or self.dataset.domain}), {len(self.dataset)} samples, global "
            f"batch {cfg.batch_size} over {d.world} process(es) on {self.device.type}, "
            f"{'bf16' if self.param_dtype else 'fp32'}; steps {self.step}->{cfg.steps}"
        )
        logger = MetricLogger(
            self.out,
            d.is_main,
            cfg.steps,
            self.step,
            cfg.batch_size,
            cfg.log_every,
            cfg.tensorboard,
            throughput=Throughput(
                cfg.batch_size, d.world, cfg.peak_tflops or device_peak_tflops(self.device)
            ),
            progress=cfg.progress,
        )
        self._logger = logger
        watchdog = StallWatchdog(
            self._say if d.is_main else _quiet,
            cfg.stall_factor if d.is_main else 0.0,
            cfg.stall_seconds,
            timeout_s=cfg.dist_timeout if d.world > 1 else None,
        )
        previous = self._install_signal_handlers()
        window = self._window = self._profile_window()
        t_start = time.perf_counter()
        start_step = self.step
        batches = iter(self.loader)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_FSDP_VIEW_WARNING)
                while self.step < cfg.steps:
                    in_window = window.step(self.step - start_step) if window else nullcontext()
                    with in_window:
                        with self._range("data"):
                            batch = self._to_device(next(batches))
                        if not logger.throughput.counted and d.is_main:
                            logger.throughput.count(self.model_config, batch)  # first batch
                        loss, grad_norm, _skipped = self.train_step(batch)
                    self.step += 1
                    logger.log_step(
                        self.step,
                        loss,
                        grad_norm,
                        self.optimizer.param_groups[0]["lr"],
                        self.skipped_files,
                    )
                    if self.step % cfg.log_every == 0:
                        self._log_progress(logger, self._time_losses.read(d.all_reduce_sum))
                    if self._stop_signal is not None:
                        break
                    if window is not None:  # a profile run: measure, then stop
                        if window.done:
                            break
                        continue
                    watchdog.beat(self.step)
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                        with watchdog.slow("saving a checkpoint"):
                            self.save_checkpoint()
                    # sampled below (a protein run always scores its chains at the end)
                    last = self.step == cfg.steps and (
                        cfg.final_samples > 0 or self.dataset.domain == "protein"
                    )
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and not last:
                        with watchdog.slow("sampling"):
                            self.write_samples(logger)
            if window is not None:
                window.abort()  # the run ended before the window did
            elapsed = time.perf_counter() - t_start
            logger.close_bar()
            if self._stop_signal is not None:
                name = signal.Signals(self._stop_signal).name
                logger.write(f"[inrflow] {name} received: saving a checkpoint at step {self.step}")
            if window is None and (
                self._saved_step != self.step
                and (self.step > start_step or self._stop_signal is not None)
            ):
                self.save_checkpoint()
            summary: dict[str, Any] = {
                "step": self.step,
                "train_seconds": elapsed,
                "steps_per_second": (self.step - start_step) / max(elapsed, 1e-9),
                "skipped_steps": self.skipped_steps,
                "skipped_files": self.skipped_files,
                "interrupted_by": self._stop_signal,
            }
            if self.skipped_files:
                self._say(f"{self.skipped_files} unreadable data files were skipped (see warnings)")
            self._say(
                f"{self.step - start_step} steps in {elapsed:.0f} s "
                f"({summary['steps_per_second']:.3g} steps/s, "
                f"{summary['steps_per_second'] * cfg.batch_size:.3g} samples/s)"
            )
            if window is not None:
                summary.update(window.summary())
                if "profile_seconds" in summary:
                    self._say(
                        f"profiled {summary['profile_steps']} steps in "
                        f"{summary['profile_seconds']:.3f} s "
                        f"({summary['profile_steps_per_second']:.3g} steps/s)"
                        + "".join(f"; {f}" for f in summary["profile_files"])
                    )
            elif self._stop_signal is None:
                summary.update(self.finish(logger))
        finally:
            watchdog.stop()
            if window is not None:
                window.abort()
            for sig, h in previous.items():
                signal.signal(sig, h)
            logger.close()
            self._logger = None
        return summary

    def _log_progress(self, logger: MetricLogger, values: dict[str, float]) -> None:
        """TensorBoard scalars and a ``progress.jsonl`` line (rank 0)."""
        if not self.dist.is_main or not values:
            return
        logger.scalars(self.step, values)
        append_progress(self.out, self.step, values)

    def _profile_window(self) -> ProfileWindow | None:
        if not self.cfg.profile:
            return None
        return ProfileWindow(
            0,
            self.cfg.profile_wait,
            self.cfg.profile_steps,
            self.device,
            self.out,
            self.dist.rank,
            trace=self.cfg.profile_trace,
            nvtx_ops=self.cfg.profile_nvtx_ops,
        )

    # -- sampling --------------------------------------------------------------------------------
    def sample_model(self) -> INRFlow | None:
        """A plain (unsharded) copy of the model holding the EMA weights, on rank 0; a
        collective (every rank gathers its shards)."""
        full = self.ema.full_state(keep=self.dist.is_main)
        if not self.dist.is_main:
            return None
        if self._sample_model is None:
            self._sample_model = INRFlow(self.model_config).to(self.device).eval()
        params = dict(self._sample_model.named_parameters())
        with torch.no_grad():
            for name, value in full.items():
                params[name].copy_(value)
        return self._sample_model

    def generate(
        self, model: INRFlow, labels: torch.Tensor | None, num: int, seed: int
    ) -> torch.Tensor:
        """``num`` samples at the training resolution / point count."""
        cfg, info = self.cfg, self.dataset
        g = torch.Generator(self.device).manual_seed(seed)
        guided = labels is not None and cfg.cfg_scale != 1.0
        if info.domain == "image":
            coords = grid_coords(info.shape, device=self.device)
            return sample(
                model,
                None,
                coords,
                cfg.sample_steps,
                cfg.sample_method,
                cfg.cfg_scale if guided else 1.0,
                labels,
                g,
                batch_size=num,
                progress=False,
            )
        cond = None
        if getattr(info, "cond_dim", 0):  # image-to-3D: the tokens of the first items
            cond = torch.stack(
                [torch.from_numpy(info.condition(i % len(info))) for i in range(num)]
            ).to(self.device)
            guided = cfg.cfg_scale != 1.0
        noise = torch.randn(num, info.shape[0], info.value_dim, generator=g, device=self.device)
        return sample(
            model,
            None,
            None,
            cfg.sample_steps,
            cfg.sample_method,
            cfg.cfg_scale if guided else 1.0,
            labels,
            g,
            cond=cond,
            noise=noise,
            progress=False,
        )

    def _labels(self, num: int) -> torch.Tensor | None:
        k = self.model_config.num_classes
        return torch.arange(num, device=self.device) % k if k > 0 else None

    def write_samples(
        self, logger: MetricLogger | None = None, num: int | None = None
    ) -> Path | None:
        """EMA samples of the current step: a PNG grid (images) or PLY files (point clouds)."""
        if self.dataset.domain == "protein":
            return self._evaluate_proteins(f"step_{self.step:09d}", logger)
        model = self.sample_model()
        if model is None:
            return None
        num = num or self.cfg.num_samples
        labels = self._labels(num)
        with nvtx_range("sample"):
            out = self.generate(model, labels, num, seed=self.cfg.seed)
        folder = self.out / "samples"
        if self.dataset.domain == "image":
            k = self.model_config.num_classes
            nrow = k if k > 0 and num % k == 0 else None
            scale = max(1, 128 // max(self.dataset.shape))
            path = save_image_grid(
                out,
                self.dataset.shape,
                folder / f"step_{self.step:09d}.png",
                nrow=nrow,
                scale=scale,
            )
        else:
            path = save_class_clouds(
                out, labels, self.dataset.class_names, folder / f"step_{self.step:09d}"
            )
        if logger is not None:
            logger.write(f"[inrflow] step {self.step}: samples written to {path}")
        if self.dataset.domain == "pointcloud" and logger is not None:
            self._score_periodic(out, labels, logger)
        return path

    def _score_periodic(
        self, out: torch.Tensor, labels: torch.Tensor | None, logger: MetricLogger
    ) -> None:
        """Score periodic class-conditional point-cloud samples with the dataset's own scoring
        (the bundled shapes: recognition and 1-NNA against held-out shapes), so the log shows
        the shapes improving while the loss looks flat."""
        evaluate = getattr(self.dataset, "evaluate_samples", None)
        if evaluate is None or labels is None:
            return
        scores = evaluate(out, labels)
        values = {f"samples/{k}": float(scores[k]) for k in HEADLINE if k in scores}
        self._log_progress(logger, values)
        shown = ", ".join(f"{k.split('/')[1]} {v:.3g}" for k, v in values.items())
        logger.write(f"[inrflow] step {self.step}: {len(out)} samples: {shown}")

    def finish(self, logger: MetricLogger) -> dict[str, Any]:
        """End of a completed run: the loss plot, the final samples and their score."""
        result: dict[str, Any] = {}
        if self.dist.is_main:
            png = plot_loss(logger.csv_path, self.out / "loss.png")
            if png is not None:
                self._say(f"loss curve: {png}")
                result["loss_plot"] = str(png)
        if self.dataset.domain == "protein":
            path = self._evaluate_proteins("final", logger, result)
            if path is not None:
                result["samples"] = str(path)
        elif self.cfg.final_samples > 0:
            model = self.sample_model()
            if model is not None:
                num = self.cfg.final_samples
                labels = self._labels(num)
                t0 = time.perf_counter()
                with nvtx_range("final-samples"):
                    out = self.generate(model, labels, num, seed=self.cfg.seed + 1)
                result["sample_seconds"] = time.perf_counter() - t0
                if self.dataset.domain == "image":
                    k = self.model_config.num_classes
                    show = min(num, 10 * k if k else 100)
                    path = save_image_grid(
                        out[:show],
                        self.dataset.shape,
                        self.out / "samples" / "final.png",
                        nrow=k or None,
                        scale=max(1, 128 // max(self.dataset.shape)),
                    )
                else:
                    path = save_class_clouds(
                        out, labels, self.dataset.class_names, self.out / "samples" / "final"
                    )
                    if labels is not None and hasattr(self.dataset, "clouds"):  # the bundled shapes
                        png = class_picture(self.dataset, out, labels, self.out / "samples.png")
                        if png is not None:
                            self._say(f"samples next to real shapes: {png}")
                            result["picture"] = str(png)
                result["samples"] = str(path)
                self._say(f"{num} final samples: {path}")
                evaluate = getattr(self.dataset, "evaluate_samples", None)
                if evaluate is not None and labels is not None:
                    scores = evaluate(out, labels)
                    result.update(scores)
                    for key, value in scores.items():
                        self._say(
                            f"{key}: {value:.4f} over {num} class-conditional samples "
                            f"({self.cfg.sample_method}, {self.cfg.sample_steps} steps, "
                            f"CFG {self.cfg.cfg_scale})"
                        )
                    (self.out / "final_scores.json").write_text(json.dumps(scores, indent=1))
        self.dist.barrier()
        return result

    def _evaluate_proteins(
        self, tag: str, logger: MetricLogger | None, result: dict[str, Any] | None = None
    ) -> Path | None:
        """Sample one structure per held-out chain and per training chain (at most
        ``SCORED_TRAIN_CHAINS``, evenly spread; ``SCORED_TRAIN_CHAINS_PERIODIC`` before the
        end) with the EMA weights; score, write PDBs and trace pictures, and append the means
        to ``protein_scores.csv`` (the learning curve). At the end of the run (``result``
        given) the untrained model and the idealised chains are scored too: a model that
        learns beats them on its training chains.

        A collective (EMA gather); the work and the files are rank 0's.
        """
        from inrflow.folding import report_table, spaced, structure_report

        splits: dict[str, tuple[Any, list[int] | None]] = {
            "training": (
                self.dataset,
                spaced(
                    len(self.dataset),
                    SCORED_TRAIN_CHAINS if result is not None else SCORED_TRAIN_CHAINS_PERIODIC,
                ),
            )
        }
        heldout = self.dataset.heldout() if self.dataset.split == "train" else None
        if heldout is not None and len(heldout):
            splits["held-out"] = (heldout, None)
        model = self.sample_model()
        if model is None:
            return None
        untrained = None
        if result is not None:
            torch.manual_seed(self.cfg.seed)  # the initial weights of this run (step 0)
            untrained = INRFlow(self.model_config).to(self.device).eval()
        folder = self.out / "samples" / tag
        t0 = time.perf_counter()
        with nvtx_range("sample"):
            report = structure_report(
                model,
                splits,
                untrained=untrained,
                steps=self.cfg.sample_steps,
                method=self.cfg.sample_method,
                seed=self.cfg.seed + 1,
                out_dir=folder,
            )
        seconds = time.perf_counter() - t0
        msg = (
            f"step {self.step}: structures sampled ({self.cfg.sample_method}, "
            f"{self.cfg.sample_steps} steps, {seconds:.0f} s); PDBs and traces in {folder}\n"
            + report_table(report, f"model (step {self.step})")
        )
        if logger is not None:
            logger.write(f"[inrflow] {msg}")
        else:
            self._say(msg)
        _append_scores(self.out / "protein_scores.csv", self.step, report)
        if result is not None:
            main = report.get("held-out", report["training"])["model"]
            scores = {**main, "train": report["training"]["model"], "report": report}
            result.update(lddt_ca=main["lddt_ca"], tm_score=main["tm_score"])
            result["train_lddt_ca"] = report["training"]["model"]["lddt_ca"]
            result["sample_seconds"] = seconds
            (self.out / "final_scores.json").write_text(json.dumps(scores, indent=1))
        return folder

    def close(self) -> None:
        """Leave the process group and release the run folder (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.dist.close()


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Build, train, clean up. The exit path of ``train.py``."""
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def _append_scores(path: Path, step: int, report: dict[str, Any]) -> None:
    """One row per evaluation: step, then mean Cα lDDT and TM-score of the model per split."""
    cols = [f"{split}_{m}" for split in report for m in ("lddt_ca", "tm_score", "chains")]
    row = [str(step)]
    for split in report.values():
        s = split["model"]
        row += [f"{s['lddt_ca']:.4f}", f"{s['tm_score']:.4f}", str(len(s["chains"]))]
    new = not path.exists()
    with path.open("a") as fh:
        if new:
            fh.write(",".join(["step", *cols]) + "\n")
        fh.write(",".join(row) + "\n")


def _quiet(msg: str) -> None:
    """The watchdog's voice on ranks other than 0 (rank 0 speaks for the run)."""


def _cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
