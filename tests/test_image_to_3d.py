"""Image-conditioned 3D: point clouds with condition tokens, CFG token dropout, sample.py --cond.

The end-to-end test trains a tiny model on two classes of elongated Gaussian clouds (along x or
along z) whose synthetic tokens encode the class, then checks that samples drawn with a class's
tokens are of that class far more often than samples drawn without tokens (the null token).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inrflow.cli.sample import main as sample_main
from inrflow.data import FlowCollate, PointCloudDataset
from inrflow.domains import build_dataset
from inrflow.generation import load_condition
from inrflow.model import build_model
from inrflow.model.blocks import AdaLN
from inrflow.sampling import sample
from inrflow.train.config import TrainConfig
from inrflow.train.trainer import Trainer

POINTS, TOKENS, COND_DIM = 64, 4, 8
AXES = (0, 2)  # class 0 is elongated along x, class 1 along z


def class_tokens(label: int, rng: np.random.Generator) -> np.ndarray:
    """``[TOKENS, COND_DIM]``: the class one-hot in the first two channels, plus noise."""
    tok = 0.1 * rng.standard_normal((TOKENS, COND_DIM)).astype(np.float32)
    tok[:, label] += 1.0
    return tok


def make_cloud(label: int, rng: np.random.Generator, n: int = POINTS) -> np.ndarray:
    std = np.full(3, 0.12)
    std[AXES[label]] = 0.6
    return (rng.standard_normal((n, 3)) * std).astype(np.float32)


def classify(clouds: torch.Tensor) -> torch.Tensor:
    """0 when a cloud spreads more along x than along z, else 1."""
    var = clouds.float().var(dim=1)  # [B, 3]
    return (var[:, AXES[1]] > var[:, AXES[0]]).long()


@pytest.fixture(scope="module")
def token_clouds(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("img3d")
    rng = np.random.default_rng(0)
    for i in range(32):
        label = i % 2
        np.savez(
            root / f"obj_{i:03d}.npz", points=make_cloud(label, rng), cond=class_tokens(label, rng)
        )
    return str(root)


def test_dataset_reads_condition_tokens(token_clouds: str) -> None:
    ds = build_dataset(token_clouds, num_points=POINTS, normalization="none")
    assert isinstance(ds, PointCloudDataset)
    assert (ds.cond_tokens, ds.cond_dim) == (TOKENS, COND_DIM)
    item = ds[(1, 7)]
    assert item["values"].shape == (POINTS, 3) and item["cond"].shape == (TOKENS, COND_DIM)
    assert int(item["cond"][:, :2].mean(0).argmax()) == 1  # item 1 is class 1


def test_clouds_without_tokens_have_none(tmp_path) -> None:
    np.save(tmp_path / "a.npy", make_cloud(0, np.random.default_rng(0)))
    ds = build_dataset(str(tmp_path), num_points=16)
    assert ds.cond_dim == 0 and "cond" not in ds[(0, 0)]


def test_collate_drops_tokens_per_sample_from_the_seed(token_clouds: str) -> None:
    ds = build_dataset(token_clouds, num_points=POINTS, normalization="none")
    items = []
    for i in range(400):
        it = ds[(i % len(ds), 1000 + i)]
        it["seed"] = 1000 + i
        items.append(it)
    out = FlowCollate(None, label_dropout=0.1)(items)
    assert out["cond"].shape == (400, TOKENS, COND_DIM)
    rate = out["cond_drop"].float().mean().item()
    assert 0.05 < rate < 0.16  # ~10% of samples train the null token
    again = FlowCollate(None, label_dropout=0.1)(items)
    assert torch.equal(out["cond_drop"], again["cond_drop"])  # a pure function of the seeds


@pytest.mark.parametrize("null", ["learned", "zeros"])
def test_dropped_tokens_equal_the_null_condition(null: str) -> None:
    torch.manual_seed(0)
    m = build_model(
        "tiny", "pointcloud", cond_dim=COND_DIM, cond_tokens=TOKENS, cond_null=null
    ).eval()
    torch.nn.init.normal_(m.final.linear.weight)  # a non-zero output that reads the latents
    for mod in m.modules():
        if isinstance(mod, AdaLN):
            torch.nn.init.normal_(mod.linear.weight, std=0.5)
    x = torch.randn(2, 32, 3)
    cond = torch.randn(2, TOKENS, COND_DIM)
    t = torch.full((2,), 0.5)
    dropped = m(None, x, t, None, x, cond=cond, force_drop=torch.tensor([True, True]))
    uncond = m(None, x, t, None, x)  # no tokens: the null token
    kept = m(None, x, t, None, x, cond=cond)
    torch.testing.assert_close(dropped, uncond)
    assert (kept - uncond).abs().max() > 1e-4  # the tokens reach the output
    if null == "zeros":
        assert torch.count_nonzero(m.cond_embed.null) == 0
        assert "cond_embed.null" not in dict(m.named_parameters())


@pytest.fixture(scope="module")
def trained(token_clouds: str, tmp_path_factory):
    out = tmp_path_factory.mktemp("img3d_run")
    cfg = TrainConfig(
        data=token_clouds,
        size="tiny",
        num_points=POINTS,
        normalization="none",
        class_conditional=False,
        batch_size=16,
        steps=300,
        lr=2e-3,
        ema_decay=0.98,
        seed=0,
        device="cpu",
        workers=0,
        threads=1,
        ckpt_every=0,
        sample_every=0,
        final_samples=0,
        tensorboard=False,
        log_every=100,
        out=str(out),
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    try:
        trainer.train()
        model = trainer.sample_model()
    finally:
        trainer.close()
    return model, out


def test_token_conditioned_samples_have_the_right_class(trained) -> None:
    model, _ = trained
    assert model.config.cond_dim == COND_DIM
    assert model.config.cond_tokens == TOKENS
    n = 40
    labels = torch.arange(n) % 2
    rng = np.random.default_rng(123)
    cond = torch.from_numpy(np.stack([class_tokens(int(c), rng) for c in labels]))
    noise = torch.randn(n, POINTS, 3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    common = dict(noise=noise, progress=False)
    conditioned = sample(model, None, None, 10, "euler", 2.0, None, g, cond=cond, **common)
    unconditioned = sample(model, None, None, 10, "euler", 1.0, None, g, **common)
    acc_cond = (classify(conditioned) == labels).float().mean().item()
    acc_uncond = (classify(unconditioned) == labels).float().mean().item()
    # unconditional samples follow the 50/50 mixture; the tokens must pick the class
    assert acc_cond >= 0.85, (acc_cond, acc_uncond)
    assert acc_cond >= acc_uncond + 0.25, (acc_cond, acc_uncond)


def test_sample_cli_takes_a_condition_file(trained, tmp_path) -> None:
    _, run = trained
    rng = np.random.default_rng(1)
    path = tmp_path / "tokens.npz"
    np.savez(path, cond=np.stack([class_tokens(0, rng), class_tokens(1, rng)]))
    assert load_condition(path, COND_DIM).shape == (2, TOKENS, COND_DIM)
    out = tmp_path / "clouds"
    argv = ["--ckpt", str(run), "--cond", str(path), "--num", "2", "--steps", "5"]
    argv += ["--device", "cpu", "--out", str(out), "--npz", str(tmp_path / "s.npz")]
    assert sample_main(argv) == 0
    assert len(list(out.glob("*.ply"))) == 2
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (2, POINTS, 3)
    with pytest.raises(SystemExit):
        bad = tmp_path / "bad.npy"
        np.save(bad, np.zeros((TOKENS, COND_DIM + 1), np.float32))
        sample_main(["--ckpt", str(run), "--cond", str(bad), "--device", "cpu"])
