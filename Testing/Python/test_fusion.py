"""Fusion rules, specified on small constructed maps whose answers are known by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.inference.fusion import (
    FUSION_RULES,
    FusionResult,
    disagreement,
    fuse,
    majority_vote,
    mean_probabilities,
    normalized_entropy,
    staple,
)

NUM_CLASSES = 4


def soft_probabilities(labels: np.ndarray, confidence: float = 0.7) -> torch.Tensor:
    """(..., ) labels -> (C, ...) float32 probabilities: `confidence` on the label, rest shared."""
    rest = (1.0 - confidence) / (NUM_CLASSES - 1)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), NUM_CLASSES)
    probs = one_hot.float() * (confidence - rest) + rest
    return probs.movedim(-1, 0).contiguous()


def voxels(*labels_per_member: list[int]) -> np.ndarray:
    """Member label lists -> (M, 1, 1, X) uint8: one row of voxels per member."""
    return np.array(labels_per_member, dtype=np.uint8)[:, None, None, :]


def ground_truth() -> np.ndarray:
    """A (2, 6, 6) map with all four labels: RV beside an LV cavity ringed by myocardium."""
    truth = np.zeros((2, 6, 6), np.uint8)
    truth[:, 1:5, 2:6] = 2
    truth[:, 2:4, 3:5] = 3
    truth[:, 0:3, 0:2] = 1
    return truth


def three_members() -> tuple[np.ndarray, np.ndarray]:
    """Truth plus two members each wrong on its own region, so every voxel has a 2-of-3 majority.

    Returns the (3, 2, 6, 6) member labels and the (2, 6, 6) mask where one member is wrong.
    """
    truth = ground_truth()
    wrong_myo = truth.copy()
    wrong_myo[:, 1:5, 2:3] = 1  # member 1 calls a strip of myocardium RV
    wrong_corner = truth.copy()
    wrong_corner[:, 4:6, 0:2] = 3  # member 2 puts LV cavity in the background corner
    members = np.stack([truth, wrong_myo, wrong_corner])
    return members, (members != truth).any(axis=0)


# ------------------------------------------------------------------------ mean_probabilities

def test_mean_of_members_is_their_voxelwise_average():
    member_probs = torch.tensor([[[0.9, 0.2, 0.5], [0.1, 0.8, 0.5]],
                                 [[0.3, 0.4, 0.0], [0.7, 0.6, 1.0]]])  # (M=2, C=2, X=3)
    expected = torch.tensor([[0.6, 0.3, 0.25], [0.4, 0.7, 0.75]])
    torch.testing.assert_close(mean_probabilities(member_probs), expected)


def test_weighted_mean_with_weights_3_to_1_matches_hand_computation():
    member_probs = torch.tensor([[[0.7], [0.3]], [[0.2], [0.8]]])  # (M=2, C=2, X=1)
    # 0.75 * (0.7, 0.3) + 0.25 * (0.2, 0.8)
    expected = torch.tensor([[0.575], [0.425]])
    torch.testing.assert_close(mean_probabilities(member_probs, weights=(3, 1)), expected)


def test_weights_can_change_the_winning_class():
    member_probs = torch.tensor([[[0.7], [0.3]], [[0.2], [0.8]]])
    assert mean_probabilities(member_probs).argmax(0).item() == 1  # (0.45, 0.55)
    assert mean_probabilities(member_probs, weights=(3, 1)).argmax(0).item() == 0  # (0.575, 0.425)


def test_weights_are_normalised_so_only_their_ratio_matters():
    member_probs = torch.rand(3, NUM_CLASSES, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    reference = mean_probabilities(member_probs, weights=(1, 2, 5))
    torch.testing.assert_close(mean_probabilities(member_probs, weights=(10, 20, 50)), reference)
    torch.testing.assert_close(mean_probabilities(member_probs, weights=(0.125, 0.25, 0.625)),
                               reference)


def test_per_class_weights_take_each_class_from_the_member_trusted_for_it():
    member_probs = torch.tensor([[[0.6], [0.4]], [[0.2], [0.8]]])  # (M=2, C=2, 1 voxel)
    # background only from member 0 (0.6), class 1 only from member 1 (0.8), renormalised
    fused = mean_probabilities(member_probs, weights=[[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(fused, torch.tensor([[0.6 / 1.4], [0.8 / 1.4]]))
    # the same per-class list for every class is the plain weighted mean
    torch.testing.assert_close(mean_probabilities(member_probs, weights=[[3.0, 3.0], [1.0, 1.0]]),
                               mean_probabilities(member_probs, weights=[3.0, 1.0]))


@pytest.mark.parametrize("weights, message", [
    ([[1.0, 0.0], [1.0, 0.0]], r"all zero for class\(es\) \[1\]"),
    ([[1.0, 1.0, 1.0], 1.0], "needs 2 numbers"),
    ([[1.0, -0.5], 1.0], "non-negative")])
def test_bad_per_class_weights_are_refused_naming_the_problem(weights, message):
    member_probs = torch.full((2, 2, 1), 0.5)
    with pytest.raises(ValueError, match=message):
        mean_probabilities(member_probs, weights=weights)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_members_are_fused_in_float32(dtype):
    member_probs = torch.tensor([[[0.75], [0.25]], [[0.5], [0.5]]], dtype=dtype)
    fused = mean_probabilities(member_probs)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, torch.tensor([[0.625], [0.375]]), rtol=0, atol=0)


@pytest.mark.parametrize("weights", [(1.0, -1.0), (0.0, 0.0), (1.0, 2.0, 3.0), (1.0,),
                                     (1.0, float("nan"))],
                         ids=["negative", "all-zero", "too-long", "too-short", "nan"])
def test_invalid_weights_are_refused_with_the_weights_named(weights):
    member_probs = torch.full((2, NUM_CLASSES, 1, 1, 1), 0.25)
    with pytest.raises(ValueError, match="weights"):
        mean_probabilities(member_probs, weights=weights)


# ----------------------------------------------------------------------------- majority_vote

def test_vote_takes_the_label_two_of_three_members_agree_on():
    members = voxels([1, 2, 3, 0], [1, 0, 3, 2], [3, 2, 1, 0])
    np.testing.assert_array_equal(majority_vote(members), voxels([1, 2, 3, 0])[0])


def test_vote_returns_uint8_on_the_members_grid():
    members, _ = three_members()
    fused = majority_vote(members)
    assert fused.dtype == np.uint8 and fused.shape == members.shape[1:]


def test_vote_three_way_tie_takes_the_fallback_label():
    members = voxels([1, 1], [2, 1], [3, 2])  # voxel 0: 1/2/3 tie; voxel 1: majority 1
    fallback = voxels([2, 3])[0]
    np.testing.assert_array_equal(majority_vote(members, fallback=fallback), voxels([2, 1])[0])


def test_vote_tie_without_fallback_takes_the_smallest_tied_label():
    # voxel 0: 2 and 3 tie with two votes each (1, with one vote, is not tied) -> 2, not 1;
    # voxel 1: 0 and 3 tie with two votes each (2 has one) -> 0, background.
    members = voxels([3, 3], [3, 0], [2, 2], [2, 0], [1, 3])
    np.testing.assert_array_equal(majority_vote(members), voxels([2, 0])[0])


def test_vote_of_one_member_is_that_member():
    members, _ = three_members()
    np.testing.assert_array_equal(majority_vote(members[1:2]), members[1])


def test_vote_refuses_labels_that_collide_with_the_undecided_marker():
    with pytest.raises(ValueError, match="0..254"):
        majority_vote(voxels([1, 255], [1, 2]))


# ------------------------------------------------------------------------------------ staple

def test_staple_of_identical_members_is_that_member():
    truth = ground_truth()
    np.testing.assert_array_equal(staple(np.stack([truth, truth, truth])), truth)


def test_staple_follows_the_two_members_that_agree_where_one_is_wrong():
    members, _ = three_members()
    np.testing.assert_array_equal(staple(members), ground_truth())


def test_staple_of_one_member_is_that_member():
    members, _ = three_members()
    np.testing.assert_array_equal(staple(members[2:3]), members[2])


def test_staple_undecided_voxels_take_the_fallback_label():
    members = voxels([1, 2, 0], [2, 1, 0])  # two raters contradicting each other symmetrically
    fallback = voxels([2, 2, 3])[0]
    np.testing.assert_array_equal(staple(members, fallback=fallback), voxels([2, 2, 0])[0])


def test_staple_undecided_voxels_without_fallback_take_the_smallest_tied_label():
    members = voxels([1, 2, 0], [2, 1, 0])
    np.testing.assert_array_equal(staple(members), voxels([1, 1, 0])[0])


# ----------------------------------------------------------------- entropy and disagreement

def test_entropy_of_a_one_hot_voxel_is_zero():
    probs = torch.tensor([[0.0], [0.0], [1.0], [0.0]])
    assert normalized_entropy(probs).item() == 0.0


def test_entropy_of_a_uniform_voxel_is_one():
    probs = torch.full((NUM_CLASSES, 2, 3), 1.0 / NUM_CLASSES)
    torch.testing.assert_close(normalized_entropy(probs), torch.ones(2, 3))


def test_entropy_of_two_equal_classes_out_of_four_is_one_half():
    probs = torch.tensor([[0.5], [0.5], [0.0], [0.0]])  # log 2 / log 4
    torch.testing.assert_close(normalized_entropy(probs), torch.tensor([0.5]))


def test_disagreement_is_zero_where_all_members_agree():
    members = torch.from_numpy(voxels([1, 2], [1, 2], [1, 2]))
    assert torch.equal(disagreement(members, members[0]), torch.zeros(1, 1, 2))


def test_disagreement_is_one_third_where_one_of_three_members_differs():
    members = torch.from_numpy(voxels([1, 2], [1, 3], [1, 2]))
    torch.testing.assert_close(disagreement(members, members[0]),
                               torch.tensor([[[0.0, 1.0 / 3.0]]]))


# -------------------------------------------------------------------------------------- fuse

@pytest.mark.parametrize("rule", FUSION_RULES)
def test_every_rule_recovers_the_majority_on_a_constructed_case(rule):
    members, _ = three_members()
    member_probs = torch.stack([soft_probabilities(m) for m in members])  # (3, 4, 2, 6, 6)
    result = fuse(rule, member_probs, weights=(1, 1, 1) if rule == "weighted" else None)
    assert isinstance(result, FusionResult)
    assert result.labels.dtype == np.uint8
    np.testing.assert_array_equal(result.labels, ground_truth())
    assert result.probabilities.shape == (NUM_CLASSES, 2, 6, 6)
    assert result.uncertainty.shape == result.disagreement.shape == (2, 6, 6)


@pytest.mark.parametrize("rule", FUSION_RULES)
def test_every_rule_reports_one_third_disagreement_where_one_member_is_wrong(rule):
    members, one_wrong = three_members()
    member_probs = torch.stack([soft_probabilities(m) for m in members])
    result = fuse(rule, member_probs, weights=(1, 1, 1) if rule == "weighted" else None)
    expected = torch.from_numpy(one_wrong.astype(np.float32) / 3.0)
    torch.testing.assert_close(result.disagreement, expected)


def test_fused_uncertainty_is_the_entropy_of_the_mean_probabilities():
    # Two members sure of different classes: mean (0.5, 0.5, 0, 0) -> entropy log 2 / log 4.
    member_probs = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                                 [0.0, 1.0, 0.0, 0.0]]).reshape(2, NUM_CLASSES, 1, 1, 1)
    torch.testing.assert_close(fuse("vote", member_probs).uncertainty,
                               torch.full((1, 1, 1), 0.5))


@pytest.mark.parametrize("rule", ["vote", "staple"])
def test_label_rule_ties_are_broken_by_the_mean_probabilities(rule):
    # Each member votes for a different class; member 2 is sure, so the mean favours class 3.
    member_probs = torch.tensor([[0.0, 0.5, 0.3, 0.2],
                                 [0.0, 0.3, 0.5, 0.2],
                                 [0.0, 0.05, 0.05, 0.9]]).reshape(3, NUM_CLASSES, 1, 1, 1)
    assert fuse(rule, member_probs).labels.item() == 3


def test_unknown_rule_is_refused_naming_the_valid_rules():
    member_probs = torch.full((1, NUM_CLASSES, 1, 1, 1), 0.25)
    with pytest.raises(ValueError) as error:
        fuse("median", member_probs)
    assert all(name in str(error.value) for name in FUSION_RULES)


def test_weighted_rule_without_weights_is_refused():
    with pytest.raises(ValueError, match="needs weights"):
        fuse("weighted", torch.full((2, NUM_CLASSES, 1, 1, 1), 0.25))


def test_weighted_rule_with_one_weight_too_few_is_refused():
    with pytest.raises(ValueError, match="weights"):
        fuse("weighted", torch.full((2, NUM_CLASSES, 1, 1, 1), 0.25), weights=(1.0,))


def test_weights_given_to_an_unweighted_rule_are_refused_not_ignored():
    with pytest.raises(ValueError, match="takes no weights"):
        fuse("mean", torch.full((2, NUM_CLASSES, 1, 1, 1), 0.25), weights=(3, 1))


@pytest.mark.parametrize("shape", [(NUM_CLASSES, 1, 1, 1), (2, 1, 1, 1, 1), (0, 4, 1, 1, 1)],
                         ids=["no-member-axis", "one-class", "no-members"])
def test_badly_shaped_member_probabilities_are_refused(shape):
    with pytest.raises(ValueError, match="member probabilities"):
        fuse("mean", torch.zeros(shape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this environment")
def test_fusion_stays_on_the_gpu_and_matches_the_cpu():
    members, _ = three_members()
    member_probs = torch.stack([soft_probabilities(m) for m in members]).half()
    on_cpu = fuse("weighted", member_probs, weights=(3, 1, 1))
    on_gpu = fuse("weighted", member_probs.cuda(), weights=(3, 1, 1))
    assert on_gpu.probabilities.is_cuda and on_gpu.uncertainty.is_cuda
    assert on_gpu.disagreement.is_cuda
    np.testing.assert_array_equal(on_gpu.labels, on_cpu.labels)
    torch.testing.assert_close(on_gpu.probabilities.cpu(), on_cpu.probabilities)
    assert math.isclose(on_gpu.uncertainty.sum().item(), on_cpu.uncertainty.sum().item(),
                        rel_tol=1e-5)


def test_class_argmax_equals_torch_argmax_including_ties():
    from CardiacEnsembleLib.inference.fusion import class_argmax

    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 4, 5, 6, 7), dim=1)
    probs[0, 1, 0, 0, 0] = probs[0, 2, 0, 0, 0] = 2.0  # a tie: the smaller class wins
    assert torch.equal(class_argmax(probs, dim=1), probs.argmax(dim=1).to(torch.uint8))
    assert int(class_argmax(probs, dim=1)[0, 0, 0, 0]) == 1
    assert torch.equal(class_argmax(probs[0], dim=0), probs[0].argmax(dim=0).to(torch.uint8))
