"""The onnxruntime backend: the same labels as torch on real frames, exports cached by the
member's hashes, a changed export refused, and the fall-backs said, not silent."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.core.errors import MemberError
from CardiacEnsembleLib.core.options import Backend
from CardiacEnsembleLib.inference import onnx_runtime
from CardiacEnsembleLib.inference.ensemble import _chosen_backend, load_ensemble
from CardiacEnsembleLib.inference.members import read_spec
from CardiacEnsembleLib.inference.runner import DeviceError
from CardiacEnsembleLib.io.acdc import PatientFolder

pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime")


@pytest.fixture(scope="module")
def frames(patient_dir):
    """Real frames of three shapes: the sample's ED, and a test patient's ED and ES."""
    sample = PatientFolder.open(patient_dir("patient090"))
    other = PatientFolder.open(patient_dir("patient101"))
    return [sample.load("ED"), other.load("ED"), other.load("ES")]


@pytest.fixture(scope="module")
def shipped():
    return {backend: load_ensemble(device="cpu", backend=backend)
            for backend in (Backend.ONNXRUNTIME, Backend.TORCH)}


@pytest.mark.parametrize("margin", [None, 16], ids=["full-grid", "heart-region"])
def test_onnxruntime_labels_equal_torch_labels_on_real_frames(shipped, frames, margin):
    """Every member's label map and the fused one, pixel for pixel, full grid and heart box."""
    for case in frames:
        predictions = {}
        for backend, ensemble in shipped.items():
            ensemble.heart_margin = margin
            predictions[backend] = ensemble.predict(case, keep_member_probabilities=True)
        fast, reference = predictions[Backend.ONNXRUNTIME], predictions[Backend.TORCH]
        assert np.count_nonzero(reference.labels) > 1000, case.name
        np.testing.assert_array_equal(fast.labels, reference.labels, err_msg=case.name)
        for ours, theirs in zip(fast.members, reference.members):
            np.testing.assert_array_equal(ours.labels, theirs.labels, err_msg=ours.name)
            assert np.abs(ours.probabilities - theirs.probabilities).max() < 1e-4
    assert shipped[Backend.ONNXRUNTIME].backend == "onnxruntime"
    assert shipped[Backend.TORCH].backend == "torch"


