"""Does the QC score find the errors? The ensemble's disagreement against one network's own.

For every frame of a split, each *system* segments it and scores its own segmentation with its
own QC score (`inference.quality`):

- "ensemble disagreement": the shipped ensemble (its default preset), its members' disagreement:
  what the product uses.
- "ensemble entropy": the same segmentation, the fused probabilities' entropy.
- "best member entropy": the best-validated member alone (full grid, the ensemble's clean-up),
  its own softmax entropy.
- "best member TTA disagreement": that member with flip TTA (three passes: as is, flipped left-
  right, flipped up-down; the mean softmax, then the clean-up), the passes' disagreement.

Units: every (frame, slice, structure) where the system or the expert drew the structure (an
error: Dice < 0.80 on that slice); every (frame, structure) (an error: HD95 > 10 mm); every frame
(an error: its worst structure's Dice < 0.85). `fit_thresholds` picks, on validation, the
highest score threshold that still flags `RECALL_TARGET` of the errors; `write_report` gives,
on another split, AUROC and average precision per system and unit, the share of misclassified
voxels in the top 10% of flagged slices, a patient-bootstrap interval for the ensemble's AUROC
minus the single network's, and the "slices reviewed vs error caught" curve (PNG).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from CardiacEnsembleLib.core.case import Case
from CardiacEnsembleLib.core.labels import STRUCTURES
from CardiacEnsembleLib.core.quality import QualityScore, QualityThresholds
from CardiacEnsembleLib.evaluation.metrics import dice, score_labels
from CardiacEnsembleLib.inference.ensemble import Ensemble
from CardiacEnsembleLib.inference.postprocess import apply_steps
from CardiacEnsembleLib.inference.quality import (ScoreMaps, disagreement_scores,
                                                  entropy_scores)
from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder

ENSEMBLE_DISAGREEMENT = "ensemble disagreement"
ENSEMBLE_ENTROPY = "ensemble entropy"
MEMBER_ENTROPY = "best member entropy"
MEMBER_TTA = "best member TTA disagreement"
SYSTEMS = (ENSEMBLE_DISAGREEMENT, ENSEMBLE_ENTROPY, MEMBER_ENTROPY, MEMBER_TTA)
#: Which score each system's thresholds go to in the manifest (the product's two scores).
MANIFEST_SCORES = {ENSEMBLE_DISAGREEMENT: QualityScore.DISAGREEMENT,
                   MEMBER_ENTROPY: QualityScore.ENTROPY}

SLICE_DICE_ERROR = 0.80  # a (slice, structure) below this Dice is an error to find
STRUCTURE_HD95_ERROR_MM = 10.0  # a structure over this HD95 is an error to find
CASE_DICE_ERROR = 0.85  # a frame whose worst structure is below this Dice is an error
RECALL_TARGET = 0.80  # thresholds flag at least this share of the validation errors
REVIEW_SHARE = 0.10  # "the top 10% of flagged slices"


@dataclass(frozen=True)
class Unit:
    """One scored thing: a slice x structure ("slice"), a structure ("structure"), or a frame
    ("case"), with its QC score, whether it is an error, and (slices) its misclassified
    voxels."""

    system: str
    level: str
    patient: str
    frame: str  # "patient101 ED"
    slice_index: int  # -1 above slice level
    structure: str  # "" for a frame
    score: float
    error: bool
    misclassified: int = 0  # slice level: voxels of this structure labelled wrongly
    shortfall: float = 0.0  # slice level: 1 - Dice of this structure on this slice


def _flip(image: np.ndarray, axis: Optional[int]) -> np.ndarray:
    return image if axis is None else np.flip(image, axis=axis)


def system_outputs(ensemble: Ensemble, member: Ensemble, case: Case) -> dict[str, tuple]:
    """system -> (labels (Z, Y, X), ScoreMaps) for one frame."""
    fused = ensemble.predict(case)
    voters = np.stack([m.labels for m in fused.members])
    outputs = {ENSEMBLE_DISAGREEMENT: (fused.labels, disagreement_scores(voters, fused.labels)),
               ENSEMBLE_ENTROPY: (fused.labels, entropy_scores(fused.probabilities,
                                                               fused.labels,
                                                               fused.uncertainty))}
    passes = []
    for axis in (None, 2, 1):  # as is, left-right (X), up-down (Y), as the runner's TTA
        flipped = replace(case, image=np.ascontiguousarray(_flip(case.image, axis)))
        single = member.predict(flipped)
        probabilities = np.ascontiguousarray(_flip(single.probabilities, None if axis is None
                                                   else axis + 1))
        if axis is None:
            outputs[MEMBER_ENTROPY] = (single.labels, entropy_scores(
                probabilities, single.labels, single.uncertainty))
        passes.append(probabilities)
    mean = np.mean(passes, axis=0)
    tta_labels = apply_steps(mean.argmax(axis=0).astype(np.uint8), member.postprocess)
    pass_labels = np.stack([p.argmax(axis=0).astype(np.uint8) for p in passes])
    outputs[MEMBER_TTA] = (tta_labels, disagreement_scores(pass_labels, tta_labels))
    return outputs


def frame_units(system: str, frame: str, labels: np.ndarray, maps: ScoreMaps,
                truth: np.ndarray, spacing_zyx) -> list[Unit]:
    """Every slice, structure and case unit of one system's segmentation of one frame."""
    patient = frame.split()[0]
    units = []
    scores = score_labels(labels, truth, spacing_zyx)
    for column, (name, value) in enumerate(STRUCTURES.items()):
        predicted, expert = labels == value, truth == value
        for z in range(labels.shape[0]):
            if not (predicted[z].any() or expert[z].any()):
                continue
            score = maps.per_slice[z, column]
            overlap = dice(predicted[z], expert[z])
            units.append(Unit(system, "slice", patient, frame, z, name,
                              0.0 if not np.isfinite(score) else float(score),
                              overlap < SLICE_DICE_ERROR,
                              int(np.logical_xor(predicted[z], expert[z]).sum()), 1.0 - overlap))
        hd95 = scores[name].hd95_mm
        structure_score = maps.per_structure[column]
        units.append(Unit(system, "structure", patient, frame, -1, name,
                          0.0 if not np.isfinite(structure_score) else float(structure_score),
                          not np.isfinite(hd95) or hd95 > STRUCTURE_HD95_ERROR_MM))
    worst = min(s.dice for s in scores.values())
    units.append(Unit(system, "case", patient, frame, -1, "", maps.case,
                      worst < CASE_DICE_ERROR))
    return units


