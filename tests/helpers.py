"""What several test modules share, in one place instead of test modules importing each other:

- the markers of tests that need something the machine may lack (``requires_gloo``: the
  multi-process trainer tests);
- the single-thread fixture (``one_thread``, made available to every module by conftest.py);
- the tiny training run (config, command line, runner, what a run leaves behind) that the
  trainer, fault, CLI and sampling tests train from;
- exact references: a Gaussian mixture's marginal velocity, a class-conditional Gaussian model
  whose guided velocity is known, and a tiny stand-in for Inception.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from inrflow.checkpoints import list_checkpoints
from inrflow.data import DigitsDataset
from inrflow.data.base import CoordinateDataset
from inrflow.train import TrainConfig, Trainer
from inrflow.train.config import flag
from inrflow.train.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# markers
# ------------------------------------------------------------------------------------------------

GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()
requires_gloo = pytest.mark.skipif(not GLOO, reason="needs torch.distributed with gloo")


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test: small tensors gain nothing from more, and on a busy
    2-core machine spinning OpenMP threads make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# the tiny training run
# ------------------------------------------------------------------------------------------------

TINY_MODEL = dict(
    hidden=32,
    depth=1,
    heads=2,
    num_latents=16,
    encoder_heads=2,
    time_freq_dim=32,
    num_freqs=4,
    max_log2=3.0,
    rel_num_freqs=2,
    rel_max_log2=1.0,
)
TINY = dict(
    data="digits",
    size="tiny",
    resolution=8,
    channels=1,
    hflip=False,
    model=TINY_MODEL,
    batch_size=8,
    steps=6,
    num_queries=16,
    lr=1e-3,
    workers=0,
    ckpt_every=3,
    sample_every=0,
    log_every=1,
    tensorboard=False,
    threads=1,
    device="cpu",
)


def tiny_config(out: Path, **overrides) -> TrainConfig:
    """A few steps of a ~50k-parameter model on 8x8 digits in one thread, written to ``out``."""
    fields = {**TINY, "model": dict(TINY_MODEL), "out": str(out), **overrides}
    return TrainConfig(**fields)


def tiny_argv(out: Path, **overrides) -> list[str]:
    """The command line of :func:`tiny_config` (for subprocess and torchrun runs)."""
    fields = {**TINY, "out": str(out), **overrides}
    argv = []
    for key, value in fields.items():
        option = flag(key)
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + option[2:])
        elif isinstance(value, dict):
            argv += [option, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            argv += [option, str(value)]
    return argv


def train(
    cfg: TrainConfig,
    dataset: CoordinateDataset | None = None,
    trainer_class: type[Trainer] = Trainer,
) -> dict:
    """Run ``cfg`` to the end in this process with ``trainer_class`` (a co-training run:
    :class:`~inrflow.train.cotrain.CoTrainer`); its summary (with ``resumed_from``)."""
    threads = torch.get_num_threads()
    trainer = trainer_class(cfg, dataset)
    try:
        summary = trainer.train()
        summary["resumed_from"] = trainer.resumed_from
        return summary
    finally:
        trainer.close()
        torch.set_num_threads(threads)


def losses(out: Path) -> list[float]:
    """The logged loss of every step of the run in ``out`` (one row per step, in order)."""
    rows = read_metrics(Path(out) / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def ckpt_steps(out: Path) -> list[int]:
    """The steps of the finished checkpoints of the run in ``out``, ascending."""
    return sorted(s for s, _ in list_checkpoints(Path(out) / "checkpoints"))


def script_env() -> dict[str, str]:
    """The environment of a subprocess running a root script: this checkout, one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def copy_run(src: Path, dst: Path, keep_steps: list[int]) -> Path:
    """A copy of run ``src`` in ``dst`` with only the checkpoints of ``keep_steps``."""
    (dst / "checkpoints").mkdir(parents=True)
    for step, path in list_checkpoints(src / "checkpoints"):
        if step in keep_steps:
            shutil.copytree(path, dst / "checkpoints" / path.name)
    shutil.copy(src / "metrics.csv", dst / "metrics.csv")
    return dst


class SigtermAtStep(DigitsDataset):
    """The tiny run's digits, sending SIGTERM to this process while the batch of optimizer step
    ``step`` (1-based) is being loaded: the run stops there as a preempted job would."""

    def __init__(self, step: int, batch_size: int = TINY["batch_size"]) -> None:
        super().__init__()
        self._signal_at, self._calls = (step - 1) * batch_size + 1, 0

    def load(self, index: int, rng) -> dict:
        self._calls += 1
        if self._calls == self._signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().load(index, rng)


