#!/usr/bin/env bash
# Heart-region inference against the full grid, on the 20 validation patients (ED and ES): the
# shipped method's Dice and HD95 for the full grid and each margin, one table
# (reports/heart_region_validation.md). The margin of core.options.HEART_MARGIN_PX is chosen
# from it; the test split is not read. Cost: the benchmark (run_reports.sh --heart-margin N).
# About 4 minutes per run on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
data=${ACDC_ROOT:-../shared/acdc}
cli=.venv/bin/cardiac-ensemble
runs=${TMPDIR:-/tmp}/heart_region_validation
mkdir -p "$runs"
folders=()
for margin in full 32 16; do
  options=()
  [ "$margin" = full ] || options=(--heart-margin "$margin")
  name=$([ "$margin" = full ] && echo full || echo "margin-$margin")
  $cli -q evaluate --data "$data" --split validation --rules weighted --device cpu \
    --out "$runs/$name" --overwrite "${options[@]}"
  folders+=("$runs/$name")
done
{
  echo "# Heart-region inference on the validation split"
  echo
  echo "Shipped method (weighted fusion + largest component), 20 validation patients, ED and ES;"
  echo "means over frames. Produced by \`bash CardiacEnsembleDev/scripts/heart_region_validation.sh\`."
  echo "The locator is the member with the best validation Dice (unetpp25d-mnv2)."
  echo
  .venv/bin/python -m CardiacEnsembleDev.release.compare "${folders[@]}"
} > reports/heart_region_validation.md
echo "wrote reports/heart_region_validation.md"
