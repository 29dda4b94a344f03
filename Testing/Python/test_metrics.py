"""Metrics in mm and clinical indices: checked against independent implementations on real ACDC
ground truth (SimpleITK overlap and Hausdorff filters, a scipy surface-distance reference) and on
constructed shapes whose answers are worked out by hand in each test.
"""
from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CardiacEnsembleLib.core.case import STRUCTURES, CaseError
from CardiacEnsembleLib.evaluation.metrics import (
    ClinicalIndices,
    StructureScore,
    clinical_indices,
    dice,
    ejection_fraction,
    hd95_mm,
    msd_mm,
    myocardial_mass_g,
    score_labels,
    surface_distances_mm,
    volume_ml,
)

#: Agreement required between our distances and a double-precision reference. SimpleITK's
#: distance map is single precision, so spacings whose squares float32 cannot hold exactly
#: (patient081: 1.65179 mm, patient043: 1.91964 mm) differ in the 6th digit: over the ED/ES
#: pairs of all 140 patients the worst is 1.04e-5 mm for one voxel, 5.9e-6 mm for HD95/MSD.
#: A real definitional slip (surface connectivity, spacing order, percentile rule) moves these
#: numbers by tenths of a mm or more.
DIST_TOL_MM = 2e-5

#: One patient per slice thickness: 10 mm (DCM), 5 mm (RV), 6.5 mm (MINF).
REAL_PATIENTS = ("patient001", "patient081", "patient043")

#: Anisotropic like ACDC, every axis different; values whose squares float32 holds exactly, so
#: hand-computed distances are met exactly (see DIST_TOL_MM for the general case).
SPACING_ZYX = (10.0, 1.5, 0.75)


# ------------------------------------------------------------------------ helpers