def collect_units(ensemble: Ensemble, best_member: str, patients: Sequence[PatientFolder],
                  progress: Optional[Callable[[int, int, str], None]] = None) -> list[Unit]:
    """Run every system on the ED and ES frames of `patients` (`best_member`: the single
    network, on the full grid with the ensemble's clean-up): all their units."""
    member = replace(ensemble.subset([best_member]), heart_margin=None, locator=None,
                     tta=False)
    units: list[Unit] = []
    frames = [(p, phase) for p in patients for phase in PHASES]
    for index, (patient, phase) in enumerate(frames):
        case = patient.load(phase)
        frame = f"{patient.patient_id} {phase}"
        for system, (labels, maps) in system_outputs(ensemble, member, case).items():
            units += frame_units(system, frame, labels, maps, case.labels, case.spacing_zyx)
        if progress is not None:
            progress(index + 1, len(frames), frame)
    return units


# ------------------------------------------------------------------------------ storage

FIELDS = ("system", "level", "patient", "frame", "slice_index", "structure", "score", "error",
          "misclassified", "shortfall")


def write_units(units: Iterable[Unit], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for u in units:
            writer.writerow([u.system, u.level, u.patient, u.frame, u.slice_index, u.structure,
                             f"{u.score:.6f}", int(u.error), u.misclassified,
                             f"{u.shortfall:.6f}"])
    return path


def read_units(path: Path) -> list[Unit]:
    with open(path, newline="") as handle:
        return [Unit(r["system"], r["level"], r["patient"], r["frame"], int(r["slice_index"]),
                     r["structure"], float(r["score"]), r["error"] == "1",
                     int(r["misclassified"]), float(r["shortfall"]))
                for r in csv.DictReader(handle)]


def select(units: Sequence[Unit], system: str, level: str) -> list[Unit]:
    return [u for u in units if u.system == system and u.level == level]


# ------------------------------------------------------------------------------ measures

def auroc(scores: np.ndarray, errors: np.ndarray) -> float:
    """Area under the ROC curve: the chance that an error outscores a non-error (ties half),
    through the Mann-Whitney U statistic; NaN without both kinds."""
    from scipy.stats import rankdata

    errors = np.asarray(errors, dtype=bool)
    positives, negatives = int(errors.sum()), int((~errors).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[errors].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def average_precision(scores: np.ndarray, errors: np.ndarray) -> float:
    """Mean of the precision at each error's rank, worst score first (ties broken by order)."""
    errors = np.asarray(errors, dtype=bool)
    if not errors.any():
        return float("nan")
    ranked = errors[np.argsort(-np.asarray(scores), kind="stable")]
    precision = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    return float(precision[ranked].mean())


def fit_threshold(scores: np.ndarray, errors: np.ndarray, recall: float = RECALL_TARGET) -> float:
    """The highest threshold whose flags (score >= threshold) hold at least `recall` of the
    errors."""
    positives = np.sort(np.asarray(scores)[np.asarray(errors, dtype=bool)])[::-1]
    if positives.size == 0:
        return 1.0
    return float(positives[int(np.ceil(recall * positives.size)) - 1])


def slice_ranking(units: Sequence[Unit], error: str = "misclassified") -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Per (frame, slice): the worst structure's score and the slice's error (`error`: its
    misclassified voxels, or its "shortfall": the sum of 1 - Dice over its structures), as a
    reviewer who opens a slice sees all its structures."""
    scores: dict[tuple, float] = {}
    wrong: dict[tuple, float] = {}
    for u in units:
        key = (u.frame, u.slice_index)
        scores[key] = max(scores.get(key, 0.0), u.score)
        wrong[key] = wrong.get(key, 0.0) + getattr(u, error)
    keys = list(scores)
    return np.array([scores[k] for k in keys]), np.array([wrong[k] for k in keys], dtype=float)


def error_caught_curve(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of slices reviewed, share of misclassified voxels in them), worst score first."""
    order = np.argsort(-scores, kind="stable")
    caught = np.concatenate([[0.0], np.cumsum(wrong[order])]) / max(wrong.sum(), 1.0)
    reviewed = np.arange(len(scores) + 1) / max(len(scores), 1)
    return reviewed, caught


def caught_at(scores: np.ndarray, wrong: np.ndarray, share: float = REVIEW_SHARE) -> float:
    reviewed, caught = error_caught_curve(scores, wrong)
    return float(np.interp(share, reviewed, caught))


@dataclass
class Measures:
    system: str
    level: str
    units: int
    errors: int
    auroc: float
    average_precision: float


def measures(units: Sequence[Unit]) -> list[Measures]:
    rows = []
    for system in SYSTEMS:
        for level in ("slice", "structure", "case"):
            chosen = select(units, system, level)
            if not chosen:
                continue
            scores = np.array([u.score for u in chosen])
            errors = np.array([u.error for u in chosen])
            rows.append(Measures(system, level, len(chosen), int(errors.sum()),
                                 auroc(scores, errors), average_precision(scores, errors)))
    return rows


def bootstrap_difference(units: Sequence[Unit], first: str, second: str, level: str = "slice",
                         resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUROC(first) - AUROC(second) at `level`, with a 95% interval over patients resampled
    with replacement (each system keeps its own units of the drawn patients)."""
    rng = np.random.default_rng(seed)
    by_patient: dict[str, dict[str, list[Unit]]] = {}
    for system in (first, second):
        for u in select(units, system, level):
            by_patient.setdefault(u.patient, {first: [], second: []})[system].append(u)
    patients = sorted(by_patient)
    arrays = {p: {system: (np.array([u.score for u in chosen]),
                           np.array([u.error for u in chosen], dtype=bool))
                  for system, chosen in by_patient[p].items()} for p in patients}

    def difference(drawn) -> float:
        values = []
        for system in (first, second):
            scores = np.concatenate([arrays[p][system][0] for p in drawn])
            errors = np.concatenate([arrays[p][system][1] for p in drawn])
            values.append(auroc(scores, errors))
        return values[0] - values[1]

    observed = difference(patients)
    draws = np.array([difference(rng.choice(patients, size=len(patients)))
                      for _ in range(resamples)])
    if not np.isfinite(draws).any():  # no errors, or nothing but errors: no AUROC at all
        return observed, float("nan"), float("nan")
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return observed, float(low), float(high)


def fit_thresholds(units: Sequence[Unit], source: str) -> dict[str, QualityThresholds]:
    """Per system: slice and case thresholds that flag `RECALL_TARGET` of its errors."""
    fitted = {}
    for system in SYSTEMS:
        slices, cases = select(units, system, "slice"), select(units, system, "case")
        score = MANIFEST_SCORES.get(system, QualityScore.DISAGREEMENT if "disagreement" in system
                                    else QualityScore.ENTROPY)
        fitted[system] = QualityThresholds(
            score, fit_threshold(np.array([u.score for u in slices]),
                                 np.array([u.error for u in slices])),
            fit_threshold(np.array([u.score for u in cases]),
                          np.array([u.error for u in cases])), source)
    return fitted


def manifest_update(fitted: dict[str, QualityThresholds]) -> dict:
    """The manifest's "quality_control": the product's two scores' thresholds."""
    return {"quality_control": {score.value: fitted[system].to_json()
                                for system, score in MANIFEST_SCORES.items()}}


def flagged_share(units: Sequence[Unit], thresholds: QualityThresholds,
                  level: str) -> tuple[float, float]:
    """(share of units flagged, share of errors flagged) at `thresholds`."""
    cut = thresholds.slice if level == "slice" else thresholds.case
    flags = np.array([u.score >= cut for u in units])
    errors = np.array([u.error for u in units])
    return float(flags.mean()) if flags.size else float("nan"), \
        float(flags[errors].mean()) if errors.any() else float("nan")


# ------------------------------------------------------------------------------ report

def plot_error_caught(units: Sequence[Unit], png_path: Path, title: str) -> Path:
    """Two panels, slices reviewed (highest score first) against the share of the Dice
    shortfall (what the scores estimate) and of the misclassified voxels they hold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    colours = {ENSEMBLE_DISAGREEMENT: "#d62728", ENSEMBLE_ENTROPY: "#ff9896",
               MEMBER_ENTROPY: "#1f77b4", MEMBER_TTA: "#2ca02c"}
    for axis, error, name in ((axes[0], "shortfall", "Dice shortfall (sum of 1 - Dice)"),
                              (axes[1], "misclassified", "misclassified voxels")):
        for system in SYSTEMS:
            scores, wrong = slice_ranking(select(units, system, "slice"), error)
            if not len(scores):
                continue
            reviewed, caught = error_caught_curve(scores, wrong)
            axis.plot(reviewed, caught, color=colours[system],
                      label=f"{system} ({caught_at(scores, wrong):.0%} at 10%)")
            if system == ENSEMBLE_DISAGREEMENT:
                oracle_reviewed, oracle = error_caught_curve(wrong, wrong)
                axis.plot(oracle_reviewed, oracle, color="0.5", ls=":", lw=1,
                          label="oracle (the ensemble's own errors)")
        axis.plot([0, 1], [0, 1], color="0.7", ls="--", lw=1, label="random order")
        axis.axvline(REVIEW_SHARE, color="0.3", lw=0.8)
        axis.set_xlabel("share of slices reviewed, highest QC score first")
        axis.set_title(f"share of the {name} on them", fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.01)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("share of the error caught")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
    return png_path


def report_markdown(units: Sequence[Unit], split: str, patients: Sequence[str],
                    thresholds: Optional[dict[str, QualityThresholds]], png_name: str,
                    command: str = "") -> str:
    frames = sorted({u.frame for u in units})
    lines = [f"# QC: does the score find the errors? ({split})", "",
             f"{len(patients)} patients, {len(frames)} frames (ED and ES): "
             f"{', '.join(patients)}.  "]
    if command:
        lines.append(f"Command: `{command}`  ")
    lines += ["Each system scores its own segmentation. Errors: a slice x structure with Dice < "
              f"{SLICE_DICE_ERROR:.2f}; a structure with HD95 > {STRUCTURE_HD95_ERROR_MM:.0f} mm; "
              f"a frame whose worst structure has Dice < {CASE_DICE_ERROR:.2f}. Units are those "
              "where the system or the expert drew the structure.", "",
              "| system | level | units | errors | AUROC | average precision |",
              "|---|---|---|---|---|---|"]
    for m in measures(units):
        lines.append(f"| {m.system} | {m.level} | {m.units} | {m.errors} | {m.auroc:.3f} | "
                     f"{m.average_precision:.3f} |")
    lines += ["", f"## Error caught in the top {REVIEW_SHARE:.0%} of slices", "",
              "Slices ranked by their worst structure's score. Caught: the share of all "
              "misclassified voxels (per structure: a voxel wrong for two structures counts for "
              "both), and of the Dice shortfall (the sum over slices and structures of 1 - "
              "Dice), that those slices hold; the oracle ranks by the error itself.", "",
              "| system | slices | voxels caught at 10% | oracle | Dice shortfall caught at "
              "10% | oracle |", "|---|---|---|---|---|---|"]
    for system in SYSTEMS:
        scores, wrong = slice_ranking(select(units, system, "slice"))
        _, shortfall = slice_ranking(select(units, system, "slice"), "shortfall")
        if len(scores):
            lines.append(f"| {system} | {len(scores)} | {caught_at(scores, wrong):.1%} | "
                         f"{caught_at(wrong, wrong):.1%} | {caught_at(scores, shortfall):.1%} |"
                         f" {caught_at(shortfall, shortfall):.1%} |")
    lines += ["", "## The ensemble's disagreement against the single network's scores", "",
              "AUROC difference, 95% interval over patients resampled with replacement "
              "(2000 draws).", "", "| comparison | level | difference | 95% interval |",
              "|---|---|---|---|"]
    for rival in (MEMBER_ENTROPY, MEMBER_TTA):
        for level in ("slice", "structure", "case"):
            observed, low, high = bootstrap_difference(units, ENSEMBLE_DISAGREEMENT, rival, level)
            lines.append(f"| {ENSEMBLE_DISAGREEMENT} - {rival} | {level} | {observed:+.3f} | "
                         f"{low:+.3f} to {high:+.3f} |")
    if thresholds:
        lines += ["", "## Thresholds fitted on validation, applied here", "",
                  f"Each flags {RECALL_TARGET:.0%} of that system's validation errors "
                  "(highest such threshold).", "",
                  "| system | slice threshold | slices flagged | slice errors flagged | "
                  "case threshold | frames flagged | frame errors flagged |",
                  "|---|---|---|---|---|---|---|"]
        for system, t in thresholds.items():
            slice_share, slice_recall = flagged_share(select(units, system, "slice"), t,
                                                      "slice")
            case_share, case_recall = flagged_share(select(units, system, "case"), t, "case")
            lines.append(f"| {system} | {t.slice:.3f} | {slice_share:.1%} | {slice_recall:.1%}"
                         f" | {t.case:.3f} | {case_share:.1%} | {case_recall:.1%} |")
    lines += ["", f"![slices reviewed vs error caught]({png_name})", ""]
    return "\n".join(lines)


def save_thresholds(fitted: dict[str, QualityThresholds], path: Path) -> Path:
    path.write_text(json.dumps({system: {"score": t.score.value, **t.to_json()}
                                for system, t in fitted.items()}, indent=1) + "\n")
    return path


def load_thresholds(path: Path) -> dict[str, QualityThresholds]:
    data = json.loads(Path(path).read_text())
    return {system: QualityThresholds.from_json(values["score"], values, str(path))
            for system, values in data.items()}
