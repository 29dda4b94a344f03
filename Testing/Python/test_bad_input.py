"""Bad input: every mistake gives one clear error that names the file and the problem, and
nothing the user already has is overwritten.

Through the CLI an error is exit status 2 with an `error: <file>: <problem>` line on stderr;
through the library it is the specific exception (`CaseError`, `MemberError`,
`OutputExistsError`). Broken inputs are built in `tmp_path` from real ACDC files (patient090,
the smallest frames: 154x224x7). Where a run gets as far as the networks, it uses two slices
and one member, so the module stays fast.

Note: `-q` is an option of the top-level parser, so it goes before the sub-command.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from CardiacEnsembleLib.acdc import PatientFolder
from CardiacEnsembleLib.case import Case, CaseError
from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.ensemble import load_ensemble
from CardiacEnsembleLib.io import OutputExistsError, read_image, write_image
from CardiacEnsembleLib.members import (
    MemberError,
    create_network,
    load_member,
    save_member,
    sha256_of,
    verify_member,
)
from CardiacEnsembleLib.recipes import recipe_spec

PATIENT = "patient090"  # ED = frame 4, ES = frame 11; frames 154x224x7
ED_FILE = "patient090_frame04.nii.gz"
ES_FILE = "patient090_frame11.nii.gz"
ED_GT = "patient090_frame04_gt.nii.gz"
UNTOUCHED = b"the user's own file: must survive byte for byte"


# ------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while this module runs (a busy 2-core machine runs 2 threads 4-6x
    slower); restored afterwards. Results here do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def starts(text: str) -> str:
    """A `pytest.raises(match=...)` pattern: the message begins with `text`, literally."""
    return "^" + re.escape(text)


def exactly(text: str) -> str:
    """A `pytest.raises(match=...)` pattern: the message is `text`, literally."""
    return "^" + re.escape(text) + "$"


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `cardiac-ensemble -q ARGV`."""
    code = main(["-q", *[str(a) for a in argv]])
    return code, capsys.readouterr().err


def models_args(models: Path, *members: str) -> list[str]:
    chosen = ["--members", *members] if members else []
    return ["--models", str(models), "--device", "cpu", *chosen]


def copy_patient(source: Path, destination: Path, skip: tuple[str, ...] = ()) -> Path:
    """A writable copy of a patient folder (the shared data is read-only), without its 4D cine
    and without the files named in `skip`."""
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith("_4d.nii.gz") and path.name not in skip:
            shutil.copyfile(path, destination / path.name)
    return destination


def rewrite(path: Path, data: np.ndarray) -> None:
    """Replace a NIfTI's voxels (x, y, z order), keeping its header."""
    header = nib.load(str(path)).header.copy()
    nib.save(nib.Nifti1Image(data, None, header), str(path))


def crop_slices(source: Path, destination: Path, keep: slice = slice(2, 4)) -> Path:
    """Two real slices with the real header: the cheapest input that still runs the networks."""
    image = nib.load(str(source))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, keep], None, image.header),
             str(destination))
    return destination


