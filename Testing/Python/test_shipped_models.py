"""What the package does with a models folder like the shipped one: a weights file swapped
behind the manifest is refused before anything loads, and updating the manifest's settings never
touches its member entries or drops a key it does not know.

Whether the shipped files themselves are right (hashes, size budget, no test patient seen, the
recorded selection) is the release check's (`Testing/Release`)."""
from __future__ import annotations

import json
import shutil

import pytest

from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, MANIFEST_FILE, update_manifest
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.members import WEIGHTS_FILE, MemberError


@pytest.fixture
def models_copy(tmp_path):
    return shutil.copytree(DEFAULT_MODELS_DIR, tmp_path / "models")


@pytest.fixture
def manifest(models_copy) -> dict:
    return json.loads((models_copy / MANIFEST_FILE).read_text())


def test_a_swapped_weights_file_is_refused_before_loading(models_copy, manifest):
    first, second = manifest["members"][:2]
    shutil.copy(models_copy / second["folder"] / WEIGHTS_FILE,
                models_copy / first["folder"] / WEIGHTS_FILE)
    with pytest.raises(MemberError, match=f"{first['folder']}.*sha256"):
        load_ensemble(models_copy, device="cpu")


def test_update_manifest_keeps_member_entries_and_refuses_to_touch_them(models_copy, manifest):
    update_manifest(models_copy, {"fusion": "vote", "postprocess": ["lcc"]})
    updated = json.loads((models_copy / MANIFEST_FILE).read_text())
    assert updated == {**manifest, "fusion": "vote", "postprocess": ["lcc"]}
    assert load_ensemble(models_copy, device="cpu").postprocess == ("lcc",)
    with pytest.raises(ValueError, match="member entries"):
        update_manifest(models_copy, {"members": []})
    assert json.loads((models_copy / MANIFEST_FILE).read_text()) == updated
