"""Volume nodes <-> Case (`CardiacEnsembleLib.slicer.volumes`) on a real MRML scene: the same
voxels, geometry and metadata both ways, and every volume that cannot be segmented refused with
a message saying what to pick."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mrml_fixtures import requires_mrml, sample_loaded, scene  # noqa: F401  (fixtures)

pytestmark = requires_mrml

LPS = np.diag([-1.0, -1.0, 1.0])


def corners(shape_zyx):
    z, y, x = shape_zyx
    return [(i, j, k) for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)]


# --------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("patient, phase", [("patient001", "ED"), ("patient090", "ES")])
def test_frame_to_volume_to_segmentation_and_back_is_exact(scene, patient_dir, patient, phase):
    import SimpleITK as sitk
    import vtk

    from CardiacEnsembleLib.io.acdc import PatientFolder
    from CardiacEnsembleLib.io.images import read_image
    from CardiacEnsembleLib.slicer.segmentations import add_segmentation, \
        labels_from_segmentation
    from CardiacEnsembleLib.slicer.volumes import add_volume, case_from_volume

    folder = PatientFolder.open(patient_dir(patient))
    case = folder.load(phase)
    volume = add_volume(scene, case)

    again = case_from_volume(volume)
    np.testing.assert_array_equal(again.image, case.image)
    np.testing.assert_array_equal(again.geometry.affine, case.geometry.affine)
    assert (again.patient_id, again.phase, again.frame, again.group, again.height_cm,
            again.weight_kg) == (case.patient_id, case.phase, case.frame, case.group,
                                 case.height_cm, case.weight_kg)

    segmentation = add_segmentation(scene, case.labels, volume, "ground truth")
    labels = labels_from_segmentation(segmentation, volume)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, case.labels)  # voxel for voxel

    # RAS of the corner voxels: the node's own IJKToRAS against ITK's reading of the file
    _, geometry = read_image(folder.frame_path(phase))
    itk = sitk.ReadImage(str(folder.frame_path(phase)))
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    for ijk in corners(case.image.shape):
        ras_node = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
        ras_io = (geometry.affine @ np.array([*ijk, 1.0]))[:3]
        ras_itk = LPS @ np.array(itk.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(ras_node, ras_io, atol=1e-9)
        np.testing.assert_allclose(ras_node, ras_itk, atol=1e-4)
    assert volume.GetSpacing() == pytest.approx(tuple(itk.GetSpacing()))


def test_oblique_geometry_round_trips_exactly(scene):
    """ACDC frames are axis-aligned; a rotated, shifted grid must survive the same way."""
    from CardiacEnsembleLib.core.case import Case, Geometry
    from CardiacEnsembleLib.slicer.segmentations import add_segmentation, \
        labels_from_segmentation
    from CardiacEnsembleLib.slicer.volumes import add_volume, case_from_volume, ijk_to_ras

    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0],
                         [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    geometry = Geometry.from_spacing((1.3, 1.7, 8.0), (-12.5, 40.25, 3.0),
                                     rotation @ np.diag([-1.0, 1.0, 1.0]))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(4, 9, 11)).astype(np.uint8)
    case = Case(rng.normal(size=(4, 9, 11)).astype(np.float32), geometry, labels,
                patient_id="synthetic", phase="ED")
    volume = add_volume(scene, case)
    np.testing.assert_array_equal(ijk_to_ras(volume), geometry.affine)
    again = case_from_volume(volume)
    np.testing.assert_array_equal(again.image, case.image)
    np.testing.assert_array_equal(again.geometry.affine, geometry.affine)
    segmentation = add_segmentation(scene, labels, volume, "labels")
    np.testing.assert_array_equal(labels_from_segmentation(segmentation), labels)


def test_a_volume_with_its_ground_truth_is_the_case_with_labels(sample_loaded):
    from CardiacEnsembleLib.slicer.volumes import case_from_volume

    _, loaded = sample_loaded
    phase = loaded["ES"]
    case = case_from_volume(phase.volume, phase.ground_truth)
    np.testing.assert_array_equal(case.labels, phase.case.labels)
    np.testing.assert_array_equal(case.image, phase.case.image)
    assert case.name == "patient090_ES"


# --------------------------------------------------------------------------- bad input

def test_no_volume_is_refused_with_a_clear_message():
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.volumes import case_from_volume

    with pytest.raises(SlicerBridgeError, match="no input volume selected"):
        case_from_volume(None)


def test_4d_array_volume_is_refused(scene):
    """A cine read as one volume: 12 time points become 12 components per voxel."""
    import vtk
    from vtk.util import numpy_support

    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.volumes import case_from_volume

    cine = np.zeros((7, 16, 16, 12), np.float32)  # (Z, Y, X, T)
    image = vtk.vtkImageData()
    image.SetDimensions(16, 16, 7)
    image.AllocateScalars(vtk.VTK_FLOAT, 12)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(cine.reshape(-1, 12), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cine as one volume")
    node.SetAndObserveImageData(image)
    with pytest.raises(SlicerBridgeError, match="12 values per voxel: a 4D cine"):
        case_from_volume(node)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "cine as a vector volume")
    vector.SetAndObserveImageData(image)
    with pytest.raises(SlicerBridgeError, match="several values per voxel"):
        case_from_volume(vector)


def test_displayed_frame_of_a_sequence_is_refused(scene):
    import slicer
    from slicer.util import updateVolumeFromArray

    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.volumes import check_volume

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
    with pytest.raises(SlicerBridgeError, match="3-frame sequence"):
        check_volume(proxy)
    assert check_volume(proxy, allow_sequence_frame=True) is proxy


def test_label_map_and_transformed_volumes_are_refused(scene, sample_loaded):
    from slicer.util import updateVolumeFromArray

    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.volumes import add_volume, case_from_volume, check_volume

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    updateVolumeFromArray(labelmap, np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(SlicerBridgeError, match="is a label map"):
        check_volume(labelmap)
    moved = add_volume(scene, sample_loaded[1]["ED"].case, "moved")
    moved.SetAndObserveTransformNodeID(
        scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt").GetID())
    with pytest.raises(SlicerBridgeError, match="harden it first"):
        case_from_volume(moved)
