"""The MRML bridge on a real Slicer scene (slicer-core): geometry, segments, tables, files.

Everything the module's panel and the headless script do to a scene goes through
`CardiacEnsembleLib.slicer_bridge`, so these tests exercise the Slicer side for real, on real
ACDC data, without the Slicer application (which cannot run here).
"""
from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

try:
    import slicer

    HAVE_MRML = hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkMRMLSegmentationNode")
except ImportError:
    HAVE_MRML = False

pytestmark = pytest.mark.skipif(
    not HAVE_MRML, reason="Slicer's MRML classes are not importable: install the test extra "
    "(pip install -e '.[test]', which pins slicer-core==5.13.31053.0)")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "CardiacEnsembleLib" / "sample" / "patient090"
HEADLESS = ROOT / "Testing" / "Python" / "headless_segment.py"
LPS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def bridge():
    from CardiacEnsembleLib import slicer_bridge

    return slicer_bridge


@pytest.fixture
def scene(bridge):
    return bridge.create_scene().scene


@pytest.fixture(scope="module")
def sample_loaded(bridge):
    """patient090 (the shipped sample), both phases, in a scene kept for the module."""
    wired = bridge.create_scene()
    return wired.scene, bridge.load_acdc_case(wired.scene, SAMPLE)


@pytest.fixture(scope="module")
def untrained_ensemble(untrained_models):
    from CardiacEnsembleLib.ensemble import load_ensemble

    return load_ensemble(untrained_models, device="cpu")


@pytest.fixture(scope="module")
def bridged_prediction(bridge, sample_loaded, untrained_ensemble):
    """The ED frame segmented through the bridge's background job, as the panel does it."""
    scene, loaded = sample_loaded
    job = bridge.SegmentationJob(loaded["ED"].volume, untrained_ensemble)
    assert job.wait(timeout=300), "segmentation job did not finish"
    return job, job.finish(name="patient090 ED prediction")


def corners(shape_zyx):
    z, y, x = shape_zyx
    return [(i, j, k) for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)]


# --------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("patient, phase", [("patient001", "ED"), ("patient090", "ES")])
def test_frame_to_volume_to_segmentation_and_back_is_exact(bridge, scene, patient_dir,
                                                           patient, phase):
    import SimpleITK as sitk

    from CardiacEnsembleLib.acdc import PatientFolder
    from CardiacEnsembleLib.io import read_image

    folder = PatientFolder.open(patient_dir(patient))
    case = folder.load(phase)
    volume = bridge.add_volume(scene, case)

    again = bridge.case_from_volume(volume)
    np.testing.assert_array_equal(again.image, case.image)
    np.testing.assert_array_equal(again.geometry.affine, case.geometry.affine)
    assert (again.patient_id, again.phase, again.frame, again.group, again.height_cm,
            again.weight_kg) == (case.patient_id, case.phase, case.frame, case.group,
                                 case.height_cm, case.weight_kg)

    segmentation = bridge.add_segmentation(scene, case.labels, volume, "ground truth")
    labels = bridge.labels_from_segmentation(segmentation, volume)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, case.labels)  # voxel for voxel

    # RAS of the corner voxels: the node's own IJKToRAS against ITK's reading of the file
    _, geometry = read_image(folder.frame_path(phase))
    itk = sitk.ReadImage(str(folder.frame_path(phase)))
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    for ijk in corners(case.image.shape):
        ras_node = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
        ras_io = (geometry.affine @ np.array([*ijk, 1.0]))[:3]
        ras_itk = LPS @ np.array(itk.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(ras_node, ras_io, atol=1e-9)
        np.testing.assert_allclose(ras_node, ras_itk, atol=1e-4)
    assert volume.GetSpacing() == pytest.approx(tuple(itk.GetSpacing()))


def test_oblique_geometry_round_trips_exactly(bridge, scene):
    """ACDC frames are axis-aligned; a rotated, shifted grid must survive the same way."""
    from CardiacEnsembleLib.case import Case, Geometry

    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0],
                         [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    geometry = Geometry.from_spacing((1.3, 1.7, 8.0), (-12.5, 40.25, 3.0),
                                     rotation @ np.diag([-1.0, 1.0, 1.0]))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(4, 9, 11)).astype(np.uint8)
    case = Case(rng.normal(size=(4, 9, 11)).astype(np.float32), geometry, labels,
                patient_id="synthetic", phase="ED")
    volume = bridge.add_volume(scene, case)
    np.testing.assert_array_equal(bridge.ijk_to_ras(volume), geometry.affine)
    again = bridge.case_from_volume(volume)
    np.testing.assert_array_equal(again.image, case.image)
    np.testing.assert_array_equal(again.geometry.affine, geometry.affine)
    segmentation = bridge.add_segmentation(scene, labels, volume, "labels")
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation), labels)


