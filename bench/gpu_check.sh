#!/usr/bin/env bash
# bench/gpu_check.py offline, unbuffered, from the repository root, with the project's venv when
# there is one. Under the device tool ($OUT set) the log and the JSON are written into $OUT;
# copy gpu_check.json to bench/results/ from there.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=true \
  MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PRUNEGRID_HOME=${PRUNEGRID_HOME:-$(mktemp -d /tmp/pg-gpu.XXXX)} RAY_TMPDIR=${RAY_TMPDIR:-/tmp/rg}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=${PYTHON:-.venv/bin/python}
if [ -n "$OUT" ]; then
  "$python" -m bench.gpu_check --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
else
  "$python" -m bench.gpu_check "$@"
fi
