"""Keeping some members of the shipped ensemble (the panel's member checkboxes) under its
weighted rule: a member with a zero weight for a class can be kept alone, and then the ensemble
gives that member's own labels, cleaned with the steps a lone member gets."""
from __future__ import annotations

import numpy as np
import pytest

from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR
from CardiacEnsembleLib.core.options import lone_member_steps
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.postprocess import apply_steps
from CardiacEnsembleLib.io.acdc import PatientFolder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SAMPLE = DEFAULT_MODELS_DIR.parent / "sample" / "patient090"


@pytest.fixture(scope="module")
def shipped():
    return load_ensemble(DEFAULT_MODELS_DIR, device="cpu")


@pytest.mark.parametrize("name", ["unet25d-mnv2", "fpn25d-mnv2"])  # zero weights for a class
def test_one_member_kept_alone_predicts_that_members_labels(shipped, name):
    assert shipped.fusion == "weighted"
    one = shipped.subset([name])
    prediction = one.predict(PatientFolder.open(SAMPLE).load("ED"))
    (member,) = prediction.members
    assert member.name == name
    assert one.postprocess == lone_member_steps(shipped.postprocess)
    np.testing.assert_array_equal(prediction.labels, apply_steps(member.labels, one.postprocess))
    assert set(np.unique(prediction.labels)) == {0, 1, 2, 3}
