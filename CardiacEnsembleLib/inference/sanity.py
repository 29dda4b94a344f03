"""Never a silent wrong answer: what an image must have before the networks run, and the
warnings a `Prediction` carries about its input and its result.

Refused (one `CaseError`, before any network runs): an image with no finite voxel, or with one
value only. Neither has contrast to segment; run anyway, normalisation divides by a zero or NaN
spread and every voxel argmaxes to background, with nothing to tell the user.

Warned (in `Prediction.warnings` and the log): voxels that were NaN or infinite and were filled
(`preprocess.normalize_intensity` says with what), and a label map that is empty or near-empty
although the image has signal. ACDC's 280 expert maps label 1.35-7.7% of a frame's voxels as
heart (median 3.6%) and always hold all three structures, so a map under `NEAR_EMPTY_FRACTION`
(about seven times below ACDC's smallest) is far more likely a failure (wrong spacing, wrong
orientation, not a short-axis cine) than a small heart.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from CardiacEnsembleLib.core.errors import CaseError

if TYPE_CHECKING:
    from CardiacEnsembleLib.core.case import Case

log = logging.getLogger(__name__)

#: Fraction of a frame's voxels labelled as heart under which a result is called near-empty.
NEAR_EMPTY_FRACTION = 0.002


def check_intensity_range(where: str, finite_voxels: int, minimum: float, maximum: float
                          ) -> None:
    """Refuse an image without contrast: no finite voxel, or one value only (the one rule;
    `check_intensities` and `preprocess.normalize_intensity` both apply it)."""
    if finite_voxels == 0:
        raise CaseError(f"{where}: every voxel is NaN or infinite (no intensity at all); "
                        f"expected an MRI with finite voxels")
    if maximum <= minimum:
        raise CaseError(f"{where}: image is constant (every finite voxel is {minimum:g}); "
                        f"expected an MRI with contrast")


def check_intensities(image: np.ndarray, where: str) -> int:
    """Refuse an image without contrast; return how many of its voxels are NaN or infinite."""
    finite = np.isfinite(image)
    values = image if finite.all() else image[finite]
    if values.size == 0:
        check_intensity_range(where, 0, 0.0, 0.0)
    check_intensity_range(where, int(values.size), float(values.min()), float(values.max()))
    return int(image.size - values.size)


def input_warnings(image: np.ndarray, where: str) -> tuple[str, ...]:
    """The warning about non-finite voxels, if the image has any."""
    bad = check_intensities(image, where)
    if not bad:
        return ()
    nan = int(np.isnan(image).sum())
    return (_warn(f"{where}: {bad} voxel(s) were NaN/Inf ({nan} NaN, {bad - nan} infinite) "
                  f"and were filled with the image's clipped minimum before segmenting"),)


def result_warnings(labels: np.ndarray, where: str) -> tuple[str, ...]:
    """Warn about an empty or near-empty label map (the image was checked to have signal)."""
    fraction = float(np.count_nonzero(labels)) / max(1, labels.size)
    if fraction == 0.0:
        return (_warn(f"{where}: the label map is empty (no RV cavity, LV myocardium or LV "
                      f"cavity anywhere) although the image has signal; check its spacing, "
                      f"orientation and that it is a short-axis cine frame"),)
    if fraction < NEAR_EMPTY_FRACTION:
        return (_warn(f"{where}: the label map is near-empty ({100 * fraction:.3f}% of voxels "
                      f"are heart; ACDC frames have 1.35-7.7%); check its spacing, orientation "
                      f"and that it is a short-axis cine frame"),)
    return ()


def prediction_warnings(case: Case, labels: np.ndarray) -> tuple[str, ...]:
    """Everything a reader of `labels` for `case` must be told."""
    where = case.source or case.name
    return input_warnings(case.image, where) + result_warnings(labels, where)


def _warn(message: str) -> str:
    log.warning("%s", message)
    return message
