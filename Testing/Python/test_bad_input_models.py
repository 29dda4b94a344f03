"""Bad models folders: every problem of a manifest or a member spec is one error line that names
the file (and the member, key and value), raised when the ensemble loads, before any network
runs; and the manifest's hashes cover everything that changes a member's output.

Broken models are writable copies of the `untrained_models` fixture (conftest.py: three members,
the manifest `ship` writes); the image is patient090's ED frame (the smallest ACDC frame). A
refusal must come before the networks: `network_probabilities` is replaced by a recorder, so a check
that comes only after the members ran fails the test.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.core.labels import LABEL_NAMES
from CardiacEnsembleLib.core.manifest import (DEFAULT_MODELS_DIR, MEMBER_FILES, RESHIP_HINT,
                                              check_member_files, read_manifest)
from CardiacEnsembleLib.inference import ensemble as ensemble_module
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.members import MemberError, verify_member

PATIENT = "patient090"
ED_FILE = "patient090_frame04.nii.gz"
MEMBER = "unet-mnv2"  # a member of `untrained_models`


@pytest.fixture
def models(untrained_models, tmp_path) -> Path:
    """A writable copy of the untrained models folder (manifest + 3 members)."""
    return Path(shutil.copytree(untrained_models, tmp_path / "models"))


@pytest.fixture
def networks_ran(monkeypatch) -> list[str]:
    """Names of the members whose network ran on a volume during the test."""
    ran: list[str] = []
    original = ensemble_module.network_probabilities
    monkeypatch.setattr(ensemble_module, "network_probabilities",
                        lambda *a, **k: ran.append(k.get("label")) or original(*a, **k))
    return ran


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


def segment(capsys, patient_dir, models: Path, tmp_path: Path, *extra) -> tuple[int, str, Path]:
    """(exit status, stderr, output path) of `cardiac-ensemble -q segment` on patient090's ED."""
    out = tmp_path / "seg.nii.gz"
    code = main(["-q", "segment", str(patient_dir(PATIENT) / ED_FILE), "-o", str(out),
                 "--models", str(models), "--device", "cpu", *extra])
    return code, capsys.readouterr().err, out


def test_the_recorder_sees_every_network_of_a_run_that_goes_through(models, patient_dir,
                                                                     tmp_path, capsys,
                                                                     networks_ran):
    """What makes `networks_ran == []` mean something in the refusal tests below."""
    code, _, out = segment(capsys, patient_dir, models, tmp_path)
    assert code == 0 and out.exists()
    assert networks_ran == read_manifest(models).names


# ------------------------------------------------------------------------ the hashes

def test_the_shipped_manifest_hashes_every_file_of_every_member():
    manifest = read_manifest(DEFAULT_MODELS_DIR)
    for entry in manifest.members:
        check_member_files(manifest, entry)  # weights, member.json and config.json


# Each: (member file, an edit that changes what the member outputs but leaves its weights).
EDITS_BEHIND_THE_MANIFEST = {
    "spacing 1.5 -> 3.0 mm": ("member.json",
                              lambda spec: spec["preprocess"].update(spacing_mm=3.0)),
    "clip percentiles": ("member.json",
                         lambda spec: spec["preprocess"].update(clip_percentiles=[5, 95])),
    "activation": ("config.json", lambda config: config.update(activation="sigmoid")),
}


@pytest.mark.parametrize("kind", EDITS_BEHIND_THE_MANIFEST)
def test_an_edited_member_file_is_refused_by_segment_before_any_network_runs(
        kind, models, patient_dir, tmp_path, capsys, networks_ran):
    name, edit = EDITS_BEHIND_THE_MANIFEST[kind]
    edited = models / MEMBER / name
    edit_json(edited, edit)
    code, err, out = segment(capsys, patient_dir, models, tmp_path)
    assert code == 2
    assert re.fullmatch(re.escape(f"error: {edited}: sha256 ") + r"[0-9a-f]{12}\.\.\. does not "
                        + re.escape(f"match {models / 'manifest.json'} (") + r"[0-9a-f]{12}\.\.\."
                        r"\): the (member spec \(preprocessing, labels\)|network config) is not "
                        r"the one the manifest names; restore the shipped file, or re-ship the "
                        r"models\n", err), err
    assert networks_ran == [] and not out.exists()


