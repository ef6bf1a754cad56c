"""The three CLIs speak one language: the same option names for the same things (``--ckpt``,
``--num``, ``--points``, ``--resolution``, ``--steps``, ``--cfg-scale``, ``--method``), help text on
every option, the same defaults, older spellings as hidden aliases, and sampling that follows the
training run's own settings unless told otherwise (said before it starts)."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest
from helpers import REPO, tiny_config, train

from inrflow.cli import evaluate as ev
from inrflow.cli import sample as sm
from inrflow.cli.options import DEFAULT_CFG_SCALE, DEFAULT_METHOD, DEFAULT_STEPS
from inrflow.train import TrainConfig
from inrflow.train.config import build_parser as train_parser

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLING = ("--ckpt", "--num", "--points", "--resolution", "--steps", "--cfg-scale", "--method")


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of ``parser`` -> its action (hidden aliases included)."""
    return {s: a for a in parser._actions for s in a.option_strings}


def visible(parser: argparse.ArgumentParser) -> set[str]:
    return {s for s, a in options(parser).items() if a.help != argparse.SUPPRESS}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 1-step tiny digits run configured to sample with heun, 3 steps, CFG 2."""
    out = tmp_path_factory.mktemp("run")
    train(
        tiny_config(out, steps=1, ckpt_every=0, sample_steps=3, sample_method="heun", cfg_scale=2.0)
    )
    return out


def test_the_sampling_clis_share_the_option_names() -> None:
    for parser in (sm.build_parser(), ev.build_parser()):
        assert set(SAMPLING) <= visible(parser), parser.prog
    train_options = visible(train_parser())
    assert {"--points", "--resolution", "--cfg-scale"} <= train_options
    # the trainer's --steps is the run's length, so its sampler options say "sample"
    assert {"--steps", "--sample-steps", "--sample-method"} <= train_options
    assert "--num-points" not in train_options


def test_every_option_has_help_text() -> None:
    for parser in (sm.build_parser(), ev.build_parser(), train_parser()):
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help and action.help.strip(), (parser.prog, action.option_strings)


def test_older_spellings_are_hidden_aliases(tmp_path) -> None:
    for parser in (sm.build_parser(), ev.build_parser()):
        shown = visible(parser)
        assert not {"--checkpoint", "--num-samples", "--num-points"} & shown, parser.prog
        args = parser.parse_args(["--checkpoint", "run", "--num-samples", "3", "--num-points", "7"])
        assert (args.ckpt, args.num, args.points) == ("run", 3, 7), parser.prog
    cfg = train_parser().parse_args(["--num-points", "32"])
    assert cfg.num_points == 32 and train_parser().parse_args(["--points", "64"]).num_points == 64
    assert "--num-points" not in train_parser().format_help()


def test_the_same_defaults_for_the_same_things() -> None:
    s = sm.build_parser().parse_args(["--ckpt", "x"])
    e = ev.build_parser().parse_args(["--ckpt", "x"])
    for name in ("seed", "batch_size", "device", "resolution", "points", "steps", "method"):
        assert getattr(s, name) == getattr(e, name), name
    # sampler, steps and guidance are left to the run (None here); a run that stored none
    # samples like the trainer's own periodic samples
    assert (
        (s.steps, s.method, s.cfg_scale) == (None, None, None) == (e.steps, e.method, e.cfg_scale)
    )
    trainer = TrainConfig()
    assert (
        trainer.sample_steps,
        trainer.sample_method,
        trainer.cfg_scale,
    ) == (DEFAULT_STEPS, DEFAULT_METHOD, DEFAULT_CFG_SCALE)


def test_evaluate_samples_as_the_run_was_configured_and_says_so(run, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    argv = ["--ckpt", str(run), "--num", "4", "--out", str(out), "--no-progress"]
    assert ev.main(argv) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert "heun 3 steps" in first and "CFG 2" in first and "as the run was configured" in first
    assert text.index("heun 3 steps") < text.index("metric")  # printed before the results
    settings = json.loads(out.read_text())["settings"]
    assert (settings["method"], settings["steps"], settings["cfg_scale"]) == ("heun", 3, 2.0)
    assert settings["nfe_per_batch"] == 6  # heun: 2 evaluations per step
    # told otherwise, it samples as told
    assert ev.main([*argv, "--method", "euler", "--steps", "2", "--cfg-scale", "1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "euler 2 steps" in first and "CFG 1" in first and "as the run" not in first
    settings = json.loads(out.read_text())["settings"]
    assert (settings["method"], settings["steps"], settings["cfg_scale"]) == ("euler", 2, 1.0)


def test_sample_samples_as_the_run_was_configured(run, tmp_path, capsys) -> None:
    png = tmp_path / "s.png"
    assert sm.main(["--ckpt", str(run), "--num", "2", "--out", str(png)]) == 0
    text = capsys.readouterr()
    assert "heun 3 steps" in text.out and "CFG 2" in text.out
    assert "0/3" in text.err and png.exists()  # the per-step bar of 3 steps


@pytest.mark.parametrize(
    "script, app",
    [
        ("train.py", "inrflow.train.cli"),
        ("sample.py", "inrflow.cli.sample"),
        ("evaluate.py", "inrflow.cli.evaluate"),
    ],
)
def test_the_root_scripts_only_call_an_application(script: str, app: str) -> None:
    """The top layer (outside the package, so outside the import-linter contract): each script
    imports its application's ``main`` and nothing else of inrflow, and holds no code."""
    tree = ast.parse((REPO / script).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    inrflow = [
        n for n in imports if isinstance(n, ast.ImportFrom) and n.module.startswith("inrflow")
    ]
    assert [(n.module, [a.name for a in n.names]) for n in inrflow] == [(app, ["main"])]
    assert all(
        (isinstance(n, ast.ImportFrom) and n.module in ("__future__", app))
        or (isinstance(n, ast.Import) and [a.name for a in n.names] == ["sys"])
        for n in imports
    )
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