# --------------------------------------------------------------------------- segments

def test_segments_are_named_coloured_and_coded(bridge, sample_loaded):
    scene, loaded = sample_loaded
    segmentation = loaded["ED"].ground_truth.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName()
            for i in range(segmentation.GetNumberOfSegments())] == \
        ["RV cavity", "LV myocardium", "LV cavity"]
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    expected = {  # segment -> (type code, type meaning, region code)
        "RV cavity": ("53085002", "Right ventricle", ""),
        "LV myocardium": ("74281007", "Myocardium", "87878005"),
        "LV cavity": ("87878005", "Left ventricle", ""),
    }
    colours = {"RV cavity": (0.0, 0.592, 0.808), "LV myocardium": (0.302, 0.686, 0.290),
               "LV cavity": (0.886, 0.102, 0.110)}
    for name, (code, meaning, region) in expected.items():
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        assert segment.GetColor() == pytest.approx(colours[name])
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
        assert entry.GetCategoryObject().GetCodeValue() == "123037004"
        type_object = entry.GetTypeObject()
        assert (type_object.GetCodingSchemeDesignator(), type_object.GetCodeValue(),
                type_object.GetCodeMeaning()) == ("SCT", code, meaning)
        assert (entry.GetRegionObject().GetCodeValue() or "") == region


def test_ground_truth_volumes_and_nodes_are_named_after_the_patient(sample_loaded, bridge):
    scene, loaded = sample_loaded
    assert loaded["ED"].volume.GetName() == "patient090 ED"
    assert loaded["ES"].ground_truth.GetName() == "patient090 ES ground truth"
    assert bridge.get_attribute(loaded["ES"].ground_truth, "phase") == "ES"
    assert bridge.reference_volume_of(loaded["ES"].ground_truth) is loaded["ES"].volume


# --------------------------------------------------------------------------- tables

def test_metrics_table_rows_and_values(bridge, scene, tmp_path, sample_loaded):
    from CardiacEnsembleLib.metrics import clinical_indices, score_labels

    _, loaded = sample_loaded
    ed, es = loaded["ED"].case, loaded["ES"].case
    shifted = np.roll(ed.labels, 2, axis=2)  # a wrong segmentation with known scores
    scores = score_labels(shifted, ed.labels, ed.spacing_zyx)
    indices = clinical_indices(shifted, es.labels, ed.spacing_zyx)
    rows = (bridge.score_rows(scores, patient="patient090", phase="ED", method="shifted")
            + bridge.clinical_rows(indices, patient="patient090", method="shifted"))
    table = bridge.add_metrics_table(scene, rows, "metrics")

    assert table.GetNumberOfRows() == 3 * 3 + 7
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == \
        list(bridge.TABLE_COLUMNS)
    read = bridge.table_rows(table)
    assert read == rows
    by_key = {(r.phase, r.structure, r.measure): r for r in read}
    for structure, score in scores.items():
        assert by_key[("ED", structure, "Dice")].value == score.dice
        assert by_key[("ED", structure, "HD95")].value == score.hd95_mm
        assert by_key[("ED", structure, "HD95")].unit == "mm"
    assert by_key[("ED+ES", "LV", "EF")].value == indices.lv_ef_pct
    assert by_key[("ED", "Myo", "mass")].value == indices.myo_mass_ed_g
    assert by_key[("ES", "RV", "volume")].unit == "ml"

    path = bridge.write_table_csv(table, tmp_path / "metrics.csv")
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows)
    assert float(written[0]["value"]) == rows[0].value  # full precision, not 6 digits
    with pytest.raises(FileExistsError):
        bridge.write_table_csv(table, path)


