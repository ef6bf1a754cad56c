"""Co-training runs (``--data digits,shapes``): a tiny two-domain run trains, checkpoints and
resumes bit-identically; each domain samples from one checkpoint; the per-domain options, the
schedule and the per-domain loss columns."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import REPO, copy_run, losses, script_env, tiny_argv, train

from inrflow.checkpoints import MANIFEST, list_checkpoints, load_ema_model, read_manifest
from inrflow.data.schedule import DomainSchedule
from inrflow.export import main as export
from inrflow.generation import generate
from inrflow.model import MultiDomainINRFlow, load_pretrained
from inrflow.model.config import INRFlowConfig
from inrflow.train import parse_args
from inrflow.train.cotrain import CoTrainer, default_weights
from inrflow.train.logging import read_metrics
from inrflow.train.optim import clean_name
from inrflow.train.run_folder import RunFolderError

WEIGHTS = {"digits": 1, "shapes": 2}


def cotrain_argv(out: Path, **overrides) -> list[str]:
    fields = dict(
        data="digits,shapes",
        domain_weights="digits=1,shapes=2",
        num_points=32,
        final_samples=0,
        steps=9,
        ckpt_every=3,
        keep_ckpts=10,
    )
    return tiny_argv(out, **{**fields, **overrides})


def cotrain(argv: list[str], trainer_class: type[CoTrainer] = CoTrainer) -> dict:
    return train(parse_args(argv), trainer_class=trainer_class)


def model_state(ckpt: Path, key: str = "model") -> dict[str, torch.Tensor]:
    """The raw (not EMA) weights, or the EMA ones, stored in a co-training checkpoint."""
    meta = read_manifest(ckpt)
    configs = {n: INRFlowConfig.from_dict(c) for n, c in meta["model_configs"].items()}
    model = MultiDomainINRFlow(configs)
    state = {key: {n: p.detach().clone() for n, p in model.named_parameters()}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=True)
    return state[key]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 9-step co-training run, checkpoints every 3 steps."""
    out = tmp_path_factory.mktemp("cotrain")
    cotrain(cotrain_argv(out))
    return out


def test_per_domain_options_come_from_the_demo_presets() -> None:
    cfg = parse_args(["--preset", "cotrain"])
    digits, shapes = cfg.domain_options("digits"), cfg.domain_options("shapes")
    assert (digits.batch_size, digits.lr, digits.pairing, digits.final_samples) == (
        32,
        2e-3,
        "random",
        500,
    )
    assert (shapes.batch_size, shapes.lr, shapes.pairing, shapes.num_points) == (
        16,
        1e-3,
        "ot",
        256,
    )
    assert digits.model["depth"] == shapes.model["depth"] == 2  # the run's --model on top
    assert digits.model["num_latents"] == 16 and "num_latents" not in shapes.model
    assert default_weights(cfg) == {"digits": 2, "shapes": 5}
    assert DomainSchedule(default_weights(cfg)).counts(cfg.steps) == {
        "digits": 1200,
        "shapes": 3000,
    }
    # the command line beats the presets, for every domain
    cli = parse_args(["--preset", "cotrain", "--batch-size", "4", "--final-samples", "0"])
    assert cli.domain_options("digits").batch_size == cli.domain_options("shapes").batch_size == 4
    assert cli.domain_options("shapes").final_samples == 0
    # datasets without a demo preset of their own: equal weights
    assert default_weights(parse_args(["--data", "digits,my_images"])) == {
        "digits": 1,
        "my_images": 1,
    }
    with pytest.raises(ValueError, match="once"):
        parse_args(["--data", "digits,digits"])
    with pytest.raises(ValueError, match="domain-weights needs"):
        parse_args(["--data", "digits", "--domain-weights", "digits=1"])


def test_the_run_trains_each_domain_on_its_scheduled_steps(reference) -> None:
    rows = read_metrics(reference / "metrics.csv")
    schedule = DomainSchedule(WEIGHTS, seed=0)
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    for row in rows:
        domain = schedule.domain_at(int(row["step"]) - 1)
        other = "shapes" if domain == "digits" else "digits"
        assert row[f"loss_{domain}"] == row["loss"] and np.isnan(row[f"loss_{other}"])
    assert all(r["lr"] == 1e-3 for r in rows)  # --lr given: every domain's


def test_an_interrupted_run_resumes_bit_identically(reference, tmp_path) -> None:
    out = copy_run(reference, tmp_path / "run", [3])
    summary = cotrain(cotrain_argv(out, resume=True))
    assert summary["resumed_from"].name == "step_000000003"
    assert losses(out) == losses(reference)  # exact, per step, both domains
    a = dict(list_checkpoints(out / "checkpoints"))[9]
    b = dict(list_checkpoints(reference / "checkpoints"))[9]
    for key in ("model", "ema"):
        sa, sb = model_state(a, key), model_state(b, key)
        for name in sb:
            assert torch.equal(sa[name], sb[name]), (key, name)


def test_a_run_whose_domains_shared_one_optimizer_state_is_refused_clearly(
    reference, tmp_path
) -> None:
    out = copy_run(reference, tmp_path / "run", [3])
    manifest = out / "checkpoints" / "step_000000003" / MANIFEST
    meta = json.loads(manifest.read_text())
    del meta["optimizers"]  # as the first co-training checkpoints were written
    manifest.write_text(json.dumps(meta))
    with pytest.raises(RunFolderError, match="shared one optimizer state"):
        cotrain(cotrain_argv(out, resume=True))


