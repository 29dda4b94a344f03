#!/usr/bin/env bash
# Does the QC score find the errors? (issue 23) The shipped ensemble's member disagreement
# against the best member's own entropy and its flip-TTA disagreement, each on its own
# segmentation. Validation (20 patients) fits the flag thresholds and writes them into the
# manifest (quality_control); the test split is then read once, for the report, with those
# thresholds. Writes reports/qc_validation/ and reports/qc_test/ (report.md, units.csv,
# error_caught.png). On a 2-core CPU about 4 s a frame: 5 minutes for the 40 test patients.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
data=${ACDC_ROOT:-../shared/acdc}
cli=.venv/bin/cardiac-ensemble
$cli -q quality --data "$data" --split validation --out reports/qc_validation --apply \
  --record-command --overwrite "$@"
$cli -q quality --data "$data" --split test --out reports/qc_test \
  --thresholds reports/qc_validation/thresholds.json --record-command --overwrite "$@"