def read_zyx(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


@pytest.fixture
def patient(patient_dir) -> Path:
    return patient_dir(PATIENT)


@pytest.fixture
def existing(tmp_path) -> Path:
    """An output path that already holds the user's file."""
    path = tmp_path / "seg.nii.gz"
    path.write_bytes(UNTOUCHED)
    return path


# ------------------------------------------------------------------------ not an image

def test_text_file_is_not_an_image_for_the_library(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("ED: 4\n")
    with pytest.raises(CaseError, match=starts(f"{path}: not a NIfTI or NRRD image (expected "
                                               f"one of .nii, .nii.gz, ")):
        read_image(path)


def test_text_file_is_refused_by_segment(untrained_models, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("ED: 4\n")
    code, err = run_cli(capsys, "segment", path, "-o", tmp_path / "seg.nii.gz",
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {path}: not a NIfTI or NRRD image (expected one of .nii, .nii.gz, " \
                  f".nrrd, .nhdr, .mha, .mhd)\n"
    assert not (tmp_path / "seg.nii.gz").exists()


def test_garbage_named_nii_gz_cannot_be_read_as_nifti(tmp_path):
    path = tmp_path / "frame.nii.gz"
    path.write_bytes(b"\x00\x01garbage, not gzip, not NIfTI" * 20)
    with pytest.raises(CaseError, match=starts(f"{path}: cannot be read as NIfTI (") +
                       "File .* is not a gzip file"):
        read_image(path)


def test_garbage_named_nii_gz_is_refused_by_segment(untrained_models, tmp_path, capsys):
    path = tmp_path / "frame.nii.gz"
    path.write_bytes(b"\x00\x01garbage, not gzip, not NIfTI" * 20)
    code, err = run_cli(capsys, "segment", path, "-o", tmp_path / "seg.nii.gz",
                        *models_args(untrained_models))
    assert code == 2
    assert err.startswith(f"error: {path}: cannot be read as NIfTI (")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_gzip_of_garbage_named_nii_gz_cannot_be_read_as_nifti(tmp_path):
    path = tmp_path / "frame.nii.gz"
    path.write_bytes(gzip.compress(b"not a NIfTI header" * 40))
    with pytest.raises(CaseError, match=starts(f"{path}: cannot be read as NIfTI (")):
        read_image(path)


def test_truncated_real_frame_cannot_be_read_as_nifti(patient, tmp_path):
    whole = (patient / ED_FILE).read_bytes()
    path = tmp_path / ED_FILE
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CaseError, match=starts(f"{path}: cannot be read as NIfTI (")):
        read_image(path)


# ------------------------------------------------------------------------ 4D where 3D is expected

@pytest.fixture
def cine(patient, tmp_path) -> tuple[Path, list[np.ndarray]]:
    """A 3-frame 4D NIfTI built from real slices (ED, ES, ED; slices 3-4) and its frames as
    (x, y, z) arrays."""
    frames = [np.asarray(nib.load(str(patient / name)).dataobj)[:, :, 2:4]
              for name in (ED_FILE, ES_FILE, ED_FILE)]
    path = tmp_path / "cine_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(frames, axis=-1), None,
                             nib.load(str(patient / ED_FILE)).header.copy()), str(path))
    assert nib.load(str(path)).shape == (154, 224, 2, 3)
    return path, frames


def test_4d_file_is_refused_where_a_frame_is_expected(cine):
    path, _ = cine
    with pytest.raises(CaseError, match=starts(f"{path}: is a 4D image (3 frames) where one 3D "
                                               f"frame is expected; pick a frame")):
        read_image(path)


def test_4d_file_is_read_whole_when_allowed(cine):
    path, frames = cine
    array, _ = read_image(path, allow_4d=True)
    assert array.shape == (3, 2, 224, 154)
    assert np.array_equal(array[1], frames[1].transpose(2, 1, 0))


def test_segment_refuses_a_4d_file_without_frame(cine, untrained_models, tmp_path, capsys):
    path, _ = cine
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", path, "-o", out, *models_args(untrained_models))
    assert code == 2
    assert err.startswith(f"error: {path}: is a 4D image (3 frames) where one 3D frame is "
                          f"expected; pick a frame (e.g. the ED or ES file, or --frame N)")
    assert not out.exists()


def test_segment_frame_2_of_a_4d_file_segments_that_frame(cine, untrained_models, tmp_path,
                                                          capsys):
    path, frames = cine
    out = tmp_path / "seg.nii.gz"
    code, _ = run_cli(capsys, "segment", path, "-o", out, "--frame", 2,
                      *models_args(untrained_models, "unet-mnv2"))
    assert code == 0
    assert nib.load(str(out)).shape == (154, 224, 2)
    _, geometry = read_image(path, allow_4d=True)
    expected = load_ensemble(untrained_models, members=["unet-mnv2"], device="cpu").predict(
        Case(image=frames[1].transpose(2, 1, 0), geometry=geometry)).labels
    assert np.array_equal(read_zyx(out), expected)


def test_segment_frame_2_of_a_4d_file_keeps_the_cine_header_geometry(cine, untrained_models,
                                                                     tmp_path, capsys):
    path, _ = cine
    out = tmp_path / "seg.nii.gz"
    code, _ = run_cli(capsys, "segment", path, "-o", out, "--frame", 2,
                      *models_args(untrained_models, "unet-mnv2"))
    assert code == 0
    written, cine_image = nib.load(str(out)), nib.load(str(path))
    assert np.array_equal(written.affine, cine_image.affine)
    assert written.header.get_zooms() == cine_image.header.get_zooms()[:3]


def test_segment_frame_99_of_a_3_frame_file_fails_clearly(cine, untrained_models, tmp_path,
                                                          capsys):
    path, _ = cine
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", path, "-o", out, "--frame", 99,
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {path}: --frame 99 needs a 4D cine with at least that many frames " \
                  f"(shape (3, 2, 224, 154))\n"
    assert not out.exists()


def test_segment_frame_on_a_3d_file_fails_clearly(patient, untrained_models, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out, "--frame", 1,
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {patient / ED_FILE}: --frame 1 needs a 4D cine with at least that " \
                  f"many frames (shape (7, 224, 154))\n"
    assert not out.exists()


# ------------------------------------------------------------------------ bad ground truth

@pytest.fixture
def label_4_patient(patient, tmp_path) -> Path:
    """patient090 whose ED ground truth has one voxel labelled 4."""
    folder = copy_patient(patient, tmp_path / PATIENT)
    labels = np.asarray(nib.load(str(folder / ED_GT)).dataobj).copy()
    labels[77, 112, 3] = 4
    rewrite(folder / ED_GT, labels)
    return folder


def test_gt_with_label_4_is_refused_by_the_library(label_4_patient):
    gt = label_4_patient / ED_GT
    with pytest.raises(CaseError, match=starts(f"{gt}: label map holds value(s) [4] outside "
                                               f"0..3 (0 background")):
        PatientFolder.open(label_4_patient).load("ED")


def test_gt_with_label_4_is_refused_by_segment(label_4_patient, untrained_models, tmp_path,
                                               capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "segment", label_4_patient, "-o", out,
                        *models_args(untrained_models))
    assert code == 2
    assert err.startswith(f"error: {label_4_patient / ED_GT}: label map holds value(s) [4] "
                          f"outside 0..3")
    assert not out.exists()


@pytest.fixture
def short_gt_patient(patient, tmp_path) -> Path:
    """patient090 whose ED ground truth lost its last slice (6 slices for a 7-slice frame)."""
    folder = copy_patient(patient, tmp_path / PATIENT)
    rewrite(folder / ED_GT, np.asarray(nib.load(str(folder / ED_GT)).dataobj)[:, :, :6])
    return folder


def test_gt_of_another_shape_is_refused_by_the_library(short_gt_patient):
    gt = short_gt_patient / ED_GT
    with pytest.raises(CaseError, match=exactly(f"{gt}: label map shape (6, 224, 154) differs "
                                                f"from the image shape (7, 224, 154)")):
        PatientFolder.open(short_gt_patient).load("ED")


def test_gt_of_another_shape_is_refused_by_segment(short_gt_patient, untrained_models, tmp_path,
                                                   capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "segment", short_gt_patient, "-o", out,
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {short_gt_patient / ED_GT}: label map shape (6, 224, 154) differs " \
                  f"from the image shape (7, 224, 154)\n"
    assert not out.exists()


# ------------------------------------------------------------------------ missing Info.cfg

def test_patient_folder_without_info_cfg_is_refused_by_the_library(patient, tmp_path):
    folder = copy_patient(patient, tmp_path / PATIENT, skip=("Info.cfg",))
    with pytest.raises(CaseError, match=exactly(f"{folder}: missing Info.cfg (needed for the "
                                                f"ED/ES frame numbers)")):
        PatientFolder.open(folder)


def test_patient_folder_without_info_cfg_is_refused_by_segment(patient, untrained_models,
                                                               tmp_path, capsys):
    folder = copy_patient(patient, tmp_path / PATIENT, skip=("Info.cfg",))
    code, err = run_cli(capsys, "segment", folder, "-o", tmp_path / "out",
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {folder}: missing Info.cfg (needed for the ED/ES frame numbers)\n"
    assert not (tmp_path / "out").exists()


def test_info_on_a_folder_without_info_cfg_says_no_patient_was_found(patient, tmp_path, capsys):
    folder = copy_patient(patient, tmp_path / PATIENT, skip=("Info.cfg",))
    code, err = run_cli(capsys, "info", folder)
    assert code == 2
    assert err == f"error: {folder}: no ACDC patient folders (with Info.cfg) found\n"


# ------------------------------------------------------------------------ missing spacing

def zero_pixdim_copy(source: Path, destination: Path) -> Path:
    """`source` with pixdim[1..3] (the voxel size) set to 0 in the stored header bytes.

    Written byte-wise because nibabel repairs zero pixdims on save as well as on load.
    """
    raw = bytearray(gzip.decompress(source.read_bytes()))
    assert struct.unpack("<i", raw[:4]) == (348,)  # a little-endian NIfTI-1 header
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1..3]; pixdim starts at byte 76
    destination.write_bytes(gzip.compress(bytes(raw)))
    return destination



def test_nifti_without_spacing_is_refused_by_the_library(patient, tmp_path):
    path = zero_pixdim_copy(patient / ED_FILE, tmp_path / ED_FILE)
    with pytest.raises(CaseError, match=starts(f"{path}: voxel spacing is missing or invalid")):
        read_image(path)


def test_nifti_without_spacing_is_refused_by_segment(patient, untrained_models, tmp_path,
                                                     capsys):
    small = crop_slices(patient / ED_FILE, tmp_path / "small.nii.gz")
    path = zero_pixdim_copy(small, tmp_path / "nospacing.nii.gz")
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", path, "-o", out,
                        *models_args(untrained_models, "unet-mnv2"))
    assert code == 2
    assert err.startswith(f"error: {path}: voxel spacing is missing or invalid")
    assert not out.exists()


# ------------------------------------------------------------------------ members

@pytest.fixture
def models_copy(untrained_models, tmp_path) -> Path:
    """A writable copy of the untrained models folder (manifest + 3 members)."""
    return Path(shutil.copytree(untrained_models, tmp_path / "models"))


def flip_last_bytes(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[-count:] = bytes(b ^ 0xFF for b in data[-count:])
    path.write_bytes(bytes(data))


def swap_weights(member: Path, donor: Path) -> None:
    """Put another member's weights in `member` and make member.json's sha256 match them."""
    shutil.copyfile(donor / "model.safetensors", member / "model.safetensors")
    spec = json.loads((member / "member.json").read_text())
    spec["weights_sha256"] = sha256_of(member / "model.safetensors")
    (member / "member.json").write_text(json.dumps(spec, indent=1))


def test_member_with_altered_weights_fails_the_sha256_check(models_copy):
    member = models_copy / "unet-mnv2"
    flip_last_bytes(member / "model.safetensors")
    with pytest.raises(MemberError, match=starts(f"{member / 'model.safetensors'}: sha256 ") +
                       r"[0-9a-f]{12}\.\.\. does not match member\.json \([0-9a-f]{12}\.\.\.\): "
                       r"the weights are not the ones this spec describes$"):
        load_member(member)


def test_segment_refuses_a_member_with_altered_weights(models_copy, patient, tmp_path, capsys):
    weights = models_copy / "unet-mnv2" / "model.safetensors"
    flip_last_bytes(weights)
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out,
                        *models_args(models_copy))
    assert code == 2
    assert err.startswith(f"error: {weights}: sha256 ")
    assert "does not match member.json" in err
    assert not out.exists()


def test_models_command_refuses_a_member_with_altered_weights(models_copy, capsys):
    weights = models_copy / "fpn-mnv2" / "model.safetensors"
    flip_last_bytes(weights)
    code, err = run_cli(capsys, "models", "--models", models_copy)
    assert code == 2
    assert err.startswith(f"error: {weights}: sha256 ")


@pytest.mark.filterwarnings(r"ignore:\s+!+ Mismatched keys:UserWarning")
def test_member_with_another_architectures_weights_does_not_load(models_copy):
    member = models_copy / "unet-mnv2"
    swap_weights(member, models_copy / "linknet-mnv2")
    verify_member(member)  # the sha256 now matches: only loading can tell
    with pytest.raises(MemberError, match=starts(f"{member / 'model.safetensors'}: weights do "
                                                 f"not fit the network in config.json: ")):
        load_member(member)


@pytest.mark.filterwarnings(r"ignore:\s+!+ Mismatched keys:UserWarning")
def test_segment_refuses_a_member_with_another_architectures_weights(models_copy, patient,
                                                                     tmp_path, capsys):
    member = models_copy / "unet-mnv2"
    swap_weights(member, models_copy / "fpn-mnv2")
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out,
                        *models_args(models_copy))
    assert code == 2
    assert err.startswith(f"error: {member / 'model.safetensors'}: weights do not fit the "
                          f"network in config.json")
    assert not out.exists()


def test_member_replaced_behind_the_manifest_is_refused_by_load_ensemble(models_copy):
    """A consistent member folder (fitting weights, matching member.json) that is not the one
    manifest.json names: another training run of the same recipe."""
    torch.manual_seed(1234)
    spec = recipe_spec("unet-mnv2")
    save_member(create_network(spec), spec, models_copy / "unet-mnv2", overwrite=True)
    load_member(models_copy / "unet-mnv2")  # fine on its own
    with pytest.raises(MemberError, match=exactly(f"{models_copy / 'manifest.json'}: sha256 of "
                                                  f"member 'unet-mnv2' differs from its folder's "
                                                  f"spec")):
        load_ensemble(models_copy, device="cpu")


def test_member_whose_spec_names_another_architecture_fails_the_config_check(models_copy):
    member = models_copy / "unet-mnv2"
    spec = json.loads((member / "member.json").read_text())
    spec["arch"] = "Linknet"
    (member / "member.json").write_text(json.dumps(spec, indent=1))
    with pytest.raises(MemberError, match=exactly(f"{member / 'config.json'}: does not match "
                                                  f"member.json (_model_class: config 'Unet' vs "
                                                  f"spec 'Linknet')")):
        load_member(member)


def test_segment_refuses_a_member_whose_spec_names_another_architecture(models_copy, patient,
                                                                        tmp_path, capsys):
    member = models_copy / "unet-mnv2"
    spec = json.loads((member / "member.json").read_text())
    spec["arch"] = "Linknet"
    (member / "member.json").write_text(json.dumps(spec, indent=1))
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out,
                        *models_args(models_copy))
    assert code == 2
    assert err == f"error: {member / 'config.json'}: does not match member.json " \
                  f"(_model_class: config 'Unet' vs spec 'Linknet')\n"
    assert not out.exists()


