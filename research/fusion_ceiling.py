"""Is the fusion rule what holds the shipped ensemble's gain back? Measured on validation only.

The shipped members' probabilities on the validation frames are fused three ways, each fitted
on half the validation patients and scored with the largest-component clean-up (lcc) on the
other half (2 folds by patient), beside the best member with the same clean-up on that half:

* the plain mean (fits nothing);
* per-class weights, the shipped selection's own searches (`selection.run_searches`; the
  per-class search from the member-level answer, the one release 1.4 used);
* a learned stacker (Wolpert 1992): a small residual CNN on all members' log-probabilities that
  corrects the mean's log-probabilities from a 33 px (50 mm) neighbourhood. It can learn anything a
  weighting can and more (which member to trust where, boundary shifts), so if it does not beat
  the weights, a better fusion rule is not where the missing gain is: the members are.

With --tta every member runs with flip test-time augmentation on both sides of the comparison
(the ensemble and the best member alike), to show what TTA does to the ensemble's margin.
Test patients are never read.

    .venv/bin/python research/fusion_ceiling.py --data ../shared/acdc \
        --report research/reports/fusion_ceiling.md

The members' validation probabilities take a few minutes on 2 cores (3x that with --tta);
--cache keeps them. Each fold then fits the weights and the stacker: 18 and 24 min per fold for
research/reports/fusion_ceiling.md, on 2 cores shared with a training run.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from CardiacEnsembleLib.core.case import STRUCTURES  # noqa: E402
from CardiacEnsembleLib.inference.ensemble import DEFAULT_MODELS_DIR, load_ensemble  # noqa: E402
from CardiacEnsembleLib.inference.fusion import class_argmax, mean_probabilities  # noqa: E402
from CardiacEnsembleLib.inference.postprocess import keep_largest_components  # noqa: E402
from CardiacEnsembleDev.release.selection import (ValidationFrame,  # noqa: E402
                                          collect_validation_frames, frame_dice, patient_folds,
                                          run_searches)
from validation_benchmark import cached_frames, print_and_write  # noqa: E402

#: frame probabilities (M, C, Z, Y, X) -> fused class scores (C, Z, Y, X)
Fuser = Callable[[torch.Tensor], torch.Tensor]
FLOOR = 1e-4  # log-probabilities are clamped here: fp16 members round small ones to 0


class Stacker(torch.nn.Module):
    """Mean log-probabilities plus a learned correction; the correction starts at exactly 0, so
    training starts from the plain mean and only moves where the fitting patients say so."""

    def __init__(self, members: int, classes: int, width: int = 32):
        super().__init__()
        layers, channels = [], members * classes
        for dilation in (1, 2, 4, 8, 1):  # receptive field 33 px (50 mm at 1.5 mm)
            layers += [torch.nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                       torch.nn.ReLU()]
            channels = width
        layers.append(torch.nn.Conv2d(width, classes, 1))
        torch.nn.init.zeros_(layers[-1].weight)
        torch.nn.init.zeros_(layers[-1].bias)
        self.correction = torch.nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """probs (B, M, C, H, W) -> class logits (B, C, H, W)."""
        base = probs.mean(1).clamp_min(FLOOR).log()
        return base + self.correction(probs.clamp_min(FLOOR).log().flatten(1, 2))


def fit_stacker(frames: Sequence[ValidationFrame], steps: int, seed: int = 0) -> Fuser:
    """Cross-entropy + soft Dice on random 80 px crops of the fitting slices, with the right
    angle rotations and flips the members were trained with."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    slices = [(f.member_probs[:, :, z].float(), f.reference[z].long())
              for f in frames for z in range(f.reference.shape[0])]
    members, classes = slices[0][0].shape[:2]
    net = Stacker(members, classes)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    for _ in range(steps):
        probs, labels = zip(*(_random_crop(*rng.choice(slices), rng) for _ in range(8)))
        logits = net(torch.stack(probs))
        loss = F.cross_entropy(logits, torch.stack(labels)) + _soft_dice_loss(
            logits, torch.stack(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()

    def fuse(probs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(probs.float().permute(2, 0, 1, 3, 4)).permute(1, 0, 2, 3)
    return fuse


def _random_crop(probs: torch.Tensor, labels: torch.Tensor, rng: random.Random, size: int = 80):
    """A size x size crop (background-padded when the slice is smaller), rotated and flipped."""
    pad_y, pad_x = max(0, size - labels.shape[0]), max(0, size - labels.shape[1])
    if pad_y or pad_x:
        background = torch.zeros(probs.shape[1], 1, 1)
        background[0] = 1.0
        padded = background.expand(probs.shape[1], labels.shape[0] + pad_y,
                                   labels.shape[1] + pad_x).repeat(probs.shape[0], 1, 1, 1)
        padded[..., :labels.shape[0], :labels.shape[1]] = probs
        probs, labels = padded, F.pad(labels, (0, pad_x, 0, pad_y))
    y = rng.randint(0, labels.shape[0] - size)
    x = rng.randint(0, labels.shape[1] - size)
    probs, labels = probs[..., y:y + size, x:x + size], labels[y:y + size, x:x + size]
    turns = rng.randint(0, 3)
    probs, labels = torch.rot90(probs, turns, (-2, -1)), torch.rot90(labels, turns, (-2, -1))
    if rng.random() < 0.5:
        probs, labels = probs.flip(-1), labels.flip(-1)
    return probs, labels


def _soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(1)[:, 1:]
    truth = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    overlap = (probs * truth).sum((0, 2, 3))
    return 1 - ((2 * overlap + 1) / (probs.sum((0, 2, 3)) + truth.sum((0, 2, 3)) + 1)).mean()


def weighted(weights) -> Fuser:
    return lambda probs: mean_probabilities(probs.float(), weights)


def lcc_scores(frames: Sequence[ValidationFrame], fuser: Fuser) -> dict[str, float]:
    """Dice per structure and their mean, averaged over frames, after lcc."""
    rows = []
    for frame in frames:
        labels = class_argmax(fuser(frame.member_probs), dim=0).numpy()
        rows.append(frame_dice(torch.from_numpy(keep_largest_components(labels)),
                               frame.reference))
    scores = {s: float(np.mean([row[s] for row in rows])) for s in STRUCTURES}
    scores["mean"] = float(np.mean(list(scores.values())))
    return scores


def one_member(index: int) -> Fuser:
    return lambda probs: probs[index].float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    parser.add_argument("--tta", action="store_true", help="flip TTA for every member")
    parser.add_argument("--stacker-steps", type=int, default=1500)
    parser.add_argument("--cache", type=Path, default=None,
                        help="file for the members' validation probabilities (reused if there)")
    parser.add_argument("--report", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(2)

    ensemble = load_ensemble(DEFAULT_MODELS_DIR, device="cpu", tta=args.tta)
    frames = cached_frames(args.cache, {"names": ensemble.names, "tta": args.tta},
                           lambda: collect_validation_frames(ensemble, args.data))

    methods = ("best member", "mean", "per-class weights", "stacker")
    held_out: dict[str, list[dict]] = {m: [] for m in methods}
    for fold, (fitting, scored) in enumerate(patient_folds(frames)):
        started = time.perf_counter()
        members = [lcc_scores(scored, one_member(i)) for i in range(len(ensemble.names))]
        per_class = next(s for s in run_searches(fitting)
                         if s.method == "per-class coordinate ascent").weights
        fusers = {"mean": weighted(None),
                  "per-class weights": weighted(per_class),
                  "stacker": fit_stacker(fitting, args.stacker_steps)}
        held_out["best member"].append(max(members, key=lambda s: s["mean"]))
        for method, fuser in fusers.items():
            held_out[method].append(lcc_scores(scored, fuser))
        print(f"fold {fold}: " + ", ".join(f"{m} {held_out[m][-1]['mean']:.4f}" for m in methods)
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)

    mean = {m: {k: float(np.mean([s[k] for s in held_out[m]])) for k in held_out[m][0]}
            for m in methods}
    lines = [f"# Fusion ceiling on the validation split ({len(frames) // 2} patients, ED and ES)"
             f"{', flip TTA' if args.tta else ''}", "",
             "Produced by `python research/fusion_ceiling.py " + " ".join(sys.argv[1:]) + "`.",
             "", f"Members: the shipped {', '.join(ensemble.names)}. Every fusion is fitted on "
             "one half of the patients and scored + lcc on the other (2 folds); best member: the "
             "best one on each scored half (an oracle pick, as in the test report). Gain: over "
             "the best member, in Dice points, mean of the folds.", "",
             "| fusion | Dice RV | Dice Myo | Dice LV | Dice mean | gain (points) |",
             "|---|---|---|---|---|---|"]
    for method in methods:
        row = mean[method]
        lines.append(f"| {method} | " + " | ".join(f"{row[s]:.4f}" for s in STRUCTURES)
                     + f" | {row['mean']:.4f} | "
                     + f"{100 * (row['mean'] - mean['best member']['mean']):+.2f} |")
    print_and_write(lines, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