def read_gt(folder: Path, frame: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One `_gt` file as a (Z, Y, X) uint8 array and its spacing in the same order."""
    image = nib.load(folder / f"{folder.name}_frame{frame:02d}_gt.nii.gz")
    labels = np.asarray(image.dataobj).transpose(2, 1, 0)
    spacing_zyx = tuple(float(v) for v in reversed(image.header.get_zooms()[:3]))
    return np.ascontiguousarray(labels, dtype=np.uint8), spacing_zyx


def ed_es_frames(folder: Path) -> tuple[int, int]:
    info = dict(line.split(":", 1) for line in (folder / "Info.cfg").read_text().splitlines()
                if ":" in line)
    return int(info["ED"]), int(info["ES"])


@pytest.fixture(scope="module", params=REAL_PATIENTS)
def real_pair(request, patient_dir):
    """(ES gt, ED gt, spacing_zyx, patient id): a real, imperfect 'prediction' and reference."""
    folder = patient_dir(request.param)
    ed_frame, es_frame = ed_es_frames(folder)
    ed, spacing = read_gt(folder, ed_frame)
    es, _ = read_gt(folder, es_frame)
    return es, ed, spacing, request.param


def reference_surface(mask: np.ndarray) -> np.ndarray:
    """Mask minus its 6-connected erosion, outside the array being background (medpy's rule)."""
    cross = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def reference_directed(from_mask: np.ndarray, to_mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """scipy's exact float64 EDT: distance of each surface voxel of one mask to the other's."""
    distance = ndimage.distance_transform_edt(~reference_surface(to_mask), sampling=spacing_zyx)
    return distance[reference_surface(from_mask)]


def sitk_mask(mask: np.ndarray, spacing_zyx) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    return image


def labels_with_one_box(shape, box, value: int) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[box] = value
    return labels


# ------------------------------------------------------------------------ real data, independent checks

def test_dice_equals_simpleitk_label_overlap_on_real_ed_es_pairs(real_pair):
    pred, ref, spacing, _ = real_pair
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk_mask(ref, spacing), sitk_mask(pred, spacing))
    scores = score_labels(pred, ref, spacing)
    for name, value in STRUCTURES.items():
        assert scores[name].dice == pytest.approx(overlap.GetDiceCoefficient(value), abs=1e-6)
        assert 0.1 < scores[name].dice < 0.95  # ED vs ES: a partial overlap, so the check bites


def test_directed_surface_distances_equal_scipy_reference_on_real_pairs(real_pair):
    pred, ref, spacing, _ = real_pair
    for value in STRUCTURES.values():
        p, r = pred == value, ref == value
        to_ref, to_pred = surface_distances_mm(p, r, spacing)
        expected_to_ref = reference_directed(p, r, spacing)
        expected_to_pred = reference_directed(r, p, spacing)
        assert to_ref.shape == expected_to_ref.shape  # same surface voxels, one entry each
        assert to_pred.shape == expected_to_pred.shape
        np.testing.assert_allclose(to_ref, expected_to_ref, rtol=0, atol=DIST_TOL_MM)
        np.testing.assert_allclose(to_pred, expected_to_pred, rtol=0, atol=DIST_TOL_MM)


def test_hd95_and_msd_equal_scipy_reference_on_real_pairs(real_pair):
    pred, ref, spacing, _ = real_pair
    scores = score_labels(pred, ref, spacing)
    for name, value in STRUCTURES.items():
        p, r = pred == value, ref == value
        both = np.concatenate([reference_directed(p, r, spacing),
                               reference_directed(r, p, spacing)])
        assert scores[name].hd95_mm == pytest.approx(np.percentile(both, 95), abs=DIST_TOL_MM)
        assert scores[name].msd_mm == pytest.approx(both.mean(), abs=DIST_TOL_MM)
        assert hd95_mm(p, r, spacing) == scores[name].hd95_mm
        assert msd_mm(p, r, spacing) == scores[name].msd_mm
        assert scores[name].flag == ""


def test_max_surface_distance_equals_simpleitk_hausdorff_of_the_surfaces(real_pair):
    pred, ref, spacing, _ = real_pair
    for value in STRUCTURES.values():
        p, r = pred == value, ref == value
        hausdorff = sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(sitk_mask(reference_surface(p), spacing),
                          sitk_mask(reference_surface(r), spacing))
        ours = np.concatenate(surface_distances_mm(p, r, spacing)).max()
        assert ours == pytest.approx(hausdorff.GetHausdorffDistance(), abs=DIST_TOL_MM)


def test_distances_are_exact_when_the_spacing_squares_are_exact_in_float32(patient_dir):
    """patient001: 1.5625 x 1.5625 x 10 mm; every squared distance is a float32 number."""
    folder = patient_dir("patient001")
    ref, spacing = read_gt(folder, 1)
    pred, _ = read_gt(folder, 12)
    for value in STRUCTURES.values():
        p, r = pred == value, ref == value
        to_ref, to_pred = surface_distances_mm(p, r, spacing)
        assert np.array_equal(to_ref, reference_directed(p, r, spacing))
        assert np.array_equal(to_pred, reference_directed(r, p, spacing))


# ------------------------------------------------------------------------ constructed shapes

def test_identical_label_maps_score_dice_one_and_zero_distances():
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[1:5, 2:10, 1:5] = 1
    labels[1:5, 2:10, 5:11] = 2
    labels[2:4, 4:8, 7:9] = 3
    scores = score_labels(labels, labels.copy(), SPACING_ZYX)
    assert list(scores) == ["RV", "Myo", "LV"]
    for name, score in scores.items():
        assert score == StructureScore(structure=name, dice=1.0, hd95_mm=0.0, msd_mm=0.0, flag="")


@pytest.mark.parametrize("axis, expected_mm", [(0, 30.0), (1, 4.5), (2, 2.25)])
def test_one_voxel_planes_three_voxels_apart_are_three_spacings_apart(axis, expected_mm):
    """Every voxel of a plane is surface; each one's nearest is straight across: 3 x spacing."""
    shape = (8, 9, 10)
    pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
    pred[(slice(None),) * axis + (2,)] = True
    ref[(slice(None),) * axis + (5,)] = True
    to_ref, to_pred = surface_distances_mm(pred, ref, SPACING_ZYX)
    plane_voxels = np.prod(shape) // shape[axis]
    assert to_ref.shape == to_pred.shape == (plane_voxels,)
    np.testing.assert_allclose(np.concatenate([to_ref, to_pred]), expected_mm, rtol=0, atol=1e-9)
    assert hd95_mm(pred, ref, SPACING_ZYX) == pytest.approx(expected_mm, abs=1e-9)
    assert msd_mm(pred, ref, SPACING_ZYX) == pytest.approx(expected_mm, abs=1e-9)


def test_two_slice_slabs_shifted_three_slices_have_hd95_3_and_msd_2_5_slices():
    """Slabs z{1,2} and z{4,5} at 10 mm: half the surface voxels are 20 mm away, half 30 mm.

    The 95th percentile of 120 values, 60 of 20 and 60 of 30, is 30 mm; the mean is 25 mm.
    """
    pred, ref = np.zeros((8, 6, 5), bool), np.zeros((8, 6, 5), bool)
    pred[1:3] = True
    ref[4:6] = True
    assert hd95_mm(pred, ref, SPACING_ZYX) == pytest.approx(30.0, abs=1e-9)
    assert msd_mm(pred, ref, SPACING_ZYX) == pytest.approx(25.0, abs=1e-9)
    assert dice(pred, ref) == 0.0


def test_hd95_interpolates_linearly_in_both_directed_distances_taken_together():
    """A row of 10 voxels along x (0.75 mm) against its first voxel.

    Row -> voxel: 0, 1, ..., 9 steps; voxel -> row: 0. Together, sorted, 11 values
    0, 0, 0.75, ..., 6.75 mm. The 95th percentile sits at index 0.95 * 10 = 9.5, halfway between
    6 and 6.75 mm: 6.375 mm (not 6.75 as 'nearest' would give, not 6.4125 as the larger of the
    two directed 95th percentiles would). MSD = 0.75 * 45 / 11 mm.
    """
    row, first = np.zeros((3, 3, 12), bool), np.zeros((3, 3, 12), bool)
    row[1, 1, 1:11] = True
    first[1, 1, 1] = True
    assert hd95_mm(row, first, SPACING_ZYX) == pytest.approx(6.375, abs=1e-9)
    assert msd_mm(row, first, SPACING_ZYX) == pytest.approx(0.75 * 45 / 11, abs=1e-9)


def test_cube_of_side_2_inside_cube_of_side_4_has_known_dice_and_distances():
    """Inner 2^3 = 8 voxels (all surface) centred in outer 4^3 = 64 (56 surface), spacing 3, 2, 1.

    Dice = 2*8 / (8 + 64) = 2/9. Each inner voxel is 1 mm (one x step) from the outer surface.
    An outer surface voxel lies one step outside the inner cube along each axis where it is on
    the outer boundary, 8 voxels for each of the 7 non-empty axis sets: distances 3, 2, 1,
    sqrt(13), sqrt(10), sqrt(5), sqrt(14) mm. Of all 64 distances the largest 8 are sqrt(14),
    so HD95 (index 0.95 * 63 = 59.85) = sqrt(14).
    """
    spacing = (3.0, 2.0, 1.0)
    outer, inner = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    outer[1:5, 1:5, 1:5] = True
    inner[2:4, 2:4, 2:4] = True
    inner_to_outer, outer_to_inner = surface_distances_mm(inner, outer, spacing)
    assert dice(inner, outer) == pytest.approx(2 / 9, abs=1e-12)
    np.testing.assert_allclose(inner_to_outer, np.ones(8), rtol=0, atol=1e-9)
    per_axis_set = [3, 2, 1, math.sqrt(13), math.sqrt(10), math.sqrt(5), math.sqrt(14)]
    np.testing.assert_allclose(np.sort(outer_to_inner), np.sort(np.repeat(per_axis_set, 8)),
                               rtol=0, atol=1e-9)
    assert hd95_mm(inner, outer, spacing) == pytest.approx(math.sqrt(14), abs=1e-9)
    assert msd_mm(inner, outer, spacing) == pytest.approx((8 + 8 * sum(per_axis_set)) / 64,
                                                          abs=1e-9)


def test_voxels_on_the_array_border_are_surface():
    """A mask filling a 3x3x3 array: all 26 voxels but the centre touch the outside."""
    full = np.ones((3, 3, 3), bool)
    centre = np.zeros((3, 3, 3), bool)
    centre[1, 1, 1] = True
    full_to_centre, centre_to_full = surface_distances_mm(full, centre, (3.0, 2.0, 1.0))
    assert full_to_centre.shape == (26,)
    assert centre_to_full.tolist() == [1.0]  # nearest surface voxel: one x step away


def test_mask_filling_the_whole_array_is_all_surface_and_zero_from_itself():
    """A 2x3x3 array of ones: every voxel touches the outside; no background voxel anywhere."""
    full = np.ones((2, 3, 3), bool)
    to_self, from_self = surface_distances_mm(full, full, SPACING_ZYX)
    assert to_self.tolist() == from_self.tolist() == [0.0] * 18
    assert hd95_mm(full, full, SPACING_ZYX) == 0.0


def test_surface_uses_face_neighbours_only():
    """A 3x3x3 cube missing one corner: its centre touches the gap only diagonally, so it is
    not surface (26 - 1 = 25 surface voxels); 26-connectivity would count 26."""
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    mask[1, 1, 1] = False
    to_self, _ = surface_distances_mm(mask, mask, SPACING_ZYX)
    assert to_self.shape == (25,)
    assert not to_self.any()


# ------------------------------------------------------------------------ empty structures and bad input

def test_both_empty_scores_dice_one_nan_distances_and_says_so():
    empty = np.zeros((4, 6, 6), np.uint8)
    for name, score in score_labels(empty, empty.copy(), SPACING_ZYX).items():
        assert score.structure == name
        assert score.dice == 1.0
        assert math.isnan(score.hd95_mm) and math.isnan(score.msd_mm)
        assert score.flag == "both empty"


def test_empty_prediction_scores_dice_zero_nan_distances_and_says_so():
    ref = labels_with_one_box((4, 6, 6), np.s_[1:3, 1:4, 1:4], STRUCTURES["LV"])
    lv = score_labels(np.zeros_like(ref), ref, SPACING_ZYX)["LV"]
    assert lv.dice == 0.0
    assert math.isnan(lv.hd95_mm) and math.isnan(lv.msd_mm)
    assert lv.flag == "prediction empty"


def test_empty_reference_scores_dice_zero_nan_distances_and_says_so():
    pred = labels_with_one_box((4, 6, 6), np.s_[1:3, 1:4, 1:4], STRUCTURES["RV"])
    rv = score_labels(pred, np.zeros_like(pred), SPACING_ZYX)["RV"]
    assert rv.dice == 0.0
    assert math.isnan(rv.hd95_mm) and math.isnan(rv.msd_mm)
    assert rv.flag == "reference empty"


def test_distance_functions_on_an_empty_mask():
    """hd95/msd answer NaN; the raw distance arrays refuse, a distance to nothing is undefined."""
    some, none = np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool)
    some[1, 1:3, 1:3] = True
    assert math.isnan(hd95_mm(some, none, SPACING_ZYX))
    assert math.isnan(msd_mm(none, some, SPACING_ZYX))
    assert dice(none, none) == 1.0 and dice(some, none) == 0.0
    with pytest.raises(ValueError, match="empty"):
        surface_distances_mm(none, some, SPACING_ZYX)


def test_shape_mismatch_raises_case_error_naming_both_shapes():
    with pytest.raises(CaseError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        score_labels(np.zeros((4, 5, 6), np.uint8), np.zeros((4, 5, 7), np.uint8), SPACING_ZYX)
    with pytest.raises(CaseError, match=r"\(4, 5, 6\).*\(4, 6, 5\)"):
        dice(np.zeros((4, 5, 6), bool), np.zeros((4, 6, 5), bool))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 1.0, 1.0, 1.0), (0.0, 1.0, 1.0),
                                     (10.0, -1.5, 1.5), (10.0, 1.5, math.nan)])
