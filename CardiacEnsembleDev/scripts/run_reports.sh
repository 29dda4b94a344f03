#!/usr/bin/env bash
# The cost report of the shipped ensemble: each member alone and the ensemble, side by side, on
# patient101 and patient102 (ED + ES frames) and patient090's 12-frame cine, with the stage split
# and the accuracy-vs-cost panel (accuracy from the test report that release_ensemble.sh, beside
# this script, writes to reports/acdc_test/). Add --device cuda on a GPU.
# Run on a quiet machine: the timings are medians, but other load still shifts them.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
data=${ACDC_ROOT:-../shared/acdc}
cli=.venv/bin/cardiac-ensemble
$cli -q benchmark --data "$data" --patients patient101 patient102 --cine patient090 \
  --accuracy reports/acdc_test/scores.csv --record-command --overwrite "$@"
# the presets' seconds into the manifest, and the accuracy-cost front (validation Dice):
# needs the runs of preset_validation.sh
runs=${TMPDIR:-/tmp}/preset_validation
if [ -d "$runs" ]; then
  .venv/bin/python -m CardiacEnsembleDev.release.presets --validation "$runs" \
    --benchmark reports/benchmark_cpu.md --apply
fi
