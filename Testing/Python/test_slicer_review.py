"""The QC review list in the scene (`CardiacEnsembleLib.slicer.review`): the report's worst
slices and structures in its order, each pointing at its segment and at the centroid of its mask
(IJK, and RAS through an oblique IJKToRAS); a click jumps every slice view there and makes that
segment the Segment Editor's; the report stays with the segmentation, also through the Logic
that segments with the worker process."""
from __future__ import annotations

import numpy as np
import pytest
from mrml_fixtures import SAMPLE, requires_mrml, scene  # noqa: F401  (fixture)

pytestmark = requires_mrml

#: The sample's ED frame, rotated 30 degrees about (1, 1, 1) with its own spacing, and moved.
ANGLE = np.deg2rad(30.0)
SPACING_XYZ = (1.7857, 1.7857, 10.0)
ORIGIN_RAS = (12.5, -40.0, 7.25)
DROPPED = (6, "LV")  # the fused result lacks the LV cavity on slice 6 (the members have it)


def _rotation(axis, angle) -> np.ndarray:
    x, y, z = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation((1, 1, 1), ANGLE) * np.asarray(SPACING_XYZ)[None, :]
    affine[:3, 3] = ORIGIN_RAS
    return affine


def _prediction(case):
    """Members: the expert labels and a copy shifted by one row; fused: the expert labels
    shifted by one column, with the LV cavity of slice 6 turned into myocardium."""
    from CardiacEnsembleLib.core.case import MemberOutput, Prediction

    fused = np.roll(case.labels, 1, axis=2)
    k = DROPPED[0]
    fused[k][fused[k] == 3] = 2
    zeros = np.zeros(case.labels.shape, np.float32)
    members = [MemberOutput("a", case.labels, 0.1),
               MemberOutput("b", np.roll(case.labels, 1, axis=1), 0.1)]
    return Prediction(labels=fused, probabilities=None, members=members, uncertainty=zeros,
                      disagreement=zeros, geometry=case.geometry, fusion="mean", device="cpu",
                      case_name=case.name)


@pytest.fixture(scope="module")
def oblique():
    """patient090 ED on an oblique grid, its prediction in the scene, and its QC report."""
    from CardiacEnsembleLib.slicer.prediction import add_prediction
    from CardiacEnsembleLib.slicer.review import store_report
    from CardiacEnsembleLib.slicer.scene import create_scene

    wired = create_scene()
    volume, prediction, report = oblique_in(wired.scene)
    nodes = add_prediction(wired.scene, prediction, volume, name="oblique")
    store_report(nodes.segmentation, report)
    return wired, volume, prediction, nodes.segmentation, report


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    size = a.sum() + b.sum()
    return 1.0 if size == 0 else 2.0 * np.logical_and(a, b).sum() / size


def test_the_list_is_the_reports_ten_worst_in_its_order_when_nothing_is_validated(oblique):
    from CardiacEnsembleLib.core.labels import STRUCTURES
    from CardiacEnsembleLib.slicer.review import UNFLAGGED_SHOWN, review_entries, review_summary

    _, _, prediction, segmentation, report = oblique
    entries = review_entries(report, segmentation)
    assert len(report.slices) == 21 and len(entries) == UNFLAGGED_SHOWN == 10  # 7 slices x 3
    assert [(e.slice_index, e.structure, e.score) for e in entries] == \
        [(e.slice_index, e.structure, e.score) for e in report.slices[:10]]
    scores = [e.score for e in entries]
    assert scores == sorted(scores, reverse=True) and not any(e.flagged for e in entries)
    # the worst: no fused LV cavity on slice 6 where both members drew one
    assert (entries[0].slice_index, entries[0].structure, entries[0].score) == (*DROPPED, 1.0)
    # the others, recomputed: 1 - the members' mean Dice with the fused mask on that slice
    for entry in entries[1:]:
        fused = prediction.labels[entry.slice_index] == STRUCTURES[entry.structure]
        dice = [_dice(m.labels[entry.slice_index] == STRUCTURES[entry.structure], fused)
                for m in prediction.members]
        assert entry.score == pytest.approx(1.0 - np.mean(dice), abs=1e-9)
    assert entries[1].text == f"slice {entries[1].slice_index + 1}/7 · " \
        f"{'RV cavity' if entries[1].structure == 'RV' else 'LV myocardium'} · " \
        f"{entries[1].score:.3f}"
    assert entries[0].text == "slice 7/7 · LV cavity · 1.000 (not in the result)"
    assert review_summary(report).startswith("No validated threshold: the 10 worst of 21")


