"""The QC review list in the scene: which (slice, structure) to look at, where it is, and going
there.

A `QualityReport` (`inference.quality.assess`) ranks every slice and structure of a fused
segmentation, worst first. Here each entry gets what a click needs: the segment that holds the
structure, and the point to jump to, the centroid of that structure's mask on that slice as the
segmentation shows it now (IJK on the reference volume's grid, and RAS through the volume's
IJKToRAS, oblique or not). The report is kept as JSON in an attribute of the segmentation node,
so it is saved with the scene and found again from the node alone.

Jumping and selecting go through MRML only: `vtkMRMLSliceNode::JumpAllSlices` (static) moves
every slice view of the scene; the Segment Editor's parameter node (the singleton
`vtkMRMLSegmentEditorNode` tagged "SegmentEditor", the one the Segment Editor module uses, made
here when it does not exist yet) gets the segmentation and the segment to edit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import slicer

from CardiacEnsembleLib.core.labels import LABEL_NAMES
from CardiacEnsembleLib.core.quality import QualityReport, SliceReview
from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError, get_attribute, set_attribute
from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation, \
    reference_volume_of, segment_ids_by_name
from CardiacEnsembleLib.slicer.volumes import ijk_to_ras

#: The segmentation node's attribute (under `nodes.ATTRIBUTE_PREFIX`) holding the QC JSON.
QC_ATTRIBUTE = "quality_control"
#: How many of the worst entries are listed when no validated threshold flags any.
UNFLAGGED_SHOWN = 10
#: The singleton tag of the Segment Editor module's parameter node (SegmentEditor.py).
SEGMENT_EDITOR_TAG = "SegmentEditor"


@dataclass(frozen=True)
class ReviewEntry:
    """One line of the review list and where clicking it goes."""

    text: str  # "slice 7/10 · LV myocardium · 0.310"
    slice_index: int  # 0-based K of the reference volume (the report's Z)
    structure: str  # "RV", "Myo" or "LV"
    score: float
    flagged: bool
    segment_id: str  # the structure's segment in the segmentation node
    voxels: int  # the structure's voxels on that slice now (0: only the members drew it)
    ijk: tuple[float, float, float]  # the jump target on the reference grid
    ras: tuple[float, float, float]  # the same point in RAS (mm)


def store_report(segmentation_node, report: Optional[QualityReport]) -> None:
    """Keep `report` with the segmentation (None: remove a stale one)."""
    set_attribute(segmentation_node, QC_ATTRIBUTE,
                  None if report is None else json.dumps(report.to_json()))


def stored_report(segmentation_node) -> Optional[QualityReport]:
    """The QC report kept with a segmentation, or None when it has none."""
    text = get_attribute(segmentation_node, QC_ATTRIBUTE)
    if text is None:
        return None
    try:
        return QualityReport.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise SlicerBridgeError(f"segmentation '{segmentation_node.GetName()}': its QC "
                                f"attribute is not a QC report ({error}); segment it again"
                                ) from None


def entries_to_show(report: QualityReport) -> list[SliceReview]:
    """The flagged entries when a validated threshold exists, else the `UNFLAGGED_SHOWN`
    worst: ranked either way, worst first."""
    if report.thresholds is not None:
        return report.to_review
    return report.slices[:UNFLAGGED_SHOWN]


def review_summary(report: Optional[QualityReport]) -> str:
    """The line above the list: how many slices to review, or why none are flagged."""
    if report is None:
        return "No QC report for this segmentation (segment it with Cardiac Ensemble)."
    if report.thresholds is None:
        shown = len(entries_to_show(report))
        return (f"No validated threshold: the {shown} worst of {len(report.slices)} slice "
                f"structures, ranked by {report.score.value} (case score "
                f"{report.case_score:.3f}).")
    count = len(report.to_review)
    return (f"{count} slice{'' if count == 1 else 's'} to review (case score "
            f"{report.case_score:.3f}{', flagged' if report.case_flagged else ''}).")


def _target(labels: np.ndarray, slice_index: int, label: int) -> tuple[int, np.ndarray]:
    """(voxels, IJK) of a structure on slice K: its mask's centroid; where the fused mask lacks
    it, the centroid of the slice's foreground, else the slice's centre."""
    plane = labels[slice_index]
    mask = plane == label
    for candidate in (mask, plane > 0):
        j, i = np.nonzero(candidate)
        if i.size:
            return int(mask.sum()), np.array([i.mean(), j.mean(), slice_index], dtype=float)
    return 0, np.array([(plane.shape[1] - 1) / 2, (plane.shape[0] - 1) / 2, slice_index])


def review_entries(report: QualityReport, segmentation_node, reference_volume=None, *,
                   entries: Optional[list[SliceReview]] = None) -> list[ReviewEntry]:
    """The review list of `report` (default: `entries_to_show`) on `segmentation_node` as it
    is now, on the grid of `reference_volume` (default: the segmentation's reference)."""
    reference_volume = reference_volume or reference_volume_of(segmentation_node)
    labels = labels_from_segmentation(segmentation_node, reference_volume)
    if report.slices and max(e.slice_index for e in report.slices) >= labels.shape[0]:
        raise SlicerBridgeError(f"the QC report of '{segmentation_node.GetName()}' names slices "
                                f"beyond its {labels.shape[0]}; segment it again")
    segment_ids = segment_ids_by_name(segmentation_node)
    affine = ijk_to_ras(reference_volume)
    shown = entries_to_show(report) if entries is None else entries
    return [_entry(entry, labels, segment_ids, affine) for entry in shown]


def _entry(entry: SliceReview, labels: np.ndarray, segment_ids: dict[str, str],
           affine: np.ndarray) -> ReviewEntry:
    voxels, ijk = _target(labels, entry.slice_index, entry.label)
    ras = affine @ np.append(ijk, 1.0)
    name = LABEL_NAMES[entry.label]
    text = (f"slice {entry.slice_index + 1}/{labels.shape[0]} · {name} · {entry.score:.3f}"
            + ("" if voxels else " (not in the result)"))
    return ReviewEntry(text, entry.slice_index, entry.structure, entry.score, entry.flagged,
                       segment_ids[name], voxels, tuple(float(v) for v in ijk),
                       tuple(float(v) for v in ras[:3]))


def jump_slices(scene, ras, *, centered: bool = True, view_group: int = -1) -> None:
    """Move every slice view of `scene` (of `view_group`, -1: all) to the RAS point: centred
    on it, or (`centered=False`) only offset so that each slice plane passes through it."""
    mode = (slicer.vtkMRMLSliceNode.CenteredJumpSlice if centered
            else slicer.vtkMRMLSliceNode.OffsetJumpSlice)
    r, a, s = (float(v) for v in ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, mode, view_group)


def segment_editor_node(scene):
    """The Segment Editor module's parameter node, made (as the module makes it) if absent."""
    node = scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)  # CreateNodeByClass hands over a reference; the scene keeps one
        node.SetSingletonTag(SEGMENT_EDITOR_TAG)
        node = scene.AddNode(node)
    return node


def select_segment_for_editing(segmentation_node, segment_id: str, source_volume=None):
    """Make `segment_id` of `segmentation_node` the Segment Editor's segment to edit (on
    `source_volume`, default the segmentation's reference); the editor node."""
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise SlicerBridgeError(f"segmentation '{segmentation_node.GetName()}' has no segment "
                                f"{segment_id!r} (renamed or deleted?)")
    editor = segment_editor_node(segmentation_node.GetScene())
    source_volume = source_volume or reference_volume_of(segmentation_node)
    modifying = editor.StartModify()  # one update of the editor widget, not three
    editor.SetAndObserveSegmentationNode(segmentation_node)
    if source_volume is not None:
        editor.SetAndObserveSourceVolumeNode(source_volume)
    editor.SetSelectedSegmentID(segment_id)
    editor.EndModify(modifying)
    return editor
