#!/usr/bin/env bash
# Train the four members of the shipped ensemble on the ACDC train split (best epoch picked on
# validation; test is never read). CPU schedule used for release 1.0, in two resumable stages:
#   stage 1 (interim release 0.1): 20 epochs x 80 steps, 160 px crops, lr 2e-3, from scratch;
#   stage 2: a new one-cycle schedule warm-started from stage 1's best epoch, 128 px crops
#            (0.6x the compute per step), lr 1e-3; DeepLabV3+ had no stage 1 and starts here.
#            For release 1.0 the DeepLabV3+ run was stopped after 18 of its 29 epochs (session
#            time; its best epoch ships); rerunning this script resumes it from last.pt.
#   stage 3 (release 1.1): a fifth member, Unet++, whose encoder starts from the stage-2 U-Net's
#            (--init-encoder-from; the decoder starts from random weights), 32 epochs, 2 threads.
#            Run it alone: two OpenMP threads next to any other busy process slow it 3-6x.
#   stage 4 (release 1.2): a second Unet++ with scSE attention, seed 1, its encoder from the
#            stage-2 FPN's, 32 epochs on one thread; beside it the U-Net and the FPN each get a
#            second one-cycle schedule (lr 5e-4, seed 2) from their stage-2
#            best (kept only where validation Dice rises).
#   stage 5 (release 1.3 candidates): 2.5D versions (slices below and above as input channels)
#            of the U-Net and the plain Unet++, fine-tuned from their 2D best with the first
#            convolution inflated (--init-from; neighbours' weights start at zero), 20 epochs,
#            lr 5e-4, seed 3, one thread each. A 2.5D member replaces its 2D parent only if its
#            validation Dice is higher.
#   stage 6 (release 1.3 candidates): the same for the scSE U-Net++ (14 epochs) and the FPN
#            (16 epochs), after stage 5's 2.5D U-Net++ had become the best member on validation.
#   stage 7 (release 1.5 candidate): a SegFormer (MiT-B0 transformer encoder) 2.5D member from
#            scratch, 60 epochs of 100 steps, lr 1e-3, seed 6, one thread: research/member_pool.py
#            showed that the 1.4 ensemble gains nothing from more MobileNetV2 CNNs. About 160 s
#            per epoch next to other work; it spans sessions (resume: run it again).
#   stage 8 (release 1.5 candidate): an independent draw, a 2.5D U-Net from scratch with its
#            own seed (11) and name (unet25d-mnv2-s11), 40 epochs of 100 steps, 128 px, lr 2e-3,
#            one thread. Why: stage 1's three runs all used seed 0, so every shipped member grew
#            from one encoder initialisation and one batch order (see gpu_train.sh, round
#            diverse, for the same idea on a lent GPU). Stage 7 was stopped after epoch 41 of 60
#            (best 0.864), too weak beside the CNNs to be worth its core. At epoch 29 (0.876 raw,
#            0.890 with lcc) research/member_pool.py did not pick it: still weaker than every
#            shipped member (0.893-0.914 with lcc).
#   stage 9: stage 8's second one-cycle schedule, as stage 2 was stage 1's, from its best epoch
#            (35, 0.885), lr 5e-4, seed 12, 30 epochs, one thread; same name. Best 0.891 at epoch
#            22 (shipped unet25d-mnv2: 0.901), about 160 s per epoch beside stage 10. With lcc
#            0.897; research/member_pool.py --per-class takes it in the LinkNet's place, but the
#            held-out Dice stays put (0.9178 against 0.9179: research/reports/member_pool_s11.md).
#   stage 10: a second independent draw on the other core, the best recipe (scSE U-Net++ 2.5D)
#            from scratch with seed 13 (unetpp-scse25d-mnv2-s13), as stage 8; 200-350 s per
#            epoch beside stage 9, so its 40 epochs spanned sessions. Best 0.8735 at epoch 32.
#   stage 11 (resumable): a third independent draw, the plain U-Net++ 2.5D from scratch with
#            seed 14 (unetpp25d-mnv2-s14), as stage 8. Best 0.8969 at epoch 32.
#   stage 12: stage 10's second one-cycle schedule from its best epoch, as stage 9 was stage 8's:
#            lr 5e-4, seed 15, 20 epochs (not 30: stage 9 peaked at 22 of 30, and 20 epochs fit
#            one session), same name. Best 0.8831 at epoch 12 (shipped scSE U-Net++: 0.9005).
#            research/member_pool.py --per-class adds it to four shipped members: held-out
#            0.9184 against 0.9179, within noise (research/reports/member_pool_s13.md); no release.
#            Stages 10 (from epoch 27) and 12 ran alone with THREADS=2, stage 11 paused, so the
#            draw could be judged within the session: 102-130 s per epoch, against 175-200 s on
#            one thread beside another run (two runs on one thread each still do more per hour).
#   stage 13: stage 11's second one-cycle schedule, as stage 12 is stage 10's (lr 5e-4, seed 16,
#            20 epochs, same name). Stage 11 ran alone with THREADS=2 from its epoch 1: 62-85 s
#            per epoch (the scSE blocks make stage 12's twice that). Best 0.9016 at epoch 14
#            (shipped U-Net++: 0.902), the first draw as strong as its shipped twin; with lcc
#            0.9041. Forward selection among all eight held out worse than among the shipped
#            five (+0.20 against +0.36: research/reports/member_pool_s14.md), but as a fixed
#            set in the LinkNet's place it held out better (research/reports/member_pool_sets.md):
#            release candidate 1.5, which scored below 1.4 on test and was not shipped (README).
#   Logs append (resuming a run keeps the earlier epochs' lines; history.csv has them all).
#   release 1.4: stage 5's 2.5D U-Net and U-Net++ and 1.2's LinkNet, FPN and scSE U-Net++ (made
#            2.5D there) were fine-tuned on a lent GPU: research/gpu_train.sh. Stage 6 never ran.
# Each run resumes from its last.pt if interrupted; run the same command again.
# One thread per run and all four runs at once use two cores fully; a run alone on the machine
# may take both with THREADS=2 (stage 12 did); on a GPU pass DEVICE=cuda and larger EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${ACDC_ROOT:-../shared/acdc}
runs=${RUNS:-runs}
device=${DEVICE:-auto}
cli=.venv/bin/cardiac-ensemble
threads=${THREADS:-1}
train() { OMP_NUM_THREADS=$threads nohup $cli -q train --data "$data" --threads "$threads" \
            --device "$device" --version 1.0 "$@" >> "$runs/$(basename "${@: -1}").log" 2>&1 & }