def test_with_a_validated_threshold_the_list_is_the_flagged_entries(oblique):
    from CardiacEnsembleLib.core.quality import QualityScore, QualityThresholds
    from CardiacEnsembleLib.inference.quality import assess
    from CardiacEnsembleLib.slicer.review import review_entries, review_summary

    _, _, prediction, segmentation, report = oblique
    threshold = sorted(e.score for e in report.slices)[-6]  # the 6th worst
    flagged = assess(prediction, {QualityScore.DISAGREEMENT: QualityThresholds(
        QualityScore.DISAGREEMENT, threshold, 0.5, "test")})
    entries = review_entries(flagged, segmentation)
    expected = [(e.slice_index, e.structure) for e in report.slices if e.score >= threshold]
    assert len(expected) >= 6
    assert [(e.slice_index, e.structure) for e in entries] == expected == \
        [(e.slice_index, e.structure) for e in flagged.to_review]
    assert all(e.flagged and e.score >= threshold for e in entries)
    assert review_summary(flagged) == (f"{len(expected)} slices to review (case score "
                                       f"{flagged.case_score:.3f}"
                                       f"{', flagged' if flagged.case_score >= 0.5 else ''}).")


def test_the_jump_target_is_the_masks_centroid_and_its_oblique_ras(oblique):
    from CardiacEnsembleLib.core.labels import STRUCTURES
    from CardiacEnsembleLib.slicer.review import review_entries
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation

    _, volume, prediction, segmentation, report = oblique
    np.testing.assert_array_equal(labels_from_segmentation(segmentation), prediction.labels)
    affine = oblique_affine()
    tilt = np.degrees(np.arccos(affine[0, 0] / np.linalg.norm(affine[:3, 0])))
    assert tilt > 20  # really oblique: the I axis is 24 degrees off R
    entries = review_entries(report, segmentation, entries=report.slices)
    for entry in entries:
        plane = prediction.labels[entry.slice_index]
        mask = plane == STRUCTURES[entry.structure]
        j, i = np.nonzero(mask if mask.any() else plane > 0)  # dropped: the slice's heart
        assert entry.voxels == mask.sum()
        np.testing.assert_allclose(entry.ijk, (i.mean(), j.mean(), entry.slice_index))
        np.testing.assert_allclose(entry.ras, (affine @ (*entry.ijk, 1.0))[:3], atol=1e-9)
    # one worked by hand: RAS = origin + rotation . (spacing * ijk)
    first = entries[0]
    by_hand = np.asarray(ORIGIN_RAS) + _rotation((1, 1, 1), ANGLE) @ (
        np.asarray(SPACING_XYZ) * np.asarray(first.ijk))
    np.testing.assert_allclose(first.ras, by_hand, atol=1e-9)
    assert [e.voxels for e in entries if (e.slice_index, e.structure) == DROPPED] == [0]


def _slice_node(scene, name: str, normal, transverse, group: int = 0):
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetLayoutName(name)
    node.SetViewGroup(group)
    node.SetSliceToRASByNTP(*normal, *transverse, 0.0, 0.0, 0.0, 0)
    node.UpdateMatrices()
    return node


