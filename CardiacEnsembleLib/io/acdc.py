"""Find and load ACDC patients: `Info.cfg`, the ED/ES frames, their `_gt` maps, the 4D cine.

ACDC layout: `<root>/{training,testing}/patientNNN/` with `Info.cfg` (ED, ES, Group, Height,
NbFrame, Weight), `patientNNN_frameXX.nii.gz` (XX = the 1-based ED/ES frame number, two digits),
`patientNNN_frameXX_gt.nii.gz`, and `patientNNN_4d.nii.gz` (the cine, frame k = `4d[..., k-1]`).
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from CardiacEnsembleLib.core.case import Case, CaseError, Geometry, validate_labels
from CardiacEnsembleLib.io.images import read_image

PHASES = ("ED", "ES")
_PATIENT_DIR = re.compile(r"^patient\d{3}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientInfo:
    """The content of an ACDC `Info.cfg`."""

    ed: int
    es: int
    group: Optional[str]
    height_cm: Optional[float]
    weight_kg: Optional[float]
    nb_frames: Optional[int]


#: Body size accepted from Info.cfg; outside it a value is ignored with a warning (see
#: `_body_size`). ACDC's 140 patients are 140-192 cm and 35-123 kg.
HEIGHT_RANGE_CM = (0.0, 300.0)
WEIGHT_RANGE_KG = (0.0, 500.0)


def parse_info_cfg(path: Path) -> PatientInfo:
    """Parse `key: value` lines; ED and ES are required, the rest optional.

    Strict where a mistake would segment the wrong frames: ED, ES and NbFrame must be whole
    numbers (`ED: 1.7` is a typo, not frame 1), ED and ES within 1..NbFrame, and a key given
    twice is refused (which one did the author mean?). Height and Weight are only shown,
    never used to segment, and clinical exports write 0 for "unknown": an absurd one is
    dropped with a warning rather than blocking the patient.
    """
    values = _read_key_values(path)

    def whole(key: str, required: bool = False) -> Optional[int]:
        if key not in values:
            if required:
                raise CaseError(f"{path}: has no '{key}' entry; expected '{key}: <frame number>'")
            return None
        text = values[key]
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not number.is_integer():
            raise CaseError(f"{path}: '{key}' should be a whole number ({text!r}); expected "
                            f"e.g. '{key}: 1'")
        return int(number)

    nb_frames = whole("NbFrame")
    if nb_frames is not None and nb_frames < 1:
        raise CaseError(f"{path}: NbFrame is not a frame count ({nb_frames}); expected 1 or more")
    info = PatientInfo(ed=whole("ED", True), es=whole("ES", True), group=values.get("Group"),
                       height_cm=_body_size(path, values, "Height", HEIGHT_RANGE_CM, "cm"),
                       weight_kg=_body_size(path, values, "Weight", WEIGHT_RANGE_KG, "kg"),
                       nb_frames=nb_frames)
    for key, frame in (("ED", info.ed), ("ES", info.es)):
        if frame < 1 or (info.nb_frames is not None and frame > info.nb_frames):
            raise CaseError(f"{path}: {key} is outside the cine ({frame}); expected a frame in "
                            f"1..{info.nb_frames if info.nb_frames is not None else 'NbFrame'}")
    return info


def _read_key_values(path: Path) -> dict[str, str]:
    """The `key: value` lines of an Info.cfg, refusing non-UTF-8 text and repeated keys."""
    if not path.is_file():
        raise CaseError(f"{path.parent}: missing Info.cfg (needed for the ED/ES frame numbers)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CaseError(f"{path}: is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                        f"offset {error.start}); expected 'key: value' lines") from error
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise CaseError(f"{path}, line {number}: expected 'key: value', got {line!r}")
        key, value = (part.strip() for part in line.split(":", 1))
        if key in values:
            raise CaseError(f"{path}, line {number}: '{key}' is given twice ({values[key]!r}, "
                            f"then {value!r}); expected it once")
        values[key] = value
    return values


def _body_size(path: Path, values: dict[str, str], key: str, bounds: tuple[float, float],
               unit: str) -> Optional[float]:
    """Height or Weight as a number, or None (with a warning) when it is absurd."""
    if key not in values:
        return None
    try:
        number = float(values[key])
    except ValueError as error:
        raise CaseError(f"{path}: '{key}' should be a number ({values[key]!r}); expected e.g. "
                        f"'{key}: 70.0'") from error
    low, high = bounds
    if not (math.isfinite(number) and low < number <= high):
        log.warning("%s: '%s' is implausible (%s); expected more than %g and at most %g %s; "
                    "ignored", path, key, values[key], low, high, unit)
        return None
    return number


@dataclass(frozen=True)
class PatientFolder:
    """One ACDC patient on disk: what it holds, without loading any image."""

    folder: Path
    info: PatientInfo

    @classmethod
    def open(cls, folder: Path | str) -> "PatientFolder":
        folder = Path(folder)
        if not folder.is_dir():
            raise CaseError(f"{folder}: not a folder")
        return cls(folder=folder, info=parse_info_cfg(folder / "Info.cfg"))

    @property
    def patient_id(self) -> str:
        return self.folder.name

    def frame_number(self, phase: str) -> int:
        if phase not in PHASES:
            raise CaseError(f"unknown phase {phase!r}; expected one of {PHASES}")
        return self.info.ed if phase == "ED" else self.info.es

    def frame_path(self, phase: str) -> Path:
        return self.folder / f"{self.patient_id}_frame{self.frame_number(phase):02d}.nii.gz"

    def gt_path(self, phase: str) -> Path:
        return self.folder / f"{self.patient_id}_frame{self.frame_number(phase):02d}_gt.nii.gz"

    @property
    def cine_path(self) -> Path:
        return self.folder / f"{self.patient_id}_4d.nii.gz"

    @property
    def input_paths(self) -> tuple[Path, ...]:
        """Every file of the folder that a run reads: Info.cfg, the ED and ES frames and their
        ground truth, the 4D cine (existing or not: no output may be written over one)."""
        frames = [path for phase in PHASES for path in (self.frame_path(phase),
                                                        self.gt_path(phase))]
        return (self.folder / "Info.cfg", *frames, self.cine_path)

    def has_gt(self, phase: str) -> bool:
        return self.gt_path(phase).is_file()

    def load(self, phase: str, *, with_gt: bool = True) -> Case:
        """The ED or ES frame as a Case, with its ground truth when present and asked for."""
        image_path = self.frame_path(phase)
        if not image_path.is_file():
            raise CaseError(f"{self.folder}: missing {image_path.name} (the {phase} frame "
                            f"{self.frame_number(phase)} named in Info.cfg)")
        image, geometry = read_image(image_path)
        labels = None
        if with_gt and self.has_gt(phase):
            labels = load_labels(self.gt_path(phase), image.shape, geometry)
        return self._case(image, geometry, labels, phase, self.frame_number(phase), image_path)

    def load_cine(self) -> tuple[np.ndarray, Geometry]:
        """The whole cine as (T, Z, Y, X) float32 and the geometry of one frame."""
        if not self.cine_path.is_file():
            raise CaseError(f"{self.folder}: has no 4D cine ({self.cine_path.name})")
        cine, geometry = read_image(self.cine_path, allow_4d=True)
        if cine.ndim != 4:
            raise CaseError(f"{self.cine_path}: expected a 4D cine, got shape {cine.shape}")
        return cine.astype(np.float32, copy=False), geometry

    def load_cine_frame(self, frame: int) -> Case:
        """Cine frame `frame` (1-based, as in Info.cfg) as a Case, without ground truth."""
        cine, geometry = self.load_cine()
        if not 1 <= frame <= cine.shape[0]:
            raise CaseError(f"{self.cine_path}: frame {frame} is outside 1..{cine.shape[0]}")
        return self._case(cine[frame - 1], geometry, None, f"frame{frame:02d}", frame,
                          self.cine_path)

    def _case(self, image, geometry, labels, phase, frame, source) -> Case:
        info = self.info
        return Case(image=image, geometry=geometry, labels=labels, patient_id=self.patient_id,
                    phase=phase, frame=frame, group=info.group, height_cm=info.height_cm,
                    weight_kg=info.weight_kg, source=str(source))

    def describe(self) -> dict:
        """What the folder holds, for `cardiac-ensemble info`."""
        shape = spacing = None
        if self.frame_path("ED").is_file():
            image, geometry = read_image(self.frame_path("ED"))
            shape = "x".join(str(n) for n in image.shape[::-1])
            spacing = " x ".join(f"{s:.4g}" for s in geometry.spacing_xyz)
        return {
            "patient": self.patient_id, "group": self.info.group, "ED": self.info.ed,
            "ES": self.info.es, "frames": self.info.nb_frames, "height_cm": self.info.height_cm,
            "weight_kg": self.info.weight_kg, "shape_xyz": shape, "spacing_mm_xyz": spacing,
            "ED_image": self.frame_path("ED").is_file(), "ES_image": self.frame_path("ES").is_file(),
            "ED_gt": self.has_gt("ED"), "ES_gt": self.has_gt("ES"),
            "cine": self.cine_path.is_file(),
        }


def load_labels(path: Path, expected_shape: tuple, geometry: Geometry) -> np.ndarray:
    """Read a `_gt` map and check it belongs to its frame (shape, grid, values 0..3)."""
    labels, label_geometry = read_image(path)
    if labels.shape == tuple(expected_shape) and not label_geometry.allclose(geometry, 1e-3):
        raise CaseError(f"{path}: lies on a different grid than its image (affines differ)")
    return validate_labels(labels, expected_shape, str(path))


def find_patients(root: Path | str, ids: Optional[Iterable[str]] = None) -> list[PatientFolder]:
    """The patient folders `find_patient_folders` finds, opened (each Info.cfg read): a broken
    one stops the caller here, before any work."""
    return [PatientFolder.open(folder) for folder in find_patient_folders(root, ids)]


def find_patient_folders(root: Path | str, ids: Optional[Iterable[str]] = None) -> list[Path]:
    """Patient folders under `root`: `training/` + `testing/`, a flat folder, or one patient;
    found by name, nothing in them read (a batch reports a broken one as that study's failure).

    `ids` picks patients by name (e.g. 'patient001'); an unknown name is an error, not a skip,
    so a typo never shrinks an evaluation silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaseError(f"{root}: not a folder")
    if (root / "Info.cfg").is_file():
        folders = [root]
    else:
        folders = [p for parent in (root / "training", root / "testing", root)
                   if parent.is_dir() for p in sorted(parent.iterdir())
                   if p.is_dir() and _PATIENT_DIR.match(p.name)]
    by_id = {p.name: p for p in folders}
    if ids is None:
        return list(by_id.values())
    ids = list(ids)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CaseError(f"{root}: no patient folder(s) named {', '.join(missing)}")
    return [by_id[i] for i in ids]


def load_splits(root: Path | str) -> dict[str, list[str]]:
    """The fixed train / validation / test split shipped beside the data (`splits.json`)."""
    path = Path(root) / "splits.json"
    if not path.is_file():
        raise CaseError(f"{root}: has no splits.json (the fixed train/validation/test split)")
    splits = json.loads(path.read_text())
    return {name: list(splits[name]) for name in ("train", "validation", "test")}


class SplitLeakError(RuntimeError):
    """A test patient was about to be used for training or model selection."""


def check_no_test_patients(patient_ids: Sequence[str], splits: dict[str, list[str]],
                           purpose: str) -> None:
    """Refuse `purpose` (training, weight search, ...) if it would read a test patient: the
    test split is used once, for the report, or its numbers stop meaning anything."""
    leaked = sorted(set(patient_ids) & set(splits["test"]))
    if leaked:
        raise SplitLeakError(f"{purpose} would read test patient(s) {leaked}; the test split is "
                             f"reserved for the final report")
