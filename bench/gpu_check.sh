#!/usr/bin/env bash
# Everything to check on a GPU machine in one go (no network there):
# build the CUDA extension in place, run the GPU tests and the op tests on CUDA,
# run the GPU benchmarks, and write logs, JSON and a summary into OUTDIR.
#   bash bench/gpu_check.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTGEN_BUILD_CUDA=1
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  $PY -c 'import triton; print("triton", triton.__version__)'
} >"$OUT/env.txt" 2>&1

start=$(date +%s)
$PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"

$PY -c 'import fastgen, json; print(json.dumps({"build": fastgen.build_info(), "backends": fastgen.backends()}, indent=1, default=str))' \
  >"$OUT/backends.json" 2>&1

timeout 240 $PY -m pytest -q tests -p no:cacheprovider >"$OUT/pytest.log" 2>&1
test_rc=$?
timeout 240 $PY -m bench all --device cuda --out "$OUT" >"$OUT/bench.log" 2>&1
bench_rc=$?

{
  echo "# GPU check $(date -u +%F)"
  echo; echo '```'; cat "$OUT/env.txt"; echo '```'
  echo; echo "build rc=$build_rc, pytest rc=$test_rc, bench rc=$bench_rc"
  echo; echo '```'; tail -n 5 "$OUT/pytest.log"; echo '```'
  for f in "$OUT"/*.md; do [ "$(basename "$f")" != summary.md ] && cat "$f"; done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
exit $(( build_rc || test_rc || bench_rc ))