def _slice_to_ras(node) -> np.ndarray:
    matrix = node.GetSliceToRAS()
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_jump_all_slices_centres_every_view_of_the_group_on_the_target(oblique, scene):
    from CardiacEnsembleLib.slicer.review import jump_slices, review_entries

    _, _, _, segmentation, report = oblique
    red = _slice_node(scene, "ReviewRed", (0, 0, 1), (1, 0, 0))
    green = _slice_node(scene, "ReviewGreen", (0, 1, 0), (1, 0, 0))
    other = _slice_node(scene, "ReviewOther", (1, 0, 0), (0, 1, 0), group=1)
    target = review_entries(report, segmentation)[3]
    jump_slices(scene, target.ras, view_group=0)
    for node in (red, green):
        np.testing.assert_allclose(_slice_to_ras(node)[:3, 3], target.ras, atol=1e-9)
    np.testing.assert_allclose(_slice_to_ras(other)[:3, 3], 0.0)  # another view group
    jump_slices(scene, target.ras)  # all groups
    np.testing.assert_allclose(_slice_to_ras(other)[:3, 3], target.ras, atol=1e-9)


def test_jump_by_offset_moves_each_plane_through_the_target_only(oblique, scene):
    from CardiacEnsembleLib.slicer.review import jump_slices, review_entries

    _, _, _, segmentation, report = oblique
    node = _slice_node(scene, "ReviewYellow", (1, 0, 0), (0, 1, 0), group=2)
    before = _slice_to_ras(node)
    target = np.asarray(review_entries(report, segmentation)[1].ras)
    jump_slices(scene, target, centered=False, view_group=2)
    after = _slice_to_ras(node)
    normal = after[:3, 2]
    assert np.dot(normal, target - after[:3, 3]) == pytest.approx(0.0, abs=1e-9)
    assert after[0, 3] == pytest.approx(target[0]) and after[1:3, 3] == pytest.approx(
        before[1:3, 3])  # in the plane nothing moved
    assert node.GetSliceOffset() == pytest.approx(target[0])


def test_the_segment_id_names_the_structure_and_becomes_the_editors(oblique):
    from CardiacEnsembleLib.slicer.review import SEGMENT_EDITOR_TAG, review_entries, \
        select_segment_for_editing

    wired, volume, _, segmentation, report = oblique
    names = {"RV": ("RV_cavity", "RV cavity"), "Myo": ("LV_myocardium", "LV myocardium"),
             "LV": ("LV_cavity", "LV cavity")}
    entries = review_entries(report, segmentation, entries=report.slices)
    assert {e.structure for e in entries} == set(names)
    for entry in entries:
        segment = segmentation.GetSegmentation().GetSegment(entry.segment_id)
        assert (entry.segment_id, segment.GetName()) == names[entry.structure]
    scene = wired.scene
    for entry in (entries[0], entries[-1]):
        editor = select_segment_for_editing(segmentation, entry.segment_id)
        assert scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode") is editor
        assert editor.GetSegmentationNode() is segmentation
        assert editor.GetSourceVolumeNode() is volume
        assert editor.GetSelectedSegmentID() == entry.segment_id
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 1  # reused, not piled


def test_a_missing_segment_is_refused_with_its_name(oblique):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.review import select_segment_for_editing

    segmentation = oblique[3]
    with pytest.raises(SlicerBridgeError, match="has no segment 'Segment_9'"):
        select_segment_for_editing(segmentation, "Segment_9")


def test_the_report_is_saved_and_reloaded_with_the_scene(oblique, tmp_path):
    from CardiacEnsembleLib.slicer.files import load_scene, save_scene
    from CardiacEnsembleLib.slicer.review import review_entries, stored_report
    from CardiacEnsembleLib.slicer.scene import node_by_name

    wired, _, _, segmentation, report = oblique
    assert stored_report(segmentation).to_json() == report.to_json()
    reloaded = load_scene(save_scene(wired.scene, tmp_path / "scene.mrml")).scene
    again = node_by_name(reloaded, "oblique", "vtkMRMLSegmentationNode")
    kept = stored_report(again)
    assert kept.to_json() == report.to_json()
    for before, after in zip(review_entries(report, segmentation), review_entries(kept, again),
                             strict=True):
        assert after.text == before.text and after.segment_id == before.segment_id
        np.testing.assert_allclose(after.ras, before.ras, atol=1e-9)  # the matrix as written


