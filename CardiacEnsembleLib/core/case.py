"""The one data model of the package: a `Case` goes in, a `Prediction` comes out.

Axis order is fixed everywhere in the package: arrays are **(Z, Y, X)** = (slice, row, column).
That is the order of `SimpleITK.GetArrayFromImage` and of Slicer's `arrayFromVolume`, so arrays
cross to Slicer and ITK without a transpose; only NIfTI (stored x, y, z) needs one, in `io`.

Geometry is a 4x4 affine mapping a voxel index (i, j, k) = (x, y, z) = (column, row, slice) to
RAS millimetres. It is NIfTI's affine and Slicer's IJKToRAS matrix at once, so neither edge
needs to convert; the LPS flip needed by ITK/NRRD lives in `io` only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import CaseError  # noqa: F401  (raised here; defined with the other errors)
from .labels import LABEL_NAMES, NUM_CLASSES, STRUCTURES  # noqa: F401
from .options import Method

#: Voxel sizes (mm) accepted for a cardiac short-axis cine frame. ACDC's 280 ED/ES frames span
#: 0.70-1.92 mm in-plane and 5-10 mm between slices; cine MRI in general is acquired at about
#: 1-2.5 mm in-plane and 5-10 mm slices (thinner for 3D acquisitions). The bounds leave room for
#: high-resolution and coarse protocols while refusing what is no MRI of a heart: 1e-6 mm or
#: 30 mm pixels resample a 200-pixel slice to almost nothing or to ~4000 x 4000 pixels, and
#: either gives an all-background map.
IN_PLANE_SPACING_MM = (0.3, 5.0)
SLICE_SPACING_MM = (1.0, 30.0)


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a (Z, Y, X) array sit in patient space (RAS, mm)."""

    affine: np.ndarray  # 4x4, voxel (x, y, z) index -> RAS mm

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise CaseError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise CaseError("affine is singular: the image has no usable voxel spacing")
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_spacing(cls, spacing_xyz, origin_ras=(0.0, 0.0, 0.0), direction=None) -> "Geometry":
        """Build from ITK-style parts: spacing (x, y, z) mm, origin and direction in RAS."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(spacing_xyz, dtype=np.float64)[None, :]
        affine[:3, 3] = origin_ras
        return cls(affine)

    @property
    def spacing_xyz(self) -> np.ndarray:
        """Voxel size in mm along the index axes (x, y, z)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in the array's own (Z, Y, X) order: what metrics need."""
        sx, sy, sz = self.spacing_xyz
        return (float(sz), float(sy), float(sx))

    @property
    def origin_ras(self) -> np.ndarray:
        return self.affine[:3, 3].copy()

    @property
    def direction_ras(self) -> np.ndarray:
        """3x3 matrix of unit column vectors: the RAS direction of the x, y, z index axes."""
        return self.affine[:3, :3] / self.spacing_xyz[None, :]

    def with_spacing_xyz(self, spacing_xyz) -> "Geometry":
        """Same origin and direction, new voxel size (origin is kept at voxel 0's centre)."""
        return Geometry.from_spacing(spacing_xyz, self.origin_ras, self.direction_ras)

    def allclose(self, other: "Geometry", atol: float = 1e-6) -> bool:
        return bool(np.allclose(self.affine, other.affine, atol=atol, rtol=0.0))


def check_cardiac_spacing(spacing_zyx, where: str) -> None:
    """Refuse a voxel size no cardiac MRI has (`IN_PLANE_SPACING_MM`, `SLICE_SPACING_MM`),
    before resampling turns it into an empty map or a huge allocation."""
    sz, sy, sx = (float(value) for value in spacing_zyx)
    for name, values, (low, high) in (("in-plane spacing", (sx, sy), IN_PLANE_SPACING_MM),
                                      ("slice spacing", (sz,), SLICE_SPACING_MM)):
        if not all(low <= value <= high for value in values):
            shown = " x ".join(f"{value:.4g}" for value in values)
            raise CaseError(f"{where}: {name} is implausible for cardiac MRI ({shown} mm); "
                            f"expected {low:g}-{high:g} mm")