def test_spacing_must_be_three_positive_millimetre_values(spacing):
    labels = labels_with_one_box((3, 4, 4), np.s_[1, 1:3, 1:3], 3)
    with pytest.raises(CaseError, match="spacing_zyx"):
        score_labels(labels, labels, spacing)
    with pytest.raises(CaseError, match="spacing_zyx"):
        volume_ml(labels, 3, spacing)


def test_label_values_outside_0_to_3_are_refused():
    ref = labels_with_one_box((3, 4, 4), np.s_[1, 1:3, 1:3], 3)
    pred = labels_with_one_box((3, 4, 4), np.s_[1, 1:3, 1:3], 4)
    with pytest.raises(CaseError, match=r"prediction label map.*\[4\]"):
        score_labels(pred, ref, SPACING_ZYX)


# ------------------------------------------------------------------------ clinical indices

def test_volume_is_voxel_count_times_voxel_volume():
    """24 voxels of 10 x 2 x 0.5 = 10 mm^3 each: 240 mm^3 = 0.24 ml."""
    labels = labels_with_one_box((5, 6, 7), np.s_[0:2, 1:4, 2:6], 1)
    assert volume_ml(labels, 1, (10.0, 2.0, 0.5)) == pytest.approx(0.24, abs=1e-12)
    assert volume_ml(labels, 2, (10.0, 2.0, 0.5)) == 0.0


