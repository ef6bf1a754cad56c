"""The GPU check's dry run (what CI runs): the plan, then every CPU-valid part at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from inrflow import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_budgets_fit_nine_minutes() -> None:
    assert sum(gpu_check.BUDGETS.values()) <= gpu_check.TOTAL_BUDGET <= 9 * 60


def test_dry_run_runs_every_cpu_part_and_writes_the_report(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "inrflow.gpu_check", "--dry-run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "inrflow GPU check plan (dry run on the CPU)" in out.stdout
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    parts = report["parts"]
    assert list(parts) == list(gpu_check.BUDGETS)
    assert parts["build"]["status"].startswith(("ok", "skipped"))
    assert parts["tests"]["status"].startswith("skipped")
    ops_rows = parts["ops"]["rows"]
    timed = {(r["op"], r["impl"]) for r in ops_rows if r["status"] == "ok"}
    for op in ("fourier_embed", "grid_assign", "nearest_assign", "group_layout"):
        assert (op, "eager reference") in timed
    assert all(r["GB/s"] > 0 for r in ops_rows if r["status"] == "ok")
    step = parts["step"]
    assert step["status"] == "ok" and step["batch"] >= 1
    for mode in ("eager", "compiled"):
        assert step[mode]["status"] == "ok" and step[mode]["samples_per_s"] > 0
        assert step[mode]["mfu"] is None  # a CPU has no bf16 peak in the table
    assert parts["demo"]["status"] == "ok" and parts["demo"]["steps"] == 2
    md = (tmp_path / "gpu_report.md").read_text()
    assert "## Ops" in md and "## Training step" in md
