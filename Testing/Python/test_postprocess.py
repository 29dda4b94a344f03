"""Post-processing on real ground truth: it removes what anatomy rules out and nothing else."""
from __future__ import annotations

import numpy as np
import pytest

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.inference.postprocess import (apply_steps, gate_empty_slices,
                                            keep_largest_components, keep_largest_heart,
                                            rival_member_steps)


@pytest.fixture(scope="module")
def truth(patient_dir) -> np.ndarray:
    return PatientFolder.open(patient_dir("patient001")).load("ED").labels.astype(np.uint8)


def test_largest_component_removes_a_far_blob_and_keeps_the_heart(truth):
    noisy = truth.copy()
    z = int(np.nonzero((truth == 1).any(axis=(1, 2)))[0][0])
    noisy[z, 2:8, 2:8] = 1  # a stray "RV" blob in the image corner, far from the heart
    cleaned = keep_largest_components(noisy)
    np.testing.assert_array_equal(cleaned, truth)
    assert (noisy != truth).sum() == 36


def test_largest_component_leaves_clean_anatomy_untouched(truth):
    np.testing.assert_array_equal(keep_largest_components(truth), truth)


def _with_detached_fake_heart(truth: np.ndarray) -> np.ndarray:
    """`truth` plus an LV-coloured square ringed by "myocardium", in the corner away from the
    heart: its cavity outgrows the true LV, the whole blob stays smaller than the heart."""
    noisy = truth.copy()
    assert not truth[:, :70, 140:].any()  # the corner is empty in patient001 ED
    noisy[2:7, 2:64, 150:212] = 2
    noisy[2:7, 4:62, 152:210] = 3
    return noisy


def test_per_structure_components_keep_a_fake_cavity_larger_than_the_true_one(truth):
    cleaned = keep_largest_components(_with_detached_fake_heart(truth))
    assert (cleaned == 3).sum() > (truth == 3).sum()
    assert not (cleaned[truth == 3] == 3).any()  # the true LV cavity is gone: Dice 0


def test_whole_heart_component_removes_the_fake_heart_before_per_structure_clean_up(truth):
    noisy = _with_detached_fake_heart(truth)
    np.testing.assert_array_equal(keep_largest_heart(noisy), truth)
    np.testing.assert_array_equal(apply_steps(noisy, ["lcc", "heart"]), truth)
    np.testing.assert_array_equal(keep_largest_heart(truth), truth)


def test_gate_erases_slices_that_most_members_see_as_empty(truth):
    occupied = np.nonzero(truth.any(axis=(1, 2)))[0]
    fused = truth.copy()
    members = np.stack([truth, truth, truth])
    lone = occupied[0]
    members[1:, lone] = 0  # two of three members see nothing on this slice
    gated = gate_empty_slices(fused, members)
    assert not gated[lone].any()
    keep = [z for z in occupied if z != lone]
    np.testing.assert_array_equal(gated[keep], truth[keep])


def test_gate_keeps_a_slice_that_half_or_more_of_the_members_see(truth):
    z = int(np.nonzero(truth.any(axis=(1, 2)))[0][0])
    members = np.stack([truth, truth, np.zeros_like(truth), np.zeros_like(truth)])
    np.testing.assert_array_equal(gate_empty_slices(truth, members)[z], truth[z])


def test_steps_are_checked(truth):
    with pytest.raises(ValueError, match="unknown post-processing step"):
        apply_steps(truth, ["erode"])
    with pytest.raises(ValueError, match="needs the members' label maps"):
        apply_steps(truth, ["gate"])
    with pytest.raises(ValueError, match="member labels must be shaped"):
        gate_empty_slices(truth, truth)


def test_a_rival_member_always_gets_the_largest_component_clean_up():
    """An ensemble shipping no clean-up still meets members with one: it cannot win its
    comparison by dropping a step its rival needs. Gating is never a lone member's."""
    assert rival_member_steps(()) == [(), ("lcc",)]
    assert rival_member_steps(("lcc",)) == [(), ("lcc",)]
    assert rival_member_steps(("gate",)) == [(), ("lcc",)]
    assert rival_member_steps(("lcc", "gate", "heart")) == [(), ("lcc",), ("lcc", "heart")]
