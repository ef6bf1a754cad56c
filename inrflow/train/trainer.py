"""The trainer: setup as an ordered recipe, ``train_step`` as one optimizer step, ``train`` as the
loop around it (checkpoints, signals, samples, logs), ``finish`` at the end.

Setup order (torchtitan's): process group + mesh -> seed -> data -> model -> parallelize (AC,
compile, FSDP2) -> optimizer + EMA -> checkpoint restore -> loader at the restored step.

What depends on the kind of data (dataset, model preset, samples and their scores) is asked of
``self.domain`` (:mod:`inrflow.domains`); the step never waits for the device
(:mod:`inrflow.train.step`): its loss, gradient norm and skip flag are read every
``--log-every`` steps, before a checkpoint and at the end.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from inrflow.data import CoordinateDataset, StreamSampler, build_loader
from inrflow.domains import SampleRun, build_dataset, domain_for
from inrflow.flow import FlowDraws, cicfm_loss
from inrflow.model import INRFlow, count_parameters
from inrflow.nvtx import nvtx_range

from .checkpoint import CheckpointManager
from .config import TrainConfig
from .distributed import Dist, init_distributed, usable_cpus
from .logging import MetricLogger, plot_loss, run_logger
from .optim import EMA, build_optimizer, init_state, lr_at
from .parallelize import parallelize
from .profile_window import ProfileWindow, phase_range, profile_window
from .progress import TimeBucketLoss, append_progress
from .run_folder import RunLock, open_run_folder, write_run_config
from .samples import EMAModel
from .signals import StopRequest
from .state import BadFiles, adopt_stored_config, checkpoint_meta, checkpoint_state, restore
from .step import (
    NonFiniteGuard,
    NonFiniteLossError,
    NonFiniteWarning,
    StepRecord,
    StepRow,
    optimizer_step,
)
from .watchdog import StallWatchdog

__all__ = ["NonFiniteLossError", "NonFiniteWarning", "Trainer", "run"]

# The model's modules return views (chunks, reshapes) that nothing modifies in place, which is
# what FSDP2 warns about on every forward.
_FSDP_VIEW_WARNING = r"FSDP2-wrapped module .* returned a view tensor"


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
        # 2. data (a wrong path fails here, before anything is built); proteins: every 10th
        # chain is held out for the final evaluation
        self.dataset = dataset or build_dataset(
            cfg.data, task=cfg.task, split="train", **cfg.data_options()
        )
        self.domain = domain_for(cfg.task or self.dataset.domain)
        self.checkpoints = CheckpointManager(
            self.out / "checkpoints",
            d,
            keep=cfg.keep_ckpts,
            checksums=cfg.verify_checksums,
            log=self.say,
        )
        # 3. model config (a bad --model fails here, before the run folder is made); on resume
        # the stored architecture wins over the command line
        self.model_config = self.domain.model_config(cfg, self.dataset)
        # the run folder: locked, and a previous run in it settled, before anything is written
        self._lock = open_run_folder(
            self.out, resume=cfg.resume, overwrite=cfg.overwrite, dist=d, say=self.say
        )
        found = self.checkpoints.candidates() if cfg.resume else []
        if found:
            adopt_stored_config(self, found)
        # 4. the model, identical on every rank (same seed), then sharded
        torch.manual_seed(cfg.seed)
        self._shard(INRFlow(self.model_config))  # 5. optimizer and EMA inside
        # 6. restore (the global RNG only serves stray uses: every draw of the training stream
        # comes from per-sample seeds; a checkpoint's RNG state replaces this seeding)
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
        self.resumed_from: Path | None = None
        if cfg.resume:
            restore(self)
        # 7. the data stream, at the restored position
        self.sampler = StreamSampler(
            len(self.dataset), cfg.batch_size, d.rank, d.world, seed=cfg.seed, start_step=self.step
        )
        workers = min(cfg.workers, usable_cpus())  # more workers than cores only adds processes
        if workers < cfg.workers:
            self.say(f"--workers {cfg.workers} capped at {workers}: the CPUs this process may use")
        self.loader = build_loader(
            self.dataset,
            self.sampler,
            self.domain.collate(cfg, self.model_config.num_classes),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        self._ema_model = EMAModel(self.model_config, self.device)
        self._stop = StopRequest()
        self._stop_signal: int | None = None  # agreed by all ranks
        self._new_bad: set[int] = set()  # files met since the last read (more than one rank)
        self._record = StepRecord()
        self._saved_step = self.step if self.resumed_from is not None else -1
        self._window: ProfileWindow | None = None
        self._time_losses = TimeBucketLoss(self.device)

    def _shard(self, model: torch.nn.Module) -> None:
        """Parallelize (AC, compile, FSDP2); optimizer, EMA and fresh-run state over the shards."""
        cfg = self.cfg
        self.num_params = count_parameters(model)
        self.param_dtype = cfg.param_dtype(self.device)
        self.model = parallelize(
            model,
            self.dist.mesh,
            param_dtype=self.param_dtype,
            activation_checkpointing=cfg.activation_checkpointing,
            compile=cfg.compile,
        )
        self.model.train()
        self._build_optimizer()
        self.ema = EMA(self.model, cfg.ema_decay)
        self.step = 0
        hint = "Lower --lr, check the data, or resume from an earlier checkpoint in "
        self.guard = NonFiniteGuard(
            cfg.max_nonfinite, hint + str(self.checkpoints.folder), warn=self.dist.is_main
        )
        self.bad_files = BadFiles()

    def _build_optimizer(self) -> None:
        """AdamW over the sharded parameters, its state created now (see ``init_state``)."""
        cfg = self.cfg
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
        init_state(self.optimizer)

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state as a checkpoint holds it (keyed by parameter name, sharded)."""
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient, as of the last read."""
        return self.guard.skipped

    def say(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self._logger is not None and self._logger.bar is not None:
            self._logger.write(f"[inrflow] {msg}")  # above the progress bar, not through it
        else:
            print(f"[inrflow] {msg}", flush=True)

    def _phase(self, name: str) -> contextlib.ExitStack:
        return phase_range(self._window, name)

    def save_checkpoint(self) -> Path:
        with nvtx_range("checkpoint"):
            path = self.checkpoints.save(self.step, checkpoint_state(self), checkpoint_meta(self))
        self._saved_step = self.step
        self.say(f"saved checkpoint {path}")
        return path

    # -- one step --------------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        # the unreadable files stay on the host: they are read there every step
        return {
            k: v if k.startswith("skipped") else v.to(self.device, non_blocking=nb)
            for k, v in batch.items()
        }

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The CICFM loss of this rank's batch; the per-sample losses also go, by time band,
        to the logged ``loss_t/*``."""
        per_sample = cicfm_loss(
            self._loss_model(),
            batch.get("coords"),
            batch["values"],
            FlowDraws.from_batch(batch),
            batch.get("labels"),
            cond=batch.get("cond"),
            reduction="per_sample",
        )
        self._time_losses.add(per_sample, batch["t"])
        return per_sample.mean()

    def _loss_model(self) -> Any:
        """What the loss calls as the model (a co-training run: the step's domain of it)."""
        return self.model

    def _lr(self) -> float:
        """The learning rate of the current step."""
        cfg = self.cfg
        return lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps)

    def _row_domain(self, row: StepRow) -> str | None:
        """The domain a logged step trained (None: a single-domain run)."""
        return None

    def train_step(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward, backward, clip, AdamW, EMA, without a host-device sync. Returns this rank's
        loss, the gradient norm and the skip flag (1: a non-finite loss or gradient left the
        weights, optimizer and EMA as they were) as device scalars, also kept for the next
        :meth:`read_steps`."""
        batch.pop("skipped", None)
        new_bad = self.bad_files.new(batch.pop("skipped_index", None))
        if self.dist.world == 1:
            self.bad_files.record(new_bad, 1)
        else:  # shared with the other ranks at the next read
            self._new_bad |= new_bad
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._phase("forward"):
            loss = self.compute_loss(batch)
        with self._phase("backward"):
            loss.backward()
        with self._phase("optimizer"):
            reduce_max = (lambda t: self.dist.reduce_(t, "max")) if self.dist.world > 1 else None
            norm, skipped = optimizer_step(
                self.model, self.optimizer, self.ema, loss, self.cfg.grad_clip, reduce_max
            )
        self._record.add(self.step + 1, loss, norm, skipped, lr, self.bad_files.count)
        return loss.detach(), norm, skipped

    def read_steps(self, logger: MetricLogger | None = None) -> list[StepRow]:
        """The host's look at the steps since the last read (one transfer, and with several
        ranks one collective that also agrees on stop requests and unreadable files): log
        their rows, count the skipped ones, and stop a run whose last ``--max-nonfinite``
        steps were all skipped."""
        d = self.dist
        if d.world > 1:
            stop, files = d.all_reduce_sum(
                [float(self._stop.signum is not None), len(self._new_bad)]
            )
            if stop and self._stop_signal is None:
                self._stop_signal = self._stop.signum or signal.SIGTERM
            if files:  # some rank met a file none had met before: all ranks learn which
                self.bad_files.record(self._new_bad, d.world)
            self._new_bad = set()
        rows = self._record.read(lambda t: d.reduce_(t, "sum"), d.world)
        for row in rows:
            if logger is not None:
                logger.log_step(
                    row.step,
                    row.loss,
                    row.grad_norm,
                    row.lr,
                    row.skipped_files,
                    row.at,
                    row.wall,
                    domain=self._row_domain(row),
                )
            self.guard.check(row)
        return rows

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run to ``cfg.steps`` (or until SIGTERM/SIGINT); returns a summary dict."""
        cfg, d = self.cfg, self.dist
        self._announce()
        logger = self._logger = run_logger(cfg, d, self.step)
        watchdog = StallWatchdog(
            self.say if d.is_main else _quiet,
            cfg.stall_factor if d.is_main else 0.0,
            cfg.stall_seconds,
            timeout_s=cfg.dist_timeout if d.world > 1 else None,
        )
        self._stop.install()
        window = self._window = profile_window(cfg, self.device, self.out, d.rank)
        t_start, start_step = time.perf_counter(), self.step
        batches = iter(self.loader)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_FSDP_VIEW_WARNING)
                while self.step < cfg.steps:
                    with window.step(self.step - start_step) if window else nullcontext():
                        with self._phase("data"):
                            batch = self._to_device(next(batches))
                        if not logger.throughput.counted and d.is_main:
                            logger.throughput.count(self.model_config, batch)  # first batch
                        self.train_step(batch)
                    self.step += 1
                    checkpoint = cfg.ckpt_every and self.step % cfg.ckpt_every == 0
                    if self.step % cfg.log_every == 0 or checkpoint:
                        self.read_steps(logger)
                    if self.step % cfg.log_every == 0:
                        self._log_progress(logger, self._time_losses.read(d.all_reduce_sum))
                    if d.world == 1:  # alone, a stop request needs no agreement
                        self._stop_signal = self._stop.signum
                    if self._stop_signal is not None or (window is not None and window.done):
                        break
                    if window is not None:  # a profile run: measure, then stop
                        continue
                    watchdog.beat(self.step)
                    if checkpoint:
                        with watchdog.slow("saving a checkpoint"):
                            self.save_checkpoint()
                    last = self.step == cfg.steps and self.domain.samples_at_end(cfg)
                    if cfg.sample_every and self.step % cfg.sample_every == 0 and not last:
                        with watchdog.slow("sampling"):
                            self.write_samples(logger)
                self.read_steps(logger)
            with watchdog.slow("the last checkpoint and the final samples"):  # slow by design
                return self._wrap_up(logger, window, time.perf_counter() - t_start, start_step)
        finally:
            watchdog.stop()
            if window is not None:
                window.abort()
            self._stop.uninstall()
            logger.close()
            self._logger = None

    def _announce(self) -> None:
        """``config.json`` in the run folder, and a line saying what is trained."""
        cfg, d = self.cfg, self.dist
        if d.is_main:
            write_run_config(self.out, cfg, self.model_config)
        self.say(
            f"{self.num_params / 1e6:.2f}M parameters ({cfg.size} {self.model_config.value_dim}-"
            f"channel {self.domain.name}), {len(self.dataset)} samples, global "
            f"batch {cfg.batch_size} over {d.world} process(es) on {self.device.type}, "
            f"{'bf16' if self.param_dtype else 'fp32'}; steps {self.step}->{cfg.steps}"
        )

    def _log_progress(self, logger: MetricLogger, values: dict[str, float]) -> None:
        """TensorBoard scalars and a ``progress.jsonl`` line (rank 0)."""
        if not self.dist.is_main or not values:
            return
        logger.scalars(self.step, values)
        append_progress(self.out, self.step, values)

    # -- the end ---------------------------------------------------------------------------------
    def _wrap_up(
        self, logger: MetricLogger, window: ProfileWindow | None, elapsed: float, start_step: int
    ) -> dict[str, Any]:
        """After the loop: the last checkpoint, the summary, and the domain's final samples."""
        if window is not None:
            window.abort()  # the run ended before the window did
        logger.close_bar()
        if self._stop_signal is not None:
            name = signal.Signals(self._stop_signal).name
            logger.write(f"[inrflow] {name} received: saving a checkpoint at step {self.step}")
        moved = self.step > start_step or self._stop_signal is not None
        if window is None and self._saved_step != self.step and moved:
            self.save_checkpoint()
        rate = (self.step - start_step) / max(elapsed, 1e-9)
        summary: dict[str, Any] = {
            "step": self.step,
            "train_seconds": elapsed,
            "steps_per_second": rate,
            "skipped_steps": self.skipped_steps,
            "skipped_files": self.bad_files.count,
            "interrupted_by": self._stop_signal,
        }
        if self.bad_files.count:
            self.say(f"{self.bad_files.count} unreadable data files were skipped (see warnings)")
        self.say(
            f"{self.step - start_step} steps in {elapsed:.0f} s ({rate:.3g} steps/s, "
            f"{rate * self.cfg.batch_size:.3g} samples/s)"
        )
        if window is not None:
            summary.update(window.summary())
            if "profile_seconds" in summary:
                self.say(ProfileWindow.describe(summary))
        elif self._stop_signal is None:
            summary.update(self.finish(logger))
        return summary

    # -- sampling (the domain's) -----------------------------------------------------------------
    def sample_model(self) -> INRFlow | None:
        """The EMA weights in a plain model on rank 0; a collective."""
        return self._ema_model.gather(self.ema, self.dist)

    def _sample_run(self, logger: MetricLogger | None) -> SampleRun | None:
        """What the domain samples with (rank 0; a collective: the EMA gather); its lines go
        above the progress bar and its scores to TensorBoard and ``progress.jsonl``."""
        model = self.sample_model()
        if model is None:
            return None
        log = (lambda m: logger.write(f"[inrflow] {m}")) if logger is not None else self.say
        scalars = (lambda v: self._log_progress(logger, v)) if logger is not None else _quiet
        return SampleRun(model, self.dataset, self.cfg, self.out, self.step, log, scalars)

    def write_samples(self, logger: MetricLogger | None = None) -> Path | None:
        """The domain's samples of the current step (a collective: the EMA gather)."""
        run = self._sample_run(logger)
        return None if run is None else self.domain.periodic(run)

    def finish(self, logger: MetricLogger) -> dict[str, Any]:
        """End of a completed run: the loss plot, the domain's final samples and scores."""
        result: dict[str, Any] = {}
        if self.dist.is_main:
            png = plot_loss(logger.csv_path, self.out / "loss.png")
            if png is not None:
                self.say(f"loss curve: {png}")
                result["loss_plot"] = str(png)
        if self.domain.samples_at_end(self.cfg):
            result.update(self._final_scores())
        self.dist.barrier()
        return result

    def _final_scores(self) -> dict[str, Any]:
        """The domain's final samples and scores (a collective: the EMA gather; rank 0 scores)."""
        run = self._sample_run(None)
        return {} if run is None else self.domain.final(run)

    def close(self) -> None:
        """Leave the process group and release the run folder (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.dist.close()


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Build, train, clean up; several datasets in ``--data`` make a co-training run."""
    from .cotrain import CoTrainer  # it builds on this module

    trainer = CoTrainer(cfg) if cfg.cotraining else Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def _quiet(msg: Any) -> None:
    """The watchdog's voice on ranks other than 0 (rank 0 speaks for the run); no scalars."""
