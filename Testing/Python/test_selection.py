"""Weight search and setting selection on validation data, and the split guard around them.

The search is checked on member outputs built from real ground truth, so the right answer is
known: a member that equals the truth must win the weights.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CardiacEnsembleLib.io.acdc import PatientFolder, SplitLeakError, load_splits
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.core.options import Method, lone_member_steps
from CardiacEnsembleDev.release.selection import (Candidate, SearchResult, ValidationFrame,
                                          _best_search, _foreground_box, _honest_dice,
                                          collect_validation_frames, coordinate_ascent,
                                          cross_validate, frame_dice,
                                          patient_folds, per_class_ascent, random_search,
                                          run_searches, select,
                                          selection_markdown, weighted_mean_dice)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # thousands of small fusions


def soft(labels: np.ndarray, confidence: float) -> torch.Tensor:
    one_hot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), 4).permute(3, 0, 1, 2).float()
    return one_hot * confidence + (1 - confidence) / 4


def validation_frame(case, members: list[np.ndarray],
                     confidences: list[float]) -> ValidationFrame:
    """Members' soft maps of `case` as `collect_validation_frames` stores them: float16, cropped
    to the box around every member's and the reference's foreground (Dice is the same there)."""
    probs = torch.stack([soft(m, c) for m, c in zip(members, confidences)])
    reference = torch.from_numpy(case.labels.astype(np.uint8))
    box = _foreground_box(probs.argmax(1), reference)
    return ValidationFrame(case.patient_id, case.phase,
                           probs[(slice(None), slice(None)) + box].half(), reference[box].clone(),
                           case.spacing_zyx)


@pytest.fixture(scope="module")
def frames(patient_dir) -> list[ValidationFrame]:
    """Three 'members' per frame: the truth, the truth without its RV, and the truth shifted
    by 6 px (a confident but misplaced network)."""
    result = []
    for phase in ("ED", "ES"):
        case = PatientFolder.open(patient_dir("patient001")).load(phase)
        truth = case.labels.astype(np.uint8)
        no_rv = np.where(truth == 1, 0, truth).astype(np.uint8)
        shifted = np.roll(truth, 6, axis=2)
        result.append(validation_frame(case, [truth, no_rv, shifted], [0.7, 0.9, 0.95]))
    return result


def test_a_member_equal_to_the_truth_scores_one(frames):
    assert weighted_mean_dice(frames, [1, 0, 0]) == pytest.approx(1.0)
    assert weighted_mean_dice(frames, [0, 1, 0]) < 0.8  # no RV at all


def test_both_searches_find_weights_that_follow_the_true_member(frames):
    equal = weighted_mean_dice(frames, [1 / 3] * 3)
    random = random_search(frames, trials=12, seed=0)
    ascent = coordinate_ascent(frames)
    assert random.evaluations == 12 and random.trace[0] == pytest.approx(equal)
    assert random.dice >= equal and ascent.dice >= equal
    assert ascent.dice > 0.99  # the shifted and RV-less members are outweighed
    assert ascent.weights[0] == max(ascent.weights)
    assert sum(ascent.weights) == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(ascent.trace, ascent.trace[1:]))


def test_per_class_search_trusts_each_member_with_the_structure_it_gets_right(patient_dir):
    """Member 0 has the true RV but a misplaced myocardium and LV; member 1 has no RV but the
    true myocardium and LV. No single weighting can take both; per-class weights can."""
    frames = []
    for phase in ("ED", "ES"):
        case = PatientFolder.open(patient_dir("patient001")).load(phase)
        truth = case.labels.astype(np.uint8)
        shifted = np.roll(truth, 6, axis=2)
        rv_right = np.where(truth == 1, 1, np.where(shifted == 1, 0, shifted)).astype(np.uint8)
        no_rv = np.where(truth == 1, 0, truth).astype(np.uint8)
        frames.append(validation_frame(case, [rv_right, no_rv], [0.9, 0.9]))
    member_level = coordinate_ascent(frames)
    per_class = per_class_ascent(frames, member_level.weights, max_evaluations=300)
    assert per_class.trace[0] == pytest.approx(member_level.dice)
    assert per_class.dice > member_level.dice + 0.02 and per_class.dice > 0.98
    table = np.asarray(per_class.weights)
    assert table[0, 1] > table[1, 1]  # RV from member 0
    assert table[1, 2] > table[0, 2] and table[1, 3] > table[0, 3]  # Myo and LV from member 1
    np.testing.assert_allclose(table.sum(axis=0), 1.0)
    assert weighted_mean_dice(frames, per_class.weights) == pytest.approx(per_class.dice)


def test_cross_validation_scores_each_search_on_patients_it_never_fitted(patient_dir):
    """Member 0 is right on patient001 and misplaced on patient002, member 1 the other way
    round. Weights fitted on one patient are wrong for the other: only a search scored on
    patients it did not see can tell, and it must."""
    frames = []
    for index, patient in enumerate(("patient001", "patient002")):
        for phase in ("ED", "ES"):
            case = PatientFolder.open(patient_dir(patient)).load(phase)
            truth = case.labels.astype(np.uint8)
            shifted = np.roll(truth, 8, axis=2)
            members = [truth, shifted] if index == 0 else [shifted, truth]
            frames.append(validation_frame(case, members, [0.8, 0.8]))
    searches = run_searches(frames, trials=8)
    assert all(np.isnan(s.held_out_dice) for s in searches)
    cross_validate(frames, searches, trials=8)
    for search in searches:
        assert search.held_out_dice < search.dice - 0.1, search.method
        # fitted on one patient, the weights pick that patient's right member: on the other
        # patient that is the misplaced one, and the held-out score says so
        assert search.held_out_dice == pytest.approx(np.mean(
            [weighted_mean_dice(frames[2:], [1, 0]), weighted_mean_dice(frames[:2], [0, 1])]),
            abs=0.05)


def test_patient_folds_keep_a_patients_frames_together_and_score_each_once(frames):
    many = [ValidationFrame(f"patient{i:03d}", f.phase, f.member_probs, f.reference,
                            f.spacing_zyx) for i in range(5) for f in frames]
    scored = []
    for fitting, held_out in patient_folds(many, folds=2):
        fitted_ids, held_ids = {f.patient for f in fitting}, {f.patient for f in held_out}
        assert not fitted_ids & held_ids and len(fitting) + len(held_out) == len(many)
        scored += [f.patient for f in held_out]
    assert sorted(scored) == sorted(f.patient for f in many)


def test_the_search_with_the_best_held_out_dice_supplies_the_weights():
    searches = [SearchResult(name, [0.5, 0.5], dice, 1, 0.0, held_out_dice=held)
                for name, dice, held in (("random search", 0.900, 0.890),
                                         ("coordinate ascent", 0.905, 0.897),
                                         ("per-class coordinate ascent", 0.910, 0.885))]
    assert _best_search(searches).method == "coordinate ascent"
    weighted = Candidate("ensemble-weighted", "weighted", [0.5, 0.5], (), {"mean": 0.905}, {})
    mean = Candidate("ensemble-mean", "mean", None, (), {"mean": 0.899}, {})
    assert _honest_dice(weighted, searches[1]) == 0.897 < _honest_dice(mean, searches[1])
    for search in searches:
        search.held_out_dice = float("nan")
    assert _best_search(searches).method == "per-class coordinate ascent"
    assert _honest_dice(weighted, searches[1]) == 0.905


def test_cropping_to_the_foreground_box_does_not_change_dice(patient_dir):
    case = PatientFolder.open(patient_dir("patient001")).load("ED")
    truth = torch.from_numpy(case.labels.astype(np.uint8))
    member = torch.roll(truth, 3, dims=1)
    box = _foreground_box(member[None], truth)
    assert box[1].stop - box[1].start < truth.shape[1]  # it really crops
    assert frame_dice(member[box], truth[box]) == frame_dice(member, truth)


@pytest.fixture(scope="module")
def ensemble(untrained_models):
    return load_ensemble(untrained_models, device="cpu")


@pytest.fixture(scope="module")
def selection(ensemble, frames):
    """One selection on the three constructed members (the stored probabilities stand in for
    the untrained networks' own: `select` only reads the ensemble's member names)."""
    return select(ensemble, frames, trials=4, log=lambda line: None)


def test_select_scores_every_rule_and_post_processing(ensemble, selection):
    names = [c.name for c in selection.candidates]
    assert names[:3] == ensemble.names
    for rule in ("mean", "weighted", "vote", "staple"):
        assert f"ensemble-{rule}" in names
    assert selection.chosen.dice["mean"] >= max(
        c.dice["mean"] for c in selection.candidates if c.rule != "member") - 0.001
    update = selection.manifest_update()
    assert set(update["weights"]) == set(ensemble.names)
    assert update["selection"]["split"] == "validation"
    assert [s["method"] for s in update["selection"]["weight_search"]] == \
        ["random search", "coordinate ascent", "per-class coordinate ascent",
         "per-class coordinate ascent from equal weights"]
    weighted = next(c for c in selection.candidates if c.name == "ensemble-weighted")
    # one patient cannot be cross-validated: the best in-sample search supplies the weights
    assert all(np.isnan(s.held_out_dice) for s in selection.searches)
    assert weighted.weights == max(selection.searches, key=lambda s: s.dice).weights
    rule = selection.chosen.rule
    assert {f"ensemble-{rule}+lcc", f"ensemble-{rule}+lcc+heart"} <= set(names)


def test_selection_names_the_best_member_with_its_best_clean_up(ensemble, selection):
    rival = selection.best_member()
    assert rival.rule == "member"
    scored = {c.postprocess for c in selection.candidates if c.rule == "member"}
    assert {(), ("lcc",), lone_member_steps(selection.chosen.postprocess)} <= scored
    # the truth wins
    assert rival.name == Method.single(ensemble.names[0], rival.postprocess).name
    assert rival.dice["mean"] == max(c.dice["mean"] for c in selection.candidates
                                     if c.rule == "member")
    assert selection.manifest_update()["selection"]["best_member"]["name"] == rival.name
    assert f"best member with its best clean-up ({rival.name})" in selection_markdown(selection)


def test_selection_reads_only_validation_patients(acdc, untrained_models, patients_read):
    read = patients_read
    ensemble = load_ensemble(untrained_models, device="cpu")
    frames = collect_validation_frames(ensemble, acdc, limit=1)
    assert len(frames) == 2
    assert set(read) == {load_splits(acdc)["validation"][0]}


def test_selection_refuses_a_split_file_that_puts_test_patients_in_validation(
        acdc, untrained_models, tmp_path):
    splits = load_splits(acdc)
    (tmp_path / "training").symlink_to(acdc / "training")
    (tmp_path / "testing").symlink_to(acdc / "testing")
    leaky = dict(splits, validation=splits["validation"][:1] + splits["test"][:1])
    (tmp_path / "splits.json").write_text(json.dumps(leaky))
    with pytest.raises(SplitLeakError, match=splits["test"][0]):
        collect_validation_frames(load_ensemble(untrained_models, device="cpu"), tmp_path)