# --------------------------------------------------------------------------- ensemble

def test_bridge_segmentation_equals_ensemble_predict(bridge, sample_loaded,
                                                     untrained_ensemble, bridged_prediction):
    scene, loaded = sample_loaded
    job, nodes = bridged_prediction
    direct = untrained_ensemble.predict(loaded["ED"].case)
    labels = bridge.labels_from_segmentation(nodes.segmentation)
    np.testing.assert_array_equal(labels, direct.labels)
    assert set(nodes.members) == {"unet-mnv2", "linknet-mnv2", "fpn-mnv2"}
    for member in direct.members:
        node = nodes.members[member.name]
        assert not node.GetDisplayNode().GetVisibility(), "member results are hidden"
        np.testing.assert_array_equal(bridge.labels_from_segmentation(node), member.labels)
    from slicer.util import arrayFromVolume

    np.testing.assert_allclose(arrayFromVolume(nodes.uncertainty), direct.uncertainty,
                               atol=1e-6)
    assert bridge.get_attribute(nodes.segmentation, "method") == "ensemble-mean"
    assert job.status().done and job.status().fraction == 1.0
    linked = bridge.prediction_nodes(nodes.segmentation)
    assert linked.uncertainty is nodes.uncertainty and set(linked.members) == set(nodes.members)


def test_cancelled_segmentation_adds_nothing(bridge, sample_loaded, untrained_ensemble):
    from CardiacEnsembleLib.inference import Cancelled

    scene, loaded = sample_loaded
    before = scene.GetNumberOfNodes()
    job = bridge.SegmentationJob(loaded["ES"].volume, untrained_ensemble)
    job.cancel()
    assert job.wait(timeout=120)
    with pytest.raises(Cancelled):
        job.finish()
    assert scene.GetNumberOfNodes() == before


def test_edited_segmentation_scores_the_lower_dice_the_library_computes(bridge, sample_loaded):
    """Erode the LV myocardium by one voxel (in-plane), as an editor would, and re-evaluate."""
    from scipy import ndimage

    from CardiacEnsembleLib.metrics import score_labels

    scene, loaded = sample_loaded
    volume, truth = loaded["ED"].volume, loaded["ED"].ground_truth
    edited = bridge.add_segmentation(scene, loaded["ED"].case.labels, volume, "edited")
    labels = bridge.labels_from_segmentation(edited)
    myocardium = labels == 2
    eroded = ndimage.binary_erosion(myocardium, structure=np.ones((1, 3, 3), bool))
    labels[myocardium & ~eroded] = 0
    bridge.fill_segmentation(edited, labels, volume)  # the re-import
    np.testing.assert_array_equal(bridge.labels_from_segmentation(edited), labels)

    rows = bridge.evaluate_segmentation(edited, truth)
    dice = {r.structure: r.value for r in rows if r.measure == "Dice"}
    expected = score_labels(labels, loaded["ED"].case.labels, loaded["ED"].case.spacing_zyx)
    assert dice == {s: score.dice for s, score in expected.items()}
    assert dice["Myo"] < 1.0 and dice["RV"] == 1.0 and dice["LV"] == 1.0


