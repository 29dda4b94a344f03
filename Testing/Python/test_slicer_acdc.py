"""An ACDC patient folder into a scene (`CardiacEnsembleLib.slicer.acdc`): per phase a volume and
its ground truth, named after the patient and linked to each other."""
from __future__ import annotations

from mrml_fixtures import requires_mrml, sample_loaded  # noqa: F401  (fixtures)

pytestmark = requires_mrml


def test_ground_truth_volumes_and_nodes_are_named_after_the_patient(sample_loaded):
    from CardiacEnsembleLib.slicer.nodes import get_attribute
    from CardiacEnsembleLib.slicer.segmentations import reference_volume_of

    scene, loaded = sample_loaded
    assert list(loaded) == ["ED", "ES"]
    assert loaded["ED"].volume.GetName() == "patient090 ED"
    assert loaded["ES"].ground_truth.GetName() == "patient090 ES ground truth"
    assert get_attribute(loaded["ES"].ground_truth, "phase") == "ES"
    assert get_attribute(loaded["ES"].ground_truth, "method") == "ground truth"
    assert reference_volume_of(loaded["ES"].ground_truth) is loaded["ES"].volume
