"""Choose the shipped ensemble's settings on the validation split: fusion rule, member weights,
post-processing.

Everything here reads validation patients only (`collect_validation_frames` takes the split from
`splits.json` itself and refuses test patients), so the test split stays untouched until the
report. The members run once per frame; every candidate setting is then scored on the same
stored member probabilities.

Weight search runs four searches, all reported:

* **random search** (the seed project's method): weights drawn uniformly from the simplex
  (Dirichlet(1)), equal weights as the first draw, the best draw kept;
* **coordinate ascent**: one member at a time, try shares on a grid (the other members keep
  their ratios), keep any gain, sweep until no member moves, then halve the grid step. The Dice
  objective is piecewise constant in the weights (an argmax decides each voxel), so gradients are
  useless; coordinate moves are the cheap, deterministic search that handles that;
* **per-class coordinate ascent**: the same moves on one weight per member *and class*, started
  from the member-level answer, because members are good at different structures;
* the same per-class search **from equal weights**, because on small validation halves the
  member-level answer can fit noise that a search started from it would inherit.

Every search scores well on the patients it was fitted to; that is not what a user gets. So each
search is also **cross-validated by patient** (fit on half the validation patients, score on the
other half, and the other way round), and the held-out Dice decides which search's weights are
used and whether weighting beats the plain mean at all. The per-class table has 4x the
parameters of the member weights: on 20 patients its in-sample gain can be fit to noise.

Speed: a voxel where every member's argmax is background stays background under any weighting
(a convex combination cannot lift a class above background unless some member does), so each
frame is cropped to the box around all members' and the reference's foreground. Dice on the crop
equals Dice on the whole frame, and a candidate weighting costs ~10x fewer voxels. With per-class
weights this is a close approximation, not an identity: a voxel every member calls background
could turn foreground if background is trusted to an unsure member and the class to a surer one;
the test report scores whole frames.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from CardiacEnsembleLib.core.labels import STRUCTURES
from CardiacEnsembleLib.core.manifest import WeightTable
from CardiacEnsembleLib.core.options import (FusionRule, Method, lone_member_steps,
                                             rival_member_steps)
from CardiacEnsembleLib.core.progress import CancelToken, Progress
from CardiacEnsembleLib.evaluation.metrics import score_labels, structure_dice, with_mean
from CardiacEnsembleLib.inference.ensemble import Ensemble, fuse_and_clean
from CardiacEnsembleLib.inference.fusion import MemberWeight, class_argmax, mean_probabilities
from CardiacEnsembleLib.io.acdc import PHASES, check_no_test_patients, find_patients, load_splits

#: Post-processing variants tried on validation, in order of preference when tied.
POSTPROCESS_VARIANTS: tuple[tuple[str, ...], ...] = ((), ("lcc",), ("gate",), ("lcc", "gate"),
                                                     ("lcc", "heart"), ("lcc", "gate", "heart"))
#: A step is kept when it costs less than this much validation mean Dice (points of 0..1)
#: while lowering mean HD95; Dice is the target, HD95 the tie-breaker.
DICE_TOLERANCE = 0.001
#: The fourth weight search's name (reports, manifests).
EQUAL_START_METHOD = "per-class coordinate ascent from equal weights"


@dataclass
class ValidationFrame:
    patient: str
    phase: str
    member_probs: torch.Tensor  # (M, C, Z, Y, X) float16, cropped around all foreground
    reference: torch.Tensor  # (Z, Y, X) uint8, same crop
    spacing_zyx: tuple[float, float, float]


@dataclass
class SearchResult:
    method: str
    weights: list[MemberWeight]  # per member: a number, or one per class (background first)
    dice: float  # validation mean Dice (RV, Myo, LV over frames)
    evaluations: int
    seconds: float
    trace: list[float] = field(default_factory=list)  # best-so-far after each evaluation
    held_out_dice: float = math.nan  # fitted on one half of the patients, scored on the other


@dataclass
class Candidate:
    """One fusion setting scored on validation."""

    name: str
    rule: str
    weights: Optional[list[MemberWeight]]
    postprocess: tuple[str, ...]
    dice: dict[str, float]  # per structure and "mean"
    hd95_mm: dict[str, float]


@dataclass
class Selection:
    members: list[str]
    patients: list[str]
    searches: list[SearchResult]
    candidates: list[Candidate]
    chosen: Candidate

    def best_member(self) -> Optional[Candidate]:
        """The best single member, raw or with any clean-up a lone member can have
        (`postprocess.rival_member_steps`): the fair comparison gives it every help."""
        members = [c for c in self.candidates if c.rule == "member"]
        return max(members, key=lambda c: c.dice["mean"]) if members else None

    def manifest_update(self) -> dict:
        """What the shipped manifest records: the choice and how it was made."""
        weights = self.chosen.weights or _best_search(self.searches).weights
        return {"fusion": self.chosen.rule,
                "weights": WeightTable.from_json(dict(zip(self.members, weights)),
                                                 self.members).to_json(digits=4),
                "postprocess": list(self.chosen.postprocess),
                "selection": {"split": "validation", "patients": self.patients,
                              "chosen": self.chosen.name,
                              "validation": {"dice": self.chosen.dice,
                                             "hd95_mm": self.chosen.hd95_mm},
                              "best_member": _summary(self.best_member()),
                              "weight_search": [{k: v for k, v in asdict(s).items()
                                                 if k != "trace"} for s in self.searches]}}


def _summary(candidate: Optional[Candidate]) -> Optional[dict]:
    return None if candidate is None else {"name": candidate.name, "dice": candidate.dice,
                                           "hd95_mm": candidate.hd95_mm}


def collect_validation_frames(ensemble: Ensemble, data_root: Path, *, limit: int = 0,
                              progress: Optional[Progress] = None,
                              cancel: Optional[CancelToken] = None) -> list[ValidationFrame]:
    """Run every member once on the ED and ES frames of the validation split."""
    splits = load_splits(data_root)
    ids = splits["validation"][:limit] if limit else splits["validation"]
    check_no_test_patients(ids, splits, "ensemble selection")
    patients = find_patients(data_root, ids)
    frames = []
    for index, patient in enumerate(patients):
        for phase_index, phase in enumerate(PHASES):
            case = patient.load(phase)
            probs, _ = ensemble.member_probabilities(case, cancel=cancel)
            reference = torch.from_numpy(np.asarray(case.labels, dtype=np.uint8))
            box = _foreground_box(class_argmax(probs, dim=1), reference)
            frames.append(ValidationFrame(patient.patient_id, phase,
                                          probs[(slice(None), slice(None)) + box].half().cpu(),
                                          reference[box].clone(), case.spacing_zyx))
            if progress is not None:
                progress(2 * index + phase_index + 1, 2 * len(patients),
                         f"{patient.patient_id} {phase}")
    return frames


def _foreground_box(member_labels: torch.Tensor, reference: torch.Tensor,
                    margin: int = 2) -> tuple[slice, slice, slice]:
    """All slices, and the in-plane box (plus `margin` px) around any member's or the
    reference's foreground."""
    anything = (member_labels > 0).any(dim=0) | (reference > 0).to(member_labels.device)
    rows = torch.nonzero(anything.any(dim=(0, 2))).flatten().tolist()
    cols = torch.nonzero(anything.any(dim=(0, 1))).flatten().tolist()
    if not rows:
        return slice(None), slice(0, 1), slice(0, 1)
    return (slice(None), slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def frame_dice(labels: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Dice per structure of one frame, by the report's own `metrics.dice`."""
    return structure_dice(labels.cpu().numpy(), reference.cpu().numpy())


def weighted_mean_dice(frames: Sequence[ValidationFrame],
                       weights: Sequence[MemberWeight]) -> float:
    """The search objective: mean over frames of the mean Dice over structures, for the
    weighted-mean fusion with `weights`."""
    totals = []
    for frame in frames:
        fused = class_argmax(mean_probabilities(frame.member_probs, weights), dim=0)
        totals.append(with_mean(frame_dice(fused, frame.reference))["mean"])
    return float(np.mean(totals))


def run_searches(frames: Sequence[ValidationFrame], trials: int = 64, seed: int = 0,
                 log: Callable[[str], None] = lambda line: None,
                 cancel: Optional[CancelToken] = None) -> list[SearchResult]:
    """The three searches in order, each started from the best answer so far, then the
    per-class search again from equal weights.

    Why the fourth: on 10-patient halves the member-level searches fit noise, and a per-class
    search started from their answer inherits it. Which of the four is used is decided by
    held-out Dice (`select`)."""
    searches = [random_search(frames, trials, seed, cancel)]
    log(f"random search: {searches[0].dice:.4f} after {searches[0].evaluations} evaluations "
        f"({searches[0].seconds:.0f} s)")
    searches.append(coordinate_ascent(frames, start=searches[0].weights, cancel=cancel))
    log(f"coordinate ascent (from the random search's best): {searches[1].dice:.4f} after "
        f"{searches[1].evaluations} evaluations ({searches[1].seconds:.0f} s)")
    start = max(searches, key=lambda s: s.dice).weights
    searches.append(per_class_ascent(frames, start, cancel=cancel))
    log(f"per-class coordinate ascent (from the better of those): {searches[2].dice:.4f} after "
        f"{searches[2].evaluations} evaluations ({searches[2].seconds:.0f} s)")
    members = frames[0].member_probs.shape[0]
    searches.append(per_class_ascent(frames, [1.0 / members] * members, cancel=cancel,
                                     method=EQUAL_START_METHOD))
    log(f"{EQUAL_START_METHOD}: {searches[3].dice:.4f} after {searches[3].evaluations} "
        f"evaluations ({searches[3].seconds:.0f} s)")
    return searches


def cross_validate(frames: Sequence[ValidationFrame], searches: Sequence[SearchResult],
                   trials: int = 64, seed: int = 0, folds: int = 2,
                   cancel: Optional[CancelToken] = None) -> None:
    """Fill in each search's `held_out_dice`: the searches rerun on all but one fold of
    patients and are scored on that fold, averaged over folds (a patient's ED and ES frames
    stay together). With fewer patients than folds it stays NaN and in-sample Dice decides."""
    if len({f.patient for f in frames}) < folds:
        return
    held_out: dict[str, list[float]] = {s.method: [] for s in searches}
    for fitting, scored in patient_folds(frames, folds):
        for search in run_searches(fitting, trials, seed, cancel=cancel):
            held_out[search.method].append(weighted_mean_dice(scored, search.weights))
    for search in searches:
        search.held_out_dice = float(np.mean(held_out[search.method]))


def patient_folds(frames: Sequence[ValidationFrame], folds: int = 2):
    """(frames to fit on, frames to score on) per fold; the patients are split by sorted id
    (every `folds`-th patient), so a patient's ED and ES frames stay on one side."""
    patients = sorted({f.patient for f in frames})
    for fold in range(folds):
        kept = set(patients[fold::folds])
        yield ([f for f in frames if f.patient not in kept],
               [f for f in frames if f.patient in kept])


def random_search(frames: Sequence[ValidationFrame], trials: int = 64, seed: int = 0,
                  cancel: Optional[CancelToken] = None) -> SearchResult:
    started = time.perf_counter()
    m = frames[0].member_probs.shape[0]
    draws = np.random.default_rng(seed).dirichlet(np.ones(m), size=max(trials - 1, 0))
    best_weights, best, trace = [1.0 / m] * m, -1.0, []
    for weights in [[1.0 / m] * m] + [list(map(float, d)) for d in draws]:
        if cancel is not None:
            cancel.raise_if_cancelled()
        score = weighted_mean_dice(frames, weights)
        if score > best:
            best, best_weights = score, weights
        trace.append(best)
    return SearchResult("random search", best_weights, best, len(trace),
                        time.perf_counter() - started, trace)


def coordinate_ascent(frames: Sequence[ValidationFrame], start: Optional[Sequence[float]] = None,
                      step: float = 0.1, min_step: float = 0.025, max_evaluations: int = 400,
                      cancel: Optional[CancelToken] = None) -> SearchResult:
    """Coordinate ascent on one weight per member (the shares of a single column)."""
    m = frames[0].member_probs.shape[0]
    column = np.asarray(start if start is not None else [1.0 / m] * m, dtype=float)[:, None]
    return _ascend(frames, column, "coordinate ascent", step, min_step, max_evaluations, cancel)


def per_class_ascent(frames: Sequence[ValidationFrame], start: Sequence[float],
                     step: float = 0.1, min_step: float = 0.025, max_evaluations: int = 800,
                     cancel: Optional[CancelToken] = None,
                     method: str = "per-class coordinate ascent") -> SearchResult:
    """Coordinate ascent on an (M, C) weight table, one class column at a time.

    Why start from the member-level weights: that answer is already a point of this search space
    (every column equal), so this search can only keep or improve its validation Dice; what it
    adds is letting, say, the member best on the RV carry more of the RV vote.
    """
    classes = frames[0].member_probs.shape[1]
    table = np.tile(np.asarray(start, dtype=float)[:, None], (1, classes))
    return _ascend(frames, table, method, step, min_step, max_evaluations, cancel)


def _ascend(frames: Sequence[ValidationFrame], table: np.ndarray, method: str, step: float,
            min_step: float, max_evaluations: int,
            cancel: Optional[CancelToken]) -> SearchResult:
    """Coordinate ascent on an (M, K) table of member shares, each column on the simplex.

    K = 1 is one weight per member; K = C is one per member and class. One coordinate is one
    member's share in one column; the column's other members keep their ratios.
    """
    started = time.perf_counter()

    def as_weights(t: np.ndarray) -> list:
        return [float(w) for w in t[:, 0]] if t.shape[1] == 1 else \
            [[float(w) for w in row] for row in t]

    table = table / table.sum(axis=0, keepdims=True)
    best = weighted_mean_dice(frames, as_weights(table))
    trace = [best]
    while step >= min_step and len(trace) < max_evaluations:
        moved = True
        while moved and len(trace) < max_evaluations:
            moved = False
            for k in range(table.shape[1]):
                for i in range(table.shape[0]):
                    for share in _shares_around(table[i, k], step):
                        if cancel is not None:
                            cancel.raise_if_cancelled()
                        column = _with_share(table[:, k].copy(), i, share)
                        if column is None or len(trace) >= max_evaluations:
                            continue
                        candidate = table.copy()
                        candidate[:, k] = column
                        score = weighted_mean_dice(frames, as_weights(candidate))
                        trace.append(max(best, score))
                        if score > best + 1e-9:
                            best, table, moved = score, candidate, True
        step /= 2
    return SearchResult(method, as_weights(table), best, len(trace),
                        time.perf_counter() - started, trace)


def _shares_around(current: float, step: float) -> list[float]:
    """Shares for one member: a grid of `step` over [0, 1], nearest values first."""
    grid = np.round(np.arange(0.0, 1.0 + 1e-9, step), 6)
    grid = [float(g) for g in grid if abs(g - current) > 1e-9]
    return sorted(grid, key=lambda g: abs(g - current))[:6]


def _with_share(weights: np.ndarray, index: int, share: float) -> Optional[np.ndarray]:
    """Set member `index`'s share; the others keep their ratios and fill the rest."""
    others = weights.sum() - weights[index]
    if others <= 0 and share < 1:
        return None
    result = weights * ((1 - share) / others if others > 0 else 0.0)
    result[index] = share
    return result


def score_candidate(frames: Sequence[ValidationFrame], name: str, rule: str,
                    weights: Optional[Sequence[float]], steps: Sequence[str]) -> Candidate:
    """Dice and HD95 per structure (mean over frames) of one fusion setting."""
    overlaps = {s: [] for s in STRUCTURES}
    hd95 = {s: [] for s in STRUCTURES}
    for frame in frames:
        labels = fuse_and_clean(rule, frame.member_probs.float(), weights, steps).labels
        for structure, score in score_labels(labels, frame.reference.numpy(),
                                             frame.spacing_zyx).items():
            overlaps[structure].append(score.dice)
            hd95[structure].append(score.hd95_mm)
    dice_mean = with_mean({s: np.mean(v) for s, v in overlaps.items()})
    hd95_mean = with_mean({s: np.nanmean(v) if not all(map(math.isnan, v)) else math.nan
                           for s, v in hd95.items()})
    return Candidate(name, rule, list(weights) if weights is not None else None, tuple(steps),
                     dice_mean, hd95_mean)


def member_candidate(frames: Sequence[ValidationFrame], index: int, name: str,
                     steps: Sequence[str] = ()) -> Candidate:
    """One member alone, scored like a fusion setting (a one-hot weighting), with `steps` of
    post-processing a lone member can have."""
    one_hot = [1.0 if i == index else 0.0 for i in range(frames[0].member_probs.shape[0])]
    steps = lone_member_steps(steps)
    candidate = score_candidate(frames, Method.single(name, steps).name, "weighted", one_hot,
                                steps)
    candidate.rule, candidate.weights = "member", None
    return candidate


def select(ensemble: Ensemble, frames: Sequence[ValidationFrame], *, trials: int = 64,
           seed: int = 0, log: Callable[[str], None] = print,
           cancel: Optional[CancelToken] = None) -> Selection:
    """Search weights, score every rule and post-processing variant, pick the best.

    The rule with the best validation mean Dice wins. Weighted fusion uses the weights of the
    search with the best held-out Dice and competes with that held-out Dice, since its
    in-sample Dice flatters it (mean, vote and STAPLE fit nothing, so theirs is honest).
    Then each post-processing variant is kept if it costs under `DICE_TOLERANCE` of mean Dice
    and lowers mean HD95, else the one with the best Dice.
    """
    searches = run_searches(frames, trials, seed, log, cancel)
    started = time.perf_counter()
    cross_validate(frames, searches, trials, seed, cancel=cancel)
    log("held-out Dice (2 folds by patient): " + ", ".join(
        f"{s.method} {s.held_out_dice:.4f}" for s in searches)
        + f" ({time.perf_counter() - started:.0f} s)")
    used = _best_search(searches)
    candidates = [member_candidate(frames, i, name) for i, name in enumerate(ensemble.names)]
    by_rule = {}
    for rule in FusionRule.values():
        by_rule[rule] = score_candidate(frames, Method.ensemble(rule).name, rule,
                                        used.weights if rule == "weighted" else None, ())
        candidates.append(by_rule[rule])
        log(f"{rule}: validation mean Dice {by_rule[rule].dice['mean']:.4f}")
    rule = max(by_rule, key=lambda r: _honest_dice(by_rule[r], used))
    best = by_rule[rule]
    for steps in POSTPROCESS_VARIANTS[1:]:
        variant = score_candidate(frames, Method.ensemble(rule, steps).name, rule,
                                  best.weights, steps)
        candidates.append(variant)
        log(f"{variant.name}: mean Dice {variant.dice['mean']:.4f}, mean HD95 "
            f"{variant.hd95_mm['mean']:.2f} mm")
        if _better(variant, best):
            best = variant
    candidates += [member_candidate(frames, i, name, steps)
                   for steps in rival_member_steps(best.postprocess)[1:]
                   for i, name in enumerate(ensemble.names)]
    selection = Selection(ensemble.names, sorted({f.patient for f in frames}), searches,
                          candidates, best)
    rival = selection.best_member()
    log(f"chosen {best.name}: {100 * (best.dice['mean'] - rival.dice['mean']):+.2f} points over "
        f"the best member with its best clean-up ({rival.name})")
    return selection


def _better(candidate: Candidate, incumbent: Candidate) -> bool:
    gain = candidate.dice["mean"] - incumbent.dice["mean"]
    if gain > DICE_TOLERANCE:
        return True
    return gain > -DICE_TOLERANCE and candidate.hd95_mm["mean"] < incumbent.hd95_mm["mean"]


def _best_search(searches: Sequence[SearchResult]) -> SearchResult:
    """The search to trust: best held-out Dice when cross-validated (the first of equals, so
    the one with fewer parameters), else best in-sample Dice."""
    if all(not math.isnan(s.held_out_dice) for s in searches):
        return max(searches, key=lambda s: s.held_out_dice)
    return max(searches, key=lambda s: s.dice)


def _honest_dice(candidate: Candidate, search: SearchResult) -> float:
    """A rule's validation Dice for choosing between rules: held-out for weighted fusion when
    there is one (its weights were fitted to these very patients), in-sample for the rules
    that fit nothing."""
    if candidate.rule == "weighted" and not math.isnan(search.held_out_dice):
        return search.held_out_dice
    return candidate.dice["mean"]


def selection_markdown(selection: Selection) -> str:
    lines = [f"# Ensemble selection on the validation split ({len(selection.patients)} patients, "
             "ED and ES)", "",
             f"Patients: {', '.join(selection.patients)}", "",
             "## Weight search (objective: mean Dice of the weighted-mean fusion)", "",
             "Held-out Dice: the same search fitted on half the patients and scored on the "
             "other half (2 folds by patient, averaged). It picks the weights used (**bold**) "
             "and is the score weighted fusion brings to the choice of rule.", "",
             "| optimiser | mean Dice | held-out Dice | evaluations | seconds | weights (" +
             ", ".join(selection.members) + "; per class: background/RV/Myo/LV) |",
             "|---|---|---|---|---|---|"]
    used = _best_search(selection.searches)
    for s in selection.searches:
        method = f"**{s.method}**" if s is used else s.method
        lines.append(f"| {method} | {s.dice:.4f} | {s.held_out_dice:.4f} | {s.evaluations} | "
                     f"{s.seconds:.0f} | " + ", ".join(map(_table(selection, s).text,
                                                           selection.members)) + " |")
    lines += ["", "## Candidates", "",
              "| setting | Dice RV | Dice Myo | Dice LV | Dice mean | HD95 mean (mm) |",
              "|---|---|---|---|---|---|"]
    for c in selection.candidates:
        mark = " **(chosen)**" if c is selection.chosen else ""
        lines.append(f"| {c.name}{mark} | " + " | ".join(f"{c.dice[s]:.4f}" for s in STRUCTURES)
                     + f" | {c.dice['mean']:.4f} | {c.hd95_mm['mean']:.2f} |")
    rival = selection.best_member()
    if rival is not None:
        gains = ", ".join(f"{s} {100 * (selection.chosen.dice[s] - rival.dice[s]):+.2f}"
                          for s in (*STRUCTURES, "mean"))
        lines += ["", f"Chosen setting against the best member with its best clean-up "
                      f"({rival.name}), Dice points: {gains}."]
    return "\n".join(lines) + "\n"


def _table(selection: Selection, search: SearchResult) -> WeightTable:
    return WeightTable.from_json(dict(zip(selection.members, search.weights)), selection.members)


def write_selection(selection: Selection, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    markdown, data = folder / "selection.md", folder / "selection.json"
    markdown.write_text(selection_markdown(selection))
    data.write_text(json.dumps(selection.manifest_update(), indent=1) + "\n")
    return markdown, data
