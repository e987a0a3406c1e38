#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the pure-Python wheels benchmarks/device_check.sh installs on the GPU machine,
# which has torch, transformers, accelerate, peft, pyyaml, pandas, pyarrow but no trl and no network.
#
# What device_check.py imports that is missing there: trl only (rlkit.memory -> rlkit.algorithms -> trl's
# GRPOConfig). datasets, deepspeed, vllm, math-verify (+ latex2sympy2_extended, antlr4-python3-runtime),
# platformdirs and gguf are not imported by the check (tried here with all of them hidden), so they are not carried.
# trl's own datasets requirement is not needed to import its config classes. Versions: those of this venv.
#
#   bash benchmarks/device_wheels.sh            # then: run tool with carry: [".whl"] (benchmarks/results/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PACKAGES=(trl)
specs=()
for name in "${PACKAGES[@]}"; do
  specs+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py --abi none \
  --platform any -d .whl "${specs[@]}"
kib=$(du -sk .whl | cut -f1)
echo "device_wheels: ${specs[*]} -> .whl/ ($(ls .whl | tr '\n' ' ')) ${kib} KiB"
if [ "$kib" -gt 65536 ]; then
  echo "device_wheels: .whl/ is over the 64 MiB a device call carries" >&2
  exit 1
fi
