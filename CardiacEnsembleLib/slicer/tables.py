"""Scoring segmentations in the scene, and the scores as table nodes and CSV.

A report is long format, one `MetricRow` per number (patient, phase, structure, measure,
value, unit, method): easy to filter, plot and write. The numbers come from
`evaluation.metrics`, on label maps read from the segmentations by segment name.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import vtk

from CardiacEnsembleLib.core.case import Geometry
from CardiacEnsembleLib.evaluation.metrics import ClinicalIndices, StructureScore, \
    clinical_indices, score_labels
from CardiacEnsembleLib.slicer.nodes import OVERWRITE_HINT, SlicerBridgeError, get_attribute, \
    set_attribute
from CardiacEnsembleLib.slicer.segmentations import check_segmentation_node, \
    labels_from_segmentation, reference_volume_of
from CardiacEnsembleLib.slicer.volumes import ijk_to_ras

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
    set_attribute(node, "role", "metrics")
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
    digits and does not escape quotes inside text cells. Written like every other output of
    the package (`io.atomic`): complete or not at all, never over a file that appeared meanwhile.
    """
    from CardiacEnsembleLib.io.atomic import atomic_output  # here: `io` loads nibabel

    path = Path(path)
    rows = table_rows(table_node)
    with atomic_output(path, overwrite=overwrite, hint=OVERWRITE_HINT) as temporary, \
            open(temporary, "w", newline="") as handle:
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
    check_segmentation_node(segmentation_node, "segmentation to evaluate")
    check_segmentation_node(ground_truth, "ground-truth segmentation")
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
