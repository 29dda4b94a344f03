"""Quality-control records: the score kinds, the validated thresholds that turn a score into a
flag, and the per-frame report (the QC file) with its review list. Computed by
`inference.quality`; read without numpy or torch by the Slicer panel and the worker's client."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional

from .errors import MemberError
from .labels import STRUCTURES


class QualityScore(str, Enum):
    DISAGREEMENT = "disagreement"
    ENTROPY = "entropy"

    @classmethod
    def values(cls) -> list[str]:
        return [member.value for member in cls]


@dataclass(frozen=True)
class QualityThresholds:
    """When a score is a flag: a (slice, structure) at or above `slice`, a case at or above
    `case`. `source` says where they come from (e.g. "validation, 20 patients")."""

    score: QualityScore
    slice: float
    case: float
    source: str = ""

    @classmethod
    def from_json(cls, score: str, data: Mapping[str, Any],
                  where: str = "manifest") -> "QualityThresholds":
        try:
            kind = QualityScore(score)
            values = float(data["slice_threshold"]), float(data["case_threshold"])
        except (KeyError, TypeError, ValueError) as error:
            raise MemberError(f"{where}: \"quality_control\" maps a score ("
                              f"{' or '.join(QualityScore.values())}) to slice_threshold and "
                              f"case_threshold numbers; {score!r}: {error}") from None
        if not all(0.0 <= value <= 1.0 for value in values):
            raise MemberError(f"{where}: quality_control thresholds must lie in [0, 1], got "
                              f"{values}")
        return cls(kind, *values, source=str(data.get("fitted_on", "")))

    def to_json(self) -> dict[str, Any]:
        return {"slice_threshold": round(self.slice, 4), "case_threshold": round(self.case, 4),
                "fitted_on": self.source}


def thresholds_from_json(data: Any, where: str = "manifest") -> dict[QualityScore,
                                                                      QualityThresholds]:
    """The manifest's "quality_control" object: {score: {slice_threshold, case_threshold,
    fitted_on}}."""
    if not isinstance(data, Mapping):
        raise MemberError(f"{where}: \"quality_control\" must be an object {{score: "
                          f"thresholds}}, not {type(data).__name__}")
    thresholds = [QualityThresholds.from_json(score, values if isinstance(values, Mapping)
                                              else {}, where) for score, values in data.items()]
    return {t.score: t for t in thresholds}


@dataclass(frozen=True)
class SliceReview:
    """One entry of the review list: a structure on a slice, with its score."""

    slice_index: int  # 0-based index along the label map's first (Z) axis
    structure: str  # "RV", "Myo" or "LV" (core.labels.STRUCTURES)
    score: float
    flagged: bool

    @property
    def label(self) -> int:
        return STRUCTURES[self.structure]


@dataclass
class QualityReport:
    """What the QC file holds for one segmented frame: the case score and flag, each
    structure's score, and every (slice, structure) ranked by score, worst first."""

    score: QualityScore
    case_score: float
    structures: dict[str, float]  # structure -> score over the volume (absent: not listed)
    slices: list[SliceReview]
    thresholds: Optional[QualityThresholds] = None
    case_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def case_flagged(self) -> bool:
        return self.thresholds is not None and self.case_score >= self.thresholds.case

    @property
    def to_review(self) -> list[SliceReview]:
        """The flagged entries, worst first."""
        return [entry for entry in self.slices if entry.flagged]

    def summary(self) -> str:
        """One line: 'QC: 4 slices to review (case score 0.12, flagged)'."""
        if self.thresholds is None:
            return f"QC: case score {self.case_score:.3f} ({self.score.value}; no validated " \
                   f"threshold, nothing flagged)"
        worst = self.to_review[0] if self.to_review else None
        return (f"QC: {len(self.to_review)} slice(s) to review"
                + (f", worst slice {worst.slice_index + 1} {worst.structure}" if worst else "")
                + f" | case score {self.case_score:.3f}"
                + (" - flagged for review" if self.case_flagged else ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case_name, "score": self.score.value,
            "case_score": round(self.case_score, 4), "case_flagged": self.case_flagged,
            "thresholds": self.thresholds.to_json() if self.thresholds else None,
            "slices_to_review": len(self.to_review),
            "structures": {name: round(value, 4) for name, value in self.structures.items()},
            # slice_index: 0-based K, the label map's third voxel axis; slice_number: 1-based,
            # as the summary line and the Slicer panel print it
            "slices": [{"slice_index": entry.slice_index, "slice_number": entry.slice_index + 1,
                        "structure": entry.structure, "label": entry.label,
                        "score": round(entry.score, 4), "flagged": entry.flagged}
                       for entry in self.slices],
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "QualityReport":
        thresholds = data.get("thresholds")
        score = QualityScore(data["score"])
        return cls(score=score, case_score=float(data["case_score"]),
                   structures={k: float(v) for k, v in data["structures"].items()},
                   slices=[SliceReview(int(e["slice_index"]), str(e["structure"]), float(e["score"]),
                                       bool(e["flagged"])) for e in data["slices"]],
                   thresholds=QualityThresholds.from_json(score, thresholds, "QC file")
                   if thresholds else None,
                   case_name=str(data.get("case", "")), notes=list(data.get("notes", [])))
