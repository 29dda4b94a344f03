"""The package's data model <-> 3D Slicer's MRML scene: volumes, segmentations, tables, files.

This module imports only the MRML classes of `slicer`, `vtk` and the array helpers of
`slicer.util` (never qt, ctk, `slicer.app` or `slicer.mrmlScene`), and takes the scene as an
argument, so the same code runs inside the Slicer application and on the `slicer-core` wheel in
CI. The module widget, the headless script and the tests all go through it.

Geometry crosses without conversion: a `Case`'s RAS affine *is* the volume node's IJKToRAS
matrix, and its (Z, Y, X) array *is* what `arrayFromVolume` returns (see `case.py`). The one
LPS/RAS flip of the package stays in `io`; nothing here flips axes.

Segments are named and coloured after ACDC's labels and carry standard SNOMED-CT terminology
(`SEGMENTS`); a segmentation edited in the Segment Editor comes back as a label map by segment
*name*, so reordering or recolouring segments changes nothing, and a stray segment is an error.
"""
from __future__ import annotations

import csv
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, updateVolumeFromArray

from .acdc import PHASES, PatientFolder
from .case import LABEL_NAMES, Case, CaseError, Geometry, Prediction, validate_labels
from .jobs import BackgroundJob
from .metrics import ClinicalIndices, StructureScore, clinical_indices, score_labels


class SlicerBridgeError(ValueError):
    """Input the bridge cannot use; the message names the node and what to do about it."""


# --------------------------------------------------------------------------- segments

#: Slicer's terminology context names (the lists the codes below are looked up in).
TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
_EMPTY_CODE = "^^"


def terminology_string(type_code: str, *, region: str = _EMPTY_CODE,
                       type_modifier: str = _EMPTY_CODE,
                       region_modifier: str = _EMPTY_CODE) -> str:
    """A segment terminology entry in Slicer's serialised form.

    `context~category~type~typeModifier~regionContext~region~regionModifier`, each code as
    `scheme^value^meaning`: the format `vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry`
    writes and `vtkSegment.SetTerminology` stores (and `.seg.nrrd` keeps as a segment tag).
    """
    return "~".join([TYPE_CONTEXT, ANATOMICAL_STRUCTURE, type_code, type_modifier,
                     REGION_CONTEXT, region, region_modifier])


@dataclass(frozen=True)
class SegmentSpec:
    label: int  # ACDC label value
    segment_id: str  # stable segment ID inside the segmentation node
    name: str
    color: tuple[float, float, float]  # RGB 0..1
    terminology: str


#: SNOMED-CT codes, from DICOM CID 7152 (Cardiac Structure Segmentation Types: 53085002 Right
#: ventricle, 87878005 Left ventricle) and SNOMED 74281007 Myocardium (structure). ACDC's
#: "cavity" labels are the ventricles' blood pools; DICOM's segmentation type for a ventricle's
#: blood pool is the ventricle itself (as TotalSegmentator and Slicer code them), and the LV
#: myocardium is Myocardium with the anatomic region Left ventricle.
SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(1, "RV_cavity", "RV cavity", (0.0, 0.592, 0.808),
                terminology_string("SCT^53085002^Right ventricle")),
    SegmentSpec(2, "LV_myocardium", "LV myocardium", (0.302, 0.686, 0.290),
                terminology_string("SCT^74281007^Myocardium",
                                   region="SCT^87878005^Left ventricle")),
    SegmentSpec(3, "LV_cavity", "LV cavity", (0.886, 0.102, 0.110),
                terminology_string("SCT^87878005^Left ventricle")),
)
SEGMENT_NAMES: tuple[str, ...] = tuple(spec.name for spec in SEGMENTS)
assert SEGMENT_NAMES == LABEL_NAMES[1:], "segment names must follow case.LABEL_NAMES"

#: Node attributes the bridge writes (and reads back), all under one prefix.
ATTRIBUTE_PREFIX = "CardiacEnsemble."
_CASE_ATTRIBUTES = ("patient_id", "phase", "frame", "group", "height_cm", "weight_kg", "source")
MEMBER_REFERENCE = "CardiacEnsembleMember"
UNCERTAINTY_REFERENCE = "CardiacEnsembleUncertainty"
_TEMPORARY_NAME = "CardiacEnsemble temporary labelmap"