# An independent draw (stages 8, 10, 11): RECIPE NAME SEED FOLDER, from scratch, 40 epochs.
draw() { train --version 1.5 --recipe "$1" --name "$2" --seed "$3" --epochs 40 --iterations 100 \
               --patch-size 128 --lr 2e-3 --out "$runs/$4/$2"; }
# A draw's second one-cycle schedule from its best epoch (stages 9, 12, 13):
# RECIPE NAME SEED EPOCHS FOLDER; same member name, its own run folder NAME-ft.
second_cycle() { train --version 1.5 --recipe "$1" --name "$2" --seed "$3" --epochs "$4" \
                       --iterations 100 --patch-size 128 --lr 5e-4 \
                       --init-from "$runs/$5/$2/best" --out "$runs/$5/$2-ft"; }
mkdir -p "$runs/interim" "$runs/v1"
# One block, parsed whole before any of it runs, ending in exit: bash reads a script as it goes,
# so editing this file while a stage waits on its runs once made the waiting shell resume at a
# stale offset and start a duplicate run when its run ended.
{
if [[ "${1:-}" == "stage3" ]]; then
  OMP_NUM_THREADS=2 nohup $cli -q train --data "$data" --threads 2 --device "$device" \
    --version 1.1 --recipe unetpp-mnv2 --epochs 32 --iterations 100 --patch-size 128 --lr 1e-3 \
    --init-encoder-from "$runs/v1/unet-mnv2/best" --out "$runs/v1/unetpp-mnv2" \
    > "$runs/v1/unetpp-mnv2.log" 2>&1 &
elif [[ "${1:-}" == "stage4" ]]; then
  train --version 1.2 --recipe unetpp-scse-mnv2 --epochs 32 --iterations 100 --patch-size 128 \
        --lr 1e-3 --seed 1 --init-encoder-from "$runs/v1/fpn-mnv2/best" --out "$runs/v1/unetpp-scse-mnv2"
  for spec in "unet-mnv2 24" "fpn-mnv2 22"; do
    set -- $spec
    train --version 1.2 --recipe "$1" --epochs "$2" --iterations 100 --patch-size 128 \
          --lr 5e-4 --seed 2 --init-from "$runs/v1/$1/best" --out "$runs/v1/$1-ft"
  done
elif [[ "${1:-}" == "stage5" ]]; then
  for spec in "unet25d-mnv2 unet-mnv2-ft" "unetpp25d-mnv2 unetpp-mnv2"; do
    set -- $spec
    train --version 1.3 --recipe "$1" --epochs 20 --iterations 100 --patch-size 128 \
          --lr 5e-4 --seed 3 --init-from "$runs/v1/$2/best" --out "$runs/v1/$1"
  done
elif [[ "${1:-}" == "stage6" ]]; then
  for spec in "unetpp-scse25d-mnv2 unetpp-scse-mnv2 14" "fpn25d-mnv2 fpn-mnv2-ft 16"; do
    set -- $spec
    train --version 1.3 --recipe "$1" --epochs "$3" --iterations 100 --patch-size 128 \
          --lr 5e-4 --seed 3 --init-from "$runs/v1/$2/best" --out "$runs/v1/$1"
  done
elif [[ "${1:-}" == "stage7" ]]; then
  mkdir -p "$runs/cpu15"
  train --version 1.5 --recipe segformer25d-mitb0 --epochs 60 --iterations 100 --patch-size 128 \
        --lr 1e-3 --seed 6 --out "$runs/cpu15/segformer25d-mitb0"
elif [[ "${1:-}" == "stage8" ]]; then
  mkdir -p "$runs/cpu16"
  draw unet25d-mnv2 unet25d-mnv2-s11 11 cpu16
elif [[ "${1:-}" == "stage9" ]]; then
  second_cycle unet25d-mnv2 unet25d-mnv2-s11 12 30 cpu16
elif [[ "${1:-}" == "stage10" ]]; then
  mkdir -p "$runs/cpu17"
  draw unetpp-scse25d-mnv2 unetpp-scse25d-mnv2-s13 13 cpu17
elif [[ "${1:-}" == "stage11" ]]; then
  draw unetpp25d-mnv2 unetpp25d-mnv2-s14 14 cpu17
elif [[ "${1:-}" == "stage12" ]]; then
  second_cycle unetpp-scse25d-mnv2 unetpp-scse25d-mnv2-s13 15 20 cpu17
elif [[ "${1:-}" == "stage13" ]]; then
  second_cycle unetpp25d-mnv2 unetpp25d-mnv2-s14 16 20 cpu17
elif [[ "${1:-}" == "stage1" ]]; then
  for recipe in unet-mnv2 linknet-mnv2 fpn-mnv2; do
    train --recipe $recipe --epochs 20 --iterations 80 --patch-size 160 --lr 2e-3 \
          --out "$runs/interim/$recipe"
  done
else
  for spec in "unet-mnv2 34" "linknet-mnv2 36" "fpn-mnv2 36"; do
    set -- $spec
    train --recipe "$1" --epochs "$2" --iterations 100 --patch-size 128 --lr 1e-3 \
          --init-from "$runs/interim/$1/best" --out "$runs/v1/$1"
  done
  train --recipe deeplabv3plus-mnv2 --epochs 29 --iterations 100 --patch-size 128 --lr 2e-3 \
        --out "$runs/v1/deeplabv3plus-mnv2"
fi
wait
exit
}
