"""Preprocessing for the network, and its inverse back onto the case's own grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.evaluation.metrics import dice
from CardiacEnsembleLib.inference.preprocess import (PreprocessSpec, crop_or_pad, normalize_intensity,
                                           prepare_slices, restore_probabilities, uncrop)


@pytest.fixture(scope="module")
def case(patient_dir):
    return PatientFolder.open(patient_dir("patient001")).load("ED")


def one_hot(labels: np.ndarray) -> torch.Tensor:
    """(Z, Y, X) labels -> (Z, 4, Y, X) float, the shape the network emits."""
    return F.one_hot(torch.from_numpy(labels).long(), 4).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("target", [(256, 256), (192, 320), (100, 90)])
def test_crop_or_pad_then_uncrop_is_exact_where_nothing_was_cut(case, target):
    slices = torch.from_numpy(case.image)[:, None]
    canvas, offsets = crop_or_pad(slices, target, fill=-1.0)
    assert canvas.shape[-2:] == target
    back = uncrop(canvas, case.image.shape[-2:], offsets, fill=-7.0)
    kept = back[:, 0] != -7.0
    np.testing.assert_array_equal(back[:, 0][kept].numpy(), case.image[kept.numpy()])
    if target[0] >= 256 and target[1] >= 216:
        assert bool(kept.all())


def test_native_spacing_round_trip_returns_labels_exactly(case):
    spec = PreprocessSpec(spacing_mm=None)
    slices, grid = prepare_slices(torch.from_numpy(case.image), case.spacing_zyx, spec)
    assert slices.shape[-2:] == (256, 224) and grid.network_hw == (256, 224)
    padded, _ = crop_or_pad(one_hot(case.labels), grid.network_hw, offsets=grid.offsets)
    restored = restore_probabilities(padded, grid).argmax(1).numpy()
    np.testing.assert_array_equal(restored, case.labels)


def test_resampled_round_trip_returns_the_original_grid_and_near_identical_labels(case):
    spec = PreprocessSpec(spacing_mm=1.25)
    slices, grid = prepare_slices(torch.from_numpy(case.image), case.spacing_zyx, spec)
    assert grid.resampled_hw == (320, 270)  # 256 * 1.5625 / 1.25, 216 * 1.5625 / 1.25
    assert slices.shape == (10, 1, 320, 288) and slices.shape[-1] % 32 == 0
    resampled = F.interpolate(one_hot(case.labels), size=grid.resampled_hw, mode="bilinear",
                              align_corners=False)
    padded, _ = crop_or_pad(resampled, grid.network_hw, offsets=grid.offsets)
    restored = restore_probabilities(padded, grid).argmax(1).numpy()
    assert restored.shape == case.labels.shape
    for label in (1, 2, 3):
        assert dice(restored == label, case.labels == label) > 0.98


def test_normalisation_is_a_robust_z_score(case):
    normalised = normalize_intensity(torch.from_numpy(case.image))
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-3)
    scaled = normalize_intensity(torch.from_numpy(case.image) * 7.5 + 300)
    torch.testing.assert_close(scaled, normalised, atol=1e-4, rtol=1e-4)