def _set_attribute(node, key: str, value) -> None:
    node.SetAttribute(ATTRIBUTE_PREFIX + key, "" if value is None else str(value))


def get_attribute(node, key: str) -> Optional[str]:
    """A bridge attribute of a node (None when absent or empty)."""
    value = node.GetAttribute(ATTRIBUTE_PREFIX + key)
    return value or None


def _describe(node) -> str:
    return f"'{node.GetName()}' ({node.GetClassName()})"


# --------------------------------------------------------------------------- scene

@dataclass
class SlicerScene:
    """A scene wired the way the Slicer application wires its own.

    The application logic owns the colour logic (default colour tables), the segmentations
    logic and the sequences logic (which registers sequence nodes, e.g. a 4D cine); storage
    nodes and segment display need them. Inside Slicer use `slicer.mrmlScene`
    directly; this is for headless scripts and tests on `slicer-core`.
    """

    scene: object  # vtkMRMLScene
    application_logic: object
    color_logic: object
    segmentations_logic: object
    sequences_logic: object
    temporary_directory: Optional[tempfile.TemporaryDirectory] = None


def create_scene() -> SlicerScene:
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkSlicerColorLogic()
    color_logic.SetMRMLApplicationLogic(application_logic)
    # slicer-core ships no colour *files* (only the built-in tables), and the colour logic logs
    # an error saying so; that absence is expected here, not a fault to show the user.
    warnings = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        color_logic.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings)
    application_logic.SetColorLogic(color_logic)
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLApplicationLogic(application_logic)
    segmentations_logic.SetMRMLScene(scene)
    application_logic.SetModuleLogic("Segmentations", segmentations_logic)
    sequences_logic = slicer.vtkSlicerSequencesLogic()  # registers sequence and browser nodes
    sequences_logic.SetMRMLApplicationLogic(application_logic)
    sequences_logic.SetMRMLScene(scene)
    application_logic.SetModuleLogic("Sequences", sequences_logic)
    # The logics must live as long as the scene: the colour logic removes its default colour
    # tables when it is destroyed, so `create_scene().scene` alone would lose them. VTK keeps a
    # Python attribute of a VTK object for the object's lifetime.
    scene.CardiacEnsembleLogics = (application_logic, color_logic, segmentations_logic,
                                   sequences_logic)
    return SlicerScene(scene, application_logic, color_logic, segmentations_logic,
                       sequences_logic)


# --------------------------------------------------------------------------- volumes

def _matrix(affine: np.ndarray):
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
    node.SetIJKToRASMatrix(_matrix(case.geometry.affine))
    updateVolumeFromArray(node, np.ascontiguousarray(case.image))
    node.CreateDefaultDisplayNodes()
    for key in _CASE_ATTRIBUTES:
        _set_attribute(node, key, getattr(case, key))
    _set_attribute(node, "role", "image")
    return node


def _sequence_frames(node) -> int:
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
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise SlicerBridgeError(f"{_describe(volume_node)} is not an image volume; pick a "
                                f"scalar volume (one cardiac MR frame)")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise SlicerBridgeError(f"{_describe(volume_node)} is a label map, not an image; pick "
                                f"the MR frame it labels")
    for kind in ("vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode",
                 "vtkMRMLDiffusionWeightedVolumeNode"):
        if volume_node.IsA(kind):
            raise SlicerBridgeError(f"{_describe(volume_node)} holds several values per voxel "
                                    f"(not a scalar image); pick one grey-value MR frame")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise SlicerBridgeError(f"{_describe(volume_node)} has no image data (nothing loaded)")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise SlicerBridgeError(
            f"{_describe(volume_node)} has {components} values per voxel: a 4D cine (or colour "
            f"image) loaded as one volume. Segment one 3D frame instead: the ED or ES frame "
            f"file, or one frame of the cine loaded as a sequence")
    frames = _sequence_frames(volume_node)
    if frames > 1 and not allow_sequence_frame:
        raise SlicerBridgeError(
            f"{_describe(volume_node)} is the displayed frame of a {frames}-frame sequence; "
            f"copy the frame you want into its own volume (Sequences module) and segment that, "
            f"so the result cannot silently follow another frame")
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        raise SlicerBridgeError(
            f"{_describe(volume_node)} is under the transform '{transform.GetName()}'; harden "
            f"it first (Data module, right-click the volume, 'Harden transform') so the grid "
            f"that is segmented is the one you see")
    return volume_node


