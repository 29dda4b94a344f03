"""Score every member and every fusion rule on ground-truth patients, side by side.

Each frame runs the networks once; every fusion rule is then applied to the same member outputs,
so members and ensembles are compared on identical inputs and the reported ensemble time is the
real one (members + fusion). Rows are long-format (patient x phase x method x structure) so any
summary can be computed from the CSV later.
"""
from __future__ import annotations

import csv
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from CardiacEnsembleLib.core.case import STRUCTURES, CaseError
from CardiacEnsembleLib.core.options import FusionRule, Method, rival_member_steps
from CardiacEnsembleLib.core.progress import CancelToken, Progress
from CardiacEnsembleLib.core.quality import QualityReport, QualityScore
from CardiacEnsembleLib.evaluation.metrics import ClinicalIndices, clinical_indices, score_labels
from CardiacEnsembleLib.inference.ensemble import Ensemble
from CardiacEnsembleLib.inference.postprocess import apply_steps
from CardiacEnsembleLib.inference.quality import assess, entropy_scores, report_from_maps
from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
from CardiacEnsembleLib.io.atomic import atomic_output


@dataclass
class ScoreRow:
    patient: str
    group: str
    phase: str
    method: str  # `Method.name`: a member's name, or "ensemble-<rule>", + clean-up steps
    structure: str
    dice: float
    hd95_mm: float
    msd_mm: float
    flag: str
    seconds: float  # time to produce this method's labels for this frame
    # QC (`inference.quality`) of this method's labels, no ground truth used: the structure's
    # score (an ensemble method: its members' disagreement; a lone member: its entropy), the
    # frame's, and how many (slice, structure) entries the manifest's thresholds flag; None
    # (an empty cell): not scored, or no validated threshold to flag with
    qc_score: Optional[float] = None
    qc_case_score: Optional[float] = None
    qc_slices_to_review: Optional[int] = None


@dataclass
class ClinicalRow:
    patient: str
    group: str
    method: str  # "reference" for the ground truth
    indices: ClinicalIndices


@dataclass
class Evaluation:
    scores: list[ScoreRow] = field(default_factory=list)
    clinical: list[ClinicalRow] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


def shipped_method(ensemble: Ensemble) -> str:
    """The method name of what `segment` produces with this ensemble's own settings."""
    return ensemble.method.name


def member_methods(ensemble: Ensemble) -> list[str]:
    """Each member as the network produces it, then with the clean-ups a lone member can use
    (`options.rival_member_steps`): the rivals the ensemble must beat."""
    return [m.name for m in rival_methods(ensemble)]


def rival_methods(ensemble: Ensemble) -> list[Method]:
    return [Method.single(name, steps) for steps in rival_member_steps(ensemble.postprocess)
            for name in ensemble.names]


def default_rules(ensemble: Ensemble) -> list[str]:
    return [r.value for r in FusionRule
            if r != FusionRule.WEIGHTED or ensemble.weights is not None]


def evaluate(ensemble: Ensemble, patients: Sequence[PatientFolder],
             rules: Optional[Sequence[str]] = None, *, progress: Optional[Progress] = None,
             cancel: Optional[CancelToken] = None) -> Evaluation:
    """Members and fusion rules on the ED and ES frames of `patients` (ground truth needed).

    Each is scored as the networks produce it; when the ensemble has post-processing, rules are
    scored again with it, so the clean-up's effect is measured. Members are always scored with
    the clean-ups a lone member can use too, so the best member gets every help it could.
    """
    rules = list(rules or default_rules(ensemble))
    if "weighted" in rules and ensemble.weights is None:
        raise ValueError("the 'weighted' rule needs ensemble weights (none in the manifest)")
    variants = [()] + ([ensemble.postprocess] if ensemble.postprocess else [])
    fused = [Method.ensemble(r, v) for v in variants for r in rules]
    rivals = rival_methods(ensemble)
    result = Evaluation(methods=[m.name for m in rivals + fused])
    total = len(patients) * len(PHASES)
    for index, patient in enumerate(patients):
        labels: dict[str, dict[str, np.ndarray]] = {}
        for phase_index, phase in enumerate(PHASES):
            case = patient.load(phase)
            if case.labels is None:
                raise CaseError(f"{patient.folder}: no ground truth for {phase} "
                                f"({patient.gt_path(phase).name}); evaluate needs it")
            member_probs, seconds = ensemble.member_probabilities(case, cancel=cancel)
            outputs: dict[str, tuple[np.ndarray, float]] = {}
            quality: dict[str, QualityReport] = {}
            for method in fused:
                prediction = ensemble.fuse(case, member_probs, seconds, method.rule.value,
                                           postprocess=method.steps,
                                           keep_member_probabilities=method is fused[0])
                t = sum(prediction.timings.get(k, 0.0)
                        for k in ("members", "fusion", "postprocess"))
                outputs[method.name] = (prediction.labels, t)
                quality[method.name] = assess(prediction, ensemble.quality_control)
                if method is fused[0]:
                    members = {m.name: m for m in prediction.members}
            for method in rivals:
                member = members[method.member]
                cleaned = apply_steps(member.labels, method.steps) if method.steps \
                    else member.labels
                outputs[method.name] = (cleaned, member.seconds)
                quality[method.name] = report_from_maps(
                    entropy_scores(member.probabilities, cleaned), QualityScore.ENTROPY,
                    ensemble.quality_control)
            for method in result.methods:
                predicted, t = outputs[method]
                labels.setdefault(method, {})[phase] = predicted
                qc = quality[method]
                to_review = len(qc.to_review) if qc.thresholds else None
                for structure, score in score_labels(predicted, case.labels,
                                                     case.spacing_zyx).items():
                    result.scores.append(ScoreRow(
                        patient.patient_id, patient.info.group or "", phase, method, structure,
                        score.dice, score.hd95_mm, score.msd_mm, score.flag, t,
                        qc.structures.get(structure), qc.case_score, to_review))
            labels.setdefault("reference", {})[phase] = case.labels
            if progress is not None:
                progress(index * len(PHASES) + phase_index + 1, total,
                         f"{patient.patient_id} {phase}")
        for method in ["reference"] + result.methods:
            result.clinical.append(ClinicalRow(
                patient.patient_id, patient.info.group or "", method,
                clinical_indices(labels[method]["ED"], labels[method]["ES"],
                                 case.spacing_zyx)))
    return result


