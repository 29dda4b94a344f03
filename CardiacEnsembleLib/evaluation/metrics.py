"""Segmentation metrics in millimetres and the clinical indices derived from label maps.

Every distance is measured in mm from the case's own voxel spacing, because ACDC voxels are
strongly anisotropic (about 1.5 mm in-plane, 5-10 mm between slices): a metric in voxels would
rank a one-slice miss like a one-pixel miss. Spacing is passed in array order, `spacing_zyx`,
as `Case.spacing_zyx` gives it; it is reversed only where SimpleITK (x, y, z) needs it.

Definitions follow the ACDC challenge and medpy, so scores are comparable with the literature:

- Surface of a mask: its voxels with at least one 6-connected (face) neighbour outside the mask;
  outside the array counts as background, so voxels on the array border are surface.
- HD95: 95th percentile (numpy's default linear interpolation) of the two directed surface
  distance arrays taken together (medpy ``hd95``); MSD: their mean over all surface voxels of
  both masks (Heimann et al.'s average symmetric surface distance). Note that medpy's ``assd``
  differs: it averages the two directed means, so masks of unequal surface disagree slightly.
- An empty mask has no surface: HD95 and MSD are NaN, never a made-up number.

Distance maps come from SimpleITK's exact Euclidean transform (Maurer). SimpleITK computes it
in single precision; we take the *squared* map and the square root in double, which is exact
for spacings whose squares float32 holds exactly (e.g. 1.5625 and 10 mm) and otherwise good to
about 1e-5 mm (against scipy's float64 transform on the ED/ES ground-truth pairs of all 140 ACDC
patients here: worst 1.04e-5 mm for one voxel, 5.9e-6 mm for HD95 or MSD).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import SimpleITK as sitk

from CardiacEnsembleLib.core.case import STRUCTURES, CaseError, validate_labels

#: Myocardial tissue density used by ACDC and most CMR software to turn volume into mass.
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

_LV = STRUCTURES["LV"]
_RV = STRUCTURES["RV"]
_MYO = STRUCTURES["Myo"]


# --------------------------------------------------------------------------- validation

def _check_spacing(spacing_zyx) -> tuple[float, float, float]:
    """Return the spacing as three positive floats, or say what is wrong with it.

    Why strict: a zero, negative or two-element spacing would give distances and volumes that
    look like numbers but mean nothing.
    """
    values = np.asarray(spacing_zyx, dtype=np.float64)
    if values.shape != (3,):
        raise CaseError(f"spacing_zyx must hold 3 values (z, y, x) in mm, got {spacing_zyx!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise CaseError(f"spacing_zyx must be positive and finite (mm), got {tuple(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _check_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    """Refuse arrays on different grids, naming both shapes.

    Why: numpy would broadcast or fail obscurely; a prediction not resampled back to the
    reference grid is a pipeline error the user must see.
    """
    if pred.shape != ref.shape:
        raise CaseError(f"prediction shape {pred.shape} differs from reference shape "
                        f"{ref.shape}: both must be on the same voxel grid")


def _as_masks(pred_mask, ref_mask, need_3d: bool) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_mask).astype(bool, copy=False)
    ref = np.asarray(ref_mask).astype(bool, copy=False)
    _check_same_shape(pred, ref)
    if need_3d and pred.ndim != 3:
        raise CaseError(f"surface distances need 3D (Z, Y, X) masks, got shape {pred.shape}")
    return pred, ref


# --------------------------------------------------------------------------- overlap

def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P|+|R|) of two boolean masks (non-zero = inside).

    Both empty scores 1.0: the prediction correctly found nothing (ACDC apical/basal slices
    and the convention of the challenge's evaluation code). One empty scores 0.0.
    """
    pred, ref = _as_masks(pred_mask, ref_mask, need_3d=False)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def structure_dice(labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice of each structure (RV, Myo, LV) between two label maps."""
    return {name: dice(labels == value, reference == value) for name, value in STRUCTURES.items()}


def with_mean(per_structure: Mapping[str, float]) -> dict[str, float]:
    """Per-structure values plus "mean", their average over the structures: ACDC's headline."""
    result = {name: float(per_structure[name]) for name in STRUCTURES}
    result["mean"] = float(np.mean([result[name] for name in STRUCTURES]))
    return result


def mean_dice(frames: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """(predicted, reference) label maps per frame -> mean Dice per structure over the frames,
    and "mean" over the structures."""
    scores = [structure_dice(labels, reference) for labels, reference in frames]
    return with_mean({name: np.mean([s[name] for s in scores]) for name in STRUCTURES})


# --------------------------------------------------------------------------- surfaces

def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of both masks.

    Why: distance maps over a small box are much faster and more precise (SimpleITK's float32
    map loses digits on large coordinates). Cropping changes no surface: a mask voxel on a side
    of the box has its outward neighbour outside both masks, so it was surface already.
    """
    union = pred | ref
    slices = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=others))
        slices.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(slices)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion by the 6-connected cross, outside the array being background."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    eroded = sitk.BinaryErode(image, [1, 1, 1], sitk.sitkCross, 0.0, 1.0, False)
    return mask & (sitk.GetArrayViewFromImage(eroded) == 0)


def _distances_to(surface: np.ndarray, at: np.ndarray,
                  spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Euclidean distance (mm) from each voxel of `at` to the nearest voxel of `surface`.

    Voxels of `at` that lie on `surface` are set to 0 explicitly rather than read from the
    map's sign: when `surface` fills the whole (cropped) array the map has no background and
    SimpleITK returns meaningless huge values.
    """
    image = sitk.GetImageFromArray(surface.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing_zyx)))  # SimpleITK wants (x, y, z)
    squared = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False,
                                           squaredDistance=True, useImageSpacing=True)
    values = sitk.GetArrayViewFromImage(squared)[at].astype(np.float64)
    return np.where(surface[at], 0.0, np.sqrt(np.maximum(values, 0.0)))