def case_from_volume(volume_node, ground_truth=None, *,
                     allow_sequence_frame: bool = False) -> Case:
    """A volume node (and optionally its ground-truth segmentation) as a `Case`.

    Exact inverse of `add_volume`: the same float32 voxels, affine and metadata. The image is a
    copy, so the Case does not alias VTK memory a user may edit or free meanwhile.
    """
    check_volume(volume_node, allow_sequence_frame=allow_sequence_frame)
    image = arrayFromVolume(volume_node)
    if image.ndim != 3:
        raise SlicerBridgeError(f"{_describe(volume_node)} is not a 3D image "
                                f"(array shape {image.shape})")
    try:
        geometry = Geometry(ijk_to_ras(volume_node))
    except CaseError as error:
        raise SlicerBridgeError(f"{_describe(volume_node)}: {error}") from error
    labels = None if ground_truth is None else labels_from_segmentation(ground_truth,
                                                                         volume_node)

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


def _add_volume_like(scene, reference_volume, array: np.ndarray, name: str,
                     class_name: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetIJKToRASMatrix(_matrix(ijk_to_ras(reference_volume)))
    updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


# --------------------------------------------------------------------------- segmentations

def _check_segmentation_node(node, what: str = "segmentation"):
    if node is None:
        raise SlicerBridgeError(f"no {what} selected")
    if not node.IsA("vtkMRMLSegmentationNode"):
        raise SlicerBridgeError(f"{_describe(node)} is not a segmentation; pick a "
                                f"segmentation node for the {what}")
    return node


def segment_ids_by_name(segmentation_node) -> dict[str, str]:
    """ACDC segment name -> segment ID; any other name, or a missing one, is an error.

    Why strict: a segment the user added ("Segment_1") or renamed has no ACDC label, and
    silently dropping it would score a different segmentation than the one on screen.
    """
    _check_segmentation_node(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName()
             for i in range(segmentation.GetNumberOfSegments())]
    expected = ", ".join(f"'{n}'" for n in SEGMENT_NAMES)
    unknown = [n for n in names if n not in SEGMENT_NAMES]
    if unknown:
        raise SlicerBridgeError(
            f"segmentation '{segmentation_node.GetName()}' has segment(s) "
            f"{', '.join(repr(n) for n in unknown)} with no ACDC label; expected exactly the "
            f"segments {expected} (rename or delete the others)")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SlicerBridgeError(f"segmentation '{segmentation_node.GetName()}' has more than "
                                f"one segment named {', '.join(map(repr, duplicated))}; "
                                f"expected each of {expected} once")
    missing = [n for n in SEGMENT_NAMES if n not in names]
    if missing:
        raise SlicerBridgeError(
            f"segmentation '{segmentation_node.GetName()}' has no segment(s) "
            f"{', '.join(map(repr, missing))}; expected the segments {expected} (an empty "
            f"segment is fine, a deleted one is not)")
    return {name: segmentation.GetSegmentIdBySegmentName(name) for name in SEGMENT_NAMES}


def _style_segments(segmentation) -> None:
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(spec.segment_id)
        segment.SetName(spec.name)
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*spec.color)
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(spec.terminology)


