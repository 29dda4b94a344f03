"""The ensemble's answer in the scene (`CardiacEnsembleLib.slicer.prediction`): the worker
process gives what `Ensemble.predict` gives, voxel for voxel, members hidden beside it,
uncertainty as a volume; a cancel or a crashed worker adds nothing; segmenting into the same
output replaces, never piles up."""
from __future__ import annotations

import os

import numpy as np
import pytest
from mrml_fixtures import UNTRAINED_MEMBERS, SAMPLE, bridged_prediction, fake_prediction, \
    requires_mrml, sample_loaded, untrained_ensemble, untrained_request, \
    worker  # noqa: F401  (fixtures)

pytestmark = requires_mrml


def test_bridge_segmentation_equals_ensemble_predict(sample_loaded, untrained_ensemble,
                                                     bridged_prediction):
    from slicer.util import arrayFromVolume

    from CardiacEnsembleLib.slicer.nodes import get_attribute
    from CardiacEnsembleLib.slicer.prediction import prediction_nodes
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation

    scene, loaded = sample_loaded
    job, nodes = bridged_prediction
    direct = untrained_ensemble.predict(loaded["ED"].case)
    labels = labels_from_segmentation(nodes.segmentation)
    np.testing.assert_array_equal(labels, direct.labels)
    assert set(nodes.members) == UNTRAINED_MEMBERS
    for member in direct.members:
        node = nodes.members[member.name]
        assert not node.GetDisplayNode().GetVisibility(), "member results are hidden"
        np.testing.assert_array_equal(labels_from_segmentation(node), member.labels)
    np.testing.assert_allclose(arrayFromVolume(nodes.uncertainty), direct.uncertainty,
                               atol=1e-6)
    assert get_attribute(nodes.segmentation, "method") == "ensemble-mean"
    assert job.poll().state == "done" and job.poll().fraction == 1.0
    linked = prediction_nodes(nodes.segmentation)
    assert linked.uncertainty is nodes.uncertainty and set(linked.members) == set(nodes.members)


def test_cancelled_segmentation_adds_nothing(sample_loaded, worker, untrained_request):
    from CardiacEnsembleLib.core.progress import Cancelled
    from CardiacEnsembleLib.slicer.prediction import SegmentationJob

    scene, loaded = sample_loaded
    before = scene.GetNumberOfNodes()
    job = SegmentationJob(loaded["ES"].volume, worker, untrained_request)
    job.cancel()
    assert job.wait(timeout=600)  # a hang guard, not a speed check
    with pytest.raises(Cancelled):
        job.finish()
    assert scene.GetNumberOfNodes() == before


@pytest.mark.skipif(os.name == "nt", reason="kills the worker with a POSIX signal")
def test_a_crashed_worker_adds_nothing_and_says_so(sample_loaded, worker, untrained_request):
    import signal

    from CardiacEnsembleLib.slicer.prediction import SegmentationJob
    from CardiacEnsembleLib.slicer.worker import WorkerError

    scene, loaded = sample_loaded
    before = scene.GetNumberOfNodes()
    job = SegmentationJob(loaded["ES"].volume, worker, untrained_request)
    os.kill(worker.pid, signal.SIGKILL)
    assert job.wait(timeout=600)  # a hang guard, not a speed check
    with pytest.raises(WorkerError, match="stopped unexpectedly"):
        job.finish()
    assert scene.GetNumberOfNodes() == before


def test_a_job_without_a_volume_is_refused_before_the_worker_starts(untrained_request):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.prediction import SegmentationJob
    from CardiacEnsembleLib.slicer.worker import InferenceWorker

    idle = InferenceWorker()
    with pytest.raises(SlicerBridgeError, match="no input volume selected"):
        SegmentationJob(None, idle, untrained_request)
    assert not idle.running
    idle.close()


@pytest.mark.parametrize("fusion, method", [("vote", "ensemble-vote"),
                                            ("weighted+lcc", "ensemble-weighted+lcc")])
def test_the_result_is_named_for_its_method_as_reports_name_it(fusion, method):
    from CardiacEnsembleLib.slicer.acdc import load_acdc_case
    from CardiacEnsembleLib.slicer.nodes import get_attribute
    from CardiacEnsembleLib.slicer.prediction import add_prediction
    from CardiacEnsembleLib.slicer.scene import create_scene

    scene = create_scene().scene
    loaded = load_acdc_case(scene, SAMPLE, phases=("ED",))["ED"]
    nodes = add_prediction(scene, fake_prediction(loaded.case, fusion), loaded.volume)
    assert nodes.segmentation.GetName() == "patient090 ED segmentation"
    assert (get_attribute(nodes.segmentation, "method"),
            get_attribute(nodes.segmentation, "fusion"),
            get_attribute(nodes.segmentation, "members")) == (method, fusion, "a,b")
    assert {get_attribute(n, "role") for n in nodes.members.values()} == {"member"}


def test_segmenting_again_into_the_same_output_replaces_members_and_uncertainty():
    from CardiacEnsembleLib.slicer.acdc import load_acdc_case
    from CardiacEnsembleLib.slicer.prediction import add_prediction, prediction_nodes
    from CardiacEnsembleLib.slicer.scene import create_scene

    scene = create_scene().scene
    loaded = load_acdc_case(scene, SAMPLE, phases=("ES",))
    prediction = fake_prediction(loaded["ES"].case)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    first = add_prediction(scene, prediction, loaded["ES"].volume, output=output)
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    second = add_prediction(scene, prediction, loaded["ES"].volume, output=output)
    assert second.segmentation is output is first.segmentation
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    assert all(scene.GetNodeByID(n.GetID()) is None for n in first.members.values())
    assert set(prediction_nodes(output).members) == {"a", "b"}
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2  # image + uncertainty


def test_a_prediction_made_on_another_grid_is_refused(sample_loaded):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.prediction import add_prediction

    scene, loaded = sample_loaded
    case = loaded["ED"].case
    cropped = case.replace(image=case.image[1:], labels=case.labels[1:])
    before = scene.GetNumberOfNodes()
    with pytest.raises(SlicerBridgeError, match="not made on the grid of 'patient090 ED'"):
        add_prediction(scene, fake_prediction(cropped), loaded["ED"].volume)
    assert scene.GetNumberOfNodes() == before


def test_the_panel_path_puts_results_under_the_study_with_details_in_a_folder(
        sample_loaded, bridged_prediction):
    from CardiacEnsembleLib.slicer.hierarchy import DETAILS_SUFFIX, hierarchy_of

    scene, loaded = sample_loaded
    _, nodes = bridged_prediction
    hierarchy = hierarchy_of(scene)
    item = hierarchy.GetItemByDataNode
    study = hierarchy.GetItemParent(item(loaded["ED"].volume))
    assert hierarchy.GetItemParent(item(nodes.segmentation)) == study
    folders = {hierarchy.GetItemParent(item(node))
               for node in [*nodes.members.values(), nodes.uncertainty]}
    assert len(folders) == 1 and folders != {study}
    folder = folders.pop()
    assert hierarchy.GetItemParent(folder) == study
    assert hierarchy.GetItemName(folder).endswith(DETAILS_SUFFIX)


def test_a_ground_truth_output_is_refused_before_any_work(sample_loaded):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.segmentations import check_output_segmentation

    _, loaded = sample_loaded
    with pytest.raises(SlicerBridgeError, match="is a ground truth; it cannot be the output"):
        check_output_segmentation(loaded["ED"].ground_truth)
