"""The cine in the scene (`CardiacEnsembleLib.slicer.cine`), on slicer-core with real sequence
and browser nodes built from patient090's real 4D cine: a sequence reads back as the cine it
holds; its segmentation is a segmentation sequence in the same browser, frame for frame in
sync when the browser moves; the volume-time table and chart hold the curve, with ED/ES found
on it and EF, stroke volume and ED mass; the worker's job gives in-process `segment_cine`'s
labels; one frame of a sequence is segmented alone only when asked. Untrained members (speed):
a 3-frame crop for most tests, the whole 12 frames once."""
from __future__ import annotations

import numpy as np
import pytest
from mrml_fixtures import requires_mrml, scene, untrained_ensemble, untrained_request, \
    worker  # noqa: F401  (fixtures)

pytestmark = requires_mrml
CROP = (3, 7, 10)  # 0-based frames of patient090: around ED (frame 4) and ES (frame 11)
HANG_GUARD = 600.0


@pytest.fixture(scope="module")
def patient090(patient_dir):
    from CardiacEnsembleLib.io.acdc import PatientFolder

    return PatientFolder.open(patient_dir("patient090"))


@pytest.fixture(scope="module")
def cine090(patient090):
    return patient090.load_cine()


@pytest.fixture(scope="module")
def crop_result(untrained_ensemble, cine090):
    from CardiacEnsembleLib.inference.cine import segment_cine

    cine, geometry = cine090
    return segment_cine(untrained_ensemble, cine[list(CROP)], geometry)


def _crop_sequence(scene, cine090):
    from CardiacEnsembleLib.slicer.cine import add_volume_sequence

    cine, geometry = cine090
    return add_volume_sequence(scene, cine[list(CROP)], geometry, "patient090 cine")


def test_a_sequence_reads_back_as_its_cine_from_proxy_sequence_or_browser(scene, cine090):
    from CardiacEnsembleLib.slicer.cine import cine_from_sequence

    loaded = _crop_sequence(scene, cine090)
    cine, geometry = cine090
    for node in (loaded.proxy, loaded.sequence, loaded.browser):
        read = cine_from_sequence(node)
        assert read.sequence is loaded.sequence and read.browser is loaded.browser
        np.testing.assert_array_equal(read.cine, cine[list(CROP)])
        assert read.cine.dtype == np.float32 and read.geometry.allclose(geometry, 1e-6)


def test_the_segmentation_sequence_follows_the_browser_frame_by_frame(scene, cine090,
                                                                      crop_result):
    from CardiacEnsembleLib.slicer.cine import add_cine_result
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation, \
        segment_ids_by_name

    loaded = _crop_sequence(scene, cine090)
    nodes = add_cine_result(scene, crop_result, loaded, name="patient090 cine segmentation")
    assert nodes.sequence.GetNumberOfDataNodes() == len(CROP)
    assert loaded.browser.IsSynchronizedSequenceNodeID(nodes.sequence.GetID())
    assert nodes.proxy is loaded.browser.GetProxyNode(nodes.sequence)
    assert nodes.proxy.GetName() == "patient090 cine segmentation"
    for index in (2, 0, 1):  # scrubbing in any order
        loaded.browser.SetSelectedItemNumber(index)
        segment_ids_by_name(nodes.proxy)  # the three named segments on every frame
        np.testing.assert_array_equal(labels_from_segmentation(nodes.proxy, loaded.proxy),
                                      crop_result.labels[index])


def test_the_volume_curve_table_and_chart_and_the_summary(scene, cine090, crop_result):
    from CardiacEnsembleLib.evaluation.metrics import clinical_indices
    from CardiacEnsembleLib.slicer.cine import CURVE_COLUMNS, QC_COLUMN, add_cine_result
    from CardiacEnsembleLib.slicer.nodes import get_attribute

    loaded = _crop_sequence(scene, cine090)
    nodes = add_cine_result(scene, crop_result, loaded)
    table = nodes.table.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == \
        [*CURVE_COLUMNS, QC_COLUMN]
    assert [table.GetValue(r, 0).ToInt() for r in range(table.GetNumberOfRows())] == [1, 2, 3]
    for column, key in ((1, "LV"), (2, "RV"), (3, "Myo")):
        assert [table.GetValue(r, column).ToDouble() for r in range(len(CROP))] == \
            list(crop_result.volumes_ml[key])
    series = [nodes.chart.GetNthPlotSeriesNode(i) for i in
              range(nodes.chart.GetNumberOfPlotSeriesNodes())]
    assert [(s.GetXColumnName(), s.GetYColumnName()) for s in series] == \
        [("frame", "LV ml"), ("frame", "RV ml")]
    assert all(s.GetTableNode() is nodes.table for s in series)

    summary = nodes.summary
    assert (summary["ed_frame"], summary["es_frame"]) == (crop_result.ed_frame,
                                                          crop_result.es_frame)
    expected = clinical_indices(crop_result.labels[crop_result.ed_frame - 1],
                                crop_result.labels[crop_result.es_frame - 1],
                                loaded.geometry.spacing_zyx)
    assert summary["lv_ef_pct"] == pytest.approx(crop_result.lv_ef_pct, nan_ok=True)
    assert summary["myo_mass_ed_g"] == expected.myo_mass_ed_g
    assert summary["stroke_volume_ml"] == expected.lv_edv_ml - expected.lv_esv_ml
    for node in (nodes.table, nodes.sequence, nodes.proxy):
        assert get_attribute(node, "ed_frame") == str(crop_result.ed_frame)
        assert get_attribute(node, "es_frame") == str(crop_result.es_frame)
    assert f"ED frame {crop_result.ed_frame}" in nodes.chart.GetTitle()


