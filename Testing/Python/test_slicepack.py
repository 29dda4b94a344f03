"""A slice pack holds the training slices as training prepares them, and never a test patient;
members trained from one are re-scored on the real validation frames before they ship."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.acdc import load_splits
from CardiacEnsembleLib.members import MemberError
from CardiacEnsembleLib.recipes import PREPROCESS, recipe_spec
from CardiacEnsembleLib.slicepack import pack_validation_dice, read_pack, write_pack
from CardiacEnsembleLib.training import (TrainConfig, TrainingSource, build_slice_set,
                                         fit_member, load_split_cases)

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


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
    from CardiacEnsembleLib.ensemble import DEFAULT_MODELS_DIR
    from CardiacEnsembleLib.members import load_member
    from CardiacEnsembleLib.training import validation_dice

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
    from CardiacEnsembleLib.ensemble import DEFAULT_MODELS_DIR

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
    from CardiacEnsembleLib.zoo import ship_runs

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
    from CardiacEnsembleLib.members import load_member
    from CardiacEnsembleLib.zoo import rescore_on_validation

    member = load_member(pack_run / "best")
    member.spec.training["validation_patients"] = ["patient101"]
    with pytest.raises(MemberError, match=r"\['patient101'\].*does not hold"):
        rescore_on_validation(member, load_split_cases(acdc, "validation", 2))


def test_the_gpu_driver_trains_members_side_by_side_and_brings_back_fp16(small_pack, tmp_path,
                                                                         untrained_models):
    """benchmarks/gpu_train.py on the CPU with a short budget: each member's process sizes its
    schedule to the time left and leaves <member>.tar with an fp16 best member. A job with
    @SEED trains from scratch with that seed, named RECIPE-sSEED, beside the warm-started one."""
    import tarfile

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_train.py"), "--pack", str(small_pack),
         "--out", str(out), "--work", str(tmp_path / "work"), "--device", "cpu",
         "--budget-s", "60", "--iterations", "2", "--batch-size", "4", "--patch-size", "64",
         "--threads", "1", "--job", f"fpn25d-mnv2={untrained_models / 'fpn-mnv2'}",
         "--job", "fpn25d-mnv2@3="],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ms/step" in done.stdout and "inflated from 1 to 3 channels" in done.stdout
    assert "fpn25d-mnv2-s3: " in done.stdout and "warm start none (from scratch)" in done.stdout
    specs = {}
    for name in ("fpn25d-mnv2", "fpn25d-mnv2-s3"):
        with tarfile.open(out / f"{name}.tar") as tar:
            specs[name] = json.load(tar.extractfile(f"{name}/best/member.json"))
    for name, spec in specs.items():
        assert spec["name"] == name
        assert spec["weights_dtype"] == "float16" and spec["context_slices"] == 1
        assert spec["training"]["form"].startswith("slice pack")
    assert specs["fpn25d-mnv2"]["training"]["config"]["seed"] == 4  # the driver's --seed
    assert specs["fpn25d-mnv2-s3"]["training"]["config"]["seed"] == 3
    assert specs["fpn25d-mnv2-s3"]["training"]["config"]["init_from"] == ""


def test_a_gpu_job_names_its_recipe_and_an_optional_whole_number_seed():
    import importlib.util

    loader = importlib.util.spec_from_file_location("gpu_train",
                                                    REPO / "benchmarks" / "gpu_train.py")
    gpu_train = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(gpu_train)
    parse_job = gpu_train.parse_job

    assert parse_job("unet25d-mnv2=models/unet", 4) == ("unet25d-mnv2", "unet25d-mnv2", 4,
                                                        "models/unet")
    assert parse_job("unet25d-mnv2@7=", 4) == ("unet25d-mnv2", "unet25d-mnv2-s7", 7, "")
    with pytest.raises(SystemExit, match="RECIPE=FOLDER"):
        parse_job("unet25d-mnv2", 4)
    with pytest.raises(SystemExit, match="whole number"):
        parse_job("unet25d-mnv2@x=", 4)
    with pytest.raises(SystemExit, match="repeat"):
        gpu_train.main(["--pack", "p", "--out", "o", "--job", "unet25d-mnv2=",
                        "--job", "unet25d-mnv2=a"])