def _import_module_without_qt(monkeypatch, scene):
    """CardiacEnsemble.py with Qt and the app-only parts of `slicer` replaced by stubs.

    The Logic holds no Qt, so with `slicer.mrmlScene` pointed at a wired slicer-core scene it
    runs for real; only the Widget (never instantiated here) would need the application.
    """
    import importlib.util
    import types

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (Base,), {}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: tuple(choices)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location(
        "CardiacEnsemble", ROOT / "CardiacEnsemble" / "CardiacEnsemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_logic_loads_segments_and_evaluates_like_the_bridge(
        bridge, monkeypatch, untrained_models, bridged_prediction):
    wired = bridge.create_scene()
    module = _import_module_without_qt(monkeypatch, wired.scene)
    logic = module.CardiacEnsembleLogic()
    assert logic.shippedMemberNames(str(untrained_models)) == \
        ["unet-mnv2", "linknet-mnv2", "fpn-mnv2"]
    loaded = logic.loadACDCCase(SAMPLE, phases=("ED",))
    volume, truth = loaded["ED"].volume, loaded["ED"].ground_truth
    with pytest.raises(bridge.SlicerBridgeError, match="no input volume"):
        logic.segment(None, modelsDir=str(untrained_models), device="cpu")
    nodes = logic.segment(volume, modelsDir=str(untrained_models), device="cpu", wait=True)
    expected = bridge.labels_from_segmentation(bridged_prediction[1].segmentation)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(nodes.segmentation), expected)
    assert logic.uncertaintyVolume(nodes.segmentation) is nodes.uncertainty
    table = logic.evaluate(nodes.segmentation, truth)
    assert bridge.table_rows(table) == bridge.evaluate_segmentation(nodes.segmentation, truth)
    assert logic.evaluate(nodes.segmentation, truth) is table  # Evaluate again reuses it
    assert logic.diceSummary(table).startswith("Dice: RV ")


# --------------------------------------------------------------------------- files

def _fake_prediction(case):
    """A Prediction built from the ground truth (no network): cheap results for file tests."""
    from CardiacEnsembleLib.case import MemberOutput, Prediction

    rolled = np.roll(case.labels, 1, axis=1)
    uncertainty = np.linspace(0, 1, case.labels.size, dtype=np.float32).reshape(case.labels.shape)
    return Prediction(labels=np.roll(case.labels, 1, axis=2), probabilities=None,
                      members=[MemberOutput("a", case.labels, 0.1), MemberOutput("b", rolled, 0.2)],
                      uncertainty=uncertainty, disagreement=np.zeros_like(uncertainty),
                      geometry=case.geometry, fusion="vote", device="cpu", case_name=case.name)


@pytest.mark.parametrize("scene_file", ["scene.mrml", "scene.mrb"])
def test_scene_with_results_saves_and_reloads_intact(bridge, tmp_path, scene_file):
    from slicer.util import arrayFromVolume

    wired = bridge.create_scene()
    loaded = bridge.load_acdc_case(wired.scene, SAMPLE, phases=("ED",))
    case, volume = loaded["ED"].case, loaded["ED"].volume
    prediction = _fake_prediction(case)
    nodes = bridge.add_prediction(wired.scene, prediction, volume, name="result")
    rows = bridge.evaluate_segmentation(nodes.segmentation, loaded["ED"].ground_truth)
    bridge.add_metrics_table(wired.scene, rows, "result metrics")

    path = bridge.save_scene(wired.scene, tmp_path / scene_file)
    with pytest.raises(FileExistsError):
        bridge.save_scene(wired.scene, path)
    reloaded = bridge.load_scene(path).scene

    result = bridge.node_by_name(reloaded, "result", "vtkMRMLSegmentationNode")
    segmentation = result.GetSegmentation()
    for spec in bridge.SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
        assert segment.GetTerminology() == spec.terminology
        assert segment.GetColor() == pytest.approx(spec.color)
    again_volume = bridge.node_by_name(reloaded, "patient090 ED", "vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(arrayFromVolume(again_volume), case.image)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(result, again_volume),
                                  prediction.labels)
    linked = bridge.prediction_nodes(result)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(linked.members["b"]),
                                  prediction.members[1].labels)
    assert not linked.members["b"].GetDisplayNode().GetVisibility()
    np.testing.assert_array_equal(arrayFromVolume(linked.uncertainty), prediction.uncertainty)
    table = bridge.node_by_name(reloaded, "result metrics", "vtkMRMLTableNode")
    again_rows = bridge.table_rows(table)
    # Slicer's table writer keeps 6 significant digits (the CSV export keeps all of them)
    assert [replace(r, value=0.0) for r in again_rows] == [replace(r, value=0.0) for r in rows]
    assert [r.value for r in again_rows] == pytest.approx([r.value for r in rows], rel=1e-5,
                                                          nan_ok=True)
    assert any(0.0 < r.value < 1.0 for r in rows if r.measure == "Dice")
    assert bridge.get_attribute(result, "method") == "ensemble-vote"


