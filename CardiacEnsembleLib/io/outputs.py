"""The names of the files a segmentation writes, in one place for the CLI, batch and the API.

Why here and not in the command line: a script that calls `Ensemble.predict` and a batch job
should put their label maps where `cardiac-ensemble segment` would, so that every tool that
reads them (evaluation, Slicer, the user's own scripts) finds them by one rule:

- a patient folder's frames: `<patient>_<phase>_seg.nii.gz` (`patient090_ED_seg.nii.gz`);
- beside a label map `X_seg.nii.gz`: `X_seg_uncertainty.nii.gz` (normalised entropy) and
  `X_seg_prob1.nii.gz` ... (fused probability of each structure, background left out);
- a 4D cine: `<stem>_cine_seg.nii.gz`, `<stem>_volumes.csv`, `<stem>_volumes.png`;
- an evaluation: `scores.csv`, `clinical.csv`, `summary.md` in one folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from CardiacEnsembleLib.core.labels import NUM_CLASSES
from CardiacEnsembleLib.io.images import image_suffix

UNCERTAINTY_TAG = "_uncertainty"
QUALITY_SUFFIX = "_qc.json"  # the QC file: seg.nii.gz -> seg_qc.json
PROBABILITY_TAG = "_prob"
#: The foreground labels that get a probability map (background is 1 minus their sum).
PROBABILITY_LABELS: tuple[int, ...] = tuple(range(1, NUM_CLASSES))


def image_stem(path: Path | str) -> str:
    """The file name without its image suffix: `patient090_4d` for `patient090_4d.nii.gz`."""
    path = Path(path)
    suffix = image_suffix(path)
    if not suffix:
        raise ValueError(f"{path}: not an image file name (expected .nii.gz, .nii, .nrrd, ...)")
    return path.name[: -len(suffix)]


def with_tag(path: Path | str, tag: str) -> Path:
    """`path` with `tag` before its image suffix: seg.nii.gz + `_prob1` -> seg_prob1.nii.gz."""
    path = Path(path)
    stem = image_stem(path)
    return path.with_name(stem + tag + path.name[len(stem):])


def frame_output(folder: Path | str, patient_id: str, phase: str) -> Path:
    """Where the label map of one phase (ED, ES) of a patient goes in `folder`."""
    return Path(folder) / f"{patient_id}_{phase}_seg.nii.gz"


def uncertainty_output(labels_path: Path | str) -> Path:
    return with_tag(labels_path, UNCERTAINTY_TAG)


def probability_output(labels_path: Path | str, label: int) -> Path:
    return with_tag(labels_path, f"{PROBABILITY_TAG}{label}")


def quality_output(labels_path: Path | str) -> Path:
    """The QC file beside a label map: seg.nii.gz -> seg_qc.json."""
    labels_path = Path(labels_path)
    return labels_path.with_name(image_stem(labels_path) + QUALITY_SUFFIX)


@dataclass(frozen=True)
class SegmentationOutputs:
    """The files of one segmented volume: its label map and the maps asked for beside it."""

    labels: Path
    uncertainty: Path | None = None
    probabilities: tuple[Path, ...] = ()  # one per label of `PROBABILITY_LABELS`
    quality: Path | None = None  # the QC file (`core.quality.QualityReport` as JSON)

    @classmethod
    def beside(cls, labels: Path | str, *, uncertainty: bool = False,
               probabilities: bool = False, quality: bool = True) -> "SegmentationOutputs":
        labels = Path(labels)
        return cls(labels, uncertainty_output(labels) if uncertainty else None,
                   tuple(probability_output(labels, label) for label in PROBABILITY_LABELS)
                   if probabilities else (), quality_output(labels) if quality else None)

    @property
    def paths(self) -> list[Path]:
        """Every file, the label map first: what must not exist before a run starts."""
        extra = [path for path in (self.uncertainty, self.quality) if path is not None]
        return [self.labels, *extra, *self.probabilities]


@dataclass(frozen=True)
class CineOutputs:
    """The files of one segmented 4D cine."""

    labels: Path  # 4D label map
    curve_csv: Path  # volume per frame and structure
    curve_png: Path  # the volume-time curve with the ED/ES frames marked

    @classmethod
    def in_folder(cls, folder: Path | str, stem: str) -> "CineOutputs":
        folder = Path(folder)
        return cls(folder / f"{stem}_cine_seg.nii.gz", folder / f"{stem}_volumes.csv",
                   folder / f"{stem}_volumes.png")

    @property
    def paths(self) -> list[Path]:
        return [self.labels, self.curve_csv, self.curve_png]


@dataclass(frozen=True)
class EvaluationOutputs:
    """The files of an evaluation: per-frame scores, clinical indices, the summary table."""

    scores: Path
    clinical: Path
    summary: Path

    @classmethod
    def in_folder(cls, folder: Path | str) -> "EvaluationOutputs":
        folder = Path(folder)
        return cls(folder / "scores.csv", folder / "clinical.csv", folder / "summary.md")

    @property
    def paths(self) -> list[Path]:
        return [self.scores, self.clinical, self.summary]