def test_the_qc_score_of_each_frame_is_a_table_column_and_a_bar_chart(scene, cine090,
                                                                      crop_result):
    from CardiacEnsembleLib.slicer.cine import QC_CHART_REFERENCE, QC_COLUMN, \
        add_cine_result, summary_text

    assert crop_result.quality_score == "disagreement" and crop_result.quality.shape == (3,)
    loaded = _crop_sequence(scene, cine090)
    nodes = add_cine_result(scene, crop_result, loaded)
    table = nodes.table.GetTable()
    column = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())].index(QC_COLUMN)
    assert [table.GetValue(r, column).ToDouble() for r in range(len(CROP))] == \
        list(crop_result.quality)
    worst = int(np.argmax(crop_result.quality)) + 1
    assert (nodes.summary["qc_worst_frame"], nodes.summary["qc_worst_score"]) == \
        (worst, crop_result.quality[worst - 1])
    assert nodes.quality_chart.GetNumberOfPlotSeriesNodes() == 1
    bars = nodes.quality_chart.GetNthPlotSeriesNode(0)
    assert (bars.GetXColumnName(), bars.GetYColumnName(), bars.GetTableNode()) == \
        ("frame", QC_COLUMN, nodes.table)
    assert f"frame {worst} the most in doubt" in nodes.quality_chart.GetTitle()
    assert nodes.proxy.GetNodeReference(QC_CHART_REFERENCE) is nodes.quality_chart
    assert summary_text(nodes.summary).endswith(
        f"; QC: frame {worst} the most in doubt ({crop_result.quality[worst - 1]:.3f})")


def test_the_worker_job_gives_in_process_segment_cine(scene, cine090, crop_result, worker,
                                                      untrained_request):
    from CardiacEnsembleLib.slicer.cine import CineJob

    loaded = _crop_sequence(scene, cine090)
    job = CineJob(loaded.proxy, worker, untrained_request, name="by the worker")
    assert job.wait(HANG_GUARD)
    nodes = job.finish()
    assert job.work.result().labels.shape == crop_result.labels.shape
    np.testing.assert_array_equal(job.work.result().labels, crop_result.labels)
    assert nodes.summary["ed_frame"] == crop_result.ed_frame
    assert nodes.proxy.GetName() == "by the worker"


def test_load_acdc_case_loads_the_real_cine_and_all_12_frames_segment(
        scene, patient090, cine090, worker, untrained_request):
    from CardiacEnsembleLib.slicer.acdc import load_acdc_case
    from CardiacEnsembleLib.slicer.cine import CineJob
    from CardiacEnsembleLib.slicer.nodes import get_attribute

    loaded = load_acdc_case(scene, patient090.folder)
    assert set(loaded) == {"ED", "ES"} and loaded.cine is not None
    cine, _ = cine090
    assert loaded.cine.sequence.GetNumberOfDataNodes() == cine.shape[0] == 12
    assert get_attribute(loaded.cine.proxy, "info_ed_frame") == str(patient090.info.ed)
    # ED of Info.cfg is frame 4 of the cine, the file ED volume the same voxels
    np.testing.assert_array_equal(cine[patient090.info.ed - 1], loaded["ED"].case.image)
    job = CineJob(loaded.cine.proxy, worker, untrained_request)
    assert job.wait(HANG_GUARD)
    nodes = job.finish()
    result = job.work.result()
    assert nodes.sequence.GetNumberOfDataNodes() == 12
    assert nodes.table.GetTable().GetNumberOfRows() == 12
    lv = result.volumes_ml["LV"]
    assert nodes.summary["ed_frame"] == int(np.argmax(lv)) + 1
    assert nodes.summary["es_frame"] == int(np.argmin(lv)) + 1


def test_one_frame_of_a_sequence_is_segmented_alone_only_when_asked(scene, cine090):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.volumes import case_from_volume, check_volume

    loaded = _crop_sequence(scene, cine090)
    with pytest.raises(SlicerBridgeError, match=r"shows one frame of a 3-frame sequence: "
                                                r"segment the whole cine"):
        check_volume(loaded.proxy)
    loaded.browser.SetSelectedItemNumber(1)
    case = case_from_volume(loaded.proxy, allow_sequence_frame=True)
    np.testing.assert_array_equal(case.image, cine090[0][CROP[1]])


def test_a_sequence_of_frames_on_different_grids_is_refused(scene, cine090):
    from CardiacEnsembleLib.slicer.cine import add_volume_sequence, cine_from_sequence
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.volumes import add_volume_like

    loaded = add_volume_sequence(scene, cine090[0][:2], cine090[1], "two grids")
    other = add_volume_like(scene, loaded.proxy, cine090[0][2, :, :100], "smaller")
    loaded.sequence.SetDataNodeAtValue(other, "3")
    with pytest.raises(SlicerBridgeError, match="frame 3 lies on another grid"):
        cine_from_sequence(loaded.sequence)
