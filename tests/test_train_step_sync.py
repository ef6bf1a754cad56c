"""The training step never waits for the device: no host-device synchronisation between log
steps, and a non-finite step is skipped on the device with everything left bit-identical."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import Poisoned, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from inrflow.ops import _checks
from inrflow.train import Trainer

# the ops through which a tensor's value reaches the host: ``.item()``/``float()``/``bool()``
# (``_local_scalar_dense``), ``torch.equal``, ``Tensor.is_nonzero``
SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.is_nonzero.default,
}


class CountSyncs(TorchDispatchMode):
    """Counts the ops that copy a tensor's value to the host, and ``Tensor.tolist()`` calls
    (which read the memory without dispatching an op).

    Not counted: the model's value checks (:func:`inrflow.ops._checks.assert_values`), which
    queue ``torch._assert_async`` on an accelerator and read the flag at once only on the CPU,
    where that read waits for nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._exempt = 0
        tolist, check = torch.Tensor.tolist, _checks.assert_values

        def counted_tolist(t: torch.Tensor):
            self.counts["Tensor.tolist"] += 1
            return tolist(t)

        def exempt_check(*args, **kwargs):
            self._exempt += 1
            try:
                return check(*args, **kwargs)
            finally:
                self._exempt -= 1

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
        monkeypatch.setattr(_checks, "assert_values", exempt_check)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS and not self._exempt:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _trainer(tmp_path: Path, dataset=None, **overrides) -> Trainer:
    cfg = tiny_config(tmp_path, steps=100, log_every=1000, ckpt_every=0, **overrides)
    return Trainer(cfg, dataset)


def test_training_steps_between_log_steps_do_not_sync(tmp_path, monkeypatch) -> None:
    trainer = _trainer(tmp_path)
    try:
        batches = iter(trainer.loader)
        data = [trainer._to_device(next(batches)) for _ in range(4)]  # the loader is host work
        trainer.train_step(data[0])  # the first step creates the optimizer state
        with CountSyncs(monkeypatch) as mode:
            for batch in data[1:]:
                trainer.train_step(batch)
                trainer.step += 1
        monkeypatch.undo()
        assert dict(mode.counts) == {}, f"host syncs in 3 steps: {dict(mode.counts)}"
    finally:
        trainer.close()


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"param/{n}": _full(p) for n, p in trainer.model.named_parameters()}
    out |= {f"ema/{n}": _full(t) for n, t in trainer.ema.shadow.items()}
    for i, state in enumerate(trainer.optimizer.state.values()):
        out |= {f"optim/{i}/{k}": _full(v) for k, v in state.items()}
    return out


def test_a_nonfinite_step_leaves_weights_ema_and_optimizer_bit_identical(tmp_path) -> None:
    trainer = _trainer(tmp_path, dataset=Poisoned({"all"}))
    try:
        clean = _trainer(tmp_path / "clean")
        good = clean._to_device(next(iter(clean.loader)))
        clean.close()
        trainer.train_step(good)  # a finite step first: the optimizer state exists
        before = _snapshot(trainer)
        bad = trainer._to_device(next(iter(trainer.loader)))
        assert not torch.isfinite(bad["values"]).all()
        trainer.train_step(bad)
        after = _snapshot(trainer)
        assert before.keys() == after.keys() and any(k.startswith("optim/") for k in before)
        for key, value in before.items():
            assert torch.equal(value, after[key]), key
        assert all(p.grad is None for p in trainer.model.parameters())
    finally:
        trainer.close()
