#!/usr/bin/env bash
# The presets' candidates on the 20 validation patients (ED and ES), one table
# (reports/preset_validation.md): the full grid, heart-region inference, two-member "fast"
# candidates (a cheap locator on the full grid, the best-validated member on the heart's box),
# and the rivals a single network offers (the best member alone, and with flip TTA), each with
# the largest-component clean-up. The presets in the manifest are chosen from this table; the
# test split is not read. Every run names its preset: left out, a run gets the manifest's
# default (heart region on). Then `select` re-chooses rule and weights on heart-region
# probabilities (reports/validation_selection_heart_region/). Cost: the benchmark.
# About 15 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
data=${ACDC_ROOT:-../shared/acdc}
cli=.venv/bin/cardiac-ensemble
runs=${TMPDIR:-/tmp}/preset_validation
best=unetpp25d-mnv2  # the best-validated member (manifest), the shipped heart locator
mkdir -p "$runs"
evaluate() {  # name, options...
  local name=$1; shift
  [ -f "$runs/$name/scores.csv" ] && return 0  # resume: a finished run is kept
  $cli -q evaluate --data "$data" --split validation --device cpu --out "$runs/$name" \
    --overwrite "$@"
}
evaluate full --preset full --rules weighted
evaluate heart-16 --rules weighted --heart-margin 16
evaluate fast-linknet --rules mean --members linknet25d-mnv2 $best \
  --heart-margin 16 --heart-locator linknet25d-mnv2
evaluate fast-unet --rules mean --members unet25d-mnv2 $best \
  --heart-margin 16 --heart-locator unet25d-mnv2
evaluate best-tta --preset full --members $best --tta
{
  echo "# Preset candidates on the validation split"
  echo
  echo "20 validation patients, ED and ES; means over frames; every method with the"
  echo "largest-component clean-up. Produced by \`bash CardiacEnsembleDev/scripts/preset_validation.sh\`."
  echo "Heart-region runs use a 16-pixel margin; a fast candidate's locator is named after it:"
  echo "its ensemble-mean row fuses the two, its $best row is $best alone on that locator's box."
  echo
  .venv/bin/python -m CardiacEnsembleDev.release.compare \
    "$runs/full" "$runs/heart-16" \
    "$runs/fast-linknet@ensemble-mean+lcc" "$runs/fast-unet@ensemble-mean+lcc" \
    "$runs/fast-linknet@$best+lcc" "$runs/fast-unet@$best+lcc" \
    "$runs/full@$best+lcc" "$runs/full@unetpp-scse25d-mnv2+lcc" "$runs/best-tta@$best+lcc"
} > reports/preset_validation.md
echo "wrote reports/preset_validation.md"
[ -f reports/validation_selection_heart_region/selection.json ] || \
  $cli -q select --data "$data" --device cpu --heart-margin 16 \
    --out reports/validation_selection_heart_region --overwrite
