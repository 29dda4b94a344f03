"""Fusion rules: turn the outputs of M ensemble members into one segmentation.

Two families, split by what they need:

* **Probability rules** ("mean", "weighted") average the members' softmax maps and take the argmax.
  They run in torch on whatever device the maps already sit on, because the ensemble keeps member
  probabilities on the GPU when it has one; a numpy round trip of M x C full volumes would cost
  more than the fusion itself.
* **Label rules** ("vote", "staple") only see each member's hard labels. They use SimpleITK's
  `LabelVotingImageFilter` and `MultiLabelSTAPLEImageFilter`, the reference implementations that
  Slicer users know and can reproduce, rather than a hand-written copy that could drift.

Both label rules can leave a voxel *undecided* (a tie). SimpleITK marks such voxels with
`UNDECIDED_LABEL` (255, outside every valid label), and this module resolves them explicitly:

* with a `fallback` label map (what `fuse` passes: the argmax of the members' mean probabilities),
  an undecided voxel takes the fallback's label, i.e. the soft evidence breaks the hard tie;
* without one, it takes the **smallest** of the labels tied for the most votes. Background (0) is
  the smallest label, so a tie that involves background stays background: a conservative choice
  that never invents a structure the members could not agree on.

Arrays follow the package's (Z, Y, X) order; member axes come first: (M, ...) or (M, C, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from CardiacEnsembleLib.core.manifest import WeightTable
from CardiacEnsembleLib.core.options import FUSION_RULES  # noqa: F401  (the one rule list)

#: What SimpleITK writes for a tied voxel. Outside every label a uint8 map can carry here
#: (labels must be < 255), so a tie can never be mistaken for a real label.
UNDECIDED_LABEL = 255
STAPLE_MAX_ITERATIONS = 100


# --------------------------------------------------------------------------- probability rules

#: One member's weight: a number (every class alike) or one number per class (background first).
MemberWeight = Union[float, Sequence[float]]
#: What fusion takes as weights: a `WeightTable`, or one `MemberWeight` per member.
Weights = Union[WeightTable, Sequence[MemberWeight]]


def _normalised_weights(weights: Weights, num_members: int,
                        num_classes: int) -> torch.Tensor:
    """Check weights and return them as an (M, C) float64 table whose columns sum to 1.

    A member's weight is a number (the same for every class) or a list of C numbers, one per
    class: members are good at different structures (here one is best on the RV, another on the
    myocardium), and a per-class weight lets the fusion trust each where it is good.
    Scaling a column leaves the result unchanged, so only ratios within a class matter.

    Why strict: a negative or NaN weight would turn "probabilities" into something that is not
    one, and a class that no member may vote for has no meaning; both are configuration mistakes
    worth stopping on.
    """
    rows = weights.table.tolist() if isinstance(weights, WeightTable) else list(weights)
    if len(rows) != num_members:
        raise ValueError(f"fusion weights {rows} have {len(rows)} entries but there are "
                         f"{num_members} members; give one weight per member")
    table = []
    for row in rows:
        values = [float(w) for w in row] if isinstance(row, (list, tuple)) else \
            [float(row)] * num_classes
        if len(values) != num_classes:
            raise ValueError(f"fusion weights {rows}: a per-class weight needs {num_classes} "
                             f"numbers (background first), got {len(values)}")
        table.append(values)
    if not all(math.isfinite(w) for row in table for w in row):
        raise ValueError(f"fusion weights {rows} must all be finite numbers")
    if any(w < 0 for row in table for w in row):
        raise ValueError(f"fusion weights {rows} must be non-negative")
    table = torch.tensor(table, dtype=torch.float64)
    totals = table.sum(dim=0)
    if (totals <= 0).any():
        zero = [c for c in range(num_classes) if totals[c] <= 0]
        raise ValueError(f"fusion weights {rows} are all zero"
                         + ("" if len(zero) == num_classes else f" for class(es) {zero}")
                         + "; at least one member must count")
    return table / totals


def _check_member_probs(member_probs: torch.Tensor) -> None:
    if not isinstance(member_probs, torch.Tensor):
        raise TypeError(f"member probabilities must be a torch.Tensor, got "
                        f"{type(member_probs).__name__}")
    if member_probs.ndim < 2:
        raise ValueError(f"member probabilities must be shaped (M, C, ...), got shape "
                         f"{tuple(member_probs.shape)}")
    if member_probs.shape[0] < 1:
        raise ValueError("member probabilities hold no members (M == 0); fusion needs at least one")
    if member_probs.shape[1] < 2:
        raise ValueError(f"member probabilities must have at least 2 classes on axis 1, got "
                         f"shape {tuple(member_probs.shape)}")
    if not member_probs.is_floating_point():
        raise ValueError(f"member probabilities must be floating point, got {member_probs.dtype}")


def mean_probabilities(member_probs: torch.Tensor,
                       weights: Optional[Weights] = None) -> torch.Tensor:
    """Average the members' softmax maps: (M, C, ...) -> float32 (C, ...), on the input's device.

    `weights` (one per member: a number, or a list of one number per class; non-negative) are
    normalised per class to sum 1, so scaling them leaves the result unchanged; None means equal
    weights. With per-class weights the class maps no longer sum to 1 voxel by voxel, so they
    are divided by their sum: the argmax is unchanged and the entropy stays a proper one.

    Why float32: members may run in fp16/bf16 for speed, but summing M maps in half precision
    loses the small differences that decide argmax and entropy near class boundaries. Members are
    added one at a time into a float32 accumulator, so no float32 copy of all M maps is made.
    """
    _check_member_probs(member_probs)
    num_members, num_classes = member_probs.shape[:2]
    fused = torch.zeros(member_probs.shape[1:], dtype=torch.float32, device=member_probs.device)
    if weights is None:
        for member in member_probs:  # M is a handful of networks
            fused.add_(member, alpha=1.0 / num_members)
        return fused
    normalised = _normalised_weights(weights, num_members, num_classes)
    per_class = bool((normalised != normalised[:, :1]).any())
    for member, row in zip(member_probs, normalised.tolist()):
        if len(set(row)) == 1:  # one weight for every class
            if row[0]:
                fused.add_(member, alpha=row[0])
            continue
        for plane, member_plane, weight in zip(fused, member, row):
            if weight:
                plane.add_(member_plane, alpha=weight)
    if per_class:  # columns no longer sum to 1 voxel by voxel
        fused.div_(fused.sum(dim=0, keepdim=True).clamp_min_(1e-12))
    return fused


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy of (C, ...) probabilities divided by log C: float32 (...) in [0, 1].

    Why normalised: 0 means every class but one has probability 0 (certain), 1 means all C
    classes are equally likely, whatever C is, so maps from different label sets compare.
    0 * log 0 counts as 0 (`xlogy`), so one-hot voxels are exactly 0, not NaN.
    """
    if probs.ndim < 1 or probs.shape[0] < 2:
        raise ValueError(f"entropy needs probabilities shaped (C, ...) with C >= 2, got shape "
                         f"{tuple(probs.shape)}")
    p = probs.float()
    entropy = -torch.special.xlogy(p, p).sum(dim=0)
    return (entropy / math.log(probs.shape[0])).clamp_(0.0, 1.0)  # clamp: rounding only