@pytest.mark.parametrize("kind", EDITS_BEHIND_THE_MANIFEST)
def test_models_reports_an_edited_member_file(kind, models, capsys):
    """`models` is where a user checks an install: it checks every file the manifest hashes."""
    name, edit = EDITS_BEHIND_THE_MANIFEST[kind]
    edited = models / MEMBER / name
    edit_json(edited, edit)
    code = main(["models", "--models", str(models)])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {edited}: sha256 ")


@pytest.mark.parametrize("key", list(MEMBER_FILES))
def test_a_manifest_without_a_members_hash_is_refused(key, models):
    edit_json(models / "manifest.json", lambda raw: raw["members"][1].pop(key))
    with pytest.raises(MemberError, match="^" + re.escape(
            f"{models / 'manifest.json'}: member 'linknet-mnv2' records no valid {key!r} (the "
            f"sha256 of its {MEMBER_FILES[key]}: None); {RESHIP_HINT}") + "$"):
        read_manifest(models)


# ------------------------------------------------------------------------ member specs
# Each: (an edit of member.json, the key and value the one-line error must name, as the end of
# the message after "<member.json>: ").

BAD_SPECS = {
    "spacing 0": (lambda s: s["preprocess"].update(spacing_mm=0),
                  "preprocess.spacing_mm is 0; expected a positive number of mm (or null to "
                  "keep the image's own spacing)"),
    "size multiple 0": (lambda s: s["preprocess"].update(size_multiple=0),
                        "preprocess.size_multiple is 0; expected a positive integer (the network "
                        "input's sides are multiples of it)"),
    "clip percentiles reversed": (lambda s: s["preprocess"].update(clip_percentiles=[99.5, 0.5]),
                                  "preprocess.clip_percentiles is [99.5, 0.5]; expected two "
                                  "percentiles [low, high] with 0 <= low < high <= 100"),
    "a misspelt preprocess key": (lambda s: s["preprocess"].update(spacing=3.0),
                                  "unknown preprocess field(s) spacing; known: clip_percentiles, "
                                  "size_multiple, spacing_mm"),
    "decoder channels 0": (lambda s: s["model_kwargs"].update(decoder_channels=[128, 0, 32, 16, 8]),
                           "model_kwargs.decoder_channels is [128, 0, 32, 16, 8]; expected "
                           "positive integers"),
    "RV and LV swapped": (lambda s: s.update(label_names=[LABEL_NAMES[i] for i in (0, 3, 2, 1)]),
                          f"label_names is {[LABEL_NAMES[i] for i in (0, 3, 2, 1)]!r}; expected "
                          f"{list(LABEL_NAMES)!r} (the package's labels, in label order)"),
}


@pytest.mark.parametrize("kind", BAD_SPECS)
def test_a_bad_member_spec_names_the_file_the_key_and_the_value(kind, models):
    edit, message = BAD_SPECS[kind]
    spec = models / MEMBER / "member.json"
    edit_json(spec, edit)
    with pytest.raises(MemberError, match="^" + re.escape(f"{spec}: {message}") + "$"):
        verify_member(models / MEMBER)


def test_a_member_spec_that_is_not_utf8_names_its_file(models, patient_dir, tmp_path, capsys):
    spec = models / MEMBER / "member.json"
    spec.write_bytes(spec.read_bytes().replace(b'"background"', b'"backgr\xf6und"'))
    code, err, out = segment(capsys, patient_dir, models, tmp_path)
    assert code == 2
    assert err.startswith(f"error: {spec}: not valid JSON (") and err.count("\n") == 1, err
    assert not out.exists()


# ------------------------------------------------------------------------ manifest rules, weights
# Each: (an edit of manifest.json, the end of the one-line error after "<manifest.json>: ").

