"""Presets: read and checked with the manifest, applied by `load_ensemble`, the CLI and the
Slicer worker alike, each setting replaceable by an explicit option."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.core.errors import MemberError
from CardiacEnsembleLib.core.manifest import read_manifest
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.server import EnsembleRequest, Server
from CardiacEnsembleLib.io.acdc import PatientFolder

PRESETS = {
    "fast": {"members": ["fpn-mnv2"], "heart_margin": 16,
             "heart_locator": "linknet-mnv2", "fusion": "mean", "postprocess": ["lcc"],
             "seconds_per_frame": 0.31, "validation_dice": 0.91},
    "balanced": {"heart_margin": 16, "seconds_per_frame": 0.62},
}


def with_presets(untrained_models: Path, folder: Path, presets=PRESETS,
                 default="balanced") -> Path:
    """A copy of the untrained models whose manifest has `presets` and `default`."""
    models = Path(shutil.copytree(untrained_models, folder))
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["presets"] = presets
    manifest.pop("default_preset", None)
    if default is not None:
        manifest["default_preset"] = default
    (models / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return models


@pytest.fixture
def preset_models(untrained_models, tmp_path) -> Path:
    return with_presets(untrained_models, tmp_path / "models")


def test_the_default_preset_is_what_runs_and_options_replace_its_settings(preset_models):
    default = load_ensemble(preset_models, device="cpu")
    assert (default.preset, default.heart_margin, default.names) == \
        ("balanced", 16, ["unet-mnv2", "linknet-mnv2", "fpn-mnv2"])
    assert default.fusion == "mean" and default.postprocess == ()  # the manifest's own
    fast = load_ensemble(preset_models, device="cpu", preset="fast")
    assert fast.names == ["fpn-mnv2"] and fast.locator.name == "linknet-mnv2"
    assert (fast.heart_margin, fast.locator_name, fast.postprocess) == \
        (16, "linknet-mnv2", ("lcc",))
    mixed = load_ensemble(preset_models, device="cpu", preset="fast", heart_margin=32,
                          members=["unet-mnv2", "fpn-mnv2"], postprocess=())
    assert (mixed.names, mixed.heart_margin, mixed.postprocess) == \
        (["unet-mnv2", "fpn-mnv2"], 32, ())
    assert mixed.locator is None and mixed.locator_name == "unet-mnv2"  # members changed
    full = load_ensemble(preset_models, device="cpu", preset="full")
    assert (full.preset, full.heart_margin, len(full.names)) == (None, None, 3)


def test_a_manifest_without_presets_runs_everything_on_the_full_grid(untrained_models):
    ensemble = load_ensemble(untrained_models, device="cpu")
    assert (ensemble.preset, ensemble.heart_margin, len(ensemble.names)) == (None, None, 3)
    assert load_ensemble(untrained_models, device="cpu", preset="full").heart_margin is None
    with pytest.raises(MemberError, match=r"defines no preset 'fast' \(its presets: none\)"):
        load_ensemble(untrained_models, device="cpu", preset="fast")


@pytest.mark.parametrize("presets, default, message", [
    ({"turbo": {}}, None, r"preset 'turbo': unknown preset 'turbo'; choose one of fast"),
    ({"fast": {"members": ["unet-mnv2", "resnet"]}}, None,
     r"preset 'fast': members \['resnet'\] are not the manifest's"),
    ({"fast": {"members": ["unet-mnv2"], "heart_locator": "resnet"}}, None,
     r"heart_locator 'resnet' is not a member of the manifest"),
    ({"fast": {"heart_margin": -4}}, None, r"heart_margin -4: expected pixels >= 0"),
    ({"fast": {"speed": "ludicrous"}}, None, r"unknown key\(s\) speed"),
    ({"fast": {"fusion": "median"}}, None, r"unknown fusion rule 'median'"),
    ({"fast": {}}, "balanced", r"default_preset 'balanced' is not one of its presets \(fast\)"),
])
def test_a_bad_preset_is_refused_naming_the_manifest(untrained_models, tmp_path, presets,
                                                     default, message):
    models = with_presets(untrained_models, tmp_path / "models", presets, default)
    with pytest.raises(MemberError, match=message) as error:
        read_manifest(models)
    assert str(models / "manifest.json") in str(error.value)


def test_cli_runs_the_preset_named_and_models_lists_the_presets(preset_models, patient_dir,
                                                               tmp_path, capsys):
    frame = PatientFolder.open(patient_dir("patient090")).frame_path("ED")
    assert main(["segment", str(frame), "-o", str(tmp_path / "fast.nii.gz"), "--models",
                 str(preset_models), "--preset", "fast"]) == 0
    out = capsys.readouterr().out
    assert "ensemble: preset fast | fpn-mnv2 | fusion mean + lcc" in out
    assert "heart region: linknet-mnv2 (locates only) + 16 px" in out
    assert main(["models", "--models", str(preset_models)]) == 0
    listed = capsys.readouterr().out
    assert "preset fast: 0.31 s/frame | validation Dice 0.9100" in listed
    assert "preset balanced (default): 0.62 s/frame" in listed


def test_the_worker_takes_the_preset_of_each_request_from_one_loaded_ensemble(preset_models):
    """The Slicer worker loads every member once; each request's preset (or the default)
    picks members, rule and region from them, and an explicit member list replaces it."""
    server = Server(io.StringIO())
    folder = str(preset_models)
    fast, _ = server._ensemble_for(EnsembleRequest(folder, device="cpu", preset="fast"))
    assert (fast.names, fast.heart_margin, fast.locator_name, fast.preset) == \
        (["fpn-mnv2"], 16, "linknet-mnv2", "fast")
    assert fast.locator is server._ensemble.members[1]  # the loaded one, not a second load
    default, reused = server._ensemble_for(EnsembleRequest(folder, device="cpu"))
    assert reused and server.loads == 1
    assert (len(default.names), default.heart_margin, default.preset) == (3, 16, "balanced")
    custom, _ = server._ensemble_for(EnsembleRequest(folder, ("unet-mnv2", "fpn-mnv2"),
                                                     "vote", device="cpu", preset="full"))
    assert (custom.names, custom.fusion, custom.heart_margin) == \
        (["unet-mnv2", "fpn-mnv2"], "vote", None)
    request = EnsembleRequest(folder, device="cpu", preset="fast")
    assert EnsembleRequest.from_json(json.loads(json.dumps(request.to_json()))) == request


def test_a_locator_outside_the_members_only_finds_the_box(patient_dir, tmp_path):
    """A member run on the box a locator found (the fast preset's shape), on real weights:
    the same labels as beside that locator in an ensemble; the locator casts no vote and
    its time is "locate"."""
    from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR

    models = with_presets(DEFAULT_MODELS_DIR, tmp_path / "models", {"fast": {
        "members": ["unetpp25d-mnv2"], "heart_locator": "linknet25d-mnv2", "heart_margin": 16,
        "fusion": "mean"}}, default=None)
    case = PatientFolder.open(patient_dir("patient090")).load("ED")
    fast = load_ensemble(models, device="cpu", preset="fast").predict(case)
    pair = load_ensemble(models, device="cpu", members=["linknet25d-mnv2", "unetpp25d-mnv2"],
                         heart_margin=16, heart_locator="linknet25d-mnv2").predict(case)
    assert [m.name for m in fast.members] == ["unetpp25d-mnv2"]
    assert fast.heart_region == pair.heart_region and "% of the grid" in fast.heart_region
    assert np.count_nonzero(fast.labels) > 1000
    np.testing.assert_array_equal(fast.members[0].labels, pair.members[1].labels)
    assert fast.timings["locate"] > 0 and "locate" not in pair.timings


@pytest.mark.parametrize("ran", ["balanced", "full"])
def test_the_presets_record_refuses_a_run_made_with_another_heart_region(preset_models,
                                                                          tmp_path, ran):
    """release.presets reads each preset's Dice from its validation run: a run left to the
    default preset (heart region on) must not be recorded as the full grid's, nor the reverse."""
    from CardiacEnsembleDev.release.presets import CANDIDATES, check_region
    from CardiacEnsembleLib.cli.evaluate import summary_markdown

    ensemble = load_ensemble(preset_models, device="cpu", preset=ran)
    full = next(c for c in CANDIDATES if c.label == "full")
    balanced = next(c for c in CANDIDATES if c.label == "balanced")
    for candidate in (full, balanced):
        (tmp_path / candidate.run).mkdir()
        (tmp_path / candidate.run / "summary.md").write_text(
            summary_markdown("| method |", [], ensemble))
    right, wrong = (full, balanced) if ran == "full" else (balanced, full)
    check_region(tmp_path, right)
    with pytest.raises(SystemExit, match=rf"{wrong.run}/summary.md: ran heart margin"):
        check_region(tmp_path, wrong)


def test_the_presets_record_refuses_a_run_that_does_not_say_what_ran(tmp_path):
    from CardiacEnsembleDev.release.presets import CANDIDATES, check_region

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "summary.md").write_text("# Evaluation on 20 patient(s)\n")
    with pytest.raises(SystemExit, match="full/summary.md: no 'Ensemble: ' line"):
        check_region(tmp_path, next(c for c in CANDIDATES if c.label == "full"))