def fill_segmentation(segmentation_node, labels: np.ndarray, reference_volume) -> None:
    """Replace the segments of `segmentation_node` by the three ACDC segments of `labels`.

    The label map goes through a temporary labelmap node on the reference grid and is imported
    into three pre-made segments with stable IDs (label 1, 2, 3 -> RV cavity, LV myocardium,
    LV cavity), so an absent structure still has its (empty) segment.
    """
    scene = segmentation_node.GetScene()
    labels = validate_labels(labels, arrayFromVolume(reference_volume).shape,
                             f"label map for '{segmentation_node.GetName()}'")
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    ids = vtk.vtkStringArray()
    for spec in SEGMENTS:
        segmentation.AddEmptySegment(spec.segment_id, spec.name, list(spec.color))
        ids.InsertNextValue(spec.segment_id)
    labelmap = _add_volume_like(scene, reference_volume, labels, _TEMPORARY_NAME,
                                "vtkMRMLLabelMapVolumeNode")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmap, segmentation_node, ids):
            raise SlicerBridgeError(f"could not import the label map into "
                                    f"'{segmentation_node.GetName()}'")
    finally:
        scene.RemoveNode(labelmap)
    _style_segments(segmentation)


def add_segmentation(scene, labels: np.ndarray, reference_volume, name: str, *,
                     visible: bool = True, node=None):
    """A segmentation node with the three named, coloured, coded ACDC segments of `labels`.

    `node`: an existing segmentation node to overwrite (the panel's output selector) instead
    of adding a new one.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        _check_segmentation_node(node, "output segmentation")
    fill_segmentation(node, labels, reference_volume)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility(bool(visible))
    for key in ("patient_id", "phase"):
        value = get_attribute(reference_volume, key)
        if value is not None:
            _set_attribute(node, key, value)
    return node


def reference_volume_of(segmentation_node):
    """The volume a segmentation was made on (its reference-geometry node), or None."""
    return segmentation_node.GetNodeReference(
        slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())


def labels_from_segmentation(segmentation_node, reference_volume=None) -> np.ndarray:
    """A (possibly edited) segmentation as a uint8 (Z, Y, X) ACDC label map on a volume's grid.

    Segments are found by name (`SEGMENT_NAMES`), exported in label order; where segments
    overlap (possible after editing with overwrite off) the higher label wins: LV cavity over
    LV myocardium over RV cavity.
    """
    ids_by_name = segment_ids_by_name(segmentation_node)
    reference_volume = reference_volume or reference_volume_of(segmentation_node)
    if reference_volume is None:
        raise SlicerBridgeError(f"segmentation '{segmentation_node.GetName()}' has no "
                                f"reference volume; pass the image volume whose grid the "
                                f"label map should use")
    check_volume(reference_volume, allow_sequence_frame=True)
    ids = vtk.vtkStringArray()
    for name in SEGMENT_NAMES:
        ids.InsertNextValue(ids_by_name[name])
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", _TEMPORARY_NAME)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_volume):
            raise SlicerBridgeError(f"could not export '{segmentation_node.GetName()}' to a "
                                    f"label map on the grid of '{reference_volume.GetName()}'")
        labels = np.array(arrayFromVolume(labelmap), copy=True)
    finally:
        scene.RemoveNode(labelmap)
    return validate_labels(labels, labels.shape, f"segmentation '{segmentation_node.GetName()}'")


# --------------------------------------------------------------------------- ACDC cases

@dataclass
class LoadedPhase:
    case: Case
    volume: object  # vtkMRMLScalarVolumeNode
    ground_truth: Optional[object]  # vtkMRMLSegmentationNode, or None without a _gt file


def load_acdc_case(scene, folder: Path | str,
                   phases: Sequence[str] = PHASES) -> dict[str, LoadedPhase]:
    """An ACDC patient folder into the scene: one volume (and ground truth) per phase."""
    patient = PatientFolder.open(folder)
    loaded = {}
    for phase in phases:
        case = patient.load(phase)
        volume = add_volume(scene, case, f"{patient.patient_id} {phase}")
        ground_truth = None
        if case.labels is not None:
            ground_truth = add_segmentation(scene, case.labels, volume,
                                            f"{patient.patient_id} {phase} ground truth")
            _set_attribute(ground_truth, "role", "ground truth")
            _set_attribute(ground_truth, "method", "ground truth")
        loaded[phase] = LoadedPhase(case, volume, ground_truth)
    return loaded


# --------------------------------------------------------------------------- predictions

@dataclass
class PredictionNodes:
    segmentation: object  # vtkMRMLSegmentationNode, the fused result
    members: dict[str, object] = field(default_factory=dict)  # member name -> hidden node
    uncertainty: Optional[object] = None  # vtkMRMLScalarVolumeNode, normalised entropy 0..1


def method_name(prediction: Prediction) -> str:
    """How reports name the fused result, as `evaluation` does: 'ensemble-<rule>'."""
    return f"ensemble-{prediction.fusion}"


def _remove_referenced(node, role: str) -> None:
    scene = node.GetScene()
    for index in reversed(range(node.GetNumberOfNodeReferences(role))):
        old = node.GetNthNodeReference(role, index)
        if old is not None:
            scene.RemoveNode(old)
    node.RemoveNodeReferenceIDs(role)


def _pick_color_node(scene, candidates: Iterable[str]):
    for node_id in candidates:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            return node
    return None


def add_prediction(scene, prediction: Prediction, reference_volume, *,
                   name: Optional[str] = None, output=None, members: bool = True,
                   uncertainty: bool = True) -> PredictionNodes:
    """The ensemble's answer in the scene: fused segmentation, hidden per-member segmentations,
    and the uncertainty map as a volume (re-running into the same output replaces them)."""
    check_volume(reference_volume, allow_sequence_frame=True)
    reference_shape = arrayFromVolume(reference_volume).shape
    if prediction.labels.shape != reference_shape or not prediction.geometry.allclose(
            Geometry(ijk_to_ras(reference_volume)), atol=1e-4):
        raise SlicerBridgeError(
            f"the prediction (shape {prediction.labels.shape}) was not made on the grid of "
            f"'{reference_volume.GetName()}' (shape {reference_shape}); segment that volume "
            f"again")
    base = name or (output.GetName() if output is not None
                    else f"{reference_volume.GetName()} segmentation")
    segmentation = add_segmentation(scene, prediction.labels, reference_volume, base,
                                    node=output)
    for key, value in (("role", "prediction"), ("method", method_name(prediction)),
                       ("fusion", prediction.fusion), ("device", prediction.device),
                       ("members", ",".join(m.name for m in prediction.members)),
                       ("seconds", f"{prediction.timings.get('total', math.nan):.3f}")):
        _set_attribute(segmentation, key, value)
    nodes = PredictionNodes(segmentation)
    _remove_referenced(segmentation, MEMBER_REFERENCE)
    _remove_referenced(segmentation, UNCERTAINTY_REFERENCE)
    if members:
        for member in prediction.members:
            node = add_segmentation(scene, member.labels, reference_volume,
                                    f"{base} [{member.name}]", visible=False)
            _set_attribute(node, "role", "member")
            _set_attribute(node, "method", member.name)
            _set_attribute(node, "seconds", f"{member.seconds:.3f}")
            segmentation.AddNodeReferenceID(MEMBER_REFERENCE, node.GetID())
            nodes.members[member.name] = node
    if uncertainty:
        volume = _add_volume_like(scene, reference_volume,
                                  prediction.uncertainty.astype(np.float32),
                                  f"{base} uncertainty")
        volume.CreateDefaultDisplayNodes()
        display = volume.GetDisplayNode()
        color = _pick_color_node(scene, ("vtkMRMLColorTableNodeFileInferno.txt",
                                         "vtkMRMLColorTableNodeFileViridis.txt",
                                         "vtkMRMLColorTableNodeRainbow"))
        if color is not None:
            display.SetAndObserveColorNodeID(color.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        _set_attribute(volume, "role", "uncertainty")
        segmentation.AddNodeReferenceID(UNCERTAINTY_REFERENCE, volume.GetID())
        nodes.uncertainty = volume
    return nodes


def prediction_nodes(segmentation_node) -> PredictionNodes:
    """The member and uncertainty nodes `add_prediction` linked to a segmentation."""
    members = {}
    for index in range(segmentation_node.GetNumberOfNodeReferences(MEMBER_REFERENCE)):
        node = segmentation_node.GetNthNodeReference(MEMBER_REFERENCE, index)
        if node is not None:
            members[get_attribute(node, "method") or node.GetName()] = node
    return PredictionNodes(segmentation_node, members,
                           segmentation_node.GetNodeReference(UNCERTAINTY_REFERENCE))


class SegmentationJob(BackgroundJob):
    """Ensemble inference for one volume node on a worker thread (see `jobs`)."""

    def __init__(self, volume_node, ensemble, fusion: Optional[str] = None) -> None:
        # Read the volume here, on the calling (main) thread: MRML is not thread-safe.
        self.case = case_from_volume(volume_node)
        self.volume_id = volume_node.GetID()
        self.scene = volume_node.GetScene()
        case = self.case
        super().__init__(lambda progress, cancel: ensemble.predict(
            case, progress=progress, cancel=cancel, fusion=fusion), name=f"segment {case.name}")

    def finish(self, *, output=None, name: Optional[str] = None, members: bool = True,
               uncertainty: bool = True) -> PredictionNodes:
        """Put the finished prediction into the scene (main thread only)."""
        prediction = self.result()
        volume = self.scene.GetNodeByID(self.volume_id)
        if volume is None:
            raise SlicerBridgeError(f"the input volume of {self.case.name} was removed from "
                                    f"the scene while it was being segmented")
        return add_prediction(self.scene, prediction, volume, name=name, output=output,
                              members=members, uncertainty=uncertainty)


def segment_volume(volume_node, ensemble, *, fusion: Optional[str] = None, output=None,
                   name: Optional[str] = None, progress=None) -> PredictionNodes:
    """Segment synchronously (console, batch): the same work as a `SegmentationJob`."""
    case = case_from_volume(volume_node)
    prediction = ensemble.predict(case, progress=progress, fusion=fusion)
    return add_prediction(volume_node.GetScene(), prediction, volume_node, name=name,
                          output=output)


# --------------------------------------------------------------------------- metrics tables

TABLE_COLUMNS: tuple[str, ...] = ("patient", "phase", "structure", "measure", "value", "unit",
                                  "method", "note")
_SCORE_MEASURES = (("Dice", "dice", ""), ("HD95", "hd95_mm", "mm"), ("MSD", "msd_mm", "mm"))
_CLINICAL_MEASURES = {  # ClinicalIndices field -> (phase, structure, measure, unit)
    "lv_edv_ml": ("ED", "LV", "volume", "ml"), "lv_esv_ml": ("ES", "LV", "volume", "ml"),
    "lv_ef_pct": ("ED+ES", "LV", "EF", "%"), "rv_edv_ml": ("ED", "RV", "volume", "ml"),
    "rv_esv_ml": ("ES", "RV", "volume", "ml"), "rv_ef_pct": ("ED+ES", "RV", "EF", "%"),
    "myo_mass_ed_g": ("ED", "Myo", "mass", "g"),
}


@dataclass(frozen=True)
class MetricRow:
    """One number of a report, long format: easy to filter, plot and write as CSV."""

    patient: str
    phase: str
    structure: str  # RV, Myo, LV (metrics.STRUCTURES)
    measure: str  # Dice, HD95, MSD, volume, EF, mass
    value: float  # NaN where undefined (see note)
    unit: str
    method: str  # 'ensemble-mean', a member's name, 'ground truth', ...
    note: str = ""


def score_rows(scores: dict[str, StructureScore], *, patient: str, phase: str,
               method: str) -> list[MetricRow]:
    return [MetricRow(patient, phase, structure, measure, float(getattr(score, attribute)),
                      unit, method, score.flag)
            for structure, score in scores.items() for measure, attribute, unit in
            _SCORE_MEASURES]


def clinical_rows(indices: ClinicalIndices, *, patient: str, method: str) -> list[MetricRow]:
    return [MetricRow(patient, *_CLINICAL_MEASURES[key][:3], float(value),
                      _CLINICAL_MEASURES[key][3], method)
            for key, value in indices.as_dict().items()]


def add_metrics_table(scene, rows: Sequence[MetricRow], name: str, *, node=None):
    """A table node with one row per `MetricRow` (value as a double column, NaN kept)."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    for column in TABLE_COLUMNS:
        array = vtk.vtkDoubleArray() if column == "value" else vtk.vtkStringArray()
        array.SetName(column)
        array.SetNumberOfValues(len(rows))
        table.AddColumn(array)
    for index, row in enumerate(rows):
        for column_index, column in enumerate(TABLE_COLUMNS):
            array = table.GetColumn(column_index)
            value = getattr(row, column)
            array.SetValue(index, float(value) if column == "value" else str(value))
    node.SetAndObserveTable(table)
    _set_attribute(node, "role", "metrics")
    return node