def surface_distances_mm(pred_mask: np.ndarray, ref_mask: np.ndarray,
                         spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> ref surface, ref -> pred).

    Each array has one float64 entry per surface voxel of the first mask of the pair, in
    C order of the voxels. Kept separate (not only HD95) so callers can draw distance
    histograms or use other percentiles. Raises `ValueError` if a mask is empty, because a
    distance to nothing is undefined; `hd95_mm`/`msd_mm` turn that case into NaN.
    """
    pred, ref = _as_masks(pred_mask, ref_mask, need_3d=True)
    spacing = _check_spacing(spacing_zyx)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances are undefined when a mask is empty "
                         f"(prediction voxels: {np.count_nonzero(pred)}, "
                         f"reference voxels: {np.count_nonzero(ref)})")
    box = _crop_to_union(pred, ref)
    pred_surface, ref_surface = _surface(pred[box]), _surface(ref[box])
    return (_distances_to(ref_surface, pred_surface, spacing),
            _distances_to(pred_surface, ref_surface, spacing))


def _hd95_and_msd(pred: np.ndarray, ref: np.ndarray, spacing_zyx) -> tuple[float, float]:
    """Both distance summaries from one pair of distance maps (NaN if a mask is empty)."""
    if not pred.any() or not ref.any():
        return math.nan, math.nan
    both = np.concatenate(surface_distances_mm(pred, ref, spacing_zyx))
    return float(np.percentile(both, 95)), float(both.mean())


def hd95_mm(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_zyx) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (medpy `hd95`); NaN if a mask is empty.

    Why the 95th percentile: the maximum is dominated by single stray voxels; ACDC reports
    both, ensembles are compared on the robust one.
    """
    pred, ref = _as_masks(pred_mask, ref_mask, need_3d=True)
    _check_spacing(spacing_zyx)
    return _hd95_and_msd(pred, ref, spacing_zyx)[0]


def msd_mm(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_zyx) -> float:
    """Mean symmetric surface distance in mm over all surface voxels of both masks.

    The mean of the two directed arrays taken together (not the mean of the two means), so a
    larger surface weighs more. NaN if a mask is empty.
    """
    pred, ref = _as_masks(pred_mask, ref_mask, need_3d=True)
    _check_spacing(spacing_zyx)
    return _hd95_and_msd(pred, ref, spacing_zyx)[1]


# --------------------------------------------------------------------------- per structure

@dataclass
class StructureScore:
    """Scores of one structure; `flag` says why a distance is NaN, so reports can explain it."""

    structure: str
    dice: float
    hd95_mm: float
    msd_mm: float
    flag: str = ""  # "", "both empty", "prediction empty", "reference empty"


def _empty_flag(pred_empty: bool, ref_empty: bool) -> str:
    if pred_empty and ref_empty:
        return "both empty"
    if pred_empty:
        return "prediction empty"
    if ref_empty:
        return "reference empty"
    return ""


