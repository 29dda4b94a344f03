"""Members load exactly as saved; inference is batched, cancellable and equals a per-slice run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, WeightTable, read_manifest
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.runner import (CancelToken, Cancelled, DeviceError, pick_device,
                                          predict_slices)
from CardiacEnsembleLib.inference.members import (WEIGHTS_FILE, create_network, load_member, read_spec,
                                        save_member)
from CardiacEnsembleLib.inference.preprocess import prepare_slices
from CardiacEnsembleDev.training.recipes import RECIPES, recipe_spec


@pytest.fixture(scope="module")
def case(patient_dir):
    return PatientFolder.open(patient_dir("patient090")).load("ED")


@pytest.fixture(scope="module")
def slices(case):
    return prepare_slices(torch.from_numpy(case.image), case.spacing_zyx,
                          recipe_spec("unet-mnv2").preprocess)[0]


def test_every_recipe_builds_without_downloads_and_the_shipped_ones_fit_the_size_budget():
    """The zoo may hold more recipes than ship (DeepLabV3+ gave its place to a second U-Net++);
    the ones the default manifest ships must fit 40 MB in fp16 together. Every recipe must
    also give one full-resolution score map per class from its own input channels: SegFormer's
    head works at 1/4 resolution and must be upsampled back."""
    parameters = {}
    for name in RECIPES:
        spec = recipe_spec(name)
        network = create_network(spec).eval()
        parameters[name] = sum(p.numel() for p in network.parameters())
        with torch.inference_mode():
            scores = network(torch.zeros(1, spec.in_channels, 64, 96))
        assert scores.shape == (1, spec.classes, 64, 96), name
    shipped = read_manifest(DEFAULT_MODELS_DIR).names
    assert set(shipped) <= set(RECIPES)
    assert sum(parameters[name] for name in shipped) * 2 <= 40e6


def test_saved_member_predicts_exactly_like_the_network_it_came_from(tmp_path, slices):
    torch.manual_seed(0)
    spec = recipe_spec("linknet-mnv2")
    network = create_network(spec).eval()
    member = save_member(network, spec, tmp_path / "m")
    loaded = load_member(member.folder)
    assert read_spec(member.folder).weights_sha256 == member.spec.weights_sha256
    torch.testing.assert_close(predict_slices(loaded.network, slices),
                               predict_slices(network, slices), atol=0, rtol=0)


def test_fp16_member_is_half_the_size_and_predicts_nearly_the_same(tmp_path, slices):
    torch.manual_seed(0)
    spec = recipe_spec("fpn-mnv2")
    network = create_network(spec).eval()
    full = save_member(network, spec, tmp_path / "fp32")
    half = save_member(network, recipe_spec("fpn-mnv2"), tmp_path / "fp16", half=True)
    size32 = (full.folder / WEIGHTS_FILE).stat().st_size
    size16 = (half.folder / WEIGHTS_FILE).stat().st_size
    assert size16 < 0.52 * size32
    assert half.spec.weights_dtype == "float16"
    reference = predict_slices(network, slices)
    loaded = load_member(half.folder)
    assert next(loaded.network.parameters()).dtype == torch.float32
    assert float((predict_slices(loaded.network, slices) - reference).abs().max()) < 1e-2


def test_saving_over_an_existing_member_is_refused(tmp_path):
    spec = recipe_spec("fpn-mnv2")
    save_member(create_network(spec), spec, tmp_path / "m")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_member(create_network(spec), spec, tmp_path / "m")


def test_batched_inference_equals_a_slice_by_slice_reference(untrained_models, slices):
    member = load_member(untrained_models / "unet-mnv2")
    batched = predict_slices(member.network, slices, batch_size=4)
    with torch.inference_mode():
        one_by_one = torch.cat([torch.softmax(member.network(s[None]), 1) for s in slices])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-4)
    assert torch.equal(batched.argmax(1), one_by_one.argmax(1))


def test_flip_tta_averages_the_flipped_predictions(untrained_models, slices):
    network = load_member(untrained_models / "fpn-mnv2").network
    plain = predict_slices(network, slices)
    expected = (plain + predict_slices(network, slices.flip(-1)).flip(-1)
                + predict_slices(network, slices.flip(-2)).flip(-2)) / 3
    torch.testing.assert_close(predict_slices(network, slices, tta=True), expected,
                               atol=1e-5, rtol=1e-4)


def test_progress_reports_each_batch_and_cancel_stops_within_one(untrained_models, slices):
    network = load_member(untrained_models / "unet-mnv2").network
    seen = []
    predict_slices(network, slices, batch_size=3, progress=lambda d, t, m: seen.append((d, t)))
    assert seen == [(3, 7), (6, 7), (7, 7)]
    token, calls = CancelToken(), []

    def cancel_after_first(done, total, message):
        calls.append(done)
        token.cancel()

    with pytest.raises(Cancelled):
        predict_slices(network, slices, batch_size=3, progress=cancel_after_first, cancel=token)
    assert calls == [3]


def test_cuda_request_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert pick_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        pick_device("cuda")


def test_ensemble_prediction_is_on_the_case_grid_with_member_outputs(untrained_models, case):
    ensemble = load_ensemble(untrained_models, device="cpu")
    prediction = ensemble.predict(case)
    assert prediction.labels.shape == case.image.shape and prediction.labels.dtype == np.uint8
    assert prediction.geometry is case.geometry
    assert [m.name for m in prediction.members] == ["unet-mnv2", "linknet-mnv2", "fpn-mnv2"]
    assert prediction.probabilities.shape == (4, *case.image.shape)
    np.testing.assert_array_equal(prediction.labels, prediction.probabilities.argmax(0))
    assert 0.0 <= prediction.uncertainty.min() and prediction.uncertainty.max() <= 1.0
    assert set(prediction.timings) >= {"members", "fusion", "total", "preprocess"}
    assert prediction.device == "cpu" and prediction.fusion == "mean"


def test_weighted_fusion_uses_the_manifest_weights(untrained_models, case):
    ensemble = load_ensemble(untrained_models, device="cpu")
    assert ensemble.weights.table[:, 0].tolist() == [2.0, 1.0, 1.0]
    probs, seconds = ensemble.member_probabilities(case)
    weighted = ensemble.fuse(case, probs, seconds, "weighted")
    expected = ((2 * probs[0] + probs[1] + probs[2]) / 4).argmax(0).numpy()
    np.testing.assert_array_equal(weighted.labels, expected)


def test_zero_weight_members_are_skipped_without_changing_the_labels(untrained_models, case):
    ensemble = load_ensemble(untrained_models, device="cpu", fusion="weighted")
    ensemble.weights = WeightTable(tuple(ensemble.names), np.array([2.0, 0.0, 1.0]))
    probs, seconds = ensemble.member_probabilities(case)
    expected = ensemble.fuse(case, probs, seconds, "weighted").labels
    prediction = ensemble.predict(case)
    assert [m.name for m in prediction.members] == ["unet-mnv2", "fpn-mnv2"]
    np.testing.assert_array_equal(prediction.labels, expected)
    # another rule asked for explicitly still runs every member
    assert len(ensemble.predict(case, fusion="mean").members) == 3


def test_members_share_one_preprocessing_pass_when_specs_agree(untrained_models, case,
                                                               monkeypatch):
    import CardiacEnsembleLib.inference.ensemble as ensemble_module

    calls = []
    original = ensemble_module.prepare_slices
    monkeypatch.setattr(ensemble_module, "prepare_slices",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    load_ensemble(untrained_models, device="cpu").predict(case)
    assert len(calls) == 1