def weighted(weights):
    return lambda raw: raw.update(fusion="weighted", weights=weights)


BAD_MANIFESTS = {
    "members not a list": (lambda raw: raw.update(members={"unet-mnv2": {}}),
                           "\"members\" must be a list of objects (name, folder, hashes), not "
                           "{'unet-mnv2': {}}"),
    "postprocess a string": (lambda raw: raw.update(postprocess="lcc"),
                             "'postprocess' must be a list of step names, not 'lcc'"),
    "weighted without weights": (weighted({}), "fusion rule 'weighted' needs fusion weights, "
                                 "and the manifest gives none; add \"weights\" or choose "
                                 "another rule"),
    "a member without a weight": (weighted({"unet-mnv2": 1, "fpn-mnv2": 1}),
                                  "no fusion weight for member(s) ['linknet-mnv2']"),
    "a weight for no member": (weighted({"unet-mnv2": 1, "linknet-mnv2": 1, "fpn-mnv2": 1,
                                         "unet-mnv3": 1}),
                               "fusion weights for member(s) ['unet-mnv3'] that the manifest "
                               "does not list; its members are ['unet-mnv2', 'linknet-mnv2', "
                               "'fpn-mnv2']"),
    "a weight in words": (weighted({"unet-mnv2": "high", "linknet-mnv2": 1, "fpn-mnv2": 1}),
                          "fusion weight of 'unet-mnv2' is 'high'; expected a non-negative "
                          "number or 4 (one per class, background first)"),
    "all weights 0": (weighted({"unet-mnv2": 0, "linknet-mnv2": 0, "fpn-mnv2": 0}),
                      "every fusion weight of members ['unet-mnv2', 'linknet-mnv2', "
                      "'fpn-mnv2'] is 0; expected at least one positive weight per class"),
    "the RV weighed 0 by all": (weighted({"unet-mnv2": [1, 0, 1, 1], "linknet-mnv2": [1, 0, 1, 1],
                                          "fpn-mnv2": [1, 0, 1, 1]}),
                                "no member of ['unet-mnv2', 'linknet-mnv2', 'fpn-mnv2'] has a "
                                "positive fusion weight for RV cavity; the weighted rule could "
                                "never label it (choose members that weigh it, or another "
                                "fusion rule)"),
}


@pytest.mark.parametrize("kind", BAD_MANIFESTS)
def test_a_bad_manifest_is_refused_by_segment_before_any_network_runs(
        kind, models, patient_dir, tmp_path, capsys, networks_ran):
    edit, message = BAD_MANIFESTS[kind]
    edit_json(models / "manifest.json", edit)
    code, err, out = segment(capsys, patient_dir, models, tmp_path)
    assert code == 2
    assert err == f"error: {models / 'manifest.json'}: {message}\n"
    assert networks_ran == [] and not out.exists()


def test_weighted_fusion_of_members_that_never_weigh_a_class_is_refused_at_load(models,
                                                                              networks_ran):
    """The manifest is usable as a whole; the two members asked for weigh the RV 0."""
    edit_json(models / "manifest.json", weighted({"unet-mnv2": [1, 0, 1, 1],
                                                  "linknet-mnv2": [1, 0, 1, 1], "fpn-mnv2": 1}))
    with pytest.raises(MemberError, match="^" + re.escape(
            f"{models / 'manifest.json'}: no member of ['unet-mnv2', 'linknet-mnv2'] has a "
            f"positive fusion weight for RV cavity")):
        load_ensemble(models, members=["unet-mnv2", "linknet-mnv2"], device="cpu")


# ------------------------------------------------------------------------ training recipes

def test_train_with_an_unknown_recipe_lists_the_known_ones(acdc, tmp_path, capsys):
    from CardiacEnsembleDev.training.recipes import RECIPES

    code = main(["-q", "train", "--data", str(acdc), "--recipe", "foo",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == f"error: unknown member recipe 'foo'; known: " \
                                      f"{', '.join(RECIPES)}\n"
    assert not (tmp_path / "run").exists()
