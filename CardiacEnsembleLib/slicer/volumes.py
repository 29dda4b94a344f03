"""Scalar volume nodes <-> `Case`: one 3D frame in, the same voxels and geometry out.

Geometry crosses without conversion: a `Case`'s RAS affine *is* the volume node's IJKToRAS
matrix, and its (Z, Y, X) array *is* what `arrayFromVolume` returns (see `core.case`). The one
LPS/RAS flip of the package stays in `io`; nothing here flips axes.

Only one scalar 3D frame can be segmented as a volume; `check_volume` refuses anything else (a
label map, a 4D cine read as one volume, a transformed volume, and the displayed frame of a
sequence unless that one frame is asked for) with a message that says what to pick instead. A
whole sequence is segmented by `cine`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import vtk
from slicer.util import arrayFromVolume, updateVolumeFromArray

from CardiacEnsembleLib.core.case import Case, CaseError, Geometry
from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError, describe, get_attribute, \
    set_attribute

#: Case metadata kept as attributes of its volume node (and read back by `case_from_volume`).
CASE_ATTRIBUTES = ("patient_id", "phase", "frame", "group", "height_cm", "weight_kg", "source")


def vtk_matrix(affine: np.ndarray):
    """A 4x4 array as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(affine[row, column]))
    return matrix


def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's IJKToRAS matrix as a 4x4 array (= `Geometry.affine`)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def add_volume(scene, case: Case, name: Optional[str] = None):
    """A scalar volume node holding `case.image` on `case.geometry`, with the case's metadata."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                   name or case.name.replace("_", " "))
    node.SetIJKToRASMatrix(vtk_matrix(case.geometry.affine))
    updateVolumeFromArray(node, np.ascontiguousarray(case.image))
    node.CreateDefaultDisplayNodes()
    for key in CASE_ATTRIBUTES:
        set_attribute(node, key, getattr(case, key))
    set_attribute(node, "role", "image")
    return node


def add_volume_like(scene, reference_volume, array: np.ndarray, name: str,
                    class_name: str = "vtkMRMLScalarVolumeNode"):
    """A volume node of `class_name` holding `array` on the grid of `reference_volume`."""
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras(reference_volume)))
    updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


def sequence_frames(node) -> int:
    """Frames of the sequence this node shows the current frame of (0: not a sequence proxy)."""
    scene = node.GetScene()
    if scene is None:
        return 0
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for index in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(index)
        if browser.IsProxyNodeID(node.GetID()):
            sequence = browser.GetMasterSequenceNode()
            return sequence.GetNumberOfDataNodes() if sequence is not None else 1
    return 0


def check_volume(volume_node, *, allow_sequence_frame: bool = False):
    """Refuse anything that is not one scalar 3D frame, saying what it is and what to pick."""
    if volume_node is None:
        raise SlicerBridgeError("no input volume selected: load an ACDC case or pick the image "
                                "volume (one ED or ES frame) to segment")
    _check_kind(volume_node)
    _check_one_component(volume_node)
    frames = sequence_frames(volume_node)
    if frames > 1 and not allow_sequence_frame:
        raise SlicerBridgeError(
            f"{describe(volume_node)} shows one frame of a {frames}-frame sequence: segment "
            f"the whole cine (the panel's Segment, or logic.segmentCine), or only the frame "
            f"shown now (logic.segment(..., sequenceFrame=True))")
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        raise SlicerBridgeError(
            f"{describe(volume_node)} is under the transform '{transform.GetName()}'; harden "
            f"it first (Data module, right-click the volume, 'Harden transform') so the grid "
            f"that is segmented is the one you see")
    return volume_node


def _check_kind(volume_node) -> None:
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise SlicerBridgeError(f"{describe(volume_node)} is not an image volume; pick a "
                                f"scalar volume (one cardiac MR frame)")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise SlicerBridgeError(f"{describe(volume_node)} is a label map, not an image; pick "
                                f"the MR frame it labels")
    for kind in ("vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode",
                 "vtkMRMLDiffusionWeightedVolumeNode"):
        if volume_node.IsA(kind):
            raise SlicerBridgeError(f"{describe(volume_node)} holds several values per voxel "
                                    f"(not a scalar image); pick one grey-value MR frame")


def _check_one_component(volume_node) -> None:
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise SlicerBridgeError(f"{describe(volume_node)} has no image data (nothing loaded)")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise SlicerBridgeError(
            f"{describe(volume_node)} has {components} values per voxel: a 4D cine (or colour "
            f"image) loaded as one volume. Load the cine as a volume sequence instead (it is "
            f"then segmented frame by frame), or pick one 3D frame (the ED or ES file)")


def case_from_volume(volume_node, ground_truth=None, *,
                     allow_sequence_frame: bool = False) -> Case:
    """A volume node (and optionally its ground-truth segmentation) as a `Case`.

    Exact inverse of `add_volume`: the same float32 voxels, affine and metadata. The image is a
    copy, so the Case does not alias VTK memory a user may edit or free meanwhile.
    """
    check_volume(volume_node, allow_sequence_frame=allow_sequence_frame)
    image = arrayFromVolume(volume_node)
    if image.ndim != 3:
        raise SlicerBridgeError(f"{describe(volume_node)} is not a 3D image "
                                f"(array shape {image.shape})")
    try:
        geometry = Geometry(ijk_to_ras(volume_node))
    except CaseError as error:
        raise SlicerBridgeError(f"{describe(volume_node)}: {error}") from error
    labels = None
    if ground_truth is not None:
        # segmentations builds on this module; imported here so the dependency stays one-way
        from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation

        labels = labels_from_segmentation(ground_truth, volume_node)

    def number(key, kind):
        value = get_attribute(volume_node, key)
        return None if value is None else kind(float(value) if kind is int else value)

    return Case(image=np.array(image, dtype=np.float32, copy=True), geometry=geometry,
                labels=labels,
                patient_id=get_attribute(volume_node, "patient_id") or volume_node.GetName(),
                phase=get_attribute(volume_node, "phase") or "",
                frame=number("frame", int), group=get_attribute(volume_node, "group"),
                height_cm=number("height_cm", float), weight_kg=number("weight_kg", float),
                source=get_attribute(volume_node, "source") or _file_of(volume_node))


def _file_of(node) -> str:
    """The file a node was loaded from (for messages), else its name."""
    storage = node.GetStorageNode()
    return (storage.GetFileName() if storage is not None else None) or node.GetName()
