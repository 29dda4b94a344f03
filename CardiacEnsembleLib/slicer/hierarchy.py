"""Where results sit in the subject hierarchy: under the input's study, as Slicer users look.

The segmentation goes in the same parent as the image it was made on (the study, for DICOM
data: DICOM SEG export needs the segmentation there); what explains it (one segmentation per
member, the uncertainty map) goes in one folder beside it, so a run adds one visible result
and one folder instead of a pile of top-level nodes. An ACDC folder has no DICOM study, so
`acdc` makes a patient and a study item for it.
"""
from __future__ import annotations

from typing import Iterable

import slicer

#: The folder beside a segmentation that holds its members and uncertainty map.
DETAILS_SUFFIX = "ensemble details"


def hierarchy_of(scene):
    """The scene's subject hierarchy node (created on first use, also on slicer-core)."""
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def item_of(hierarchy, node) -> int:
    """A data node's subject hierarchy item, made under the scene where none exists yet.

    Inside Slicer the subject hierarchy plugins make an item for every node added; a scene
    without them (slicer-core, headless) gets one here, so the placement works the same.
    """
    item = hierarchy.GetItemByDataNode(node)
    if not item:
        item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
    return item


def study_of(volume_node) -> int:
    """The item the results of `volume_node` belong under: its parent (study, folder, scene)."""
    hierarchy = hierarchy_of(volume_node.GetScene())
    return hierarchy.GetItemParent(item_of(hierarchy, volume_node))


def place_under_study(hierarchy, node, parent: int) -> int:
    item = item_of(hierarchy, node)
    hierarchy.SetItemParent(item, parent)
    return item


def details_folder(hierarchy, parent: int, segmentation_name: str) -> int:
    """The folder beside a segmentation for its details (reused when it is segmented again)."""
    name = f"{segmentation_name} {DETAILS_SUFFIX}"
    folder = hierarchy.GetItemChildWithName(parent, name)
    return folder or hierarchy.CreateFolderItem(parent, name)


def place_results(segmentation_node, reference_volume, details: Iterable = ()) -> int:
    """The segmentation in the parent of `reference_volume`, `details` in a folder beside it.

    Returns the folder's item (0 when there are no details).
    """
    hierarchy = hierarchy_of(segmentation_node.GetScene())
    parent = study_of(reference_volume)
    place_under_study(hierarchy, segmentation_node, parent)
    details = [node for node in details if node is not None]
    if not details:
        return 0
    folder = details_folder(hierarchy, parent, segmentation_node.GetName())
    for node in details:
        place_under_study(hierarchy, node, folder)
    return folder


def place_prediction(nodes, reference_volume) -> int:
    """`place_results` for a `prediction.PredictionNodes` (members, then the uncertainty)."""
    return place_results(nodes.segmentation, reference_volume,
                         [*nodes.members.values(), nodes.uncertainty])


def patient_study(scene, patient: str, study: str) -> int:
    """The study item `study` of the patient `patient` (both made when missing)."""
    hierarchy = hierarchy_of(scene)
    scene_item = hierarchy.GetSceneItemID()
    patient_item = hierarchy.GetItemChildWithName(scene_item, patient)
    if not patient_item:
        patient_item = hierarchy.CreateSubjectItem(scene_item, patient)
    study_item = hierarchy.GetItemChildWithName(patient_item, study)
    return study_item or hierarchy.CreateStudyItem(patient_item, study)
