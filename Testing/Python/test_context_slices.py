"""2.5D members: neighbouring slices as input channels, on real ACDC frames and cine stacks."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.inference.cine import segment_cine
from CardiacEnsembleDev.release.ship import write_manifest
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.runner import predict_slices
from CardiacEnsembleLib.inference.members import (SPEC_FILE, MemberError, create_network, load_member,
                                        save_member)
from CardiacEnsembleLib.inference.preprocess import prepare_slices, stack_neighbours
from CardiacEnsembleDev.training.recipes import recipe_spec
from CardiacEnsembleDev.training.training import TrainConfig, _warm_start, train_member


@pytest.fixture(scope="module")
def patient090(patient_dir):
    return PatientFolder.open(patient_dir("patient090"))


@pytest.fixture(scope="module")
def models_with_a_2_5d_member(untrained_models, tmp_path_factory):
    """The untrained 2D U-Net beside a 2.5D U-Net warm-started from it (then perturbed, so the
    neighbour channels matter)."""
    root = tmp_path_factory.mktemp("models25d")
    shutil.copytree(untrained_models / "unet-mnv2", root / "unet-mnv2")
    spec = recipe_spec("unet25d-mnv2")
    network = create_network(spec)
    _warm_start(network, spec, untrained_models / "unet-mnv2", log=lambda line: None)
    torch.manual_seed(3)
    with torch.no_grad():
        first_conv = network.encoder.features[0][0].weight
        first_conv[:, [0, 2]] = torch.randn_like(first_conv[:, [0, 2]]) * 0.3
    save_member(network, spec, root / "unet25d-mnv2")
    write_manifest(root, [root / "unet-mnv2", root / "unet25d-mnv2"], name="test-25d",
                   version="0", fusion="mean", weights={}, note="untrained 2.5D test members")
    return root


def test_neighbour_channels_come_from_the_same_frame_in_slice_order(patient090):
    cine, geometry = patient090.load_cine()
    slices, _ = prepare_slices(torch.from_numpy(cine[:2]), geometry.spacing_zyx,
                               recipe_spec("unet25d-mnv2").preprocess)
    z = cine.shape[1]
    stacked = stack_neighbours(slices, z, 1)
    assert stacked.shape == (2 * z, 3, *slices.shape[-2:])
    torch.testing.assert_close(stacked[:, 1], slices[:, 0])
    torch.testing.assert_close(stacked[4, 0], slices[3, 0])
    torch.testing.assert_close(stacked[4, 2], slices[5, 0])
    # the first slice of frame 2 has no slice below: it repeats itself, never frame 1's last
    torch.testing.assert_close(stacked[z, 0], slices[z, 0])
    torch.testing.assert_close(stacked[z - 1, 2], slices[z - 1, 0])
    assert stack_neighbours(slices, z, 0) is slices
    with pytest.raises(ValueError, match=f"not whole volumes of {z + 1}"):
        stack_neighbours(slices, z + 1, 1)


def test_an_inflated_2_5d_member_starts_exactly_where_its_2d_parent_was(untrained_models,
                                                                        patient090, tmp_path):
    case = patient090.load("ED")
    slices, _ = prepare_slices(torch.from_numpy(case.image), case.spacing_zyx,
                               recipe_spec("unet-mnv2").preprocess)
    parent = load_member(untrained_models / "unet-mnv2").network
    spec = recipe_spec("unet25d-mnv2")
    child = create_network(spec).eval()
    lines = []
    _warm_start(child, spec, untrained_models / "unet-mnv2", log=lines.append)
    assert "inflated from 1 to 3 channels" in lines[0]
    torch.testing.assert_close(predict_slices(child, stack_neighbours(slices, len(slices), 1)),
                               predict_slices(parent, slices), atol=1e-5, rtol=0)
    folder = save_member(child, spec, tmp_path / "unet25d-mnv2").folder
    other = recipe_spec("unet25d-mnv2")
    other.context_slices = 2
    with pytest.raises(MemberError, match="only if it is plain 2D"):
        _warm_start(create_network(other), other, folder, log=lambda line: None)


def test_a_2_5d_member_segments_a_cine_stack_as_it_segments_each_frame(
        models_with_a_2_5d_member, patient090):
    ensemble = load_ensemble(models_with_a_2_5d_member, device="cpu")
    assert [m.spec.in_channels for m in ensemble.members] == [1, 3]
    cine, geometry = patient090.load_cine()
    result = segment_cine(ensemble, cine[:3], geometry, chunk=2)
    for index in range(3):
        frame = patient090.load_cine_frame(index + 1)
        np.testing.assert_array_equal(result.labels[index], ensemble.predict(frame).labels)
    # and the neighbours change the answer: the 2.5D member is not the 2D one in disguise
    probabilities, _ = ensemble.member_probabilities(patient090.load("ED"))
    assert float((probabilities[0] - probabilities[1]).abs().max()) > 1e-3


def test_a_spec_whose_context_does_not_match_its_weights_is_refused(untrained_models, tmp_path):
    folder = tmp_path / "unet-mnv2"
    shutil.copytree(untrained_models / "unet-mnv2", folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    (folder / SPEC_FILE).write_text(json.dumps({**spec, "context_slices": 1}))
    with pytest.raises(MemberError, match="in_channels: config 1 vs spec 3"):
        load_member(folder)
    (folder / SPEC_FILE).write_text(json.dumps({**spec, "context_slices": -1}))
    with pytest.raises(MemberError, match="context_slices must be an integer 0..3, not -1"):
        load_member(folder)


def test_a_2_5d_training_run_writes_a_three_channel_member(acdc, untrained_models, tmp_path):
    config = TrainConfig(epochs=1, batch_size=4, patch_size=64, iterations_per_epoch=2,
                         max_train_patients=1, max_validation_patients=1, num_threads=1,
                         init_from=str(untrained_models / "unet-mnv2"))
    member = train_member(recipe_spec("unet25d-mnv2"), acdc, tmp_path / "run", config,
                          log=lambda line: None)
    assert member.spec.context_slices == 1
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())[
        "in_channels"] == 3
    # the member records its epoch's validation Dice, measured with the neighbour channels
    with open(tmp_path / "run" / "history.csv") as handle:
        (epoch,) = list(csv.DictReader(handle))
    assert member.spec.metrics["validation_dice"] == pytest.approx(
        {key: float(epoch[f"val_dice_{key}"]) for key in ("RV", "Myo", "LV", "mean")})
