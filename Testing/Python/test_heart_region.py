"""Heart-region inference: the box the locator finds, and the ensemble on it (real ACDC frames,
the shipped members)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR
from CardiacEnsembleLib.evaluation.metrics import score_labels
from CardiacEnsembleLib.inference import ensemble as ensemble_module
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.heart_region import HeartBox, locate_heart
from CardiacEnsembleLib.io.acdc import PatientFolder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

LOCATOR = "unetpp25d-mnv2"
OTHER = "fpn25d-mnv2"


def probabilities_with_heart(grid_hw, rows, columns, slices=3, classes=4) -> torch.Tensor:
    """(slices, classes, H, W) probabilities: background everywhere but a square of class 3."""
    probabilities = torch.zeros((slices, classes, *grid_hw))
    probabilities[:, 0] = 1.0
    probabilities[1, 0, rows[0]:rows[1], columns[0]:columns[1]] = 0.0
    probabilities[1, 3, rows[0]:rows[1], columns[0]:columns[1]] = 1.0
    return probabilities


def test_the_box_holds_the_heart_and_the_margin_and_is_a_tile_multiple():
    region = locate_heart(probabilities_with_heart((256, 224), (100, 140), (50, 80)),
                          margin=16, multiple=32)
    box = region.box
    assert region.found
    assert (box.y1 - box.y0) % 32 == 0 and (box.x1 - box.x0) % 32 == 0
    assert box.y0 <= 100 - 16 and box.y1 >= 140 + 16
    assert box.x0 <= 50 - 16 and box.x1 >= 80 + 16
    assert (box.y1 - box.y0, box.x1 - box.x0) == (96, 64)  # 40 + 32 -> 96, 30 + 32 -> 64


def test_a_box_at_the_grid_edge_is_shifted_inside_not_cut():
    box = locate_heart(probabilities_with_heart((256, 224), (0, 20), (200, 224)),
                       margin=16, multiple=32).box
    assert (box.y0, box.x1) == (0, 224)
    assert (box.y1 - box.y0) % 32 == 0 and (box.x1 - box.x0) % 32 == 0


def test_only_the_largest_component_decides_the_box():
    probabilities = probabilities_with_heart((256, 256), (100, 160), (100, 160))
    probabilities[0, 0, 5:8, 240:243] = 0.0  # a speck far away, on another slice
    probabilities[0, 1, 5:8, 240:243] = 1.0
    box = locate_heart(probabilities, margin=8, multiple=32).box
    assert box.y0 > 8 and box.x1 < 240


def test_no_heart_or_a_box_as_big_as_the_grid_means_the_full_grid_and_says_why():
    empty = torch.zeros((2, 4, 64, 64))
    empty[:, 0] = 1.0
    region = locate_heart(empty, margin=32, multiple=32)
    assert not region.found and "found no heart" in region.describe()
    whole = locate_heart(probabilities_with_heart((64, 64), (10, 50), (10, 50)), 32, 32)
    assert not whole.found and "whole grid" in whole.describe()


def test_paste_puts_the_box_back_with_background_outside():
    box = HeartBox(32, 96, 64, 128, (128, 160))
    inside = torch.rand((2, 4, 64, 64))
    full = box.paste(inside)
    assert full.shape == (2, 4, 128, 160)
    assert torch.equal(box.crop(full), inside)
    outside = full.clone()
    outside[..., 32:96, 64:128] = 0
    assert torch.equal(outside[:, 0].unique(), torch.tensor([0.0, 1.0]))
    assert float(outside[:, 1:].abs().sum()) == 0.0
    assert box.fraction == pytest.approx(64 * 64 / (128 * 160))


@pytest.fixture(scope="module")
def pair():
    """Two shipped members, the locator first: full-grid and heart-region ensembles."""
    full = load_ensemble(DEFAULT_MODELS_DIR, members=[LOCATOR, OTHER], fusion="mean",
                         device="cpu")
    return full, replace(full, heart_margin=32, heart_locator=LOCATOR)


@pytest.mark.parametrize("patient, phase", [("patient090", "ED"), ("patient090", "ES"),
                                            ("patient101", "ED")])
def test_the_heart_region_ensemble_scores_like_the_full_grid(pair, patient_dir, patient, phase):
    full, cropped = pair
    case = PatientFolder.open(patient_dir(patient)).load(phase)
    whole, region = full.predict(case), cropped.predict(case)
    assert region.heart_region.startswith("heart box ")
    share = int(region.heart_region.split("(")[1].split("%")[0])
    assert share < 70
    # the locator ran on the full grid in both: its own result is the same
    assert np.array_equal(whole.members[0].labels, region.members[0].labels)
    for name, score in score_labels(region.labels, case.labels, case.spacing_zyx).items():
        reference = score_labels(whole.labels, case.labels, case.spacing_zyx)[name]
        assert score.dice == pytest.approx(reference.dice, abs=0.02), name


def test_the_other_members_see_the_box_only(pair, patient_dir, monkeypatch):
    _, cropped = pair
    seen = []
    original = ensemble_module.network_probabilities

    def recording(network, slices, *args, box=None, **kwargs):
        seen.append((kwargs.get("label"), None if box is None else box.crop(slices).shape))
        return original(network, slices, *args, box=box, **kwargs)

    monkeypatch.setattr(ensemble_module, "network_probabilities", recording)
    cropped.predict(PatientFolder.open(patient_dir("patient090")).load("ED"))
    assert seen[0] == (LOCATOR, None)
    assert seen[1][0] == OTHER and seen[1][1] is not None
    assert seen[1][1][-2] % 32 == 0 and seen[1][1][-1] % 32 == 0


def test_the_default_locator_is_the_member_with_the_best_validation_dice():
    from CardiacEnsembleLib.core.manifest import read_manifest

    manifest = read_manifest(DEFAULT_MODELS_DIR)
    best = max(manifest.members, key=lambda entry: entry.validation_dice).name
    ensemble = load_ensemble(DEFAULT_MODELS_DIR, device="cpu", heart_margin=32)
    assert ensemble.names[ensemble.locator_index] == best
    without = ensemble.subset([name for name in ensemble.names if name != best])
    assert without.locator_index == 0  # a subset without it: the first member locates
