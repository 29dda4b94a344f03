"""Quality control: which slices of a segmentation a clinician should look at first.

An ensemble gives several opinions per voxel. Where its members draw the same contour the fused
one is usually right; where they draw different ones it is often wrong. This module turns the
outputs an ensemble already computes into scores per slice and structure, per structure, and
per case, with no extra network pass:

- `QualityScore.DISAGREEMENT`: 1 - the mean Dice between each member's mask and the fused mask
  (the members' labels behind `Prediction.disagreement`). 0 where every member drew the fused
  contour, 1 where none overlaps it. With one network and flip TTA the three passes stand in
  for the members.
- `QualityScore.ENTROPY`: the normalised entropy of the probabilities (`Prediction.uncertainty`)
  that falls on the structure (weighted by its probability), per voxel of the structure (half
  the sum of its hard and soft sizes). The counterpart a single network has: its own softmax.

Both read as "how much of this structure's contour is in doubt", in [0, 1], and a small
structure with an uncertain border scores high, as its Dice would be low. A unit (slice x
structure) exists where the fused labels or any member (for entropy: half a voxel of
probability) has the structure. The thresholds that turn a score into a flag are fitted on
validation patients (the workbench's `quality` study) and stored in the manifest; without them
the scores are still ranked but nothing is flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from CardiacEnsembleLib.core.labels import STRUCTURES
from CardiacEnsembleLib.core.quality import (QualityReport, QualityScore, QualityThresholds,
                                             SliceReview)


@dataclass(frozen=True)
class ScoreMaps:
    """Scores of one volume: `per_slice` (Z, S) with NaN where the structure is absent on that
    slice, `per_structure` (S,) over the whole volume (NaN where absent), S = the structures of
    `core.labels.STRUCTURES` in order."""

    per_slice: np.ndarray
    per_structure: np.ndarray

    @property
    def case(self) -> float:
        """The worst structure's score (0 for an empty map)."""
        present = self.per_structure[np.isfinite(self.per_structure)]
        return float(present.max()) if present.size else 0.0


def _dice_shortfall(votes: np.ndarray, fused: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """1 - mean over voters of Dice(voter, fused); votes (V, ...) and fused (...) boolean; NaN
    where neither has the structure. A voter that, like the fused mask, is empty agrees."""
    overlap = np.logical_and(votes, fused[None]).sum(axis=axes)
    sizes = votes.sum(axis=axes) + fused[None].sum(axis=axes)
    dice = np.where(sizes > 0, 2.0 * overlap / np.maximum(sizes, 1), 1.0)
    present = sizes.max(axis=0) > 0
    return np.where(present, 1.0 - dice.mean(axis=0), np.nan)


def disagreement_scores(voter_labels: np.ndarray, labels: np.ndarray) -> ScoreMaps:
    """`QualityScore.DISAGREEMENT` of `labels` (Z, Y, X) given the labels of its voters
    (V, Z, Y, X): the ensemble's members, or a network's TTA passes."""
    voter_labels, labels = np.asarray(voter_labels), np.asarray(labels)
    if voter_labels.ndim != 4 or voter_labels.shape[1:] != labels.shape:
        raise ValueError(f"voter labels {voter_labels.shape} do not match labels {labels.shape}:"
                         f" expected (V, *labels.shape)")
    per_slice, per_structure = [], []
    for value in STRUCTURES.values():
        votes, fused = voter_labels == value, labels == value
        per_slice.append(_dice_shortfall(votes, fused, (2, 3)))
        per_structure.append(_dice_shortfall(votes, fused, (1, 2, 3)))
    return ScoreMaps(np.stack(per_slice, axis=1), np.array(per_structure, dtype=float))


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """(C, ...) probabilities -> (...) entropy / log C, as `inference.fusion` computes it."""
    p = np.asarray(probabilities, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.clip(-terms.sum(axis=0) / math.log(p.shape[0]), 0.0, 1.0)


def entropy_scores(probabilities: np.ndarray, labels: np.ndarray,
                   entropy: Optional[np.ndarray] = None) -> ScoreMaps:
    """`QualityScore.ENTROPY` of `labels` (Z, Y, X) from the (C, Z, Y, X) probabilities behind
    them; `entropy` (Z, Y, X) is their normalised entropy if already computed."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if probabilities.ndim != 4 or probabilities.shape[1:] != labels.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match labels "
                         f"{labels.shape}: expected (C, *labels.shape)")
    entropy = normalised_entropy(probabilities) if entropy is None else entropy
    per_slice, per_structure = [], []
    for value in STRUCTURES.values():
        soft = probabilities[value].astype(np.float64)
        hard = (labels == value)
        doubt = (entropy * soft).sum(axis=(1, 2))
        size = 0.5 * (hard.sum(axis=(1, 2)) + soft.sum(axis=(1, 2)))
        present = size >= 0.5
        per_slice.append(np.where(present, np.minimum(doubt / np.maximum(size, 0.5), 1.0),
                                  np.nan))
        total = size.sum()
        per_structure.append(min(doubt.sum() / total, 1.0) if total >= 0.5 else np.nan)
    return ScoreMaps(np.stack(per_slice, axis=1), np.array(per_structure, dtype=float))


Thresholds = Mapping[QualityScore, QualityThresholds]


def report_from_maps(maps: ScoreMaps, score: QualityScore, thresholds: Optional[Thresholds] = None,
                     case_name: str = "", notes: Sequence[str] = ()) -> QualityReport:
    """Rank every present (slice, structure) of `maps`, worst first, flagging those at or above
    the slice threshold of `thresholds[score]` (none there: nothing flagged, and a note says
    so)."""
    notes = list(notes)
    thresholds = (thresholds or {}).get(score)
    if thresholds is None:
        notes.append(f"no validated threshold for the {score.value} score: ranked, nothing "
                     f"flagged")
    names = list(STRUCTURES)
    z_index, s_index = np.nonzero(np.isfinite(maps.per_slice))
    values = maps.per_slice[z_index, s_index]
    order = np.lexsort((s_index, z_index, -values))  # worst first; ties by slice, structure
    slices = [SliceReview(int(z_index[i]), names[s_index[i]], float(values[i]),
                          thresholds is not None and float(values[i]) >= thresholds.slice)
              for i in order]
    structures = {name: float(value) for name, value in zip(names, maps.per_structure)
                  if np.isfinite(value)}
    return QualityReport(score, maps.case, structures, slices, thresholds, case_name, notes)


def volume_scores(voter_labels: np.ndarray, labels: np.ndarray,
                  probabilities: Optional[np.ndarray] = None,
                  entropy: Optional[np.ndarray] = None) -> tuple[ScoreMaps, QualityScore]:
    """The score a volume gets: member disagreement when two or more voters (V, Z, Y, X) drew
    it, else the entropy of the one network's (C, Z, Y, X) probabilities."""
    if len(voter_labels) >= 2:
        return disagreement_scores(voter_labels, labels), QualityScore.DISAGREEMENT
    if probabilities is None:
        raise ValueError("quality control needs two or more members or the probabilities")
    return entropy_scores(probabilities, labels, entropy), QualityScore.ENTROPY


def assess(prediction, thresholds: Optional[Thresholds] = None) -> QualityReport:
    """The QC report of a `Prediction` (`volume_scores` of its members' labels, or of its
    probabilities for a lone network), flagged with `thresholds` (the manifest's)."""
    maps, score = volume_scores(np.stack([member.labels for member in prediction.members]),
                                prediction.labels, prediction.probabilities,
                                prediction.uncertainty)
    return report_from_maps(maps, score, thresholds, prediction.case_name)
