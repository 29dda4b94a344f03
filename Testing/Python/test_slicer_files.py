"""Nodes and scenes to and from files (`CardiacEnsembleLib.slicer.files`): a scene with results
comes back intact from `.mrml` and `.mrb`, a `.seg.nrrd` keeps names, terminology and voxels,
and nothing existing is overwritten unless asked."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from mrml_fixtures import SAMPLE, fake_prediction, requires_mrml, sample_loaded, \
    scene  # noqa: F401  (fixtures)

pytestmark = requires_mrml


@pytest.mark.parametrize("scene_file", ["scene.mrml", "scene.mrb"])
def test_scene_with_results_saves_and_reloads_intact(tmp_path, scene_file):
    from slicer.util import arrayFromVolume

    from CardiacEnsembleLib.core.errors import OutputExistsError
    from CardiacEnsembleLib.core.terminology import SEGMENTS
    from CardiacEnsembleLib.slicer.acdc import load_acdc_case
    from CardiacEnsembleLib.slicer.files import load_scene, save_scene
    from CardiacEnsembleLib.slicer.nodes import get_attribute
    from CardiacEnsembleLib.slicer.prediction import add_prediction, prediction_nodes
    from CardiacEnsembleLib.slicer.scene import create_scene, node_by_name
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation, \
        segment_terminology
    from CardiacEnsembleLib.slicer.tables import add_metrics_table, evaluate_segmentation, \
        table_rows

    wired = create_scene()
    loaded = load_acdc_case(wired.scene, SAMPLE, phases=("ED",))
    case, volume = loaded["ED"].case, loaded["ED"].volume
    prediction = fake_prediction(case)
    nodes = add_prediction(wired.scene, prediction, volume, name="result")
    rows = evaluate_segmentation(nodes.segmentation, loaded["ED"].ground_truth)
    add_metrics_table(wired.scene, rows, "result metrics")

    path = save_scene(wired.scene, tmp_path / scene_file)
    with pytest.raises(OutputExistsError, match="refusing to overwrite"):
        save_scene(wired.scene, path)
    reloaded = load_scene(path).scene

    result = node_by_name(reloaded, "result", "vtkMRMLSegmentationNode")
    segmentation = result.GetSegmentation()
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
        assert segment_terminology(segment) == spec.terminology
        assert segment.GetColor() == pytest.approx(spec.color)
    again_volume = node_by_name(reloaded, "patient090 ED", "vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(arrayFromVolume(again_volume), case.image)
    np.testing.assert_array_equal(labels_from_segmentation(result, again_volume),
                                  prediction.labels)
    linked = prediction_nodes(result)
    np.testing.assert_array_equal(labels_from_segmentation(linked.members["b"]),
                                  prediction.members[1].labels)
    assert not linked.members["b"].GetDisplayNode().GetVisibility()
    np.testing.assert_array_equal(arrayFromVolume(linked.uncertainty), prediction.uncertainty)
    table = node_by_name(reloaded, "result metrics", "vtkMRMLTableNode")
    again_rows = table_rows(table)
    # Slicer's table writer keeps 6 significant digits (the CSV export keeps all of them)
    assert [replace(r, value=0.0) for r in again_rows] == [replace(r, value=0.0) for r in rows]
    assert [r.value for r in again_rows] == pytest.approx([r.value for r in rows], rel=1e-5,
                                                          nan_ok=True)
    assert any(0.0 < r.value < 1.0 for r in rows if r.measure == "Dice")
    assert get_attribute(result, "method") == "ensemble-vote"


def test_segmentation_file_keeps_names_terminology_and_voxels(sample_loaded, tmp_path):
    import slicer

    from CardiacEnsembleLib.core.terminology import SEGMENTS
    from CardiacEnsembleLib.slicer.files import save_segmentation
    from CardiacEnsembleLib.slicer.scene import create_scene
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation, \
        segment_terminology
    from CardiacEnsembleLib.slicer.volumes import add_volume

    scene, loaded = sample_loaded
    path = save_segmentation(loaded["ES"].ground_truth, tmp_path / "gt.seg.nrrd")
    fresh = create_scene().scene
    node = fresh.AddNewNodeByClass("vtkMRMLSegmentationNode", "read")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert [segment_terminology(segmentation.GetNthSegment(i)) for i in range(3)] == \
        [spec.terminology for spec in SEGMENTS]
    volume = add_volume(fresh, loaded["ES"].case)
    np.testing.assert_array_equal(labels_from_segmentation(node, volume),
                                  loaded["ES"].case.labels)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_segmentation(loaded["ES"].ground_truth, path)


def test_a_segmentation_is_saved_only_as_seg_nrrd(sample_loaded, tmp_path):
    from CardiacEnsembleLib.slicer.files import save_segmentation
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError

    with pytest.raises(SlicerBridgeError, match="saved as '.seg.nrrd'"):
        save_segmentation(sample_loaded[1]["ED"].ground_truth, tmp_path / "gt.nrrd")
    assert not (tmp_path / "gt.nrrd").exists()


def test_mrb_refuses_a_segmentation_without_segments(scene, tmp_path):
    from CardiacEnsembleLib.slicer.files import save_scene
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError

    scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing yet")
    with pytest.raises(SlicerBridgeError, match="nothing yet"):
        save_scene(scene, tmp_path / "scene.mrb")
    assert not (tmp_path / "scene.mrb").exists()
