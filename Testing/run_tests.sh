#!/usr/bin/env bash
# Install the package and its test dependencies into .venv (when missing or stale), then run the
# test suite (pytest's testpaths: Testing/Python), then the MRML tests again on slicer-core's
# 5.12 stable line (see below). Usage: bash Testing/run_tests.sh [pytest options], which apply to
# the first run only; the exit status is non-zero when either run fails. Real ACDC data is read
# from ../shared/acdc (or $ACDC_ROOT); tests that need it skip with a reason when it is absent.
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
# The MRML tests run twice: on the venv's slicer-core (the newest, pinned in pyproject.toml) and
# on the 5.12 stable line, so that a call that exists in only one of them fails here rather than
# in a user's Slicer. 5.12 lives in its own folder, put first on PYTHONPATH, with the vtk it was
# built against (it pins another vtk than the venv's); everything else (numpy, torch) comes from
# .venv. Installed once, like .venv, and again only when missing or of other versions.
stable_core=5.12.4.0
stable_vtk=9.6.0  # slicer-core 5.12.4.0's own requirement (vtk==9.6.0)
overlay=.venv/slicer-core-5.12
if [ "$(cat "$overlay/.installed" 2>/dev/null)" != "slicer-core==$stable_core vtk==$stable_vtk" ]
then
  echo "installing slicer-core $stable_core and vtk $stable_vtk into $overlay (first run only)"
  rm -rf "$overlay"
  .venv/bin/pip install --disable-pip-version-check -q --no-deps --target "$overlay" \
      "slicer-core==$stable_core" "vtk==$stable_vtk"
  echo "slicer-core==$stable_core vtk==$stable_vtk" > "$overlay/.installed"
fi
newest_core=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("slicer-core"))')
mapfile -t mrml_files < <(grep -l requires_mrml Testing/Python/test_*.py)

# The arguments go to the main run only; the second one always runs every MRML test file (the
# ones that use mrml_fixtures' requires_mrml marker). CARDIAC_ENSEMBLE_STABLE_SLICER=0 skips it
# (for a quick local run; CI never sets it).
verdict() { if [ "$1" = 0 ]; then echo passed; else echo "failed, exit $1"; fi; }
set +e
.venv/bin/python -m pytest "$@"
main=$?
main_summary="main run (slicer-core $newest_core): $(verdict $main)"
if [ "${CARDIAC_ENSEMBLE_STABLE_SLICER:-1}" = 0 ]; then
  stable=0
  stable_summary="MRML run on slicer-core $stable_core: skipped (CARDIAC_ENSEMBLE_STABLE_SLICER=0)"
elif [ ${#mrml_files[@]} = 0 ]; then
  stable=1
  stable_summary="MRML run on slicer-core $stable_core: failed, no test file uses requires_mrml"
else
  echo
  echo "=== the MRML tests again, on slicer-core $stable_core (${#mrml_files[@]} files) ==="
  start=$(date +%s)
  CARDIAC_ENSEMBLE_EXPECT_SLICER_CORE=$stable_core \
  PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}" \
      .venv/bin/python -m pytest -p no:cacheprovider "${mrml_files[@]}"
  stable=$?
  took=$(( $(date +%s) - start ))
  stable_summary="MRML run on slicer-core $stable_core: $(verdict $stable) in $took s"
fi
echo "summary: $main_summary; $stable_summary"
[ $main != 0 ] && exit $main
exit $stable