def test_each_domain_samples_from_one_checkpoint(reference) -> None:
    digits, meta_d, _ = load_ema_model(reference, domain="digits")
    shapes, meta_s, _ = load_ema_model(reference, domain="shapes")
    assert meta_d["dataset"]["domain"] == "image" and meta_s["dataset"]["domain"] == "pointcloud"
    assert meta_s["train_config"]["pairing"] == "ot"  # the domain's own options
    ema = model_state(dict(list_checkpoints(reference / "checkpoints"))[9], "ema")
    # the shared trunk is the same in both domains' models
    for (name, p), q in zip(
        digits.blocks.named_parameters(), shapes.blocks.parameters(), strict=True
    ):
        assert torch.equal(p, q) and torch.equal(p, ema[f"blocks.{name}"])
    images = generate(digits, meta_d["dataset"], 3, steps=2, seed=0)
    clouds = generate(shapes, meta_s["dataset"], 2, steps=2, seed=0)
    assert images.shape == (3, 64, 1) and clouds.shape == (2, 32, 3)
    assert torch.isfinite(images).all() and torch.isfinite(clouds).all()
    with pytest.raises(ValueError, match=r"co-training checkpoint of \['digits', 'shapes'\]"):
        load_ema_model(reference)
    with pytest.raises(ValueError, match="no domain 'proteins'"):
        load_ema_model(reference, domain="proteins")


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_two_gloo_processes_leave_the_unused_domain_alone(reference, tmp_path) -> None:
    """FSDP2 over two processes: no collective fails on a step that leaves one domain's
    encoder unused, that domain's weights and EMA stay bit-identical through the step, and
    the losses are those of one process."""
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(REPO / "train.py"), *cotrain_argv(out, ckpt_every=1)]
    res = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "over 2 process(es)" in res.stdout
    np.testing.assert_allclose(losses(out), losses(reference), rtol=1e-4)
    schedule = DomainSchedule(WEIGHTS, seed=0)
    ckpts = dict(list_checkpoints(out / "checkpoints"))
    for step in range(2, 10):  # the step from checkpoint step-1 to checkpoint step
        trained = schedule.domain_at(step - 1)
        other = "shapes" if trained == "digits" else "digits"
        for key in ("model", "ema"):
            before, after = model_state(ckpts[step - 1], key), model_state(ckpts[step], key)
            own = [k for k in before if k.startswith(f"domains.{other}.")]
            assert own and all(torch.equal(before[k], after[k]) for k in own), (step, key)
            moved = [k for k in before if k.startswith(f"domains.{trained}.")]
            assert any(not torch.equal(before[k], after[k]) for k in moved), (step, key)


def test_export_and_the_sampling_options_take_a_domain(reference, tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"co-training checkpoint of \['digits', 'shapes'\]"):
        export(["--ckpt", str(reference), "--out", str(tmp_path / "none")])
    assert (
        export(["--ckpt", str(reference), "--domain", "shapes", "--out", str(tmp_path / "e")]) == 0
    )
    shapes, _, _ = load_ema_model(reference, domain="shapes")
    exported = load_pretrained(tmp_path / "e")
    for (name, p), q in zip(shapes.named_parameters(), exported.parameters(), strict=True):
        assert torch.equal(p, q), name


class _LoudDigits(CoTrainer):
    """A co-training run whose digits loss is 1000 times larger: gradients of another scale."""

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = super().compute_loss(batch)
        return loss * 1000.0 if self.current == "digits" else loss


def test_each_domain_s_adam_moments_follow_only_its_own_gradients(tmp_path) -> None:
    """Adam divides a parameter's step by its running gradient scale. Were the moments of the
    shared parameters shared by the domains, the domain with the larger gradients (in the demo,
    digits: a loss ~8x the shapes one) would shrink every step of the other on the shared
    trunk. Each domain has its own moments: a digits loss 1000x larger leaves the shapes
    moments of every shared parameter as they were and scales the digits ones by 1000^2."""
    trainers = {}
    for name, trainer_class in (("plain", CoTrainer), ("loud", _LoudDigits)):
        trainer = trainer_class(parse_args(cotrain_argv(tmp_path / name, grad_clip=0)))
        try:
            trainer.train()
        finally:
            trainer.close()
        trainers[name] = {
            dom: {clean_name(n): opt.state[p] for n, p in trainer.model.named_parameters()}
            for dom, opt in trainer.optimizers.items()
        }
    plain, loud = trainers["plain"], trainers["loud"]
    shared = [n for n in plain["shapes"] if not n.startswith("domains.") and ".cross" not in n]
    checked = [n for n in shared if plain["shapes"][n]["exp_avg_sq"].norm() > 1e-16]
    assert {n.split(".")[0] for n in checked} == {"t_embed", "blocks", "decoder"}
    for n in shared:
        for dom, scale in (("shapes", 1.0), ("digits", 1e6)):
            a, b = plain[dom][n]["exp_avg_sq"], loud[dom][n]["exp_avg_sq"]
            # adaLN-Zero leaves the trunk's gradients ~0 in the first steps: those moments are
            # left out. The band allows for the runs' slightly different paths; shared moments
            # would put the shapes ratio near 1e6.
            if a.norm() > 1e-16:
                assert 0.5 < float(b.norm() / a.norm()) / scale < 2.0, (dom, n)


def test_the_final_samples_and_scores_of_every_domain(tmp_path) -> None:
    summary = cotrain(cotrain_argv(tmp_path, final_samples=14, steps=3))
    assert 0.0 <= summary["digits/classifier_accuracy"] <= 1.0
    assert 0.0 <= summary["shapes/recognition"] <= 1.0
    assert Path(summary["digits/samples"]).is_file()
    assert Path(summary["shapes/picture"]).is_file()
    assert not any(k.startswith(("classifier", "recognition")) for k in summary)  # all by domain