def test_ejection_fraction_is_stroke_volume_over_edv_in_percent():
    assert ejection_fraction(200.0, 150.0) == pytest.approx(25.0, abs=1e-12)
    assert ejection_fraction(120.0, 0.0) == pytest.approx(100.0, abs=1e-12)
    assert math.isnan(ejection_fraction(0.0, 10.0))
    assert math.isnan(ejection_fraction(-5.0, 10.0))


def test_patient001_indices_are_voxel_counts_times_its_voxel_volume(patient_dir):
    """patient001 voxels are 10 x 1.5625 x 1.5625 mm = 24.4140625 mm^3 = 0.0244140625 ml."""
    folder = patient_dir("patient001")
    ed, spacing = read_gt(folder, 1)
    es, _ = read_gt(folder, 12)
    assert spacing == (10.0, 1.5625, 1.5625)
    voxel_ml = 0.0244140625
    lv_edv, lv_esv = np.count_nonzero(ed == 3) * voxel_ml, np.count_nonzero(es == 3) * voxel_ml
    rv_edv, rv_esv = np.count_nonzero(ed == 1) * voxel_ml, np.count_nonzero(es == 1) * voxel_ml
    mass = np.count_nonzero(ed == 2) * voxel_ml * 1.05
    indices = clinical_indices(ed, es, spacing)
    assert isinstance(indices, ClinicalIndices)
    assert indices.as_dict() == pytest.approx({
        "lv_edv_ml": lv_edv, "lv_esv_ml": lv_esv, "lv_ef_pct": 100 * (lv_edv - lv_esv) / lv_edv,
        "rv_edv_ml": rv_edv, "rv_esv_ml": rv_esv, "rv_ef_pct": 100 * (rv_edv - rv_esv) / rv_edv,
        "myo_mass_ed_g": mass,
    }, rel=1e-12)
    assert myocardial_mass_g(ed, spacing) == pytest.approx(mass, rel=1e-12)


def test_patient001_indices_are_those_of_a_dilated_poorly_contracting_lv(patient_dir):
    """patient001 is in the DCM group: a large LV (EDV far above ~150 ml) with EF far below 50 %,
    a myocardial mass of an adult heart, and an RV that still ejects normally."""
    folder = patient_dir("patient001")
    ed, spacing = read_gt(folder, 1)
    es, _ = read_gt(folder, 12)
    indices = clinical_indices(ed, es, spacing)
    assert 250 < indices.lv_edv_ml < 350
    assert 15 < indices.lv_ef_pct < 35
    assert indices.lv_esv_ml < indices.lv_edv_ml
    assert 100 < indices.myo_mass_ed_g < 250
    assert 45 < indices.rv_ef_pct < 70


def test_ed_and_es_maps_of_different_shapes_are_refused():
    with pytest.raises(CaseError, match=r"ED .*\(3, 4, 4\).*ES .*\(3, 4, 5\)"):
        clinical_indices(np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 5), np.uint8),
                         SPACING_ZYX)