def table_rows(table_node) -> list[MetricRow]:
    """Read `add_metrics_table`'s rows back (also from a table loaded from CSV/TSV)."""
    table = table_node.GetTable()
    columns = {table.GetColumnName(i): table.GetColumn(i)
               for i in range(table.GetNumberOfColumns())}
    missing = [c for c in TABLE_COLUMNS if c not in columns]
    if missing:
        raise SlicerBridgeError(f"table '{table_node.GetName()}' lacks column(s) {missing}; "
                                f"expected {list(TABLE_COLUMNS)}")
    rows = []
    for index in range(table.GetNumberOfRows()):
        # a table read back from a file may hold every column as text: convert explicitly
        values = {column: str(columns[column].GetValue(index)) for column in TABLE_COLUMNS}
        values["value"] = float(values["value"]) if values["value"] else math.nan
        rows.append(MetricRow(**values))
    return rows


def write_table_csv(table_node, path: Path | str, *, overwrite: bool = False) -> Path:
    """The table's rows as CSV with full float precision.

    Not through the table storage node: in slicer-core 5.13 it rounds values to 6 significant
    digits and does not escape quotes inside text cells.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = table_rows(table_node)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for row in rows:
            writer.writerow([repr(row.value) if column == "value" else getattr(row, column)
                             for column in TABLE_COLUMNS])
    return path


def evaluate_segmentation(segmentation_node, ground_truth, reference_volume=None, *,
                          method: Optional[str] = None) -> list[MetricRow]:
    """Dice, HD95 and MSD of a (possibly edited) segmentation against a ground truth, in mm.

    Both are read by segment name onto the same grid (the reference volume's, by default the
    one the segmentation was made on), then scored with `metrics.score_labels`.
    """
    _check_segmentation_node(segmentation_node, "segmentation to evaluate")
    _check_segmentation_node(ground_truth, "ground-truth segmentation")
    reference_volume = reference_volume or reference_volume_of(segmentation_node) \
        or reference_volume_of(ground_truth)
    predicted = labels_from_segmentation(segmentation_node, reference_volume)
    reference = labels_from_segmentation(ground_truth, reference_volume)
    spacing = Geometry(ijk_to_ras(reference_volume)).spacing_zyx
    scores = score_labels(predicted, reference, spacing)
    patient = get_attribute(reference_volume, "patient_id") or reference_volume.GetName()
    phase = get_attribute(reference_volume, "phase") or ""
    method = method or get_attribute(segmentation_node, "method") or segmentation_node.GetName()
    return score_rows(scores, patient=patient, phase=phase, method=method)


def clinical_rows_from_segmentations(ed_segmentation, es_segmentation, ed_volume, es_volume,
                                     *, method: str) -> list[MetricRow]:
    """Volumes, EF and myocardial mass of one patient from its ED and ES segmentations."""
    ed = labels_from_segmentation(ed_segmentation, ed_volume)
    es = labels_from_segmentation(es_segmentation, es_volume)
    spacing = Geometry(ijk_to_ras(ed_volume)).spacing_zyx
    patient = get_attribute(ed_volume, "patient_id") or ed_volume.GetName()
    return clinical_rows(clinical_indices(ed, es, spacing), patient=patient, method=method)


# --------------------------------------------------------------------------- files

def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it")


def save_node(node, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write a storable node through its own storage node (format from the file name)."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = node.GetStorageNode()
    if storage is None:
        if not node.AddDefaultStorageNode():
            raise SlicerBridgeError(f"{_describe(node)} cannot be written to a file")
        storage = node.GetStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise SlicerBridgeError(f"{path}: writing {_describe(node)} failed "
                                f"({storage.GetUserMessages().GetAllMessagesAsString().strip()})")
    return path


def save_segmentation(segmentation_node, path: Path | str, *, overwrite: bool = False) -> Path:
    """A `.seg.nrrd` with the segments' names, colours and terminology on the reference grid."""
    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise SlicerBridgeError(f"{path}: a segmentation is saved as '.seg.nrrd'")
    segment_ids_by_name(segmentation_node)  # write only what reads back as ACDC labels
    return save_node(segmentation_node, path, overwrite=overwrite)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "node"


