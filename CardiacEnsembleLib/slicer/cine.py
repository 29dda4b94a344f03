"""A cine (a volume sequence) in the scene <-> the library's (T, Z, Y, X) arrays, and its
segmentation as a segmentation sequence in the same browser, with the volume-time curve.

Slicer loads a cine (DICOM, 4D NRRD, an ACDC `_4d.nii.gz`) as a *sequence* of 3D volumes shown
through a browser's proxy volume. Every frame is segmented in one job; the labels come back as
a segmentation sequence added to that browser, so the segmentation follows the image when the
user scrubs or plays the cine. The volume-time curve (LV, RV, Myo ml per frame) becomes a table
and a chart; end-diastole and end-systole are read off the curve (largest and smallest LV
cavity), and EF, stroke volume and the ED myocardial mass go on the table and the segmentation
sequence as attributes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume

from CardiacEnsembleLib.core.case import CaseError, Geometry
from CardiacEnsembleLib.evaluation.metrics import clinical_indices
from CardiacEnsembleLib.slicer.hierarchy import hierarchy_of, place_results
from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError, describe, set_attribute
from CardiacEnsembleLib.slicer.segmentations import add_segmentation
from CardiacEnsembleLib.slicer.volumes import add_volume_like, check_volume, ijk_to_ras, \
    vtk_matrix
from CardiacEnsembleLib.slicer.worker import SceneJob

#: The volume-time table's columns: the frame (1-based, as ACDC numbers them) and ml per frame.
CURVE_COLUMNS = ("frame", "LV ml", "RV ml", "Myo ml")
_CURVE_KEYS = {"LV ml": "LV", "RV ml": "RV", "Myo ml": "Myo"}
#: The table's column of the per-frame QC score (the members' disagreement), when scored.
QC_COLUMN = "QC score"
#: Node references from the segmentation sequence to its table and charts.
TABLE_REFERENCE, CHART_REFERENCE = "CardiacEnsembleCurveTable", "CardiacEnsembleCurveChart"
QC_CHART_REFERENCE = "CardiacEnsembleQualityChart"


@dataclass
class CineInput:
    """A volume sequence read for segmentation: its frames on one grid, and where it is shown."""

    sequence: object  # vtkMRMLSequenceNode of scalar volumes
    browser: object  # vtkMRMLSequenceBrowserNode that shows it
    cine: np.ndarray  # float32 (T, Z, Y, X)
    geometry: Geometry  # of every frame
    name: str

    @property
    def proxy(self):
        """The volume node the browser shows the current frame in."""
        return self.browser.GetProxyNode(self.sequence)


@dataclass
class CineNodes:
    """A segmented cine in the scene."""

    sequence: object  # vtkMRMLSequenceNode of segmentation nodes, one per frame
    proxy: object  # vtkMRMLSegmentationNode showing the browser's current frame
    table: object  # vtkMRMLTableNode: frame, LV, RV, Myo ml (and the QC score when scored)
    chart: object  # vtkMRMLPlotChartNode: LV and RV volume over the frames
    summary: dict  # ed_frame, es_frame, lv_ef_pct, stroke_volume_ml, myo_mass_ed_g, ...
    # QC per frame as bars over the frames (a second chart: its 0-1 scale is not ml); None
    # when the result has no QC score
    quality_chart: object = None


# --- the sequence the user picked --------------------------------------------------------

def _browsers(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def find_sequence(node) -> tuple[object, object]:
    """(sequence, browser) for a proxy volume, a sequence node or a browser node.

    A proxy volume stands for the sequence it shows; a browser for its master sequence.
    """
    if node is None:
        raise SlicerBridgeError("no cine selected: pick a volume sequence (or the volume that "
                                "shows its current frame)")
    scene = node.GetScene()
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        return _master(node), node
    for browser in _browsers(scene):
        if node.IsA("vtkMRMLSequenceNode") and browser.IsSynchronizedSequenceNodeID(
                node.GetID(), True):
            return node, browser
        if browser.IsProxyNodeID(node.GetID()):
            return browser.GetSequenceNode(node), browser
    raise SlicerBridgeError(f"{describe(node)} is not shown by any sequence browser: load the "
                            f"cine as a volume sequence (e.g. 'Load ACDC case', or a 4D NRRD)")


def _master(browser):
    sequence = browser.GetMasterSequenceNode()
    if sequence is None:
        raise SlicerBridgeError(f"{describe(browser)} has no sequence to segment")
    return sequence


def cine_from_sequence(node) -> CineInput:
    """A volume sequence (or its proxy, or its browser) as a (T, Z, Y, X) cine on one grid.

    Refuses frames that are not scalar volumes on one common grid (shape and IJKToRAS), since
    one label sequence and one volume-time curve need one grid.
    """
    sequence, browser = find_sequence(node)
    proxy = browser.GetProxyNode(sequence)
    if proxy is not None:  # what the user sees: not transformed, a scalar image
        check_volume(proxy, allow_sequence_frame=True)
    frames = sequence.GetNumberOfDataNodes()
    if frames < 2:
        raise SlicerBridgeError(f"{describe(sequence)} has {frames} frame(s); a cine needs at "
                                f"least two (segment a single volume with Segment instead)")
    arrays, geometry = [], None
    for index in range(frames):
        volume = sequence.GetNthDataNode(index)
        _check_frame(volume, sequence, index)
        frame_geometry = Geometry(ijk_to_ras(volume))
        geometry = geometry or frame_geometry
        array = arrayFromVolume(volume)
        if arrays and (array.shape != arrays[0].shape
                       or not frame_geometry.allclose(geometry, 1e-4)):
            raise SlicerBridgeError(f"{describe(sequence)}: frame {index + 1} lies on another "
                                    f"grid than frame 1; a cine's frames must share one grid")
        arrays.append(array)
    return CineInput(sequence, browser, np.stack(arrays).astype(np.float32), geometry,
                     sequence.GetName())


def _check_frame(volume, sequence, index: int) -> None:
    if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA(
            "vtkMRMLLabelMapVolumeNode"):
        kind = "nothing" if volume is None else volume.GetClassName()
        raise SlicerBridgeError(f"{describe(sequence)}: frame {index + 1} is {kind}, not a "
                                f"scalar image volume; pick a sequence of MR frames")
    image = volume.GetImageData()
    if image is None or image.GetNumberOfScalarComponents() != 1 or arrayFromVolume(
            volume).ndim != 3:
        raise SlicerBridgeError(f"{describe(sequence)}: frame {index + 1} is not one 3D "
                                f"grey-value image")


# --- a cine into the scene (ACDC's _4d file, tests) ---------------------------------------

def add_volume_sequence(scene, cine: np.ndarray, geometry: Geometry, name: str,
                        attributes: Optional[dict] = None) -> CineInput:
    """A (T, Z, Y, X) array as a volume sequence with its browser (frames indexed 1..T)."""
    if cine.ndim != 4:
        raise CaseError(f"{name}: expected a (T, Z, Y, X) cine, got shape {cine.shape}")
    sequence = _new_sequence(scene, name)
    frame = slicer.vtkMRMLScalarVolumeNode()
    frame.SetIJKToRASMatrix(vtk_matrix(geometry.affine))
    for index, image in enumerate(cine):
        slicer.util.updateVolumeFromArray(frame, np.ascontiguousarray(image, dtype=np.float32))
        sequence.SetDataNodeAtValue(frame, str(index + 1))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    proxy = browser.GetProxyNode(sequence)
    proxy.CreateDefaultDisplayNodes()
    for key, value in (attributes or {}).items():
        set_attribute(proxy, key, value)
    set_attribute(proxy, "role", "cine")
    return CineInput(sequence, browser, cine, geometry, name)


def _new_sequence(scene, name: str):
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("frame")
    sequence.SetIndexUnit("")
    sequence.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
    return sequence


# --- the result into the scene ------------------------------------------------------------

def cine_summary(labels: np.ndarray, volumes_ml: dict, spacing_zyx,
                 quality: Optional[np.ndarray] = None) -> dict:
    """ED/ES frames found on the LV curve (1-based), LV and RV EF, stroke volume, ED mass; with
    the per-frame QC scores, the frame most in doubt (1-based) and its score."""
    lv = np.asarray(volumes_ml["LV"])
    ed, es = int(np.argmax(lv)) + 1, int(np.argmin(lv)) + 1
    indices = clinical_indices(labels[ed - 1], labels[es - 1], spacing_zyx)
    summary = {"ed_frame": ed, "es_frame": es, **indices.as_dict(),
               "stroke_volume_ml": indices.lv_edv_ml - indices.lv_esv_ml}
    if quality is not None and len(quality):
        worst = int(np.argmax(quality))
        summary.update(qc_worst_frame=worst + 1, qc_worst_score=float(quality[worst]))
    return summary


def add_segmentation_sequence(scene, labels: np.ndarray, cine: CineInput, name: str):
    """One segmentation per frame (the three ACDC segments, with terminology) as a sequence,
    synchronized with the cine's browser; returns (sequence, proxy segmentation)."""
    if labels.shape != cine.cine.shape:
        raise SlicerBridgeError(f"{name}: labels of shape {labels.shape} do not match the cine "
                                f"'{cine.name}' of shape {cine.cine.shape}; segment it again")
    sequence = _new_sequence(scene, name)
    reference = add_volume_like(scene, cine.sequence.GetNthDataNode(0), cine.cine[0],
                                f"{name} reference")
    try:
        for index, frame in enumerate(labels):
            node = add_segmentation(scene, frame, reference, f"{name} frame")
            sequence.SetDataNodeAtValue(node, cine.sequence.GetNthIndexValue(index))
            scene.RemoveNode(node)
    finally:
        scene.RemoveNode(reference)
    cine.browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    proxy = cine.browser.GetProxyNode(sequence)
    proxy.SetName(name)
    proxy.CreateDefaultDisplayNodes()
    return sequence, proxy