def test_segmenting_again_into_the_same_output_replaces_members_and_uncertainty(bridge):
    wired = bridge.create_scene()
    scene = wired.scene
    loaded = bridge.load_acdc_case(scene, SAMPLE, phases=("ES",))
    prediction = _fake_prediction(loaded["ES"].case)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    first = bridge.add_prediction(scene, prediction, loaded["ES"].volume, output=output)
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    second = bridge.add_prediction(scene, prediction, loaded["ES"].volume, output=output)
    assert second.segmentation is output is first.segmentation
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count
    assert all(scene.GetNodeByID(n.GetID()) is None for n in first.members.values())
    assert set(bridge.prediction_nodes(output).members) == {"a", "b"}
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2  # image + uncertainty


def test_a_failing_background_job_hands_its_error_to_the_main_thread():
    from CardiacEnsembleLib.jobs import BackgroundJob

    def work(progress, cancel):
        progress(1, 4, "first")
        raise ArithmeticError("member 2 failed")

    job = BackgroundJob(work, name="failing")
    assert job.wait(timeout=30)
    status = job.status()
    assert (status.done, status.completed, status.total, status.message) == (True, 1, 4, "first")
    with pytest.raises(ArithmeticError, match="member 2 failed"):
        job.result()


def test_segmentation_file_keeps_names_terminology_and_voxels(bridge, sample_loaded, tmp_path):
    scene, loaded = sample_loaded
    path = bridge.save_segmentation(loaded["ES"].ground_truth, tmp_path / "gt.seg.nrrd")
    fresh = bridge.create_scene().scene
    node = fresh.AddNewNodeByClass("vtkMRMLSegmentationNode", "read")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetTerminology() for i in range(3)] == \
        [spec.terminology for spec in bridge.SEGMENTS]
    volume = bridge.add_volume(fresh, loaded["ES"].case)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(node, volume),
                                  loaded["ES"].case.labels)
    with pytest.raises(FileExistsError):
        bridge.save_segmentation(loaded["ES"].ground_truth, path)


def test_mrb_refuses_a_segmentation_without_segments(bridge, scene, tmp_path):
    scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing yet")
    with pytest.raises(bridge.SlicerBridgeError, match="nothing yet"):
        bridge.save_scene(scene, tmp_path / "scene.mrb")
    assert not (tmp_path / "scene.mrb").exists()


# --------------------------------------------------------------------------- bad input

def test_no_volume_is_refused_with_a_clear_message(bridge, untrained_ensemble):
    with pytest.raises(bridge.SlicerBridgeError, match="no input volume selected"):
        bridge.case_from_volume(None)
    with pytest.raises(bridge.SlicerBridgeError, match="no input volume selected"):
        bridge.SegmentationJob(None, untrained_ensemble)


def test_4d_array_volume_is_refused(bridge, scene):
    """A cine read as one volume: 12 time points become 12 components per voxel."""
    import vtk
    from vtk.util import numpy_support

    cine = np.zeros((7, 16, 16, 12), np.float32)  # (Z, Y, X, T)
    image = vtk.vtkImageData()
    image.SetDimensions(16, 16, 7)
    image.AllocateScalars(vtk.VTK_FLOAT, 12)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(cine.reshape(-1, 12), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cine as one volume")
    node.SetAndObserveImageData(image)
    with pytest.raises(bridge.SlicerBridgeError, match="12 values per voxel: a 4D cine"):
        bridge.case_from_volume(node)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "cine as a vector volume")
    vector.SetAndObserveImageData(image)
    with pytest.raises(bridge.SlicerBridgeError, match="several values per voxel"):
        bridge.case_from_volume(vector)


