"""Scores in the scene (`CardiacEnsembleLib.slicer.tables`): the library's numbers as table rows,
read back and written as CSV exactly, and an edited segmentation scored as the library scores
its label map."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from mrml_fixtures import requires_mrml, sample_loaded, scene  # noqa: F401  (fixtures)

pytestmark = requires_mrml


def test_metrics_table_rows_and_values(scene, tmp_path, sample_loaded):
    from CardiacEnsembleLib.core.errors import OutputExistsError
    from CardiacEnsembleLib.evaluation.metrics import clinical_indices, score_labels
    from CardiacEnsembleLib.slicer.tables import TABLE_COLUMNS, add_metrics_table, \
        clinical_rows, score_rows, table_rows, write_table_csv

    _, loaded = sample_loaded
    ed, es = loaded["ED"].case, loaded["ES"].case
    shifted = np.roll(ed.labels, 2, axis=2)  # a wrong segmentation with known scores
    scores = score_labels(shifted, ed.labels, ed.spacing_zyx)
    indices = clinical_indices(shifted, es.labels, ed.spacing_zyx)
    rows = (score_rows(scores, patient="patient090", phase="ED", method="shifted")
            + clinical_rows(indices, patient="patient090", method="shifted"))
    table = add_metrics_table(scene, rows, "metrics")

    assert table.GetNumberOfRows() == 3 * 3 + 7
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == \
        list(TABLE_COLUMNS)
    read = table_rows(table)
    assert read == rows
    by_key = {(r.phase, r.structure, r.measure): r for r in read}
    for structure, score in scores.items():
        assert by_key[("ED", structure, "Dice")].value == score.dice
        assert by_key[("ED", structure, "HD95")].value == score.hd95_mm
        assert by_key[("ED", structure, "HD95")].unit == "mm"
    assert by_key[("ED+ES", "LV", "EF")].value == indices.lv_ef_pct
    assert by_key[("ED", "Myo", "mass")].value == indices.myo_mass_ed_g
    assert by_key[("ES", "RV", "volume")].unit == "ml"

    path = write_table_csv(table, tmp_path / "metrics.csv")
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows)
    assert float(written[0]["value"]) == rows[0].value  # full precision, not 6 digits
    with pytest.raises(OutputExistsError, match="refusing to overwrite it .pass overwrite=True"):
        write_table_csv(table, path)
    assert issubclass(OutputExistsError, FileExistsError)
    path.write_text("stale")
    write_table_csv(table, path, overwrite=True)
    assert path.read_text().startswith(",".join(TABLE_COLUMNS))


def test_a_table_without_the_report_columns_is_refused(scene):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.tables import table_rows

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "someone else's table")
    with pytest.raises(SlicerBridgeError, match="'someone else's table' lacks column"):
        table_rows(table)


def test_edited_segmentation_scores_the_lower_dice_the_library_computes(sample_loaded):
    """Erode the LV myocardium by one voxel (in-plane), as an editor would, and re-evaluate."""
    from scipy import ndimage

    from CardiacEnsembleLib.evaluation.metrics import score_labels
    from CardiacEnsembleLib.slicer.segmentations import add_segmentation, fill_segmentation, \
        labels_from_segmentation
    from CardiacEnsembleLib.slicer.tables import evaluate_segmentation

    scene, loaded = sample_loaded
    volume, truth = loaded["ED"].volume, loaded["ED"].ground_truth
    edited = add_segmentation(scene, loaded["ED"].case.labels, volume, "edited")
    labels = labels_from_segmentation(edited)
    myocardium = labels == 2
    eroded = ndimage.binary_erosion(myocardium, structure=np.ones((1, 3, 3), bool))
    labels[myocardium & ~eroded] = 0
    fill_segmentation(edited, labels, volume)  # the re-import
    np.testing.assert_array_equal(labels_from_segmentation(edited), labels)

    rows = evaluate_segmentation(edited, truth)
    dice = {r.structure: r.value for r in rows if r.measure == "Dice"}
    expected = score_labels(labels, loaded["ED"].case.labels, loaded["ED"].case.spacing_zyx)
    assert dice == {s: score.dice for s, score in expected.items()}
    assert dice["Myo"] < 1.0 and dice["RV"] == 1.0 and dice["LV"] == 1.0
    assert {(r.patient, r.phase, r.method) for r in rows} == {("patient090", "ED", "edited")}
