#!/usr/bin/env bash
# The diffusers floor: a fresh virtual environment with exactly the oldest diffusers that pyproject.toml
# admits (or the version given), then the tests of everything that leans on diffusers' model, pipeline and
# scheduler machinery. A second CI job / a documented command, not part of .ci/run's default path: it
# builds a second venv (a few minutes). See docs/model.md, "Supported diffusers versions".
#
#   bash .ci/check_floor.sh              # the floor read from pyproject.toml ("diffusers>=X")
#   bash .ci/check_floor.sh 0.36.0       # any other version
#   FLOOR_VENV=/path bash .ci/check_floor.sh   # where the venv goes (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
floor="${1:-$(sed -n 's/^ *"diffusers>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)}"
if [ -z "$floor" ]; then
  echo "check_floor.sh: no \"diffusers>=X\" line in pyproject.toml and no version given" >&2
  exit 2
fi
venv="${FLOOR_VENV:-${TMPDIR:-/tmp}/sit-diffusers-floor-$floor}"
echo "diffusers floor check: diffusers==$floor in $venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
# torch as in .ci/run; the project with its other declared dependencies and the training extra (peft,
# which brings transformers 5: diffusers 0.35 cannot import its pipelines beside it); pytest.
pip install -q torch==2.13.0 "diffusers==$floor" -e ".[training]" "pytest>=8"
python - "$floor" <<'PY'
import sys, diffusers
assert diffusers.__version__ == sys.argv[1], (diffusers.__version__, sys.argv[1])
print("diffusers", diffusers.__version__)
PY
set +e
python -m pytest -q -p no:cacheprovider \
  tests/test_modeling_sit.py tests/test_model_hooks.py tests/test_conversion.py tests/test_embedded_model.py \
  tests/test_pipeline_sit.py tests/test_pipeline_inputs.py tests/test_scheduling_sit.py tests/test_hub.py \
  tests/test_stock_loading.py tests/test_lora.py
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing loudly" >&2
  exit 1
fi
exit "$rc"
