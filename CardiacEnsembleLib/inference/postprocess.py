"""Optional clean-up of a fused label map, chosen on validation data like any other setting.

Two steps, each a known remedy for a known failure of 2D slice-wise networks:

* **"lcc"** keeps the largest 3D connected component of each structure. A slice-wise network
  sometimes paints a small blob of "RV" in the liver or the stomach; one such blob 60 mm away
  inflates HD95 far more than it lowers Dice. The heart's cavities and the myocardium are each one
  connected object in 3D, so everything else is wrong by anatomy. Components come from
  SimpleITK's `ConnectedComponent` (face+edge+vertex connectivity, because ACDC's slices are
  thick and a structure's cross-sections touch diagonally between slices).
* **"gate"** erases whole slices that most members consider empty: the classifier-gating idea of
  the seed project, with the members themselves as the classifier. Below the apex and above the
  base a lone member's false positive often survives the mean fusion; a slice where fewer than
  half of the members see at least `GATE_MIN_PIXELS` foreground pixels is set to background.

* **"heart"** keeps the largest 3D connected component of all foreground together (RV, Myo and
  LV as one mask) before "lcc" runs. A fused map can hold a second, heart-like object away from
  the heart (an LV-coloured blob ringed by "myocardium" in the stomach); when that blob is larger
  than the true cavity, per-structure "lcc" keeps the blob and drops the cavity. The heart is one
  object, so a disconnected object is wrong whatever its labels. Whether the step ships is
  decided on validation like every other step.

All only ever turn foreground into background, so none can invent a structure.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from CardiacEnsembleLib.core.options import (POSTPROCESS_STEPS, check_steps,  # noqa: F401
                                             lone_member_steps, rival_member_steps)

GATE_MIN_PIXELS = 20  # a member "sees" a slice's heart when it labels this many pixels


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Per structure, keep only its largest 3D connected component; the rest becomes 0."""
    _check_labels(labels)
    result = labels.copy()
    for value in np.unique(labels):
        if value != 0:
            result[_outside_largest_component(labels == value)] = 0
    return result


def keep_largest_heart(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest 3D connected component of all foreground; the rest becomes 0."""
    _check_labels(labels)
    result = labels.copy()
    result[_outside_largest_component(labels > 0)] = 0
    return result


def _outside_largest_component(mask: np.ndarray) -> np.ndarray:
    """The voxels of `mask` outside its largest 3D connected component."""
    components = sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True),
        sortByObjectSize=True)
    return (sitk.GetArrayViewFromImage(components) > 1) & mask


def gate_empty_slices(labels: np.ndarray, member_labels: np.ndarray,
                      min_pixels: int = GATE_MIN_PIXELS) -> np.ndarray:
    """Erase slices of `labels` (Z, Y, X) on which fewer than half of the members (M, Z, Y, X)
    label at least `min_pixels` foreground pixels."""
    _check_labels(labels)
    if member_labels.ndim != 4 or member_labels.shape[1:] != labels.shape:
        raise ValueError(f"member labels must be shaped (M, {', '.join(map(str, labels.shape))}), "
                         f"got {member_labels.shape}")
    seen = (np.count_nonzero(member_labels, axis=(2, 3)) >= min_pixels)  # (M, Z)
    empty = seen.sum(axis=0) * 2 < member_labels.shape[0]
    result = labels.copy()
    result[empty] = 0
    return result


def apply_steps(labels: np.ndarray, steps: Sequence[str],
                member_labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Apply `steps` in the fixed order gate, heart, lcc (gating first, so a false slice cannot
    become the "largest" component; the whole heart before its parts, so a detached blob cannot
    outgrow the true cavity)."""
    steps = check_steps(steps)
    if "gate" in steps:
        if member_labels is None:
            raise ValueError("post-processing step 'gate' needs the members' label maps")
        labels = gate_empty_slices(labels, member_labels)
    if "heart" in steps:
        labels = keep_largest_heart(labels)
    if "lcc" in steps:
        labels = keep_largest_components(labels)
    return labels


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 3:
        raise ValueError(f"a label map must be 3D (Z, Y, X), got shape {labels.shape}")