def test_segment_refuses_an_unknown_member_name(untrained_models, patient, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out,
                        *models_args(untrained_models, "unet-mnv3"))
    assert code == 2
    assert err == f"error: {untrained_models / 'manifest.json'}: no member(s) named " \
                  f"['unet-mnv3']; available: ['fpn-mnv2', 'linknet-mnv2', 'unet-mnv2']\n"
    assert not out.exists()


# ------------------------------------------------------------------------ bad options

def test_segment_refuses_an_unknown_fusion_rule(untrained_models, patient, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(SystemExit) as stopped:  # argparse refuses it before anything loads
        run_cli(capsys, "segment", patient / ED_FILE, "-o", out, "--fusion", "median",
                *models_args(untrained_models))
    assert stopped.value.code == 2
    assert "invalid choice: 'median'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_segment_refuses_cuda_where_there_is_none(untrained_models, patient, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out, "--models",
                        untrained_models, "--device", "cuda")
    assert code == 2
    assert "requested but torch sees no CUDA GPU" in err
    assert not out.exists()


# ------------------------------------------------------------------------ existing outputs

def test_write_image_refuses_an_existing_file(existing, patient):
    image, geometry = read_image(patient / ED_FILE)
    with pytest.raises(OutputExistsError, match=starts(f"{existing}: already exists; refusing "
                                                       f"to overwrite it")):
        write_image(existing, np.zeros(image.shape, np.uint8), geometry)
    assert existing.read_bytes() == UNTOUCHED


