"""Training never reads a test patient, and a resumed run continues the same curve."""
from __future__ import annotations

import csv

import pytest

from CardiacEnsembleLib.io.acdc import load_splits
from CardiacEnsembleLib.inference.runner import CancelToken, Cancelled
from CardiacEnsembleDev.training.recipes import recipe_spec
from CardiacEnsembleDev.training.training import (SplitLeakError, TrainConfig, check_no_test_patients,
                                         load_split_cases, train_member)

TINY = dict(epochs=2, batch_size=4, patch_size=64, iterations_per_epoch=2,
            max_train_patients=1, max_validation_patients=1, num_threads=1)


def history(run_dir):
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_the_test_split_cannot_be_loaded_for_training(acdc):
    with pytest.raises(SplitLeakError, match="not 'test'"):
        load_split_cases(acdc, "test")
    with pytest.raises(SplitLeakError, match="patient101"):
        check_no_test_patients(["patient002", "patient101"], load_splits(acdc), "search")


def test_a_training_run_reads_only_train_and_validation_patients(acdc, tmp_path,
                                                                 patients_read):
    read = patients_read
    train_member(recipe_spec("fpn-mnv2"), acdc, tmp_path / "run", TrainConfig(**TINY),
                 log=lambda line: None)
    splits = load_splits(acdc)
    assert set(read) == {splits["train"][0], splits["validation"][0]}
    assert not set(read) & set(splits["test"])


def test_resume_after_an_interruption_continues_the_same_curve(acdc, tmp_path):
    config = TrainConfig(**TINY)
    straight = tmp_path / "straight"
    train_member(recipe_spec("fpn-mnv2"), acdc, straight, config, log=lambda line: None)

    interrupted, token = tmp_path / "interrupted", CancelToken()

    def stop_in_second_epoch(done, total, message):
        if done > config.iterations_per_epoch:
            token.cancel()

    with pytest.raises(Cancelled):
        train_member(recipe_spec("fpn-mnv2"), acdc, interrupted, config,
                     progress=stop_in_second_epoch, cancel=token, log=lambda line: None)
    assert len(history(interrupted)) == 1 and (interrupted / "last.pt").is_file()
    lines = []
    member = train_member(recipe_spec("fpn-mnv2"), acdc, interrupted, config, log=lines.append)
    assert any("resumed" in line and "after epoch 1" in line for line in lines)
    resumed, reference = history(interrupted), history(straight)
    assert [r["epoch"] for r in resumed] == ["1", "2"]
    for got, expected in zip(resumed, reference):
        assert float(got["train_loss"]) == pytest.approx(float(expected["train_loss"]), rel=1e-5)
        assert float(got["val_dice_mean"]) == pytest.approx(float(expected["val_dice_mean"]),
                                                            abs=1e-6)
    assert member.spec.training["train_patients"] == [load_splits(acdc)["train"][0]]


def test_warm_start_copies_a_members_weights_and_refuses_another_network(untrained_models):
    import torch

    from CardiacEnsembleLib.inference.members import MemberError, create_network, load_member
    from CardiacEnsembleDev.training.training import _warm_start

    spec = recipe_spec("fpn-mnv2")
    network = create_network(spec)
    _warm_start(network, spec, untrained_models / "fpn-mnv2", log=lambda line: None)
    source = load_member(untrained_models / "fpn-mnv2").network.state_dict()
    for name, value in network.state_dict().items():
        assert torch.equal(value, source[name]), name
    with pytest.raises(MemberError, match="cannot warm-start unet-mnv2"):
        _warm_start(create_network(recipe_spec("unet-mnv2")), recipe_spec("unet-mnv2"),
                    untrained_models / "fpn-mnv2", log=lambda line: None)


def test_encoder_warm_start_copies_only_the_encoder_across_architectures(untrained_models):
    import torch

    from CardiacEnsembleLib.inference.members import MemberError, create_network, load_member
    from CardiacEnsembleDev.training.training import _warm_start

    spec = recipe_spec("unetpp-mnv2")
    torch.manual_seed(7)
    network = create_network(spec)
    decoder_before = {k: v.clone() for k, v in network.decoder.state_dict().items()}
    _warm_start(network, spec, untrained_models / "fpn-mnv2", log=lambda line: None,
                encoder_only=True)
    source = load_member(untrained_models / "fpn-mnv2").network.encoder.state_dict()
    for name, value in network.encoder.state_dict().items():
        assert torch.equal(value, source[name]), name
    for name, value in network.decoder.state_dict().items():
        assert torch.equal(value, decoder_before[name]), name
    other = recipe_spec("unetpp-mnv2")
    other.encoder = "resnet18"
    with pytest.raises(MemberError, match="it is mobilenet_v2, this member needs resnet18"):
        _warm_start(create_network(other), other, untrained_models / "fpn-mnv2",
                    log=lambda line: None, encoder_only=True)


def test_train_names_a_second_draw_of_a_recipe_as_asked(acdc, tmp_path):
    """`train --name`: two members of one recipe from different seeds can sit in one ensemble
    only under two names; without it the member is named after its recipe."""
    from CardiacEnsembleLib.cli import main
    from CardiacEnsembleLib.inference.members import load_member

    main(["-q", "train", "--data", str(acdc), "--recipe", "fpn-mnv2", "--name", "fpn-mnv2-s7",
          "--seed", "7", "--epochs", "1", "--iterations", "1", "--batch-size", "2",
          "--patch-size", "64", "--threads", "1", "--max-train-patients", "1",
          "--max-validation-patients", "1", "--out", str(tmp_path / "run")])
    member = load_member(tmp_path / "run" / "best")
    assert member.spec.name == "fpn-mnv2-s7" and member.spec.arch == "FPN"
    assert member.spec.training["config"]["seed"] == 7
    assert recipe_spec("fpn-mnv2").name == "fpn-mnv2"
    with pytest.raises(ValueError, match="letters, digits"):
        recipe_spec("fpn-mnv2", member_name="../fpn s7")
