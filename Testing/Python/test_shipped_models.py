"""The ensemble that ships with the package: its manifest tells the truth about its files, it
fits the size budget, and its members and settings never saw a test patient."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from CardiacEnsembleLib.acdc import load_splits
from CardiacEnsembleLib.ensemble import (DEFAULT_MODELS_DIR, MANIFEST_FILE, load_ensemble,
                                         read_manifest, update_manifest)
from CardiacEnsembleLib.members import WEIGHTS_FILE, MemberError, read_spec, sha256_of

BUDGET_BYTES = 40 * 10**6


@pytest.fixture(scope="module")
def manifest() -> dict:
    return read_manifest(DEFAULT_MODELS_DIR)


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


def test_manifest_records_the_choice_and_its_metrics(manifest):
    names = {e["name"] for e in manifest["members"]}
    assert manifest["fusion"] in ("mean", "weighted", "vote", "staple")
    assert set(manifest["weights"]) == names
    searches = manifest["selection"]["weight_search"]
    assert {s["method"] for s in searches} == \
        {"random search", "coordinate ascent", "per-class coordinate ascent"}
    if manifest["fusion"] == "weighted":  # the better search's weights are the shipped ones
        best = max(searches, key=lambda s: s["dice"])
        shipped = [manifest["weights"][e["name"]] for e in manifest["members"]]
        np.testing.assert_allclose(np.asarray(shipped, dtype=float),
                                   np.asarray(best["weights"], dtype=float), atol=1e-4)
    assert 0 < manifest["test"]["dice"]["mean"] <= 1
    assert all(e["validation"]["mean"] > 0 for e in manifest["members"])


def test_a_swapped_weights_file_is_refused_before_loading(tmp_path, manifest):
    copy = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, copy)
    first, second = manifest["members"][:2]
    shutil.copy(copy / second["folder"] / WEIGHTS_FILE, copy / first["folder"] / WEIGHTS_FILE)
    with pytest.raises(MemberError, match="sha256"):
        load_ensemble(copy, device="cpu")


def test_update_manifest_keeps_member_entries_and_refuses_to_touch_them(tmp_path, manifest):
    copy = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, copy)
    update_manifest(copy, {"fusion": "vote", "postprocess": ["lcc"]})
    updated = json.loads((copy / MANIFEST_FILE).read_text())
    assert updated["members"] == manifest["members"]
    assert updated["fusion"] == "vote" and updated["postprocess"] == ["lcc"]
    assert load_ensemble(copy, device="cpu").postprocess == ("lcc",)
    with pytest.raises(ValueError, match="member entries"):
        update_manifest(copy, {"members": []})
