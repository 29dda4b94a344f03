"""An ACDC patient folder into the scene: per phase, its image volume and ground truth, under
one patient and study in the subject hierarchy (where the results then go, `hierarchy`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from CardiacEnsembleLib.core.case import Case
from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
from CardiacEnsembleLib.slicer.hierarchy import hierarchy_of, patient_study, place_under_study
from CardiacEnsembleLib.slicer.nodes import set_attribute
from CardiacEnsembleLib.slicer.segmentations import add_segmentation
from CardiacEnsembleLib.slicer.volumes import add_volume


#: The study item an ACDC folder's frames are placed in (the folder has no DICOM study).
STUDY_NAME = "ACDC cine MR"


@dataclass
class LoadedPhase:
    case: Case
    volume: object  # vtkMRMLScalarVolumeNode
    ground_truth: Optional[object]  # vtkMRMLSegmentationNode, or None without a _gt file


def load_acdc_case(scene, folder: Path | str,
                   phases: Sequence[str] = PHASES) -> dict[str, LoadedPhase]:
    """An ACDC patient folder into the scene: one volume (and ground truth) per phase."""
    patient = PatientFolder.open(folder)
    hierarchy = hierarchy_of(scene)
    study = patient_study(scene, patient.patient_id, STUDY_NAME)
    loaded = {}
    for phase in phases:
        case = patient.load(phase)
        volume = add_volume(scene, case, f"{patient.patient_id} {phase}")
        place_under_study(hierarchy, volume, study)
        ground_truth = None
        if case.labels is not None:
            ground_truth = add_segmentation(scene, case.labels, volume,
                                            f"{patient.patient_id} {phase} ground truth")
            set_attribute(ground_truth, "role", "ground truth")
            set_attribute(ground_truth, "method", "ground truth")
            place_under_study(hierarchy, ground_truth, study)
        loaded[phase] = LoadedPhase(case, volume, ground_truth)
    return loaded