def test_a_segmentation_without_a_report_has_no_list(oblique):
    from CardiacEnsembleLib.slicer.review import review_summary, stored_report

    wired = oblique[0]
    bare = wired.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bare")
    assert stored_report(bare) is None
    assert review_summary(None).startswith("No QC report for this segmentation")


# --- through the module's Logic ------------------------------------------------------------

@pytest.fixture
def module(monkeypatch):
    from CardiacEnsembleLib.slicer.scene import create_scene
    from test_slicer_module import _import_module_without_qt

    return _import_module_without_qt(monkeypatch, create_scene().scene)


def test_the_logic_keeps_the_workers_qc_and_jumps_to_its_entries(module, untrained_models):
    """Segmented by the worker process, the frame's QC is computed here, on the prediction the
    worker returned: the report of `Ensemble.predict` in this process, kept with the node."""
    from CardiacEnsembleLib.inference.quality import assess

    logic = module.CardiacEnsembleLogic()
    scene = module.slicer.mrmlScene
    loaded = logic.loadACDCCase(SAMPLE, phases=("ED",))
    options = dict(modelsDir=str(untrained_models), device="cpu")
    try:
        nodes = logic.segment(loaded["ED"].volume, wait=True, **options)
    finally:
        logic.cleanup()
    direct = assess(logic.ensemble(**options).predict(loaded["ED"].case))
    report = logic.qualityReport(nodes.segmentation)
    assert report.to_json() == direct.to_json() and report.score.value == "disagreement"
    entries = logic.reviewList(nodes.segmentation)
    assert [(e.slice_index, e.structure) for e in entries] == \
        [(e.slice_index, e.structure) for e in direct.slices[:10]]
    assert logic.reviewSummary(nodes.segmentation).startswith("No validated threshold")
    red = _slice_node(scene, "Red", (0, 0, 1), (1, 0, 0))
    logic.jumpToReview(entries[0], nodes.segmentation)
    np.testing.assert_allclose(_slice_to_ras(red)[:3, 3], entries[0].ras, atol=1e-9)
    editor = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSelectedSegmentID() == entries[0].segment_id


def test_the_manifests_thresholds_flag_the_logics_report(module, untrained_models, tmp_path):
    import json
    import shutil

    models = tmp_path / "models"
    shutil.copytree(untrained_models, models)
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["quality_control"] = {"disagreement": {"slice_threshold": 0.3,
                                                    "case_threshold": 0.9,
                                                    "fitted_on": "test"}}
    (models / "manifest.json").write_text(json.dumps(manifest))
    from CardiacEnsembleLib.slicer.segmentations import add_segmentation

    volume, prediction, reference = oblique_in(module.slicer.mrmlScene)
    logic = module.CardiacEnsembleLogic()
    segmentation = add_segmentation(module.slicer.mrmlScene, prediction.labels, volume,
                                    "flagged")
    report = logic.assessQuality(segmentation, prediction, str(models))
    expected = [(e.slice_index, e.structure) for e in reference.slices if e.score >= 0.3]
    assert 0 < len(expected) < len(reference.slices)
    assert [(e.slice_index, e.structure) for e in logic.reviewList(segmentation)] == expected
    assert logic.qualityReport(segmentation).to_json() == report.to_json()
    assert logic.reviewSummary(segmentation).startswith(f"{len(expected)} slices to review")
    logic.assessQuality(segmentation, prediction, str(untrained_models))  # none validated
    assert logic.reviewSummary(segmentation).startswith("No validated threshold")


def oblique_in(scene):
    """The oblique case of `oblique` in `scene`: its volume, prediction and QC report."""
    from CardiacEnsembleLib.core.case import Geometry
    from CardiacEnsembleLib.inference.quality import assess
    from CardiacEnsembleLib.io.acdc import PatientFolder
    from CardiacEnsembleLib.slicer.volumes import add_volume

    case = PatientFolder.open(SAMPLE).load("ED").replace(geometry=Geometry(oblique_affine()))
    volume = add_volume(scene, case)
    prediction = _prediction(case)
    return volume, prediction, assess(prediction)
