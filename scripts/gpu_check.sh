#!/usr/bin/env bash
# The GPU check in one command, from a fresh clone on a one-GPU machine: makes the venv as the
# README does when there is none, then runs python -m inrflow.gpu_check (builds the extension if
# needed, GPU tests, op and training-step timings, the digits demo; at most 9 minutes on an H100)
# and leaves gpu_check/gpu_report.json and gpu_check/gpu_report.md. Arguments are passed on
# (--dry-run: the plan and the CPU-valid parts at tiny sizes, any machine, under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install torch==2.14.1 ninja setuptools wheel
  .venv/bin/pip install --no-build-isolation -e ".[test]"
fi
exec .venv/bin/python -m inrflow.gpu_check "$@"
