"""The ensemble that ships with the package: its manifest tells the truth about its files, it
fits the size budget, its members and settings never saw a test patient, and the weights it
ships are the ones its recorded selection chose."""
from __future__ import annotations

import json

import numpy as np
import pytest

from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, MANIFEST_FILE
from CardiacEnsembleLib.inference.members import WEIGHTS_FILE, read_spec, sha256_of
from CardiacEnsembleLib.io.acdc import load_splits
from CardiacEnsembleDev.release.selection import SearchResult, _best_search

BUDGET_BYTES = 40 * 10**6


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DEFAULT_MODELS_DIR / MANIFEST_FILE).read_text())


def test_manifest_sha256_and_sizes_match_the_files(manifest):
    for entry in manifest["members"]:
        weights = DEFAULT_MODELS_DIR / entry["folder"] / WEIGHTS_FILE
        assert sha256_of(weights) == entry["sha256"], entry["name"]
        assert read_spec(weights.parent).weights_sha256 == entry["sha256"], entry["name"]
        assert weights.stat().st_size == entry["size_bytes"], entry["name"]


def test_at_least_four_architectures_within_the_size_budget(manifest):
    assert len({e["arch"] for e in manifest["members"]}) >= 4
    assert sum(e["size_bytes"] for e in manifest["members"]) <= BUDGET_BYTES


def test_shipped_members_and_settings_never_saw_a_test_patient(manifest, acdc):
    test = set(load_splits(acdc)["test"])
    for entry in manifest["members"]:
        training = read_spec(DEFAULT_MODELS_DIR / entry["folder"]).training
        assert training["train_patients"] and not test & set(training["train_patients"])
        assert training["validation_patients"] and \
            not test & set(training["validation_patients"])
    selection = manifest["selection"]
    assert selection["split"] == "validation" and not test & set(selection["patients"])


def test_each_members_validation_dice_is_the_one_its_spec_records(manifest):
    for entry in manifest["members"]:
        spec = read_spec(DEFAULT_MODELS_DIR / entry["folder"])
        assert entry["validation"] == spec.metrics["validation_dice"], entry["name"]


def test_the_shipped_weights_are_those_of_the_search_selection_trusts(manifest):
    """`select` takes the weights of the search with the best held-out Dice (in-sample Dice
    flatters the searches with more parameters): the manifest must ship exactly those."""
    names = [e["name"] for e in manifest["members"]]
    assert set(manifest["weights"]) == set(names)
    if manifest["fusion"] != "weighted":
        pytest.skip(f"the shipped rule is {manifest['fusion']!r}: no weights are used")
    searches = [SearchResult(s["method"], s["weights"], s["dice"], s["evaluations"],
                             s["seconds"], held_out_dice=s["held_out_dice"])
                for s in manifest["selection"]["weight_search"]]
    shipped = [manifest["weights"][name] for name in names]
    np.testing.assert_allclose(np.asarray(shipped, dtype=float),
                               np.asarray(_best_search(searches).weights, dtype=float),
                               atol=1e-4)
