#!/usr/bin/env bash
# Package trained members as the shipped ensemble and produce its reports, in the only order
# that keeps the test split honest:
#  1. ship: each run's best/ member as fp16 safetensors + manifest.json (sha256, sizes);
#     DeepLabV3+ (trained, weight 0 in release 1.1's search) gave its budget to a second U-Net++;
#     a new member takes the place of the shipped member of its architecture only if its
#     validation Dice is higher (checked below);
#  2. select, on the 20 validation patients only: weight search (random search, coordinate
#     ascent, per-class coordinate ascent, from their answer and from equal weights), fusion
#     rule, post-processing
#     -> reports/validation_selection/, written into the manifest;
#  3. evaluate once on the 40 test patients -> reports/acdc_test.md (+ two PNGs), with the cost
#     of each member and the ensemble benchmarked side by side on patient101 and patient102;
#     the headline test metrics go into the manifest;
#  4. the release check (Testing/Release): the committed manifest, report and scores agree
#     with each other and with the member files. It is not part of the unit tests: it checks
#     what this script wrote, so it runs here, last, and a failure means "not a release".
# Run on a quiet machine: timings are medians, but other load still shifts them.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
data=${ACDC_ROOT:-../shared/acdc}
runs=${RUNS:-runs/gpu2}
cli=.venv/bin/cardiac-ensemble
# Release 1.4: the five members fine-tuned on a lent H100 (research/gpu_train.sh, two rounds),
# all 2.5D. Each replaces the 1.2 member of its architecture; ship re-scores them on the real
# validation frames (they were trained on a slice pack) and the check below refuses a release in
# which any of them scores lower on validation than the member it replaces.
members=("$runs"/unet25d-mnv2 "$runs"/linknet25d-mnv2 "$runs"/fpn25d-mnv2 "$runs"/unetpp25d-mnv2
         "$runs"/unetpp-scse25d-mnv2)
previous=$(mktemp)
cp CardiacEnsembleLib/models/manifest.json "$previous"
echo "shipping ${members[*]}"
$cli -q ship "${members[@]}" --data "$data" --name acdc-default --version 1.4 --overwrite \
  --description "CardiacEnsemble acdc-default 1.4 (U-Net, LinkNet, FPN, two U-Net++ on MobileNetV2; 2.5D)" \
  --note "Members trained on a 2-core CPU (U-Net, LinkNet, FPN, U-Net++, U-Net++ with scSE: 3,000-8,000 steps of 16 slices each; stage 5 made the U-Net and U-Net++ 2.5D), then fine-tuned as 2.5D members on one H100 in two rounds of about 3,000 and 2,400 steps of 32 slices (research/gpu_train.sh); see reports/acdc_test.md."
.venv/bin/python - "$previous" <<'PY'
import json, sys
before = json.load(open(sys.argv[1]))["members"]
after = json.load(open("CardiacEnsembleLib/models/manifest.json"))["members"]
worse = []
for new, old in zip(after, before):
    change = new["validation"]["mean"] - old["validation"]["mean"]
    print(f"{old['name']:18s} {old['validation']['mean']:.4f} -> {new['name']:20s} "
          f"{new['validation']['mean']:.4f} ({change * 100:+.2f} points)")
    worse += [new["name"]] if change < 0 else []
sys.exit(f"validation Dice fell for {worse}: not a release" if worse else 0)
PY
$cli -q select --data "$data" --apply --overwrite --out reports/validation_selection
$cli -q report --data "$data" --split test --out reports/acdc_test --report reports/acdc_test.md \
  --benchmark patient101 patient102 --record-in-manifest --overwrite
.venv/bin/python -m pytest -q Testing/Release
