"""The ensemble's answer in the scene, and segmenting a volume node to get it.

A `Prediction` becomes a fused segmentation, one hidden segmentation per member and the
uncertainty map as a volume, linked to the fused one by node references, so they are found
again after a scene reload and replaced (not duplicated) when the same output is segmented
again. `SegmentationJob` sends a volume node to the inference worker process (`worker`) and
puts its answer into the scene on the main thread, only after it succeeded (a cancel or a
crash leaves the scene as it was); `segment_volume` runs the ensemble in this process,
synchronously (headless batch, where nothing else needs the main thread).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
from slicer.util import arrayFromVolume

from CardiacEnsembleLib.core.case import Geometry, Prediction
from CardiacEnsembleLib.slicer.hierarchy import place_prediction
from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError, get_attribute, set_attribute
from CardiacEnsembleLib.slicer.segmentations import add_segmentation
from CardiacEnsembleLib.slicer.volumes import add_volume_like, case_from_volume, \
    check_volume, ijk_to_ras
from CardiacEnsembleLib.slicer.worker import EnsembleRequest, InferenceWorker, SceneJob

#: Node reference roles from the fused segmentation to its member and uncertainty nodes.
MEMBER_REFERENCE = "CardiacEnsembleMember"
UNCERTAINTY_REFERENCE = "CardiacEnsembleUncertainty"
#: Colour tables for the uncertainty map, the first one the scene has.
_UNCERTAINTY_COLORS = ("vtkMRMLColorTableNodeFileInferno.txt",
                       "vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")


@dataclass
class PredictionNodes:
    segmentation: object  # vtkMRMLSegmentationNode, the fused result
    members: dict[str, object] = field(default_factory=dict)  # member name -> hidden node
    uncertainty: Optional[object] = None  # vtkMRMLScalarVolumeNode, normalised entropy 0..1


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


def _check_grid(prediction: Prediction, reference_volume) -> None:
    check_volume(reference_volume, allow_sequence_frame=True)
    reference_shape = arrayFromVolume(reference_volume).shape
    if prediction.labels.shape != reference_shape or not prediction.geometry.allclose(
            Geometry(ijk_to_ras(reference_volume)), atol=1e-4):
        raise SlicerBridgeError(
            f"the prediction (shape {prediction.labels.shape}) was not made on the grid of "
            f"'{reference_volume.GetName()}' (shape {reference_shape}); segment that volume "
            f"again")


def add_prediction(scene, prediction: Prediction, reference_volume, *,
                   name: Optional[str] = None, output=None, members: bool = True,
                   uncertainty: bool = True) -> PredictionNodes:
    """The ensemble's answer in the scene: fused segmentation, hidden per-member segmentations,
    and the uncertainty map as a volume (re-running into the same output replaces them)."""
    _check_grid(prediction, reference_volume)
    base = name or (output.GetName() if output is not None
                    else f"{reference_volume.GetName()} segmentation")
    segmentation = add_segmentation(scene, prediction.labels, reference_volume, base,
                                    node=output)
    for key, value in (("role", "prediction"), ("method", prediction.method.name),
                       ("fusion", prediction.fusion), ("device", prediction.device),
                       ("members", ",".join(m.name for m in prediction.members)),
                       ("seconds", f"{prediction.timings.get('total', math.nan):.3f}")):
        set_attribute(segmentation, key, value)
    nodes = PredictionNodes(segmentation)
    _remove_referenced(segmentation, MEMBER_REFERENCE)
    _remove_referenced(segmentation, UNCERTAINTY_REFERENCE)
    if members:
        nodes.members = _add_members(scene, prediction, reference_volume, segmentation, base)
    if uncertainty:
        nodes.uncertainty = _add_uncertainty(scene, prediction, reference_volume, segmentation,
                                             base)
    place_prediction(nodes, reference_volume)  # under the input's study, details in a folder
    return nodes


def _add_members(scene, prediction: Prediction, reference_volume, segmentation,
                 base: str) -> dict[str, object]:
    nodes = {}
    for member in prediction.members:
        node = add_segmentation(scene, member.labels, reference_volume,
                                f"{base} [{member.name}]", visible=False)
        set_attribute(node, "role", "member")
        set_attribute(node, "method", member.name)
        set_attribute(node, "seconds", f"{member.seconds:.3f}")
        segmentation.AddNodeReferenceID(MEMBER_REFERENCE, node.GetID())
        nodes[member.name] = node
    return nodes


def _add_uncertainty(scene, prediction: Prediction, reference_volume, segmentation, base: str):
    volume = add_volume_like(scene, reference_volume, prediction.uncertainty.astype(np.float32),
                             f"{base} uncertainty")
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    color = _pick_color_node(scene, _UNCERTAINTY_COLORS)
    if color is not None:
        display.SetAndObserveColorNodeID(color.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    set_attribute(volume, "role", "uncertainty")
    segmentation.AddNodeReferenceID(UNCERTAINTY_REFERENCE, volume.GetID())
    return volume


def prediction_nodes(segmentation_node) -> PredictionNodes:
    """The member and uncertainty nodes `add_prediction` linked to a segmentation."""
    members = {}
    for index in range(segmentation_node.GetNumberOfNodeReferences(MEMBER_REFERENCE)):
        node = segmentation_node.GetNthNodeReference(MEMBER_REFERENCE, index)
        if node is not None:
            members[get_attribute(node, "method") or node.GetName()] = node
    return PredictionNodes(segmentation_node, members,
                           segmentation_node.GetNodeReference(UNCERTAINTY_REFERENCE))


class SegmentationJob(SceneJob):
    """One volume node segmented by the inference worker process: `poll()` for the panel's
    timer, `wait()` for the console, `cancel()` kills the worker; `finish()` puts the result
    into the scene (main thread only)."""

    def __init__(self, volume_node, worker: InferenceWorker, request: EnsembleRequest, *,
                 output=None, allow_sequence_frame: bool = False) -> None:
        # Read the volume here, before the worker is asked: unusable input raises first (the
        # frame a sequence shows now is copied, so scrubbing meanwhile changes nothing).
        self.case = case_from_volume(volume_node, allow_sequence_frame=allow_sequence_frame)
        self.volume_id = volume_node.GetID()
        self.scene = volume_node.GetScene()
        self.output = output
        self.name = f"segment {self.case.name}"
        self.work = worker.submit(self.case, request)

    def finish(self, *, output=None, name: Optional[str] = None, members: bool = True,
               uncertainty: bool = True) -> PredictionNodes:
        """Put the finished prediction into the scene; raises `Cancelled`, `WorkerError` or
        `WorkerRequestError` (a ValueError) with the scene unchanged."""
        prediction = self.work.result()
        volume = self.scene.GetNodeByID(self.volume_id)
        if volume is None:
            raise SlicerBridgeError(f"the input volume of {self.case.name} was removed from "
                                    f"the scene while it was being segmented")
        return add_prediction(self.scene, prediction, volume, name=name,
                              output=self.output if output is None else output,
                              members=members, uncertainty=uncertainty)


def segment_volume(volume_node, ensemble, *, fusion: Optional[str] = None, output=None,
                   name: Optional[str] = None, progress=None) -> PredictionNodes:
    """Segment in this process, synchronously (headless batch): the same answer as a
    `SegmentationJob`, without a worker process."""
    case = case_from_volume(volume_node)
    prediction = ensemble.predict(case, progress=progress, fusion=fusion)
    return add_prediction(volume_node.GetScene(), prediction, volume_node, name=name,
                          output=output)
