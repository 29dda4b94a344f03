"""The committed test report (`reports/acdc_test.md`) says what its own scores
(`reports/acdc_test/scores.csv`, written by `cardiac-ensemble evaluate`) give, and it is a
report of the shipped ensemble on the whole test split: no network runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from CardiacEnsembleLib.core.case import STRUCTURES
from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, MANIFEST_FILE
from CardiacEnsembleLib.core.options import Method, rival_member_steps
from CardiacEnsembleLib.evaluation.scoring import Evaluation, read_scores_csv
from CardiacEnsembleLib.io.acdc import PHASES, load_splits
from CardiacEnsembleDev.release.report import best_member, gain_interval, headline, mean_dice

REPO = Path(__file__).resolve().parents[2]
SCORES = REPO / "reports" / "acdc_test" / "scores.csv"
REPORT = REPO / "reports" / "acdc_test.md"
#: the shipped ensemble the report must be of
MANIFEST = json.loads((DEFAULT_MODELS_DIR / MANIFEST_FILE).read_text())
SHIPPED = Method.ensemble(MANIFEST["fusion"], MANIFEST["postprocess"]).name
KEYS = list(STRUCTURES) + ["mean"]


@pytest.fixture(scope="module")
def split_scores() -> Evaluation:
    rows = read_scores_csv(SCORES)
    return Evaluation(scores=rows, methods=list(dict.fromkeys(r.method for r in rows)))


@pytest.fixture(scope="module")
def members(split_scores) -> list[str]:
    """The rivals as `evaluate` defines them: every member, raw and with a lone clean-up."""
    names = [member["name"] for member in MANIFEST["members"]]
    rivals = [Method.single(n, steps).name for steps in rival_member_steps(MANIFEST["postprocess"])
              for n in names]
    assert set(rivals) <= set(split_scores.methods), "the report is not of the shipped members"
    return rivals


def test_the_scores_cover_every_test_frame_of_every_method_once(split_scores, acdc):
    assert SHIPPED in split_scores.methods
    expected = {(p, phase, m, s) for p in load_splits(acdc)["test"] for phase in PHASES
                for m in split_scores.methods for s in STRUCTURES}
    got = [(r.patient, r.phase, r.method, r.structure) for r in split_scores.scores]
    assert len(got) == len(set(got)) and set(got) == expected


def test_committed_report_states_the_verdict_its_scores_give(split_scores, members):
    lines = headline(split_scores, SHIPPED, members)
    report = REPORT.read_text().splitlines()
    missing = [line for line in lines if line and line not in report]
    assert not missing, f"{REPORT.name} is stale; rerun the command it names: {missing}"


def test_the_manifest_records_the_test_scores_of_the_report(split_scores, members):
    recorded = MANIFEST["test"]
    rival = best_member(split_scores, members)
    assert recorded["method"] == SHIPPED and recorded["best_member"] == rival
    assert recorded["patients"] == len({r.patient for r in split_scores.scores})
    assert recorded["dice"] == pytest.approx(mean_dice(split_scores, SHIPPED), abs=1e-9)
    assert recorded["best_member_dice"] == pytest.approx(mean_dice(split_scores, rival),
                                                         abs=1e-9)


def test_the_gain_interval_on_the_test_split_brackets_the_point_gain(split_scores, members):
    rival = best_member(split_scores, members)
    ours, theirs = mean_dice(split_scores, SHIPPED), mean_dice(split_scores, rival)
    for key, (low, high) in gain_interval(split_scores, SHIPPED, rival).items():
        assert low < 100 * (ours[key] - theirs[key]) < high, key
        assert high - low > 0.05, key  # 40 patients cannot pin a gain to a twentieth of a point