def test_segment_refuses_an_existing_output_file(existing, untrained_models, patient, capsys):
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", existing,
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {existing}: already exists; refusing to overwrite it (pass " \
                  f"--overwrite to replace it)\n"
    assert existing.read_bytes() == UNTOUCHED


def test_segment_overwrite_replaces_an_existing_output_file(existing, untrained_models, patient,
                                                            tmp_path, capsys):
    small = crop_slices(patient / ED_FILE, tmp_path / "small.nii.gz")
    code, _ = run_cli(capsys, "segment", small, "-o", existing, "--overwrite",
                      *models_args(untrained_models, "unet-mnv2"))
    assert code == 0
    written = nib.load(str(existing))
    assert written.shape == (154, 224, 2)
    assert written.get_data_dtype() == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz", "small.nii.gz"]


def test_segment_folder_refuses_when_one_phase_output_exists(untrained_models, patient, tmp_path,
                                                             capsys):
    out = tmp_path / "out"
    out.mkdir()
    es_output = out / f"{PATIENT}_ES_seg.nii.gz"
    es_output.write_bytes(UNTOUCHED)
    code, err = run_cli(capsys, "segment", patient, "-o", out, *models_args(untrained_models))
    assert code == 2
    assert err.startswith(f"error: {es_output}: already exists; refusing to overwrite it")
    assert es_output.read_bytes() == UNTOUCHED
    assert [p.name for p in out.iterdir()] == [es_output.name]  # no ED written either