def add_volume_curve(scene, volumes_ml: dict, name: str, summary: dict, *, table=None,
                     chart=None, quality: Optional[np.ndarray] = None):
    """The volume-time curve as a table (frame, LV, RV, Myo ml; with `quality`, the QC score
    of each frame too) and a chart of LV and RV; the chart's title names ED, ES and EF.
    Returns (table, chart)."""
    table = table or scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} volumes")
    columns = {column: volumes_ml[key] for column, key in _CURVE_KEYS.items()}
    if quality is not None:
        columns[QC_COLUMN] = quality
    frames = len(volumes_ml["LV"])
    data = vtk.vtkTable()
    for column in (CURVE_COLUMNS[0], *columns):
        array = vtk.vtkIntArray() if column == "frame" else vtk.vtkDoubleArray()
        array.SetName(column)
        array.SetNumberOfValues(frames)
        for index in range(frames):
            array.SetValue(index, index + 1 if column == "frame"
                           else float(columns[column][index]))
        data.AddColumn(array)
    table.SetAndObserveTable(data)
    for column, unit in zip(CURVE_COLUMNS, ("", "ml", "ml", "ml")):
        table.SetColumnUnitLabel(column, unit)
    _summary_attributes(table, summary, "volume-time curve")
    return table, _add_chart(scene, table, name, summary, chart)


