#!/usr/bin/env bash
# Package trained members as the shipped ensemble and produce its reports, in the only order
# that keeps the test split honest:
#  1. ship: each run's best/ member as fp16 safetensors + manifest.json (sha256, sizes);
#     DeepLabV3+ (trained, weight 0 in release 1.1's search) gave its budget to a second U-Net++;
#     a 2.5D member (stages 5-6) takes its 2D parent's place only if its validation Dice is higher
#     (the budget holds one of each pair);
#  2. select, on the 20 validation patients only: weight search (random search, coordinate
#     ascent, per-class coordinate ascent), fusion rule, post-processing
#     -> reports/validation_selection/, written into the manifest;
#  3. evaluate once on the 40 test patients -> reports/acdc_test.md (+ two PNGs), with the cost
#     of each member and the ensemble benchmarked side by side on patient101 and patient102;
#     the headline test metrics go into the manifest.
# Run on a quiet machine: timings are medians, but other load still shifts them.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${ACDC_ROOT:-../shared/acdc}
runs=${RUNS:-runs/v1}
cli=.venv/bin/cardiac-ensemble
better_of() {  # the run whose best epoch scored higher on validation (the first on a tie)
  .venv/bin/python - "$@" <<'PY'
import json, pathlib, sys
def score(run):
    spec = pathlib.Path(run, "best", "member.json")
    return json.loads(spec.read_text())["metrics"]["validation_dice"]["mean"] if spec.is_file() \
        else float("-inf")
print(max(sys.argv[1:], key=score))
PY
}
members=("$(better_of "$runs"/unet-mnv2-ft "$runs"/unet25d-mnv2)" "$runs"/linknet-mnv2
         "$(better_of "$runs"/fpn-mnv2-ft "$runs"/fpn25d-mnv2)"
         "$(better_of "$runs"/unetpp-mnv2 "$runs"/unetpp25d-mnv2)"
         "$(better_of "$runs"/unetpp-scse-mnv2 "$runs"/unetpp-scse25d-mnv2)")
echo "shipping ${members[*]}"
$cli -q ship "${members[@]}" --name acdc-default --version 1.3 --overwrite \
  --description "CardiacEnsemble acdc-default 1.3 (U-Net, LinkNet, FPN, two U-Net++ on MobileNetV2; 2D and 2.5D)" \
  --note "Members trained on a 2-core CPU only (U-Net and FPN about 5,000 steps of 16 slices plus a second schedule of 2,400 and 2,200; LinkNet about 5,000; U-Net++ 3,200 from the U-Net's encoder; U-Net++ with scSE 3,200 from the FPN's encoder, best at 2,400; each 2.5D member a further 1,400-2,000 from its 2D parent); see reports/acdc_test.md."
$cli -q select --data "$data" --apply --overwrite --out reports/validation_selection
$cli -q evaluate --data "$data" --split test --out reports/acdc_test --report reports/acdc_test.md \
  --benchmark patient101 patient102 --record-in-manifest --overwrite
