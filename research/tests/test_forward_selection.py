"""Greedy forward selection (research/member_pool.py) on member outputs built from real ground
truth, so the right answer is known: the member equal to the truth must be chosen alone."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleDev.release.selection import ValidationFrame, weighted_mean_dice

from member_pool import forward_selection


def soft(labels: np.ndarray, confidence: float) -> torch.Tensor:
    one_hot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), 4).permute(3, 0, 1, 2).float()
    return one_hot * confidence + (1 - confidence) / 4


@pytest.fixture(scope="module")
def frames(patient_dir) -> list[ValidationFrame]:
    """Three 'members' per frame: the truth, the truth without its RV, and the truth shifted."""
    result = []
    for phase in ("ED", "ES"):
        case = PatientFolder.open(patient_dir("patient001")).load(phase)
        truth = case.labels.astype(np.uint8)
        no_rv = np.where(truth == 1, 0, truth).astype(np.uint8)
        probs = torch.stack([soft(truth, 0.7), soft(no_rv, 0.9),
                             soft(np.roll(truth, 6, axis=2), 0.95)])
        result.append(ValidationFrame("patient001", phase, probs.half(),
                                      torch.from_numpy(truth), case.spacing_zyx))
    return result


def test_forward_selection_picks_the_true_member_and_respects_budget_and_library(frames):
    alone = forward_selection(frames, sizes_mb=[8, 7, 7])
    assert alone.weights == [1.0, 0.0, 0.0] and alone.dice == pytest.approx(1.0)
    # the truth does not fit: the best of the others is chosen, and adding members never
    # scores below the best single allowed member on the fitted frames
    squeezed = forward_selection(frames, sizes_mb=[30, 7, 7], budget_mb=15)
    assert squeezed.weights[0] == 0.0
    assert squeezed.dice >= max(weighted_mean_dice(frames, [0, 1, 0]),
                                weighted_mean_dice(frames, [0, 0, 1]))
    assert forward_selection(frames, [8, 7, 7], allowed=[1, 2]).weights[0] == 0.0
    with pytest.raises(ValueError, match="5 MB budget"):
        forward_selection(frames, sizes_mb=[8, 7, 7], budget_mb=5)
    with pytest.raises(ValueError, match="2 sizes for 3 members"):
        forward_selection(frames, sizes_mb=[8, 7])

