#!/usr/bin/env bash
# Reproduce the committed reports of the shipped ensemble:
#  1. accuracy: members and every fusion rule on the 40 ACDC test patients (used for reports only)
#  2. cost: each member alone and the ensemble, side by side, on patient101 and patient102
#     (ED + ES frames) and patient090's 12-frame cine, with the accuracy-vs-cost panel.
# Run on a quiet machine: the timings are medians, but other load still shifts them.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${ACDC_ROOT:-../shared/acdc}
cli=.venv/bin/cardiac-ensemble
$cli -q evaluate --data "$data" --split test --out reports/acdc_test_interim --overwrite "$@"
$cli -q benchmark --data "$data" --patients patient101 patient102 --cine patient090 \
  --accuracy reports/acdc_test_interim/scores.csv --record-command --overwrite "$@"
