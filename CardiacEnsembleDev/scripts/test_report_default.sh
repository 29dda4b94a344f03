#!/usr/bin/env bash
# The shipped default (the manifest's default preset: balanced, heart-region inference) scored
# once on the 40 test patients, every member and fusion rule beside it on the same outputs:
# reports/acdc_test_balanced.md (+ two PNGs) and reports/acdc_test_balanced/ (scores.csv with
# the QC columns, clinical.csv, summary.md). It reads the test split: run it once per shipped
# change, never to choose. release_ensemble.sh's reports/acdc_test.md stays the record of
# release 1.4's full-grid setting. About 4 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
data=${ACDC_ROOT:-../shared/acdc}
.venv/bin/cardiac-ensemble -q report --data "$data" --split test --out reports/acdc_test_balanced \
  --report reports/acdc_test_balanced.md --overwrite "$@"