def disagreement(member_labels: torch.Tensor, fused_labels: torch.Tensor) -> torch.Tensor:
    """Fraction of members whose label differs from the fused one: (M, ...), (...) -> float32 (...).

    Why: entropy of the mean says how soft the averaged evidence is; disagreement says how many
    networks would have drawn a different contour, which is what a reviewer looks at first.
    """
    if member_labels.ndim < 1 or member_labels.shape[0] < 1:
        raise ValueError(f"member labels must be shaped (M, ...) with M >= 1, got shape "
                         f"{tuple(member_labels.shape)}")
    if tuple(member_labels.shape[1:]) != tuple(fused_labels.shape):
        raise ValueError(f"member labels {tuple(member_labels.shape)} do not match fused labels "
                         f"{tuple(fused_labels.shape)}: expected (M, *fused.shape)")
    fused = fused_labels.to(member_labels.device)
    return (member_labels != fused.unsqueeze(0)).float().mean(dim=0)


# --------------------------------------------------------------------------------- label rules

def _check_member_labels(member_labels: np.ndarray,
                         fallback: Optional[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Validate (M, Z, Y, X) labels and the (Z, Y, X) fallback; return them as uint8."""
    member_labels = np.asarray(member_labels)
    if member_labels.ndim != 4 or member_labels.shape[0] < 1:
        raise ValueError(f"member labels must be shaped (M, Z, Y, X) with M >= 1, got shape "
                         f"{member_labels.shape}")
    checked = [("member labels", member_labels)]
    if fallback is not None:
        fallback = np.asarray(fallback)
        if fallback.shape != member_labels.shape[1:]:
            raise ValueError(f"fallback labels {fallback.shape} do not match the members' grid "
                             f"{member_labels.shape[1:]}")
        checked.append(("fallback labels", fallback))
    for what, labels in checked:
        integral = labels.dtype.kind in "uib" or (
            labels.dtype.kind == "f" and bool(np.all(labels == np.round(labels))))
        if not integral:
            raise ValueError(f"{what} must hold integer label values, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= UNDECIDED_LABEL):
            raise ValueError(f"{what} hold values {int(labels.min())}..{int(labels.max())}; "
                             f"labels must lie in 0..{UNDECIDED_LABEL - 1} "
                             f"({UNDECIDED_LABEL} marks undecided voxels)")
    member_labels = np.ascontiguousarray(member_labels, dtype=np.uint8)
    if fallback is not None:
        fallback = np.ascontiguousarray(fallback, dtype=np.uint8)
    return member_labels, fallback


def _to_images(member_labels: np.ndarray) -> list[sitk.Image]:
    """One uint8 SimpleITK image per member; the default geometry is shared, which ITK requires."""
    return [sitk.GetImageFromArray(np.ascontiguousarray(labels)) for labels in member_labels]


def _resolve_undecided(fused: np.ndarray, member_labels: np.ndarray,
                       fallback: Optional[np.ndarray]) -> np.ndarray:
    """Replace UNDECIDED_LABEL voxels by the fallback label, else by the smallest tied label.

    Only the undecided voxels are touched; the vote count there is vectorised over labels.
    """
    undecided = fused == UNDECIDED_LABEL
    if not undecided.any():
        return fused
    if fallback is not None:
        fused[undecided] = fallback[undecided]
        return fused
    votes_at = member_labels[:, undecided]  # (M, K)
    labels = np.arange(int(votes_at.max()) + 1, dtype=np.uint8)
    counts = (votes_at[None, :, :] == labels[:, None, None]).sum(axis=1)  # (L, K)
    fused[undecided] = np.argmax(counts, axis=0)  # argmax returns the first, i.e. smallest, max
    return fused


def majority_vote(member_labels: np.ndarray,
                  fallback: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-voxel majority of (M, Z, Y, X) member labels -> uint8 (Z, Y, X), by SimpleITK.

    A voxel whose most-voted label is not unique is a tie; it takes `fallback`'s label when given
    (the caller passes the mean-probability argmax), else the smallest tied label (see module doc).
    With one member the result is that member's labels.
    """
    member_labels, fallback = _check_member_labels(member_labels, fallback)
    if member_labels.shape[0] == 1:
        return member_labels[0].copy()
    voter = sitk.LabelVotingImageFilter()
    voter.SetLabelForUndecidedPixels(UNDECIDED_LABEL)
    fused = sitk.GetArrayFromImage(voter.Execute(_to_images(member_labels))).astype(np.uint8)
    return _resolve_undecided(fused, member_labels, fallback)


def staple(member_labels: np.ndarray, fallback: Optional[np.ndarray] = None) -> np.ndarray:
    """Multi-label STAPLE of (M, Z, Y, X) member labels -> uint8 (Z, Y, X), by SimpleITK.

    Why STAPLE: it estimates each member's confusion matrix by expectation-maximisation and weights
    the members by that estimated reliability, so a member that is consistently wrong in one place
    counts less than in a plain vote. Voxels whose posterior ties are undecided and resolved like
    `majority_vote`'s ties. With one member there is nothing to estimate: the result is that
    member's labels (returned directly, not by running EM on a single rater).
    """
    member_labels, fallback = _check_member_labels(member_labels, fallback)
    if member_labels.shape[0] == 1:
        return member_labels[0].copy()
    estimator = sitk.MultiLabelSTAPLEImageFilter()
    estimator.SetLabelForUndecidedPixels(UNDECIDED_LABEL)
    # SimpleITK's default has no practical iteration cap: members that disagree everywhere took
    # 38 s on one CPU frame. STAPLE converges in a few dozen iterations on real outputs.
    estimator.SetMaximumNumberOfIterations(STAPLE_MAX_ITERATIONS)
    fused = sitk.GetArrayFromImage(estimator.Execute(_to_images(member_labels))).astype(np.uint8)
    return _resolve_undecided(fused, member_labels, fallback)


# -------------------------------------------------------------------------------------- fuse

@dataclass
class FusionResult:
    """What one fusion produced for one case.

    `probabilities` are the fused (mean or weighted) probabilities for the probability rules and
    the plain mean of the members for "vote" / "staple": those rules do not produce probabilities
    themselves, but the mean is still what `uncertainty` is computed from and what broke their
    ties. It stays a torch tensor on the members' device; `labels` are numpy for the (Z, Y, X)
    data model.
    """

    labels: np.ndarray  # uint8 (Z, Y, X)
    probabilities: Optional[torch.Tensor]  # float32 (C, Z, Y, X)
    uncertainty: torch.Tensor  # float32 (Z, Y, X): normalized_entropy(probabilities)
    disagreement: torch.Tensor  # float32 (Z, Y, X): fraction of members that differ from labels
    member_labels: Optional[torch.Tensor] = None  # uint8 (M, Z, Y, X): each member's argmax


def _check_fuse_inputs(rule: str, member_probs: torch.Tensor,
                       weights: Optional[Weights]) -> None:
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; valid rules are "
                         f"{', '.join(FUSION_RULES)}")
    _check_member_probs(member_probs)
    if member_probs.ndim != 5:
        raise ValueError(f"member probabilities must be shaped (M, C, Z, Y, X), got shape "
                         f"{tuple(member_probs.shape)}")
    if member_probs.shape[1] > UNDECIDED_LABEL:
        raise ValueError(f"{member_probs.shape[1]} classes do not fit uint8 labels below "
                         f"{UNDECIDED_LABEL}")
    if rule == "weighted" and weights is None:
        raise ValueError("fusion rule 'weighted' needs weights, one per member")
    if rule != "weighted" and weights is not None:
        raise ValueError(f"fusion rule {rule!r} takes no weights (got {weights.to_json() if isinstance(weights, WeightTable) else list(weights)}); use rule "
                         f"'weighted' to weight members, or pass weights=None")


def class_argmax(probs: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 argmax over the class axis `dim`; ties go to the smallest class, as in torch.

    Why not `Tensor.argmax`: reducing over a non-last axis is a strided, poorly vectorised loop
    on the CPU (0.8 s for one ensemble frame); C elementwise compares over contiguous class
    planes cost a few milliseconds.
    """
    planes = probs.unbind(dim)
    best = planes[0].clone()
    labels = torch.zeros_like(best, dtype=torch.uint8)
    for value, plane in enumerate(planes[1:], start=1):
        better = plane > best
        labels.masked_fill_(better, value)
        best = torch.maximum(best, plane)
    return labels


def fuse(rule: str, member_probs: torch.Tensor,
         weights: Optional[Weights] = None) -> FusionResult:
    """Fuse (M, C, Z, Y, X) member probabilities with one of `FUSION_RULES`.

    * "mean": argmax of the members' average probabilities.
    * "weighted": argmax of the weighted average (weights required, one per member: a number
      or one per class).
    * "vote" / "staple": each member's argmax labels fused by SimpleITK; ties are broken by the
      mean-probability argmax.

    Weights are accepted only with "weighted", so a configured weighting is never silently ignored.
    Label ties inside `torch.argmax` go to the smallest class index.
    """
    _check_fuse_inputs(rule, member_probs, weights)
    probabilities = mean_probabilities(member_probs, weights if rule == "weighted" else None)
    mean_labels = class_argmax(probabilities, dim=0)
    member_labels = class_argmax(member_probs, dim=1)  # (M, Z, Y, X), on device
    if rule in ("mean", "weighted"):
        fused = mean_labels
        labels = fused.cpu().numpy()
    else:
        combine = majority_vote if rule == "vote" else staple
        labels = combine(member_labels.cpu().numpy(), fallback=mean_labels.cpu().numpy())
        fused = torch.from_numpy(labels).to(member_probs.device)
    return FusionResult(labels=labels,
                        probabilities=probabilities,
                        uncertainty=normalized_entropy(probabilities),
                        disagreement=disagreement(member_labels, fused),
                        member_labels=member_labels)
