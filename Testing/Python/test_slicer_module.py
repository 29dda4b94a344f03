"""The scripted module (CardiacEnsemble/CardiacEnsemble.py) with Qt and the application stubbed
out: its Logic holds no Qt, so on a wired slicer-core scene it loads, segments and evaluates
for real; its panel offers the library's options and the shipped manifest's choices, and a
missing or broken manifest leaves it usable, with a warning."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from mrml_fixtures import ROOT, SAMPLE, UNTRAINED_MEMBERS, requires_mrml

pytestmark = requires_mrml


def _import_module_without_qt(monkeypatch, scene):
    """CardiacEnsemble.py with Qt and the app-only parts of `slicer` replaced by stubs.

    The Logic holds no Qt, so with `slicer.mrmlScene` pointed at a wired slicer-core scene it
    runs for real; only the Widget (never instantiated here) would need the application.
    """
    import importlib.util
    import types

    import slicer

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (Base,), {}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: tuple(choices)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location(
        "CardiacEnsemble", ROOT / "CardiacEnsemble" / "CardiacEnsemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def module(monkeypatch):
    from CardiacEnsembleLib.slicer.scene import create_scene

    wired = create_scene()
    return _import_module_without_qt(monkeypatch, wired.scene)


def test_module_defines_the_four_classes_of_a_scripted_module(module):
    for name in ("CardiacEnsemble", "CardiacEnsembleWidget", "CardiacEnsembleLogic",
                 "CardiacEnsembleTest", "CardiacEnsembleParameterNode"):
        assert isinstance(getattr(module, name), type), name


def test_panel_offers_the_library_rules_and_defaults_to_the_shipped_one(module):
    from CardiacEnsembleLib.core.manifest import read_manifest
    from CardiacEnsembleLib.core.options import FUSION_RULES

    node = module.CardiacEnsembleParameterNode
    assert node.__annotations__["fusion"].__metadata__ == (tuple(FUSION_RULES),)
    shipped = read_manifest()
    assert node.fusion == shipped.fusion.value
    assert module.CardiacEnsembleLogic.shippedMemberNames() == shipped.names


def _write(folder, text):
    folder.mkdir()
    (folder / "manifest.json").write_text(text)


@pytest.mark.parametrize("manifest", [
    None,  # no manifest.json at all
    "{not json",
    json.dumps({"members": [{"name": "a", "folder": "a"}], "fusion": "median"}),
    json.dumps({"members": []}),
], ids=["missing", "not-json", "unknown-rule", "no-members"])
def test_a_missing_or_broken_manifest_offers_no_members_and_the_mean_rule(module, tmp_path,
                                                                         caplog, manifest):
    folder = tmp_path / "models"
    if manifest is None:
        folder.mkdir()
    else:
        _write(folder, manifest)
    with caplog.at_level("WARNING"):
        assert module.CardiacEnsembleLogic.shippedMemberNames(str(folder)) == []
        assert module._shipped_fusion_rule(str(folder)) == "mean"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all(f"no usable ensemble manifest in {folder}" in w
                                      for w in warnings)


def test_module_logic_loads_segments_and_evaluates_like_the_bridge(module, untrained_models):
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation
    from CardiacEnsembleLib.slicer.tables import evaluate_segmentation, table_rows

    logic = module.CardiacEnsembleLogic()
    assert set(logic.shippedMemberNames(str(untrained_models))) == UNTRAINED_MEMBERS
    loaded = logic.loadACDCCase(SAMPLE, phases=("ED",))
    volume, truth = loaded["ED"].volume, loaded["ED"].ground_truth
    with pytest.raises(SlicerBridgeError, match="no input volume"):
        logic.segment(None, modelsDir=str(untrained_models), device="cpu")
    nodes = logic.segment(volume, modelsDir=str(untrained_models), device="cpu", wait=True)
    expected = logic.ensemble(device="cpu", modelsDir=str(untrained_models)).predict(
        loaded["ED"].case).labels
    np.testing.assert_array_equal(labels_from_segmentation(nodes.segmentation), expected)
    assert logic.uncertaintyVolume(nodes.segmentation) is nodes.uncertainty
    assert logic.referenceVolume(nodes.segmentation) is volume
    table = logic.evaluate(nodes.segmentation, truth)
    assert table_rows(table) == evaluate_segmentation(nodes.segmentation, truth)
    assert logic.evaluate(nodes.segmentation, truth) is table  # Evaluate again reuses it
    assert logic.diceSummary(table).startswith("Dice: RV ")


def test_module_logic_scores_both_phases_with_volumes_and_ejection_fraction(module):
    """Segmentations of ED and ES of one patient (here: the ground truth, relabelled as a
    method) give volumes and EF for that method and for the ground truth."""
    from CardiacEnsembleLib.slicer.nodes import set_attribute
    from CardiacEnsembleLib.slicer.segmentations import add_segmentation
    from CardiacEnsembleLib.slicer.tables import table_rows

    logic = module.CardiacEnsembleLogic()
    loaded = logic.loadACDCCase(SAMPLE)
    results = {}
    for phase, item in loaded.items():
        results[phase] = add_segmentation(module.slicer.mrmlScene, item.case.labels,
                                          item.volume, f"{phase} result")
        set_attribute(results[phase], "method", "copy")
    rows = table_rows(logic.evaluate(results["ED"], loaded["ED"].ground_truth))
    ef = {r.method: r.value for r in rows if r.measure == "EF" and r.structure == "LV"}
    assert set(ef) == {"copy", "ground truth"} and ef["copy"] == ef["ground truth"]
    assert 0.0 < ef["copy"] < 100.0


def test_member_choices_subset_the_loaded_ensemble(module, untrained_models):
    """The whole ensemble is loaded once; checked members are a subset of it, so their fusion
    weights follow them (one member alone: its own labels, whatever the rule)."""
    logic = module.CardiacEnsembleLogic()
    full = logic.ensemble(device="cpu", modelsDir=str(untrained_models))
    one = logic.ensemble(members=["fpn-mnv2"], device="cpu", modelsDir=str(untrained_models))
    assert one.names == ["fpn-mnv2"] and one.members[0] is full.members[full.names.index(
        "fpn-mnv2")]
    assert logic.ensemble(members=full.names, device="cpu",
                          modelsDir=str(untrained_models)) is full
    assert len(logic._ensembles) == 1  # loaded (and verified) once
    with pytest.raises(ValueError, match="no member"):
        logic.ensemble(members=["nope"], device="cpu", modelsDir=str(untrained_models))


def test_the_heart_region_choice_reaches_the_worker_request(module):
    """The panel's "Heart region only" sends the package's margin; unchecked, the full grid."""
    logic = module.CardiacEnsembleLogic()
    assert logic._request(None, None, False, "cpu", None).heart_margin is None
    request = logic._request(None, None, False, "cpu", None, module.HEART_MARGIN_PX)
    assert request.heart_margin == module.HEART_MARGIN_PX > 0
    assert module.CardiacEnsembleParameterNode.__annotations__["heartRegion"] is bool


def test_the_panel_offers_the_presets_and_sends_the_one_chosen(module, untrained_models,
                                                              tmp_path):
    """The preset choice is the library's presets plus "custom", defaulting to the manifest's
    default; it travels in the request, and its tooltip says what the preset runs and costs."""
    from CardiacEnsembleLib.core.options import Preset
    from test_presets import with_presets

    node = module.CardiacEnsembleParameterNode
    assert node.__annotations__["preset"].__metadata__ == ((*Preset.values(), "custom"),)
    assert node.preset == (module._read_manifest().default_preset or "custom")
    assert module._shipped_preset(str(untrained_models)) == "custom"
    models = str(with_presets(untrained_models, tmp_path / "models"))
    assert module._shipped_preset(models) == "balanced"
    summary = module.presetSummary("fast", models)
    assert summary.startswith("fast: fpn-mnv2; heart region (16 px); 0.31 s/frame")
    assert "below" in module.presetSummary("custom", models)
    request = module.CardiacEnsembleLogic()._request(None, None, False, "cpu", models,
                                                     preset="fast")
    assert (request.preset, request.members, request.models_dir) == ("fast", None, models)


def test_the_sample_data_source_is_the_shipped_patient_with_its_checksums(module):
    import hashlib
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    uris, names, nodes, checksums = module.sampleDataSource()
    assert names == ["patient090_frame04.nii.gz", "patient090_frame11.nii.gz"]
    assert nodes == ["patient090 ED", "patient090 ES"]
    for uri, name, checksum in zip(uris, names, checksums):
        path = url2pathname(urlparse(uri).path)
        assert uri.startswith("file://") and path == str(SAMPLE / name)
        algorithm, digest = checksum.split(":")
        assert algorithm == "SHA256"
        with open(path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest


def test_the_terminology_the_module_loads_at_startup_is_in_its_resources(module):
    from pathlib import Path

    from CardiacEnsembleLib.core.terminology import TERMINOLOGY_FILE

    assert Path(module.terminologyPath()) == ROOT / "CardiacEnsemble" / "Resources" / \
        TERMINOLOGY_FILE
    assert Path(module.CardiacEnsembleLogic.headlessScriptPath()).is_file()


def test_pip_gets_the_missing_packages_constrained_to_the_installed_torch(module, monkeypatch):
    from CardiacEnsembleLib.core import requirements

    calls = []

    def pip_install(arguments):
        constraints = arguments[arguments.index("-c") + 1]
        with open(constraints) as handle:
            calls.append((arguments, handle.read().split()))

    monkeypatch.setattr(module.slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(requirements, "pip_requirements", lambda: ["nibabel>=5.2"])
    module.CardiacEnsembleLogic().installDependencies()
    ((arguments, pins),) = calls
    assert arguments[-1] == "nibabel>=5.2"
    assert f"torch=={requirements.installed_version('torch')}" in pins


def test_without_the_pytorch_extension_torch_is_not_pip_installed(module, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails
    with pytest.raises(RuntimeError, match="install 'PyTorch' from the Extensions Manager"):
        module.CardiacEnsembleLogic._installTorch()


def test_a_loaded_ground_truth_is_recognised_so_it_is_never_offered_as_the_output(module):
    logic = module.CardiacEnsembleLogic()
    loaded = logic.loadACDCCase(SAMPLE, phases=("ED",))
    assert logic.isGroundTruth(loaded["ED"].ground_truth)
    other = module.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "output")
    assert not logic.isGroundTruth(other)


def test_module_logic_segments_a_cine_and_one_frame_of_it_only_when_asked(module,
                                                                          untrained_models):
    """The panel's Segment on a sequence proxy: every frame, as `segment_cine` gives it; the
    frame shown now alone only with `sequenceFrame=True`."""
    from CardiacEnsembleLib.inference.cine import segment_cine
    from CardiacEnsembleLib.io.acdc import PatientFolder
    from CardiacEnsembleLib.slicer.cine import add_volume_sequence
    from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
    from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation

    logic = module.CardiacEnsembleLogic()
    patient = PatientFolder.open(SAMPLE)
    frames = [patient.load(phase, with_gt=False) for phase in ("ED", "ES")]
    cine = np.stack([frame.image for frame in frames])
    loaded = add_volume_sequence(module.slicer.mrmlScene, cine, frames[0].geometry, "cine")
    options = dict(modelsDir=str(untrained_models), device="cpu")
    assert logic.isSequenceFrame(loaded.proxy) and not logic.isSequenceFrame(None)
    try:
        nodes = logic.segmentCine(loaded.proxy, wait=True, **options)
        expected = segment_cine(logic.ensemble(**options), cine, frames[0].geometry)
        loaded.browser.SetSelectedItemNumber(1)
        np.testing.assert_array_equal(labels_from_segmentation(nodes.proxy, loaded.proxy),
                                      expected.labels[1])
        assert nodes.summary["ed_frame"] == expected.ed_frame
        with pytest.raises(SlicerBridgeError, match="shows one frame of a 2-frame sequence"):
            logic.segment(loaded.proxy, **options)
        alone = logic.segment(loaded.proxy, sequenceFrame=True, wait=True, **options)
        np.testing.assert_array_equal(labels_from_segmentation(alone.segmentation),
                                      expected.labels[1])
    finally:
        logic.cleanup()
