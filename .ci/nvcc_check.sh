#!/usr/bin/env bash
# Compile every torch-free CUDA kernel file (csrc/kernels and the emulator self-test kernels) with
# nvcc for sm_80 and sm_90, with ptxas verbose output. Fails on any warning or register spill.
set -uo pipefail
cd "$(dirname "$0")/.."

nvcc_bin="${CUDA_HOME:+$CUDA_HOME/bin/nvcc}"
[ -x "${nvcc_bin:-}" ] || nvcc_bin=$(command -v nvcc || true)
[ -x "${nvcc_bin:-}" ] || nvcc_bin=/usr/local/cuda/bin/nvcc
if [ ! -x "$nvcc_bin" ]; then
  echo "nvcc not found: cannot check the CUDA kernels" >&2
  exit 1
fi

status=0
shopt -s nullglob
for cu in csrc/kernels/*.cu tests/simt_kernels/*.cu; do
  log=$(mktemp)
  "$nvcc_bin" -c -o /dev/null -std=c++17 -O3 -I csrc/include \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Xptxas -v -Werror all-warnings "$cu" >"$log" 2>&1
  rc=$?
  spills=$(grep -E '[1-9][0-9]* bytes spill (stores|loads)' "$log" || true)
  warnings=$(grep -iE 'warning' "$log" || true)
  regs=$(grep -oE 'Used [0-9]+ registers' "$log" | sort -t' ' -k2 -n | tail -n 1)
  if [ $rc -ne 0 ] || [ -n "$spills" ] || [ -n "$warnings" ]; then
    echo "FAIL $cu"
    cat "$log"
    status=1
  else
    echo "ok   $cu (max: ${regs:-no kernels})"
  fi
  rm -f "$log"
done
exit $status
