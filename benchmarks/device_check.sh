#!/usr/bin/env bash
# The GPU check of issue 19 item 3 (benchmarks/device_check.py), ready for one H200: installs the carried wheels
# (.whl/, filled here by benchmarks/device_wheels.sh) when trl is missing, then runs the check; JSON to
# $OUT/device_check.json (or --out PATH). Not yet run on a GPU. On a CPU: bash benchmarks/device_check.sh --cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import trl" >/dev/null 2>&1; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "device_check: trl is not installed and .whl/ holds no wheels (run benchmarks/device_wheels.sh first)" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rlkit-site .whl/*.whl
  export PYTHONPATH=/tmp/rlkit-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/device_check.py "$@"
