"""How ACDC's labels appear as segments: name, stable ID, colour and standard terminology.

Pure data, no Slicer and no torch: the segment names are `labels.LABEL_NAMES`, so a report, a
label map and a Slicer segmentation can never disagree on what label 2 is called. The MRML call
that puts these on a segment lives in `slicer.segmentations`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .labels import LABEL_NAMES

#: Slicer's terminology context names (the lists the codes below are looked up in). The type
#: context is the module's own (`TERMINOLOGY_FILE`, loaded at startup): Slicer's DICOM master
#: list has the ventricles but not Myocardium (SCT 74281007); the regions are DICOM's.
TYPE_CONTEXT = "Segmentation category and type - CardiacEnsemble"
#: The file (in the module's Resources folder) that defines `TYPE_CONTEXT` for Slicer's
#: terminology logic, so the Segment Editor shows and offers these types.
TERMINOLOGY_FILE = "SegmentationCategoryTypeModifier-CardiacEnsemble.term.json"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
_EMPTY_CODE = "^^"


def terminology_string(type_code: str, *, region: str = _EMPTY_CODE,
                       type_modifier: str = _EMPTY_CODE,
                       region_modifier: str = _EMPTY_CODE) -> str:
    """A segment terminology entry in Slicer's serialised form.

    `context~category~type~typeModifier~regionContext~region~regionModifier`, each code as
    `scheme^value^meaning`: the format `vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry`
    writes; stored as the segment tag `vtkSegment.GetTerminologyEntryTagName()` names (the
    portable call on every Slicer version), which `.seg.nrrd` keeps.
    """
    return "~".join([TYPE_CONTEXT, ANATOMICAL_STRUCTURE, type_code, type_modifier,
                     REGION_CONTEXT, region, region_modifier])


@dataclass(frozen=True)
class SegmentSpec:
    label: int  # ACDC label value
    segment_id: str  # stable segment ID inside the segmentation node
    color: tuple[float, float, float]  # RGB 0..1
    terminology: str

    @property
    def name(self) -> str:
        return LABEL_NAMES[self.label]


#: SNOMED-CT codes, from DICOM CID 7152 (Cardiac Structure Segmentation Types: 53085002 Right
#: ventricle, 87878005 Left ventricle) and SNOMED 74281007 Myocardium (structure). ACDC's
#: "cavity" labels are the ventricles' blood pools; DICOM's segmentation type for a ventricle's
#: blood pool is the ventricle itself (as TotalSegmentator and Slicer code them), and the LV
#: myocardium is Myocardium with the anatomic region Left ventricle.
SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(1, "RV_cavity", (0.0, 0.592, 0.808),
                terminology_string("SCT^53085002^Right ventricle")),
    SegmentSpec(2, "LV_myocardium", (0.302, 0.686, 0.290),
                terminology_string("SCT^74281007^Myocardium",
                                   region="SCT^87878005^Left ventricle")),
    SegmentSpec(3, "LV_cavity", (0.886, 0.102, 0.110),
                terminology_string("SCT^87878005^Left ventricle")),
)
#: Segment names in label order (background has no segment).
SEGMENT_NAMES: tuple[str, ...] = tuple(spec.name for spec in SEGMENTS)
