"""The test report's verdict lines, on the scores the shipped ensemble really got on the test
split (`reports/acdc_test/scores.csv`, written by `cardiac-ensemble evaluate`): no network runs.

The committed report must say what its own scores say, and the gain's bootstrap interval must
behave as an interval: it brackets the point gain, collapses to it when every patient gains the
same, and widens when more confidence is asked for.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from CardiacEnsembleLib.case import STRUCTURES
from CardiacEnsembleLib.ensemble import read_manifest
from CardiacEnsembleLib.evaluation import (Evaluation, ensemble_method, read_scores_csv,
                                           write_scores_csv)
from CardiacEnsembleLib.postprocess import rival_member_steps, variant_name
from CardiacEnsembleLib.report import best_member, gain_interval, headline, mean_dice

REPO = Path(__file__).resolve().parents[2]
SCORES = REPO / "reports" / "acdc_test" / "scores.csv"
REPORT = REPO / "reports" / "acdc_test.md"
MANIFEST = read_manifest()  # the shipped ensemble the report was made of
SHIPPED = ensemble_method(MANIFEST["fusion"], MANIFEST["postprocess"])
KEYS = list(STRUCTURES) + ["mean"]


@pytest.fixture(scope="module")
def split_scores() -> Evaluation:
    rows = read_scores_csv(SCORES)
    return Evaluation(scores=rows, methods=list(dict.fromkeys(r.method for r in rows)))


@pytest.fixture(scope="module")
def members(split_scores) -> list[str]:
    """The rivals as `evaluate` defines them: every member, raw and with a lone clean-up."""
    names = [member["name"] for member in MANIFEST["members"]]
    rivals = [n + variant_name(v) for v in rival_member_steps(MANIFEST["postprocess"])
              for n in names]
    assert set(rivals) <= set(split_scores.methods), "the report is not of the shipped members"
    return rivals


def test_scores_csv_reads_back_exactly_what_evaluate_wrote(split_scores, tmp_path):
    copy = tmp_path / "scores.csv"
    write_scores_csv(split_scores, copy)
    assert read_scores_csv(copy) == split_scores.scores
    assert len(split_scores.scores) == 40 * 2 * len(split_scores.methods) * len(STRUCTURES)


def test_a_csv_that_is_not_scores_is_refused_by_name():
    clinical = SCORES.with_name("clinical.csv")  # the other CSV evaluate writes
    with pytest.raises(ValueError, match=r"clinical\.csv.*not a scores\.csv.*dice"):
        read_scores_csv(clinical)


def test_committed_report_states_the_verdict_its_scores_give(split_scores, members):
    lines = headline(split_scores, SHIPPED, members)
    report = REPORT.read_text().splitlines()
    missing = [line for line in lines if line and line not in report]
    assert not missing, f"{REPORT.name} is stale; rerun the command it names: {missing}"


def test_interval_brackets_the_point_gain_on_the_test_split(split_scores, members):
    rival = best_member(split_scores, members)
    ours, theirs = mean_dice(split_scores, SHIPPED), mean_dice(split_scores, rival)
    interval = gain_interval(split_scores, SHIPPED, rival)
    for key in KEYS:
        low, high = interval[key]
        assert low < 100 * (ours[key] - theirs[key]) < high, key
        assert high - low > 0.05, key  # 40 patients cannot pin a gain to a twentieth of a point
    wider = gain_interval(split_scores, SHIPPED, rival, confidence=0.99)
    assert all(wider[k][0] < interval[k][0] and wider[k][1] > interval[k][1] for k in KEYS)
    assert gain_interval(split_scores, SHIPPED, rival) == interval  # seeded


def test_interval_collapses_when_every_patient_gains_the_same(split_scores, members):
    rival = best_member(split_scores, members)
    lifted = [dataclasses.replace(r, method="lifted", dice=r.dice + 0.01)
              for r in split_scores.scores if r.method == rival]
    evaluation = Evaluation(scores=split_scores.scores + lifted)
    for key, (low, high) in gain_interval(evaluation, "lifted", rival).items():
        assert low == pytest.approx(1.0) and high == pytest.approx(1.0), key
    assert set(gain_interval(evaluation, rival, rival).values()) == {(0.0, 0.0)}


def test_interval_refuses_methods_scored_on_different_patients(split_scores, members):
    rival = best_member(split_scores, members)
    fewer = [dataclasses.replace(r, method="partial") for r in split_scores.scores
             if r.method == rival and r.patient != "patient101"]
    with pytest.raises(ValueError, match="different patients"):
        gain_interval(Evaluation(scores=split_scores.scores + fewer), "partial", rival)