class Poisoned(DigitsDataset):
    """Digits whose items in ``bad`` are NaN."""

    def __init__(self, bad: set[int], size: int | None = None) -> None:
        super().__init__()
        self.bad, self.size = bad, size

    def __len__(self) -> int:
        return self.size or super().__len__()

    def load(self, index, rng):
        item = super().load(index, rng)
        if index in self.bad or "all" in self.bad:
            item["values"] = torch.full_like(item["values"], float("nan"))
        return item


# ------------------------------------------------------------------------------------------------
# exact references
# ------------------------------------------------------------------------------------------------

# A 2-D Gaussian mixture: for the linear path x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I), its
# marginal velocity is known in closed form (gmm_velocity): what a perfect network would output.
MUS = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
COVS = torch.stack(
    [
        torch.tensor([[0.5, 0.2], [0.2, 0.3]]),
        torch.tensor([[0.3, -0.1], [-0.1, 0.6]]),
        torch.tensor([[0.2, 0.0], [0.0, 0.2]]),
    ]
).double()
WEIGHTS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)


def gmm_moments() -> tuple[torch.Tensor, torch.Tensor]:
    mean = (WEIGHTS[:, None] * MUS).sum(0)
    second = (WEIGHTS[:, None, None] * (COVS + MUS[:, :, None] * MUS[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


def gmm_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """Exact marginal velocity of the GMM for x ``[..., 2]`` (computed in float64)."""
    xd = x.double().reshape(-1, 2)
    eye = torch.eye(2, dtype=torch.float64)
    s = t * t * COVS + (1 - t) ** 2 * eye  # [K, 2, 2]
    s_inv = torch.linalg.inv(s)
    r = xd[:, None, :] - t * MUS  # [N, K, 2]
    sr = (s_inv * r[:, :, None, :]).sum(-1)  # S_k^-1 (x - t mu_k), [N, K, 2]
    logw = torch.log(WEIGHTS) - 0.5 * (r * sr).sum(-1) - 0.5 * torch.logdet(s)
    w = torch.softmax(logw, dim=-1)  # [N, K]
    e_x1 = MUS + t * (COVS * sr[:, :, None, :]).sum(-1)  # E[x1 | x, k]
    e_x0 = (1 - t) * sr  # E[x0 | x, k]
    return (w[..., None] * (e_x1 - e_x0)).sum(-2).reshape(x.shape).to(x.dtype)


class GaussianClassModel(nn.Module):
    """Class y has data N(mu_y, I) (value_dim 2); the null class (index 2) has N(0, I).

    The exact velocity is linear in mu, so CFG with scale s gives exactly the field of
    N(s mu_y, I): the guided samples must have mean s mu_y.
    """

    MU = torch.tensor([[3.0, -1.0], [-2.0, 2.0], [0.0, 0.0]])

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            value_dim=2, coord_dim=1, coords_are_values=False, num_classes=2
        )
        self.dummy = nn.Parameter(torch.zeros(()))
        self.encode_batches: list[int] = []

    def encode(self, coords, values, t, labels=None, cond=None, force_drop=None):
        self.encode_batches.append(values.shape[0])
        if force_drop is not None:
            labels = torch.where(force_drop, torch.full_like(labels, 2), labels)
        return SimpleNamespace(t=t, labels=labels, ctx_mean=values.mean(1))

    def decode(self, enc, coords, values, chunk_size=None):
        t = enc.t[:, None, None].double()
        mu = self.MU[enc.labels][:, None, :].double()
        s = t * t + (1 - t) ** 2
        v = mu + (2 * t - 1) / s * (values.double() - t * mu)
        return v.float()


class TinyExtractor(torch.nn.Module):
    """Stands in for Inception: a fixed random projection of 8 x 8 average-pooled pixels."""

    def __init__(self, kind: str = "rfid") -> None:
        super().__init__()
        self.kind = kind
        self.metric_name = "FID" if kind == "fid" else "rFID"
        self.description = f"tiny test extractor ({kind})"
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 64, 16, generator=gen))
        self.register_buffer("head", torch.randn(16, 10, generator=gen))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(x.detach().clone())
        x = x.expand(-1, 3, -1, -1)
        f = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.proj
        return f, f @ self.head
