#!/usr/bin/env bash
# Fine-tune the five members of release 1.4 on one lent GPU machine, in two rounds of minutes.
#
# That machine has no ACDC copy, no SimpleITK or nibabel, no smp, and no internet, and what
# travels to it is capped at 64 MiB with the shipped members in it. So, here first:
#   .venv/bin/cardiac-ensemble pack --data ../shared/acdc --out .gpu/acdc_slices_m32.npz.xz
#   .venv/bin/pip download --no-deps -d .gpu/wheels segmentation-models-pytorch==0.6.0
#   (.gpu/ is ignored; it travels as a carried path: 22 MB pack + 0.2 MB wheel)
# Then on the GPU machine, from the repository root, with the 1.2 members and the stage-5 2.5D
# members (research/train_members.sh stage5) in CardiacEnsembleLib/models/:
#   OUT=/where/results/go bash research/gpu_train.sh round1
#   OUT=/where/results/go bash research/gpu_train.sh round2   # same machine, after round1
# Each round brings back one <recipe>.tar per member (best/ as fp16 + the log); unpack round 2's
# into runs/gpu2/ and run CardiacEnsembleDev/scripts/release_ensemble.sh here.
#
# Release 1.4 came from exactly this on an H100 (2026-11-26): round 1 (lr 7e-4, seed 4) ran
# 2,600-3,500 steps of 32 slices per member, 5 members at once, in 381 s; round 2 (lr 3e-4,
# seed 5, from round 1's best) 2,000-3,100 steps in 313 s. Each round then came out as a single
# one-cycle epoch, validated once on the pack's validation frames: the probe timed the cold first
# validation (33 s), which made the epochs long. It now times a warm one, so a rerun gets several
# epochs and a real choice of best epoch; the step counts above will differ.
#
# Round `diverse` (release 1.5 candidates, not run yet): four members from scratch (empty warm
# starts), each its own seed and name (RECIPE@SEED -> member RECIPE-sSEED). Why: every 1.4 member
# descends from the three stage-1 CPU runs of research/train_members.sh (U-Net, LinkNet, FPN),
# all started with seed 0, so from one MobileNetV2 encoder initialisation; their errors are
# alike, and research/member_pool.py and
# research/fusion_ceiling.py found neither more members of that family nor a better fusion
# rule lifts the ensemble. Independent draws are what makes a deep ensemble work. Judge what
# comes back with
#   .venv/bin/python research/member_pool.py --data ../shared/acdc --per-class \
#       --extra runs/gpu3/*/best
# before shipping anything. (A SegFormer, recipe segformer25d-mitb0, was the first try at
# unlike errors: from scratch on the CPU it stalled near 0.86 validation Dice, far below the
# CNNs; research/train_members.sh stage7.)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
models=CardiacEnsembleLib/models
recipes=(unet25d-mnv2 unetpp25d-mnv2 unetpp-scse25d-mnv2 fpn25d-mnv2 linknet25d-mnv2)
case "${1:-}" in
  round1)
    starts=("$models/unet25d-mnv2" "$models/unetpp25d-mnv2" "$models/unetpp-scse-mnv2"
            "$models/fpn-mnv2" "$models/linknet-mnv2")
    settings=(--work /tmp/gpu_train --budget-s 470 --lr 7e-4 --seed 4) ;;
  round2)
    starts=()
    for recipe in "${recipes[@]}"; do starts+=("/tmp/gpu_train/$recipe/run/best"); done
    settings=(--work /tmp/gpu_train2 --budget-s 330 --lr 3e-4 --seed 5 --iterations 600) ;;
  diverse)
    recipes=(unetpp25d-mnv2@7 unet25d-mnv2@8 unetpp-scse25d-mnv2@9 fpn25d-mnv2@10)
    starts=("" "" "" "")
    settings=(--work /tmp/gpu_train3 --budget-s 470 --lr 2e-3 --seed 6 --version 1.5) ;;
  *) echo "usage: OUT=DIR bash research/gpu_train.sh round1|round2|diverse" >&2; exit 2 ;;
esac
jobs=()
for i in "${!recipes[@]}"; do jobs+=(--job "${recipes[$i]}=${starts[$i]}"); done
python3 research/gpu_train.py --pack .gpu/acdc_slices_m32.npz.xz --out "$OUT" \
  "${settings[@]}" "${jobs[@]}" 2>&1 | tee "$OUT/gpu_train_$1.log"