def score_labels(pred_labels: np.ndarray, ref_labels: np.ndarray,
                 spacing_zyx) -> dict[str, StructureScore]:
    """Dice, HD95 and MSD for RV, Myo and LV (keys and order of `STRUCTURES`).

    Label maps are checked (same shape, values 0..3) before scoring: a transposed or
    mislabelled prediction must fail loudly instead of scoring near zero.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_same_shape(pred_labels, ref_labels)
    spacing = _check_spacing(spacing_zyx)
    pred_labels = validate_labels(pred_labels, pred_labels.shape, "prediction label map")
    ref_labels = validate_labels(ref_labels, ref_labels.shape, "reference label map")
    if pred_labels.ndim != 3:
        raise CaseError(f"label maps must be 3D (Z, Y, X), got shape {pred_labels.shape}")
    scores = {}
    for name, value in STRUCTURES.items():
        pred, ref = pred_labels == value, ref_labels == value
        hd95, msd = _hd95_and_msd(pred, ref, spacing)
        scores[name] = StructureScore(structure=name, dice=dice(pred, ref), hd95_mm=hd95,
                                      msd_mm=msd, flag=_empty_flag(not pred.any(), not ref.any()))
    return scores


# --------------------------------------------------------------------------- clinical indices

def volume_ml(labels: np.ndarray, label_value: int, spacing_zyx) -> float:
    """Volume of one label in ml: voxel count x voxel volume (mm^3) / 1000.

    Plain voxel counting, as in the ACDC evaluation: no partial-volume or slice-gap correction.
    """
    spacing = _check_spacing(spacing_zyx)
    count = int(np.count_nonzero(np.asarray(labels) == label_value))
    return count * spacing[0] * spacing[1] * spacing[2] / 1000.0


def myocardial_mass_g(labels: np.ndarray, spacing_zyx) -> float:
    """LV myocardial mass in g: myocardium volume x 1.05 g/ml (ACDC's convention)."""
    return volume_ml(labels, _MYO, spacing_zyx) * MYOCARDIAL_DENSITY_G_PER_ML


def ejection_fraction(edv_ml: float, esv_ml: float) -> float:
    """Ejection fraction in percent, 100 (EDV - ESV) / EDV; NaN when EDV is not positive.

    NaN rather than an exception: a failed ED segmentation should leave one blank cell in a
    cohort table, not stop the evaluation of the other patients.
    """
    if not (math.isfinite(edv_ml) and edv_ml > 0):
        return math.nan
    return float(100.0 * (edv_ml - esv_ml) / edv_ml)


@dataclass
class ClinicalIndices:
    """The ACDC clinical indices of one patient, from its ED and ES label maps."""

    lv_edv_ml: float
    lv_esv_ml: float
    lv_ef_pct: float
    rv_edv_ml: float
    rv_esv_ml: float
    rv_ef_pct: float
    myo_mass_ed_g: float

    def as_dict(self) -> dict[str, float]:
        """Field name -> value, ready for a CSV row or JSON report."""
        return dataclasses.asdict(self)


def clinical_indices(ed_labels: np.ndarray, es_labels: np.ndarray,
                     spacing_zyx) -> ClinicalIndices:
    """LV/RV volumes and EF, and ED myocardial mass, from one patient's ED and ES label maps.

    Both phases come from the same cine and so share one grid and one spacing; different
    shapes mean the maps were swapped with another patient's and raise `CaseError`.
    """
    ed_labels, es_labels = np.asarray(ed_labels), np.asarray(es_labels)
    if ed_labels.shape != es_labels.shape:
        raise CaseError(f"ED label map shape {ed_labels.shape} differs from ES label map shape "
                        f"{es_labels.shape}: both phases of one cine share one grid")
    spacing = _check_spacing(spacing_zyx)
    ed_labels = validate_labels(ed_labels, ed_labels.shape, "ED label map")
    es_labels = validate_labels(es_labels, es_labels.shape, "ES label map")
    lv_edv, lv_esv = volume_ml(ed_labels, _LV, spacing), volume_ml(es_labels, _LV, spacing)
    rv_edv, rv_esv = volume_ml(ed_labels, _RV, spacing), volume_ml(es_labels, _RV, spacing)
    return ClinicalIndices(
        lv_edv_ml=lv_edv, lv_esv_ml=lv_esv, lv_ef_pct=ejection_fraction(lv_edv, lv_esv),
        rv_edv_ml=rv_edv, rv_esv_ml=rv_esv, rv_ef_pct=ejection_fraction(rv_edv, rv_esv),
        myo_mass_ed_g=myocardial_mass_g(ed_labels, spacing))
