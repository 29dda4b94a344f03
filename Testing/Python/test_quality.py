"""Quality control: the scores, the review list and the QC file, on made-up maps and on the
shipped ensemble's real output; the workbench study's measures on known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from CardiacEnsembleDev.release.quality import (Unit, auroc, average_precision,
                                                error_caught_curve, fit_threshold)
from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.core.errors import MemberError
from CardiacEnsembleLib.core.manifest import read_manifest
from CardiacEnsembleLib.core.quality import (QualityReport, QualityScore, QualityThresholds,
                                             thresholds_from_json)
from CardiacEnsembleLib.inference.quality import (assess, disagreement_scores, entropy_scores,
                                                  report_from_maps)


def _ring_labels() -> np.ndarray:
    """(4, 16, 16): LV cavity (3) on slices 0-2, myocardium (2) around it, RV (1) on slice 0."""
    labels = np.zeros((4, 16, 16), dtype=np.uint8)
    labels[:3, 4:12, 4:12] = 2
    labels[:3, 6:10, 6:10] = 3
    labels[0, 1:3, 4:12] = 1
    return labels


def test_voters_that_agree_score_0_and_a_voter_missing_a_slice_scores_half():
    labels = _ring_labels()
    agree = disagreement_scores(np.stack([labels, labels]), labels)
    present = np.isfinite(agree.per_slice)
    assert np.all(agree.per_slice[present] == 0) and agree.case == 0
    assert not present[3].any()  # nothing drawn on slice 3: no unit there
    assert present[0].all() and not present[1, 0]  # RV only on slice 0
    other = labels.copy()
    other[2][other[2] == 3] = 0  # the second voter misses the LV cavity on slice 2
    maps = disagreement_scores(np.stack([labels, other]), labels)
    assert maps.per_slice[2, 2] == pytest.approx(0.5)  # 1 - mean(Dice 1, Dice 0)
    assert maps.per_slice[1, 2] == 0 and maps.per_slice[2, 1] == 0
    assert maps.per_structure[2] == pytest.approx(1 - (1 + 2 * 32 / (48 + 32)) / 2)  # 2 of 3
    assert maps.case == pytest.approx(maps.per_structure[2])


def test_entropy_is_0_for_certain_probabilities_and_high_for_even_ones():
    labels = _ring_labels()
    certain = np.eye(4, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
    assert np.nanmax(entropy_scores(certain, labels).per_slice) == 0
    doubtful = certain.copy()
    doubtful[:, 1] = 0.25  # every class equally likely on slice 1
    maps = entropy_scores(doubtful, labels)
    assert np.all(maps.per_slice[1][np.isfinite(maps.per_slice[1])] > 0.9)
    assert np.nanmax(maps.per_slice[[0, 2]]) == 0


def test_the_review_list_is_ranked_worst_first_and_flags_at_the_threshold():
    labels = _ring_labels()
    other = labels.copy()
    other[2][other[2] == 3] = 0
    other[0][other[0] == 1] = 0
    maps = disagreement_scores(np.stack([labels, other, labels]), labels)
    thresholds = {QualityScore.DISAGREEMENT: QualityThresholds(QualityScore.DISAGREEMENT,
                                                               0.3, 0.9, "test")}
    report = report_from_maps(maps, QualityScore.DISAGREEMENT, thresholds, "case")
    scores = [entry.score for entry in report.slices]
    assert scores == sorted(scores, reverse=True)
    assert [(e.slice_index, e.structure) for e in report.to_review] == [(0, "RV"), (2, "LV")]
    assert report.to_review[0].label == 1 and not report.case_flagged
    assert report.summary().startswith("QC: 2 slice(s) to review, worst slice 1 RV")
    again = QualityReport.from_json(json.loads(json.dumps(report.to_json())))
    assert [(e.slice_index, e.structure, e.flagged) for e in again.slices] == \
        [(e.slice_index, e.structure, e.flagged) for e in report.slices]
    assert [e.score for e in again.slices] == pytest.approx([e.score for e in report.slices],
                                                            abs=1e-4)  # 4 digits in the file
    assert again.thresholds == report.thresholds
    entropy_only = report_from_maps(maps, QualityScore.DISAGREEMENT,
                                    {QualityScore.ENTROPY: thresholds[QualityScore.DISAGREEMENT]})
    assert entropy_only.to_review == [] and "no validated threshold" in entropy_only.notes[0]


def test_a_broken_quality_control_entry_is_one_line_naming_the_manifest():
    with pytest.raises(MemberError, match="manifest.json.*quality_control.*'variance'"):
        thresholds_from_json({"variance": {"slice_threshold": 0.1, "case_threshold": 0.1}},
                             "models/manifest.json")
    with pytest.raises(MemberError, match=r"in \[0, 1\]"):
        thresholds_from_json({"entropy": {"slice_threshold": 2, "case_threshold": 0.1}})


def test_the_shipped_manifest_has_validated_thresholds_for_both_scores():
    quality = read_manifest().quality_control
    assert set(quality) == {QualityScore.DISAGREEMENT, QualityScore.ENTROPY}
    assert all("validation" in t.source and 0 < t.slice < 1 for t in quality.values())


@pytest.fixture(scope="module")
def sample_prediction():
    from CardiacEnsembleLib.inference.ensemble import load_ensemble
    from CardiacEnsembleLib.io.acdc import PatientFolder
    from CardiacEnsembleLib.cli.common import SAMPLE_DIR

    ensemble = load_ensemble()
    case = PatientFolder.open(SAMPLE_DIR).load("ES")
    return ensemble, case, ensemble.predict(case)


def test_the_slices_the_members_disagree_on_are_the_ones_the_ensemble_got_wrong(
        sample_prediction):
    """The real sample patient: the five worst-ranked entries have a lower Dice against the
    expert than the rest of the list."""
    from CardiacEnsembleLib.evaluation.metrics import dice

    ensemble, case, prediction = sample_prediction
    report = assess(prediction, ensemble.quality_control)
    assert report.score is QualityScore.DISAGREEMENT and report.thresholds is not None
    dices = [dice(prediction.labels[e.slice_index] == e.label,
                  case.labels[e.slice_index] == e.label) for e in report.slices]
    assert np.mean(dices[:5]) < np.mean(dices[5:]) - 0.1
    assert all(0 <= e.slice_index < case.image.shape[0] for e in report.slices)


def test_segment_writes_the_qc_file_of_the_sample_patient(tmp_path, capsys):
    assert main(["-q", "segment", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for phase in ("ED", "ES"):
        record = json.loads((tmp_path / f"patient090_{phase}_seg_qc.json").read_text())
        assert record["labels"] == f"patient090_{phase}_seg.nii.gz"
        assert record["score"] == "disagreement" and record["thresholds"]["fitted_on"]
        scores = [entry["score"] for entry in record["slices"]]
        assert scores == sorted(scores, reverse=True) and scores
        flagged = [entry for entry in record["slices"] if entry["flagged"]]
        assert record["slices_to_review"] == len(flagged)
        assert all(e["score"] >= record["thresholds"]["slice_threshold"] for e in flagged)
        assert f"QC: {len(flagged)} slice(s) to review" in printed


def test_segment_without_qc_writes_no_qc_file(tmp_path):
    assert main(["-q", "segment", "--no-qc", "--preset", "fast", "--output",
                 str(tmp_path)]) == 0
    assert not list(tmp_path.glob("*_qc.json")) and len(list(tmp_path.glob("*.nii.gz"))) == 2


def test_auroc_and_average_precision_on_a_known_ranking():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    errors = np.array([False, False, True, True])
    assert auroc(scores, errors) == pytest.approx(0.75)  # 3 of the 4 error/non-error pairs
    assert average_precision(scores, errors) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert np.isnan(auroc(scores, np.zeros(4, bool)))
    assert fit_threshold(scores, errors, recall=0.5) == 0.8
    assert fit_threshold(scores, errors, recall=1.0) == 0.35


def test_the_error_caught_curve_runs_from_nothing_to_everything_worst_first():
    reviewed, caught = error_caught_curve(np.array([0.9, 0.1, 0.5]), np.array([10.0, 0, 30]))
    assert list(reviewed) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert list(caught) == pytest.approx([0, 0.25, 1.0, 1.0])


def test_a_unit_keeps_what_the_report_needs():
    unit = Unit("ensemble disagreement", "slice", "p", "p ED", 3, "LV", 0.2, True, 12, 0.4)
    assert unit.error and unit.misclassified == 12 and unit.shortfall == 0.4