def _nodes_to_save(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    keep = []
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.IsA("vtkMRMLColorNode") or not node.GetSaveWithScene():
            continue  # built-in colour tables come back with every scene
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
            continue
        keep.append(node)
    return keep


def _empty_segmentations(scene) -> list[str]:
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    return [nodes.GetItemAsObject(i).GetName() for i in range(nodes.GetNumberOfItems())
            if nodes.GetItemAsObject(i).GetSegmentation().GetNumberOfSegments() == 0]


def save_scene(scene, path: Path | str, *, overwrite: bool = False) -> Path:
    """Save the scene as `scene.mrml` + a `<stem>_data/` folder of files, or as one `.mrb`.

    Tables go through Slicer's table writer, which keeps 6 significant digits; for exact
    numbers use `write_table_csv`.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mrb":
        empty = _empty_segmentations(scene)
        if empty:
            # Guard: slicer-core 5.13's bundle writer was seen to abort the whole process on a
            # segmentation node without content; refuse with a message instead.
            raise SlicerBridgeError(f"segmentation(s) {', '.join(map(repr, empty))} hold no "
                                    f"segment; delete them (or add a segment) before saving "
                                    f"a .mrb bundle")
        if not scene.WriteToMRB(str(path)):
            raise SlicerBridgeError(f"{path}: writing the scene bundle failed")
        return path
    if path.suffix != ".mrml":
        raise SlicerBridgeError(f"{path}: a scene is saved as '.mrml' (with its files) or "
                                f"'.mrb' (one bundle)")
    data = path.parent / f"{path.stem}_data"
    data.mkdir(exist_ok=True)
    used: set[str] = set()
    for node in _nodes_to_save(scene):
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        extension = node.GetStorageNode().GetDefaultWriteFileExtension()
        stem = _file_stem(node.GetName())
        while stem in used:
            stem += "_"
        used.add(stem)
        save_node(node, data / f"{stem}.{extension}", overwrite=overwrite)
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    if not scene.Commit():
        raise SlicerBridgeError(f"{path}: writing the scene file failed")
    return path


def load_scene(path: Path | str) -> SlicerScene:
    """A new wired scene holding what `save_scene` wrote (`.mrml` or `.mrb`)."""
    path = Path(path)
    if not path.is_file():
        raise SlicerBridgeError(f"{path}: no such scene file")
    loaded = create_scene()
    scene = loaded.scene
    if path.suffix == ".mrb":
        # Reading a bundle unpacks it into the data IO manager's cache directory.
        loaded.temporary_directory = tempfile.TemporaryDirectory(prefix="cardiac-ensemble-mrb-")
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(loaded.temporary_directory.name)
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        scene.SetCacheManager(cache)
        scene.SetDataIOManager(io_manager)
        ok = scene.ReadFromMRB(str(path))
    else:
        scene.SetURL(str(path))
        ok = scene.Connect()
    if not ok:
        raise SlicerBridgeError(f"{path}: the scene could not be read")
    return loaded


def node_by_name(scene, name: str, class_name: str = "vtkMRMLNode"):
    """The one node of `class_name` called `name` (error if none or several)."""
    nodes = scene.GetNodesByClassByName(class_name, name)
    if nodes.GetNumberOfItems() != 1:
        raise SlicerBridgeError(f"expected one {class_name} named {name!r} in the scene, found "
                                f"{nodes.GetNumberOfItems()}")
    return nodes.GetItemAsObject(0)
