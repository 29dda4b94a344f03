"""An ACDC patient folder into the scene: per phase, its image volume and ground truth, and the
whole cine (`patientNNN_4d.nii.gz`) as a volume sequence with its browser, under one patient and
study in the subject hierarchy (where the results then go, `hierarchy`)."""
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


class LoadedCase(dict):
    """Phase -> `LoadedPhase`; `cine` is the folder's cine (`cine.CineInput`) or None."""

    cine = None


def load_acdc_case(scene, folder: Path | str, phases: Sequence[str] = PHASES, *,
                   cine: bool = True) -> LoadedCase:
    """An ACDC patient folder into the scene: one volume (and ground truth) per phase, and,
    with `cine` and when the folder has one, the 4D cine as a volume sequence and browser."""
    patient = PatientFolder.open(folder)
    hierarchy = hierarchy_of(scene)
    study = patient_study(scene, patient.patient_id, STUDY_NAME)
    loaded = LoadedCase()
    if cine and patient.cine_path.is_file():
        loaded.cine = load_acdc_cine(scene, patient, study)
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


def load_acdc_cine(scene, patient: PatientFolder, study: int):
    """The folder's `_4d.nii.gz` as a volume sequence (frames 1..T) with its browser."""
    from CardiacEnsembleLib.slicer.cine import add_volume_sequence

    frames, geometry = patient.load_cine()
    info = patient.info
    loaded = add_volume_sequence(scene, frames, geometry, f"{patient.patient_id} cine", {
        "patient_id": patient.patient_id, "group": info.group, "height_cm": info.height_cm,
        "weight_kg": info.weight_kg, "source": str(patient.cine_path),
        "info_ed_frame": info.ed, "info_es_frame": info.es})
    hierarchy = hierarchy_of(scene)
    for node in (loaded.proxy, loaded.sequence):
        place_under_study(hierarchy, node, study)
    return loaded
