#!/usr/bin/env bash
# Install the package and its test dependencies into .venv (once), then run the test suite.
# Usage: bash Testing/run_tests.sh [pytest options]. Real ACDC data is read from ../shared/acdc
# (or $ACDC_ROOT); tests that need it skip with a reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python - <<'PY' 2>/dev/null
import pathlib, CardiacEnsembleLib, pytest, scipy, segmentation_models_pytorch
assert pathlib.Path(CardiacEnsembleLib.__file__).resolve().parent == pathlib.Path("CardiacEnsembleLib").resolve()
PY
then
  echo "installing CardiacEnsemble and test dependencies into .venv (first run: a few minutes)"
  .venv/bin/pip install --disable-pip-version-check -q -e ".[test]"
fi
exec .venv/bin/python -m pytest "$@"
