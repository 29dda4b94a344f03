"""The test report's arithmetic, on scores whose answer is known: the gain's bootstrap interval
brackets the point gain, collapses to it when every patient gains the same and widens when more
confidence is asked for; the verdict lines state the gain and judge it against the targets; the
scores a report is rebuilt from read back exactly.

Whether the committed report says what its committed scores give is the release check's
(`Testing/Release`), run by the release script that writes them.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from CardiacEnsembleLib.core.case import STRUCTURES
from CardiacEnsembleLib.evaluation.metrics import ClinicalIndices
from CardiacEnsembleLib.evaluation.scoring import (ClinicalRow, Evaluation, ScoreRow,
                                                   read_scores_csv, write_clinical_csv,
                                                   write_scores_csv)
from CardiacEnsembleDev.release.report import best_member, gain_interval, headline, mean_dice

KEYS = list(STRUCTURES) + ["mean"]
PATIENTS = [f"patient{i:03d}" for i in range(101, 113)]


def rows(method: str, dice: dict[tuple[str, str, str], float]) -> list[ScoreRow]:
    return [ScoreRow(patient, "NOR", phase, method, structure, value, 3.5, 1.25, "", 0.5)
            for (patient, phase, structure), value in dice.items()]


@pytest.fixture(scope="module")
def scored() -> Evaluation:
    """Two members and an ensemble on 12 patients, ED and ES: member "b" is the better one,
    the ensemble gains about a point over it, with patient-to-patient noise."""
    rng = np.random.default_rng(7)
    frames = [(p, phase, s) for p in PATIENTS for phase in ("ED", "ES") for s in STRUCTURES]
    b = {frame: 0.88 + 0.03 * rng.standard_normal() for frame in frames}
    a = {frame: value - 0.02 for frame, value in b.items()}
    ensemble = {frame: value + 0.01 + 0.01 * rng.standard_normal() for frame, value in b.items()}
    scores = rows("a", a) + rows("b", b) + rows("ensemble-mean", ensemble)
    return Evaluation(scores=scores, methods=["a", "b", "ensemble-mean"])


def lifted(evaluation: Evaluation, method: str, name: str, points: dict[str, float]) -> Evaluation:
    """`evaluation` plus `method`'s scores raised by `points` Dice points per structure, as
    method `name`."""
    extra = [dataclasses.replace(r, method=name, dice=r.dice + points[r.structure] / 100)
             for r in evaluation.scores if r.method == method]
    return Evaluation(scores=evaluation.scores + extra, methods=evaluation.methods + [name])


def test_scores_csv_reads_back_exactly_what_evaluate_wrote(scored, tmp_path):
    path = tmp_path / "scores.csv"
    write_scores_csv(scored, path)
    assert read_scores_csv(path) == scored.scores


def test_scores_csv_keeps_the_qc_columns_and_reads_a_csv_from_before_them(scored, tmp_path):
    with_qc = [dataclasses.replace(r, qc_score=0.125, qc_case_score=0.0625,
                                   qc_slices_to_review=3) if r.method == "ensemble-mean" else r
               for r in scored.scores]
    path = tmp_path / "scores.csv"
    write_scores_csv(Evaluation(scores=with_qc, methods=scored.methods), path)
    back = read_scores_csv(path)
    assert back == with_qc
    assert isinstance(back[-1].qc_slices_to_review, int) and back[0].qc_score is None
    old = tmp_path / "old_scores.csv"  # release 1.4's columns: no QC
    lines = path.read_text().splitlines()
    old.write_text("\n".join(",".join(line.split(",")[:10]) for line in lines) + "\n")
    assert read_scores_csv(old) == scored.scores


def test_a_csv_that_is_not_scores_is_refused_by_name(tmp_path):
    clinical = tmp_path / "clinical.csv"  # the other CSV evaluate writes
    indices = ClinicalIndices(150.0, 60.0, 60.0, 160.0, 80.0, 50.0, 120.0)
    write_clinical_csv(Evaluation(clinical=[ClinicalRow("patient101", "NOR", "reference",
                                                        indices)]), clinical)
    with pytest.raises(ValueError, match=r"clinical\.csv.*not a scores\.csv.*dice"):
        read_scores_csv(clinical)


def test_the_best_member_is_the_one_with_the_best_mean_dice(scored):
    assert best_member(scored, ["a", "b"]) == "b"
    assert mean_dice(scored, "a")["mean"] == pytest.approx(mean_dice(scored, "b")["mean"] - 0.02)


def test_interval_brackets_the_point_gain_and_widens_with_confidence(scored):
    ours, theirs = mean_dice(scored, "ensemble-mean"), mean_dice(scored, "b")
    interval = gain_interval(scored, "ensemble-mean", "b")
    for key in KEYS:
        low, high = interval[key]
        assert low < 100 * (ours[key] - theirs[key]) < high, key
    wider = gain_interval(scored, "ensemble-mean", "b", confidence=0.99)
    assert all(wider[k][0] < interval[k][0] and wider[k][1] > interval[k][1] for k in KEYS)
    assert gain_interval(scored, "ensemble-mean", "b") == interval  # seeded


def test_interval_collapses_when_every_patient_gains_the_same(scored):
    evaluation = lifted(scored, "b", "lifted", {s: 1.0 for s in STRUCTURES})
    for key, (low, high) in gain_interval(evaluation, "lifted", "b").items():
        assert low == pytest.approx(1.0) and high == pytest.approx(1.0), key
    assert set(gain_interval(evaluation, "b", "b").values()) == {(0.0, 0.0)}


def test_interval_refuses_methods_scored_on_different_patients(scored):
    fewer = [dataclasses.replace(r, method="partial") for r in scored.scores
             if r.method == "b" and r.patient != "patient101"]
    with pytest.raises(ValueError, match="different patients"):
        gain_interval(Evaluation(scores=scored.scores + fewer), "partial", "b")


def test_the_verdict_states_the_gain_over_the_best_member_and_judges_it(scored):
    evaluation = lifted(scored, "b", "ensemble-weighted", {"RV": 1.5, "Myo": 0.75, "LV": 0.75})
    lines = headline(evaluation, "ensemble-weighted", ["a", "b"])
    rival = mean_dice(scored, "b")["mean"]
    assert lines[0] == "Shipped ensemble: **ensemble-weighted**. Best single member by mean " \
                       "Dice: **b**."
    assert "| difference (points) | +1.50 | +0.75 | +0.75 | +1.00 |" in lines
    assert f"- gain over the best member (b, {rival:.4f}): +1.00 points (95% interval +1.00 " \
           f"to +1.00): **met** (target >= +0.5)" in lines
    assert "- largest per-structure loss: Myo +0.75 points: **met** (target no loss over " \
           "0.2)" in lines


def test_a_structure_that_loses_fails_the_no_loss_target(scored):
    evaluation = lifted(scored, "b", "ensemble-weighted", {"RV": 2.0, "Myo": 0.5, "LV": -0.5})
    lines = headline(evaluation, "ensemble-weighted", ["a", "b"])
    assert "- largest per-structure loss: LV -0.50 points: **NOT met** (target no loss over " \
           "0.2)" in lines
    assert any(line.startswith("- gain over the best member (b, ") and
               ": +0.67 points" in line and "**met**" in line for line in lines)


def test_the_comparison_table_puts_runs_side_by_side_with_their_means(tmp_path):
    from CardiacEnsembleDev.release.compare import comparison_table

    def run(name, dice_rv):
        folder = tmp_path / name
        folder.mkdir()
        rows = ["patient,group,phase,method,structure,dice,hd95_mm,msd_mm,flag,seconds"]
        for phase in ("ED", "ES"):
            for structure, dice in (("RV", dice_rv), ("Myo", 0.8), ("LV", 0.9)):
                rows.append(f"p1,NOR,{phase},ensemble-weighted+lcc,{structure},{dice},3.0,1.0,,1")
                rows.append(f"p1,NOR,{phase},other,{structure},0.1,30.0,9.0,,1")
        (folder / "scores.csv").write_text("\n".join(rows) + "\n")
        return folder

    table = comparison_table([run("full", 0.7), run("margin-16", 1.0)]).splitlines()
    assert table[2] == "| full | 2 | 0.7000 | 0.8000 | 0.9000 | 0.8000 | 3.00 / 3.00 / 3.00 | 3.00 |"
    assert table[3].startswith("| margin-16 | 2 | 1.0000 | 0.8000 | 0.9000 | 0.9000 |")
    assert all(line.count("|") == table[0].count("|") for line in table)