def test_displayed_frame_of_a_sequence_is_refused(bridge, scene):
    from slicer.util import updateVolumeFromArray

    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    for frame in range(3):
        volume = slicer.vtkMRMLScalarVolumeNode()
        updateVolumeFromArray(volume, np.full((2, 3, 4), frame, np.float32))
        sequence.SetDataNodeAtValue(volume, str(frame))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    proxy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cine frame")
    updateVolumeFromArray(proxy, np.zeros((2, 3, 4), np.float32))
    browser.AddProxyNode(proxy, sequence, False)
    with pytest.raises(bridge.SlicerBridgeError, match="3-frame sequence"):
        bridge.check_volume(proxy)


def test_label_map_and_transformed_volumes_are_refused(bridge, scene, sample_loaded):
    from slicer.util import updateVolumeFromArray

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    updateVolumeFromArray(labelmap, np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(bridge.SlicerBridgeError, match="is a label map"):
        bridge.check_volume(labelmap)
    moved = bridge.add_volume(scene, sample_loaded[1]["ED"].case, "moved")
    moved.SetAndObserveTransformNodeID(
        scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt").GetID())
    with pytest.raises(bridge.SlicerBridgeError, match="harden it first"):
        bridge.case_from_volume(moved)


def test_unknown_segment_name_is_refused_listing_the_expected_names(bridge, scene,
                                                                    sample_loaded):
    case = sample_loaded[1]["ED"].case
    volume = bridge.add_volume(scene, case)
    segmentation = bridge.add_segmentation(scene, case.labels, volume, "edited")
    segmentation.GetSegmentation().AddEmptySegment("extra", "Segment_1")
    with pytest.raises(bridge.SlicerBridgeError) as error:
        bridge.labels_from_segmentation(segmentation)
    message = str(error.value)
    assert "'Segment_1'" in message
    assert "'RV cavity', 'LV myocardium', 'LV cavity'" in message
    assert isinstance(error.value, ValueError)


# --------------------------------------------------------------------------- headless

def test_headless_script_segments_a_patient_and_refuses_to_overwrite(bridge, tmp_path,
                                                                     untrained_models):
    patient = tmp_path / "patient090"
    shutil.copytree(SAMPLE, patient)
    out = tmp_path / "out"
    command = [sys.executable, str(HEADLESS), str(patient), str(out),
               "--models", str(untrained_models), "--device", "cpu"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "patient090_ED.seg.nrrd", "patient090_ES.seg.nrrd", "patient090_metrics.csv"]

    fresh = bridge.create_scene().scene
    for phase in ("ED", "ES"):
        node = fresh.AddNewNodeByClass("vtkMRMLSegmentationNode", phase)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(out / f"patient090_{phase}.seg.nrrd"))
        assert storage.ReadData(node)
        segmentation = node.GetSegmentation()
        assert [(segmentation.GetNthSegment(i).GetName(),
                 segmentation.GetNthSegment(i).GetTerminology()) for i in range(3)] == \
            [(spec.name, spec.terminology) for spec in bridge.SEGMENTS]

    with open(out / "patient090_metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = [r for r in rows if r["measure"] in ("Dice", "HD95", "MSD")]
    assert len(scores) == 2 * 3 * 3
    assert {r["method"] for r in scores} == {"ensemble-mean"}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in scores if r["measure"] == "Dice")
    clinical = [r for r in rows if r["measure"] in ("volume", "EF", "mass")]
    assert {r["method"] for r in clinical} == {"ensemble-mean", "ground truth"}
    assert len(clinical) == 2 * 7

    before = (out / "patient090_metrics.csv").read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert (out / "patient090_metrics.csv").read_bytes() == before