@dataclass
class Case:
    """One 3D cardiac frame (one phase of one patient), with what is known about it.

    `image` is float32 (Z, Y, X). `labels`, when present, is uint8 (Z, Y, X) with values 0..3.
    """

    image: np.ndarray
    geometry: Geometry
    labels: Optional[np.ndarray] = None
    patient_id: str = "unknown"
    phase: str = ""  # "ED", "ES", or "frame07" for a cine frame
    frame: Optional[int] = None  # 1-based frame number in the cine, as in Info.cfg
    group: Optional[str] = None  # ACDC pathology group: NOR, MINF, DCM, HCM, RV
    height_cm: Optional[float] = None
    weight_kg: Optional[float] = None
    source: str = ""  # file the image came from, for messages

    def __post_init__(self) -> None:
        where = self.source or self.patient_id
        if self.image.ndim != 3:
            raise CaseError(f"{where}: expected a 3D frame (Z, Y, X), got an array of shape "
                            f"{self.image.shape}")
        if min(self.image.shape) < 1:
            raise CaseError(f"{where}: image has an empty axis, shape {self.image.shape}")
        check_cardiac_spacing(self.geometry.spacing_zyx, where)
        self.image = np.ascontiguousarray(self.image, dtype=np.float32)
        if self.labels is not None:
            self.labels = validate_labels(self.labels, self.image.shape, where)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.geometry.spacing_zyx

    @property
    def name(self) -> str:
        """Short id used in file names and reports, e.g. 'patient001_ED'."""
        return f"{self.patient_id}_{self.phase}" if self.phase else self.patient_id

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)


def validate_labels(labels: np.ndarray, expected_shape: tuple, where: str) -> np.ndarray:
    """Check a label map against its frame; return it as uint8.

    Why strict: a label 4 or a transposed map would silently corrupt every metric downstream.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(expected_shape):
        raise CaseError(f"{where}: label map shape {labels.shape} differs from the image shape "
                        f"{tuple(expected_shape)}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise CaseError(f"{where}: label map holds non-integer values")
    values = np.unique(labels)
    bad = values[(values < 0) | (values >= NUM_CLASSES)]
    if bad.size:
        raise CaseError(f"{where}: label map holds value(s) {bad.tolist()} outside 0..3 "
                        f"(0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity)")
    return np.ascontiguousarray(labels, dtype=np.uint8)


@dataclass
class MemberOutput:
    """What one member produced for one case."""

    name: str
    labels: np.ndarray  # uint8 (Z, Y, X) on the case's grid
    seconds: float  # network + resampling time for this member
    probabilities: Optional[np.ndarray] = None  # float32 (C, Z, Y, X), kept only when asked


@dataclass
class Prediction:
    """The ensemble's answer for one `Case`, on that case's own grid and geometry."""

    labels: np.ndarray  # uint8 (Z, Y, X)
    # float32 (C, Z, Y, X): the fused probabilities; for vote / STAPLE the members' mean (the
    # vote gives none, and uncertainty still needs them)
    probabilities: Optional[np.ndarray]
    members: list[MemberOutput]
    uncertainty: np.ndarray  # float32 (Z, Y, X): normalised entropy of the fused probabilities
    disagreement: np.ndarray  # float32 (Z, Y, X): fraction of members that differ from `labels`
    geometry: Geometry
    fusion: str
    device: str
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    case_name: str = ""
    # what a reader of `labels` must know: filled non-finite voxels, an empty or near-empty map
    # on an image with signal (`inference.sanity`); also logged as warnings
    warnings: tuple[str, ...] = ()
    # heart-region inference (`inference.heart_region`): where the members ran, "" if not asked
    heart_region: str = ""

    @property
    def method(self) -> Method:
        """What produced `labels`: the ensemble's rule and clean-up (`fusion`, e.g. "weighted+lcc")."""
        rule, *steps = self.fusion.split("+")
        return Method.ensemble(rule, steps)

    @property
    def member_labels(self) -> dict[str, np.ndarray]:
        return {m.name: m.labels for m in self.members}