def add_quality_chart(scene, table, name: str, summary: dict, score: str):
    """The per-frame QC score of `table` as bars over the frames; the title names the frame
    most in doubt."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} QC")
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} QC score")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("frame")
    series.SetYColumnName(QC_COLUMN)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatterBar)  # bars at X = frame
    series.SetColor(0.5, 0.5, 0.5)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{name}: QC ({score}) per frame, frame {summary['qc_worst_frame']} the "
                   f"most in doubt ({summary['qc_worst_score']:.3f})")
    chart.SetXAxisTitle("frame")
    chart.SetYAxisTitle(f"QC score ({score}, 0 = members agree)")
    return chart


def _add_chart(scene, table, name: str, summary: dict, chart=None):
    chart = chart or scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} volume curve")
    chart.RemoveAllPlotSeriesNodeIDs()
    for column, color in (("LV ml", (0.84, 0.15, 0.16)), ("RV ml", (0.12, 0.47, 0.71))):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column[:2]}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("frame")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{name}: ED frame {summary['ed_frame']}, ES frame {summary['es_frame']}, "
                   f"LV EF {summary['lv_ef_pct']:.1f} %")
    chart.SetXAxisTitle("frame")
    chart.SetYAxisTitle("volume (ml)")
    return chart


def _summary_attributes(node, summary: dict, role: str) -> None:
    for key, value in summary.items():
        set_attribute(node, key, value if isinstance(value, int) else f"{value:.6g}")
    set_attribute(node, "role", role)


def add_cine_result(scene, result, cine: CineInput, *,
                    name: Optional[str] = None) -> CineNodes:
    """A `CineSegmentation` of `cine` into the scene: the segmentation sequence in the cine's
    browser, the volume-time table and chart, and the summary (see `cine_summary`)."""
    if not result.geometry.allclose(cine.geometry, atol=1e-4):
        raise SlicerBridgeError(f"the cine segmentation was not made on the grid of "
                                f"'{cine.name}'; segment it again")
    name = name or f"{cine.name} segmentation"
    quality = getattr(result, "quality", None)
    summary = cine_summary(result.labels, result.volumes_ml, cine.geometry.spacing_zyx,
                           quality)
    sequence, proxy = add_segmentation_sequence(scene, result.labels, cine, name)
    table, chart = add_volume_curve(scene, result.volumes_ml, name, summary, quality=quality)
    quality_chart = None if quality is None else add_quality_chart(
        scene, table, name, summary, result.quality_score or "QC")
    for node in (sequence, proxy):
        _summary_attributes(node, summary, "cine prediction")
        node.SetNodeReferenceID(TABLE_REFERENCE, table.GetID())
        node.SetNodeReferenceID(CHART_REFERENCE, chart.GetID())
        if quality_chart is not None:
            node.SetNodeReferenceID(QC_CHART_REFERENCE, quality_chart.GetID())
    _place(cine, proxy, [sequence, table, chart] + ([quality_chart] if quality_chart else []))
    return CineNodes(sequence, proxy, table, chart, summary, quality_chart)


def _place(cine: CineInput, proxy, details: list) -> None:
    """The segmentation beside the cine's proxy (its study), the rest in a folder beside it."""
    reference = cine.proxy
    if reference is not None:
        hierarchy_of(proxy.GetScene())  # the hierarchy exists before items are placed
        place_results(proxy, reference, details)