def test_segment_refuses_when_an_extra_output_exists(untrained_models, patient, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    uncertainty = tmp_path / "seg_uncertainty.nii.gz"
    uncertainty.write_bytes(UNTOUCHED)
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out, "--uncertainty",
                        *models_args(untrained_models))
    assert code == 2
    assert err.startswith(f"error: {uncertainty}: already exists; refusing to overwrite it")
    assert uncertainty.read_bytes() == UNTOUCHED
    assert not out.exists()


@pytest.fixture
def small_patient(patient, tmp_path) -> Path:
    """patient090 with ED and ES frames and ground truth cut to slices 3-4 (cheap to evaluate)."""
    folder = tmp_path / "data" / PATIENT
    folder.mkdir(parents=True)
    shutil.copyfile(patient / "Info.cfg", folder / "Info.cfg")
    for name in (ED_FILE, ES_FILE):
        crop_slices(patient / name, folder / name)
        gt = name.replace(".nii.gz", "_gt.nii.gz")
        crop_slices(patient / gt, folder / gt)
    return folder


def test_evaluate_refuses_an_existing_report(untrained_models, acdc, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.md").write_bytes(UNTOUCHED)
    code, err = run_cli(capsys, "evaluate", "--data", acdc, "--patients", PATIENT, "--out", out,
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {out / 'summary.md'}: already exists; refusing to overwrite it " \
                  f"(pass --overwrite to replace it)\n"
    assert (out / "summary.md").read_bytes() == UNTOUCHED
    assert [p.name for p in out.iterdir()] == ["summary.md"]


def test_evaluate_overwrite_replaces_the_existing_report(untrained_models, small_patient,
                                                         tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("scores.csv", "summary.md"):
        (out / name).write_bytes(UNTOUCHED)
    code, _ = run_cli(capsys, "evaluate", "--data", small_patient, "--out", out, "--overwrite",
                      "--rules", "mean", *models_args(untrained_models, "unet-mnv2"))
    assert code == 0
    assert (out / "summary.md").read_text().startswith(
        f"# Evaluation on 1 patient(s), ED and ES\n\nPatients: {PATIENT}\n")
    assert (out / "scores.csv").read_text().splitlines()[0] == \
        "patient,group,phase,method,structure,dice,hd95_mm,msd_mm,flag,seconds"
    assert sorted(p.name for p in out.iterdir()) == ["clinical.csv", "scores.csv", "summary.md"]
