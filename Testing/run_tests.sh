#!/usr/bin/env bash
# Install the package and its test dependencies into .venv (when missing or stale), then run the
# test suite (pytest's testpaths: Testing/Python). Usage: bash Testing/run_tests.sh [pytest
# options]. Real ACDC data is read from ../shared/acdc (or $ACDC_ROOT); tests that need it skip
# with a reason when it is absent.
#
# Python 3.12, the Python that Slicer 5.10+ ships: $PYTHON if set, else `python3.12`, else
# pyenv's 3.12.1 (where pyenv's `python3.12` shim runs only with that version selected).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  python=("$PYTHON")
elif python3.12 -c "" >/dev/null 2>&1; then
  python=(python3.12)
elif PYENV_VERSION=3.12.1 python3.12 -c "" >/dev/null 2>&1; then
  python=(env PYENV_VERSION=3.12.1 python3.12)
else
  echo "error: no Python 3.12 found (tried python3.12 and pyenv's 3.12.1); set PYTHON" >&2
  exit 2
fi
wanted=$("${python[@]}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ ! -x .venv/bin/python ]; then
  "${python[@]}" -m venv .venv
fi
have=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$wanted" ]; then
  echo "error: .venv is Python $have, the tests run on $wanted (${python[*]}): remove .venv" \
       "to rebuild it, or set PYTHON to a Python $have" >&2
  exit 2
fi
# Reinstall when the editable install does not match the checkout: a package, a test
# dependency or the workbench's CLI entry point missing, an install of another checkout, or a
# pyproject.toml changed since the install (its hash is kept in .venv).
stamp=.venv/cardiac-ensemble-pyproject.sha256
if ! .venv/bin/python - "$stamp" <<'PY' 2>/dev/null
import hashlib, importlib.metadata, importlib.util, pathlib, sys
import CardiacEnsembleDev, CardiacEnsembleLib
for package in (CardiacEnsembleLib, CardiacEnsembleDev):
    here = pathlib.Path(package.__name__).resolve()
    assert pathlib.Path(package.__file__).resolve().parent == here, package.__file__
for name in ("segmentation_models_pytorch", "pytest", "scipy", "slicer", "matplotlib",
             "distributed"):
    assert importlib.util.find_spec(name), name
commands = importlib.metadata.entry_points(group="cardiac_ensemble.commands")
assert "workbench" in {e.name for e in commands}
digest = hashlib.sha256(pathlib.Path("pyproject.toml").read_bytes()).hexdigest()
assert pathlib.Path(sys.argv[1]).read_text().strip() == digest
PY
then
  echo "installing CardiacEnsemble and test dependencies into .venv (first run: a few minutes)"
  .venv/bin/pip install --disable-pip-version-check -q -e ".[test]"
  sha256sum pyproject.toml | cut -d' ' -f1 > "$stamp"
fi
exec .venv/bin/python -m pytest "$@"