def summary_text(summary: dict) -> str:
    """One line for the panel: ED/ES frames, EF, stroke volume, ED myocardial mass."""
    def number(key, digits=1):
        value = summary.get(key, math.nan)
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"

    doubt = (f"; QC: frame {summary['qc_worst_frame']} the most in doubt "
             f"({summary['qc_worst_score']:.3f})" if "qc_worst_frame" in summary else "")
    return (f"ED frame {summary['ed_frame']}, ES frame {summary['es_frame']}; LV EF "
            f"{number('lv_ef_pct')} %, stroke volume {number('stroke_volume_ml')} ml, "
            f"myocardial mass (ED) {number('myo_mass_ed_g')} g; RV EF {number('rv_ef_pct')} %"
            + doubt)


class CineJob(SceneJob):
    """Every frame of a volume sequence segmented by the inference worker process, in one
    request: `poll()`, `wait()`, `cancel()` as a `prediction.SegmentationJob`; `finish()` puts
    the segmentation sequence, table and chart into the scene (main thread only)."""

    def __init__(self, node, worker, request, *, name: Optional[str] = None) -> None:
        # Read the frames here, before the worker is asked: unusable input raises first.
        self.input = cine_from_sequence(node)
        self.scene = self.input.sequence.GetScene()
        self.output_name = name
        self.name = f"segment {self.input.name}"
        self.work = worker.submit_cine(self.input.cine, self.input.geometry, request,
                                       name=self.input.name)

    def finish(self, *, name: Optional[str] = None) -> CineNodes:
        """Put the finished cine segmentation into the scene; raises `Cancelled`,
        `WorkerError` or `WorkerRequestError` (a ValueError) with the scene unchanged."""
        result = self.work.result()
        for node in (self.input.sequence, self.input.browser):
            if self.scene.GetNodeByID(node.GetID()) is None:
                raise SlicerBridgeError(f"the cine '{self.input.name}' was removed from the "
                                        f"scene while it was being segmented")
        return add_cine_result(self.scene, result, self.input, name=name or self.output_name)


def save_label_sequence(scene, labels: np.ndarray, cine: CineInput, path) -> None:
    """The (T, Z, Y, X) labels as a label-map volume sequence in one 4D `.seq.nrrd`.

    Why beside the segmentation sequence: Slicer saves a segmentation sequence only as a
    `.seq.mrb` bundle (its volume-sequence writer takes volume nodes only); a `.seq.nrrd` of
    labels is read by any NRRD reader, and by Slicer as a sequence of label maps.
    """
    from CardiacEnsembleLib.slicer.files import save_node

    sequence = _new_sequence(scene, f"{cine.name} labels")
    frame = slicer.vtkMRMLLabelMapVolumeNode()
    frame.SetIJKToRASMatrix(vtk_matrix(cine.geometry.affine))
    try:
        for index, frame_labels in enumerate(labels):
            slicer.util.updateVolumeFromArray(frame, np.ascontiguousarray(frame_labels,
                                                                          dtype=np.uint8))
            sequence.SetDataNodeAtValue(frame, cine.sequence.GetNthIndexValue(index))
        save_node(sequence, path)
    finally:
        storage = sequence.GetStorageNode()
        if storage is not None:
            scene.RemoveNode(storage)
        scene.RemoveNode(sequence)
