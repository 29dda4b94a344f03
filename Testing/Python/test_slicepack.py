"""A slice pack holds the training slices as training prepares them, and never a test patient;
members trained from one are re-scored on the real validation frames before they ship."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.io.acdc import load_splits
from CardiacEnsembleLib.inference.members import MemberError
from CardiacEnsembleDev.training.recipes import PREPROCESS, recipe_spec
from CardiacEnsembleDev.training.slicepack import pack_validation_dice, read_pack, write_pack
from CardiacEnsembleDev.training.training import (TrainConfig, TrainingSource, build_slice_set,
                                         fit_member, load_split_cases)


@pytest.fixture(scope="module")
def small_pack(acdc, tmp_path_factory):
    """Two train and two validation patients (margin 32 px, as shipped runs used)."""
    return write_pack(acdc, tmp_path_factory.mktemp("pack") / "slices.npz.xz", PREPROCESS,
                      max_patients=2)


def test_a_pack_holds_train_and_validation_frames_only(acdc, small_pack, patients_read):
    pack = read_pack(small_pack)
    splits = load_splits(acdc)
    assert pack.patients("train") == sorted(splits["train"][:2])
    assert pack.patients("validation") == sorted(splits["validation"][:2])
    assert {f.phase for f in pack.frames} == {"ED", "ES"} and len(pack.frames) == 8
    assert not {f.patient_id for f in pack.frames} & set(splits["test"])


def test_packed_slices_are_the_training_slices_to_within_8_bits(acdc, small_pack):
    """Same normalisation and resampling as build_slice_set, cropped around the heart, every
    labelled pixel kept, intensities within half a quantisation step."""
    pack = read_pack(small_pack)
    case = load_split_cases(acdc, "train", 1)[0]
    reference = build_slice_set([case], recipe_spec("unet-mnv2"))
    frame = next(f for f in pack.frames if (f.patient_id, f.phase) == (case.patient_id,
                                                                      case.phase))
    h, w = reference.sizes[0].tolist()
    ref_image, ref_labels = reference.images[:, 0, :h, :w], reference.labels[:, :h, :w]
    assert frame.image.dtype == np.uint8 and frame.image.shape[0] == case.image.shape[0]
    assert frame.image.shape[1] < h and frame.image.shape[2] < w  # cropped
    assert int((frame.labels > 0).sum()) == int((ref_labels > 0).sum())  # no label lost
    # find the crop box: the packed labels sit inside the reference labels at one offset
    for y in range(h - frame.image.shape[1] + 1):
        for x in range(w - frame.image.shape[2] + 1):
            window = ref_labels[:, y:y + frame.image.shape[1], x:x + frame.image.shape[2]]
            if torch.equal(window, frame.label_tensor()):
                image = ref_image[:, y:y + frame.image.shape[1], x:x + frame.image.shape[2]]
                step = (frame.high - frame.low) / 255
                assert float((frame.slices()[:, 0] - image).abs().max()) <= step / 2 + 1e-5
                return
    pytest.fail("packed labels are not a crop of the training labels")


def test_a_pack_gives_2_5d_slice_sets(small_pack):
    data = read_pack(small_pack).slice_set(context_slices=1)
    assert data.images.shape[1] == 3 and len(data) == data.labels.shape[0]


def test_pack_validation_is_close_to_the_exact_validation(acdc, small_pack):
    """The pack's Dice (1.5 mm grid, cropped input) only picks a best epoch, but it must track
    the exact Dice: the shipped U-Net++ within a point on the same validation frames."""
    from CardiacEnsembleLib.inference.ensemble import DEFAULT_MODELS_DIR
    from CardiacEnsembleLib.inference.members import load_member
    from CardiacEnsembleDev.training.training import validation_dice

    folder = next(p for p in sorted(DEFAULT_MODELS_DIR.glob("unetpp*")) if p.is_dir())
    member = load_member(folder)
    pack = read_pack(small_pack)
    approximate = pack_validation_dice(member.network, pack.split("validation"),
                                       member.spec.context_slices, 32, torch.device("cpu"))
    exact = validation_dice(member.network, load_split_cases(acdc, "validation", 2),
                            member.spec, torch.device("cpu"))
    assert exact["mean"] > 0.8
    assert abs(approximate["mean"] - exact["mean"]) < 0.01


def test_a_pack_is_never_overwritten_and_a_wrong_file_is_named(small_pack, tmp_path):
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_pack(small_pack.parent.parent, small_pack, PREPROCESS)
    wrong = tmp_path / "not_a_pack.npz.xz"
    wrong.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not_a_pack.npz.xz: not a slice pack"):
        read_pack(wrong)


@pytest.fixture(scope="module")
def pack_run(small_pack, tmp_path_factory):
    """A member fine-tuned for two steps from the pack, warm-started from the shipped FPN, as
    the GPU driver trains them."""
    from CardiacEnsembleLib.inference.ensemble import DEFAULT_MODELS_DIR

    shipped_fpn = next(p for p in sorted(DEFAULT_MODELS_DIR.iterdir()) if p.name.startswith("fpn"))
    pack = read_pack(small_pack)
    spec = recipe_spec("fpn25d-mnv2")
    run = tmp_path_factory.mktemp("run")
    fit_member(spec, pack.slice_set(1),
               lambda net: pack_validation_dice(net, pack.split("validation"), 1, 32,
                                                torch.device("cpu")),
               TrainingSource(pack.patients("train"), pack.patients("validation"),
                              form="slice pack (test)"),
               run, TrainConfig(epochs=1, batch_size=4, patch_size=64, iterations_per_epoch=2,
                                 num_threads=1, learning_rate=1e-5,
                                init_from=str(shipped_fpn)),
               log=lambda line: None)
    return run


def test_a_pack_trained_member_ships_only_with_its_exact_validation_dice(acdc, pack_run,
                                                                         tmp_path):
    from CardiacEnsembleDev.release.ship import ship_runs

    with pytest.raises(MemberError, match="fpn25d-mnv2: trained on a slice pack.*--data"):
        ship_runs([pack_run], tmp_path / "refused", name="t", version="0")
    assert not (tmp_path / "refused").exists()
    ship_runs([pack_run], tmp_path / "models", name="t", version="0", data_root=acdc)
    spec = json.loads((tmp_path / "models" / "fpn25d-mnv2" / "member.json").read_text())
    packed = json.loads((pack_run / "best" / "member.json").read_text())["metrics"]
    assert spec["metrics"]["pack_validation_dice"] == packed["validation_dice"]
    exact = spec["metrics"]["validation_dice"]
    assert exact["mean"] > 0.8 and exact != packed["validation_dice"]
    assert spec["training"]["form"] == "slice pack (test)"
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["members"][0]["validation"] == spec["metrics"]["validation_dice"]


def test_rescoring_refuses_a_member_that_names_a_non_validation_patient(acdc, pack_run):
    from CardiacEnsembleLib.inference.members import load_member
    from CardiacEnsembleDev.release.ship import rescore_on_validation

    member = load_member(pack_run / "best")
    member.spec.training["validation_patients"] = ["patient101"]
    with pytest.raises(MemberError, match=r"\['patient101'\].*does not hold"):
        rescore_on_validation(member, load_split_cases(acdc, "validation", 2))
