"""Results in the subject hierarchy (`CardiacEnsembleLib.slicer.hierarchy`): an ACDC case under
its patient and study, the segmentation beside the image it was made on, and the members and
uncertainty map in one folder beside it, reused when the same output is segmented again."""
from __future__ import annotations

from mrml_fixtures import fake_prediction, requires_mrml, scene  # noqa: F401  (fixtures)

pytestmark = requires_mrml


def _parent(hierarchy, node) -> int:
    return hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))


def _sample(scene):
    from mrml_fixtures import SAMPLE

    from CardiacEnsembleLib.slicer.acdc import load_acdc_case

    return load_acdc_case(scene, SAMPLE)


def test_an_acdc_case_is_one_patient_with_one_study(scene):
    from CardiacEnsembleLib.slicer.acdc import STUDY_NAME
    from CardiacEnsembleLib.slicer.hierarchy import hierarchy_of

    loaded = _sample(scene)
    hierarchy = hierarchy_of(scene)
    study = _parent(hierarchy, loaded["ED"].volume)
    assert (hierarchy.GetItemName(study), hierarchy.GetItemLevel(study)) == (STUDY_NAME, "Study")
    patient = hierarchy.GetItemParent(study)
    assert (hierarchy.GetItemName(patient), hierarchy.GetItemLevel(patient)) == \
        ("patient090", "Patient")
    for phase in ("ED", "ES"):
        assert _parent(hierarchy, loaded[phase].volume) == study
        assert _parent(hierarchy, loaded[phase].ground_truth) == study
    _sample(scene)  # loading the patient again adds no second patient or study
    assert hierarchy.GetNumberOfItemChildren(hierarchy.GetSceneItemID()) == 1
    assert hierarchy.GetNumberOfItemChildren(patient) == 1


def test_results_go_under_the_study_with_their_details_in_one_folder(scene):
    from CardiacEnsembleLib.slicer.hierarchy import DETAILS_SUFFIX, hierarchy_of, \
        place_prediction
    from CardiacEnsembleLib.slicer.prediction import add_prediction

    loaded = _sample(scene)
    volume = loaded["ED"].volume
    hierarchy = hierarchy_of(scene)
    study = _parent(hierarchy, volume)
    nodes = add_prediction(scene, fake_prediction(loaded["ED"].case), volume, name="result")
    folder = place_prediction(nodes, volume)
    assert _parent(hierarchy, nodes.segmentation) == study
    assert (hierarchy.GetItemName(folder), hierarchy.GetItemParent(folder)) == \
        (f"result {DETAILS_SUFFIX}", study)
    details = [*nodes.members.values(), nodes.uncertainty]
    assert len(details) == 3 and all(_parent(hierarchy, node) == folder for node in details)

    again = add_prediction(scene, fake_prediction(loaded["ED"].case), volume,
                           output=nodes.segmentation)
    assert place_prediction(again, volume) == folder  # the same folder, not a second one
    assert hierarchy.GetItemChildWithName(study, f"result {DETAILS_SUFFIX}") == folder
    assert _live_children(hierarchy, folder) == {*again.members.values(), again.uncertainty}


def _live_children(hierarchy, item) -> set:
    """The data nodes under `item` (the app's plugins drop a removed node's item; a bare
    scene keeps it, without its node)."""
    import vtk

    ids = vtk.vtkIdList()
    hierarchy.GetItemChildren(item, ids)
    nodes = (hierarchy.GetItemDataNode(ids.GetId(i)) for i in range(ids.GetNumberOfIds()))
    return {node for node in nodes if node is not None and node.GetScene() is not None}


def test_a_volume_outside_any_study_gets_its_results_beside_it(scene):
    from CardiacEnsembleLib.slicer.hierarchy import hierarchy_of, place_results

    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loose")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loose segmentation")
    assert place_results(segmentation, volume) == 0  # no details: no folder
    hierarchy = hierarchy_of(scene)
    assert _parent(hierarchy, segmentation) == hierarchy.GetSceneItemID()