def write_scores_csv(evaluation: Evaluation, path: Path, *, overwrite: bool = False,
                     protected: Iterable[Path | str] = ()) -> None:
    """scores.csv, whole or not at all (`io.atomic.atomic_output`)."""
    with atomic_output(path, overwrite=overwrite, protected=protected) as temporary, \
            open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ScoreRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(row) for row in evaluation.scores)


def read_scores_csv(path: Path) -> list[ScoreRow]:
    """The rows `write_scores_csv` wrote, typed again: any summary of a finished evaluation (the
    report's verdict, its confidence interval) can be recomputed without running a network."""
    numeric = {f.name: float for f in fields(ScoreRow) if f.type == "float"}
    optional = {"Optional[float]": float, "Optional[int]": int}
    numeric.update({f.name: optional[f.type] for f in fields(ScoreRow) if f.type in optional})
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        required = {f.name for f in fields(ScoreRow) if f.default is MISSING}  # QC: optional
        optional_fields = {f.name for f in fields(ScoreRow)} - required
        missing = required - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a scores.csv of `evaluate`; "
                             f"missing column(s) {', '.join(sorted(missing))}")
        return [ScoreRow(**{k: _cell(v, numeric.get(k), k in optional_fields)
                            for k, v in row.items()}) for row in reader]


def _cell(text: str, kind, optional: bool):
    """A scores.csv cell typed again: text, a number, or None for an optional empty one."""
    if kind is None:
        return text
    return None if optional and text == "" else kind(text)


def write_clinical_csv(evaluation: Evaluation, path: Path, *, overwrite: bool = False,
                       protected: Iterable[Path | str] = ()) -> None:
    """clinical.csv, whole or not at all (`io.atomic.atomic_output`)."""
    rows = [{"patient": r.patient, "group": r.group, "method": r.method,
             **r.indices.as_dict()} for r in evaluation.clinical]
    with atomic_output(path, overwrite=overwrite, protected=protected) as temporary, \
            open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _mean_sd(values: Sequence[float], digits: int) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def summary_table(evaluation: Evaluation) -> str:
    """Markdown: one row per method; Dice / HD95 per structure, EF errors, time per frame."""
    reference = {r.patient: r.indices for r in evaluation.clinical if r.method == "reference"}
    header = (["method"] + [f"Dice {s}" for s in STRUCTURES] + ["Dice mean"]
              + [f"HD95 {s} (mm)" for s in STRUCTURES] + ["MSD mean (mm)", "LV EF |err| (%)",
                                                         "RV EF |err| (%)", "s / frame"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in evaluation.methods:
        rows = [r for r in evaluation.scores if r.method == method]
        by_structure = {s: [r for r in rows if r.structure == s] for s in STRUCTURES}
        frame_dice = _per_frame_mean(rows, "dice")
        frame_msd = _per_frame_mean(rows, "msd_mm")
        clinical = [r for r in evaluation.clinical if r.method == method]
        lv_err = [abs(r.indices.lv_ef_pct - reference[r.patient].lv_ef_pct) for r in clinical]
        rv_err = [abs(r.indices.rv_ef_pct - reference[r.patient].rv_ef_pct) for r in clinical]
        frame_seconds = list({(r.patient, r.phase): r.seconds for r in rows}.values())
        cells = ([method] + [_mean_sd([r.dice for r in by_structure[s]], 3) for s in STRUCTURES]
                 + [_mean_sd(frame_dice, 3)]
                 + [_mean_sd([r.hd95_mm for r in by_structure[s]], 1) for s in STRUCTURES]
                 + [_mean_sd(frame_msd, 2), _mean_sd(lv_err, 1), _mean_sd(rv_err, 1),
                    f"{np.median(frame_seconds):.2f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_frame_mean(rows: Sequence[ScoreRow], attribute: str) -> list[float]:
    frames: dict[tuple, list[float]] = {}
    for row in rows:
        frames.setdefault((row.patient, row.phase), []).append(getattr(row, attribute))
    return [float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan
            for v in frames.values()]