def test_exports_are_keyed_by_the_members_hashes_and_reused_without_smp(shipped, tmp_path):
    """One export + record per member, named by a key of its weights' hash; a second process
    loads them without importing segmentation_models_pytorch or timm."""
    cache = onnx_runtime.cache_dir()
    for member in shipped[Backend.ONNXRUNTIME].members:
        record = json.loads(member.network.path.with_suffix(".json").read_text())
        assert member.network.path.parent == cache
        assert record["weights_sha256"] == member.spec.weights_sha256
        assert record["onnx_sha256"] == onnx_runtime.sha256_of(member.network.path)
        assert onnx_runtime.origin_of(member.folder, member.spec).key in member.network.path.name
    before = {path: path.stat().st_mtime_ns for path in cache.iterdir()}
    probe = ("import sys; from CardiacEnsembleLib.inference.ensemble import load_ensemble; "
             "e = load_ensemble(device='cpu'); print(e.backend, "
             "'segmentation_models_pytorch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["onnxruntime", "False", "False"]
    assert {path: path.stat().st_mtime_ns for path in cache.iterdir()} == before


def test_other_weights_get_their_own_export(untrained_models, shipped):
    """Members with another member's name but other weights never meet its export."""
    ensemble = load_ensemble(untrained_models, device="cpu", backend="onnxruntime")
    shipped_paths = {m.network.path for m in shipped[Backend.ONNXRUNTIME].members}
    assert not {m.network.path for m in ensemble.members} & shipped_paths
    spec = read_spec(untrained_models / "unet-mnv2")
    other = onnx_runtime.origin_of(untrained_models / "unet-mnv2",
                                   type(spec)(**{**spec.__dict__, "weights_sha256": "0" * 64}))
    assert other.key != onnx_runtime.origin_of(untrained_models / "unet-mnv2", spec).key


@pytest.mark.parametrize("change", ["truncated", "swapped"])
def test_a_changed_export_is_refused_and_derived_again(untrained_models, frames, tmp_path,
                                                       monkeypatch, caplog, change):
    """A cached export whose bytes no longer match its record never runs: it is derived
    again from the verified weights, and the predictions are the torch path's."""
    monkeypatch.setenv(onnx_runtime.CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    first = load_ensemble(untrained_models, device="cpu", backend="onnxruntime")
    target, other = first.members[0].network.path, first.members[1].network.path
    if change == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    else:
        shutil.copyfile(other, target)
    with caplog.at_level(logging.WARNING):
        again = load_ensemble(untrained_models, device="cpu", backend="onnxruntime")
    assert "does not match its record" in caplog.text and str(target) in caplog.text
    record = json.loads(target.with_suffix(".json").read_text())
    assert onnx_runtime.sha256_of(target) == record["onnx_sha256"]
    reference = load_ensemble(untrained_models, device="cpu", backend="torch")
    case = frames[0]
    np.testing.assert_array_equal(again.predict(case).members[0].labels,
                                  reference.predict(case).members[0].labels)


def test_an_unwritable_cache_falls_back_to_torch_under_auto_and_is_refused_when_asked(
        untrained_models, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(onnx_runtime.CACHE_ENVIRONMENT_VARIABLE, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        ensemble = load_ensemble(untrained_models, device="cpu")
    assert ensemble.backend == "torch"
    assert isinstance(ensemble.members[0].network, torch.nn.Module)
    assert "running unet-mnv2 with torch" in caplog.text
    with pytest.raises(MemberError, match="CARDIAC_ENSEMBLE_CACHE_DIR"):
        load_ensemble(untrained_models, device="cpu", backend="onnxruntime")


def test_one_member_whose_export_fails_runs_with_torch_under_auto_beside_the_others(
        untrained_models, frames, tmp_path, monkeypatch, caplog):
    """A disk that fills while the second member is exported: under AUTO that member (and the
    ones after it) run with torch, the first keeps its export, the log names both backends, and
    the labels are torch's; asked for onnxruntime, the same failure is one clear error."""
    monkeypatch.setenv(onnx_runtime.CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    export = onnx_runtime.cached_export

    def disk_full_for_the_second(folder, spec, origin, cache):
        if spec.name == "linknet-mnv2":
            raise OSError(28, "No space left on device")
        return export(folder, spec, origin, cache)

    monkeypatch.setattr(onnx_runtime, "cached_export", disk_full_for_the_second)
    with caplog.at_level(logging.WARNING):
        mixed = load_ensemble(untrained_models, device="cpu")
    kinds = [isinstance(m.network, onnx_runtime.OnnxNetwork) for m in mixed.members]
    assert kinds == [True, False, False]
    assert mixed.backend == "onnxruntime+torch"
    assert "(onnxruntime+torch)" in mixed.settings_line
    assert "running linknet-mnv2 with torch: [Errno 28] No space left" in caplog.text
    reference = load_ensemble(untrained_models, device="cpu", backend="torch")
    np.testing.assert_array_equal(mixed.predict(frames[0]).labels,
                                  reference.predict(frames[0]).labels)
    with pytest.raises(MemberError, match="cannot cache the ONNX export of 'linknet-mnv2'"):
        load_ensemble(untrained_models, device="cpu", backend="onnxruntime")


def test_onnxruntime_on_a_gpu_is_refused_and_auto_keeps_torch_there():
    with pytest.raises(DeviceError, match="CPU only"):
        _chosen_backend(Backend.ONNXRUNTIME, torch.device("cuda"))
    assert _chosen_backend(Backend.AUTO, torch.device("cuda")) == Backend.TORCH
    assert _chosen_backend(Backend.AUTO, torch.device("cpu")) == Backend.AUTO


def test_segment_backend_option_writes_the_same_label_map(untrained_models, patient_dir,
                                                          tmp_path, capsys):
    """`--backend torch` and the default (ONNX Runtime here) write identical files and say
    which one ran."""
    from CardiacEnsembleLib.cli import main

    frame = PatientFolder.open(patient_dir("patient090")).frame_path("ED")
    written = {}
    for backend in ("auto", "torch"):
        out = tmp_path / f"{backend}.nii.gz"
        assert main(["segment", str(frame), "-o", str(out), "--models", str(untrained_models),
                     "--backend", backend]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ensemble:"))
        assert line.endswith("(onnxruntime)" if backend == "auto" else "(torch)"), line
        import nibabel as nib
        written[backend] = np.asarray(nib.load(str(out)).dataobj)
    assert np.count_nonzero(written["torch"]) > 0
    np.testing.assert_array_equal(written["auto"], written["torch"])
