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

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.core.case import Case, CaseError
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.io.images import OutputExistsError, read_image, write_image
from CardiacEnsembleLib.inference.members import (
    MemberError,
    create_network,
    load_member,
    save_member,
    sha256_of,
    verify_member,
)
from CardiacEnsembleDev.training.recipes import recipe_spec

from cli_helpers import exactly, models_args, run_cli, starts

PATIENT = "patient090"  # ED = frame 4, ES = frame 11; frames 154x224x7
ED_FILE = "patient090_frame04.nii.gz"
ES_FILE = "patient090_frame11.nii.gz"
ED_GT = "patient090_frame04_gt.nii.gz"
UNTOUCHED = b"the user's own file: must survive byte for byte"


# ------------------------------------------------------------------------ helpers

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


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


# ------------------------------------------------------------------------ unreadable images
# Each: (build the file from patient090's folder in tmp_path, the message as a regex of its
# path). The library raises `CaseError` with the message; `segment` prints it as its one error
# line and writes nothing.

def text_file(patient: Path, tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("ED: 4\n")
    return path


def garbage_named_nii_gz(patient: Path, tmp_path: Path) -> Path:
    path = tmp_path / "frame.nii.gz"
    path.write_bytes(b"\x00\x01garbage, not gzip, not NIfTI" * 20)
    return path


def gzip_of_garbage(patient: Path, tmp_path: Path) -> Path:
    path = tmp_path / "frame.nii.gz"
    path.write_bytes(gzip.compress(b"not a NIfTI header" * 40))
    return path


def truncated_frame(patient: Path, tmp_path: Path) -> Path:
    whole = (patient / ED_FILE).read_bytes()
    path = tmp_path / ED_FILE
    path.write_bytes(whole[: len(whole) // 2])
    return path


def zero_pixdim(patient: Path, tmp_path: Path) -> Path:
    """Two real slices whose pixdim[1..3] (the voxel size) are 0 in the stored header bytes.

    Written byte-wise because nibabel repairs zero pixdims on save as well as on load."""
    small = crop_slices(patient / ED_FILE, tmp_path / "small.nii.gz")
    raw = bytearray(gzip.decompress(small.read_bytes()))
    assert struct.unpack("<i", raw[:4]) == (348,)  # a little-endian NIfTI-1 header
    raw[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1..3]; pixdim starts at byte 76
    path = tmp_path / "nospacing.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def cine_4d(patient: Path, tmp_path: Path) -> Path:
    return write_cine(patient, tmp_path)[0]


UNREADABLE = {
    "text file": (text_file, lambda path: re.escape(
        f"{path}: not a NIfTI or NRRD image (expected one of .nii, .nii.gz, .nrrd, .nhdr, "
        f".mha, .mhd)") + "$"),
    "garbage named .nii.gz": (garbage_named_nii_gz, lambda path: re.escape(
        f"{path}: cannot be read as NIfTI (") + "File .* is not a gzip file"),
    "gzip of garbage": (gzip_of_garbage, lambda path: re.escape(
        f"{path}: cannot be read as NIfTI (")),
    "truncated frame": (truncated_frame, lambda path: re.escape(
        f"{path}: cannot be read as NIfTI (")),
    "no voxel spacing": (zero_pixdim, lambda path: re.escape(
        f"{path}: voxel spacing is missing or invalid")),
    "4D where a frame is expected": (cine_4d, lambda path: re.escape(
        f"{path}: is a 4D image (3 frames) where one 3D frame is expected; pick a frame (e.g. "
        f"the ED or ES file, or --frame N)") + "$"),
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_image_is_refused_by_the_library(kind, patient, tmp_path):
    build, message = UNREADABLE[kind]
    path = build(patient, tmp_path)
    with pytest.raises(CaseError, match="^" + message(path)):
        read_image(path)


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_image_is_refused_by_segment(kind, patient, untrained_models, tmp_path,
                                                   capsys):
    build, message = UNREADABLE[kind]
    path = build(patient, tmp_path)
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", path, "-o", out, *models_args(untrained_models))
    assert code == 2
    assert re.match("error: " + message(path), err) and err.count("\n") == 1, err
    assert not out.exists()


# ------------------------------------------------------------------------ a 4D cine

def write_cine(patient: Path, tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """A 3-frame 4D NIfTI built from real slices (ED, ES, ED; slices 3-4) and its frames as
    (x, y, z) arrays."""
    frames = [np.asarray(nib.load(str(patient / name)).dataobj)[:, :, 2:4]
              for name in (ED_FILE, ES_FILE, ED_FILE)]
    path = tmp_path / "cine_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(frames, axis=-1), None,
                             nib.load(str(patient / ED_FILE)).header.copy()), str(path))
    assert nib.load(str(path)).shape == (154, 224, 2, 3)
    return path, frames


@pytest.fixture
def cine(patient, tmp_path) -> tuple[Path, list[np.ndarray]]:
    return write_cine(patient, tmp_path)


def test_4d_file_is_read_whole_when_allowed(cine):
    path, frames = cine
    array, _ = read_image(path, allow_4d=True)
    assert array.shape == (3, 2, 224, 154)
    assert np.array_equal(array[1], frames[1].transpose(2, 1, 0))


def test_segment_frame_2_of_a_4d_file_segments_that_frame_on_the_cine_geometry(
        cine, untrained_models, tmp_path, capsys):
    path, frames = cine
    out = tmp_path / "seg.nii.gz"
    code, _ = run_cli(capsys, "segment", path, "-o", out, "--frame", 2,
                      *models_args(untrained_models, "unet-mnv2"))
    assert code == 0
    written, cine_image = nib.load(str(out)), nib.load(str(path))
    assert written.shape == (154, 224, 2)
    assert np.array_equal(written.affine, cine_image.affine)
    assert written.header.get_zooms() == cine_image.header.get_zooms()[:3]
    _, geometry = read_image(path, allow_4d=True)
    expected = load_ensemble(untrained_models, members=["unet-mnv2"], device="cpu").predict(
        Case(image=frames[1].transpose(2, 1, 0), geometry=geometry)).labels
    assert np.array_equal(read_zyx(out), expected)


@pytest.mark.parametrize("input_kind, frame, shape", [
    ("4D", 99, "(3, 2, 224, 154)"), ("3D", 1, "(7, 224, 154)")])
def test_segment_frame_beyond_the_input_fails_clearly(cine, patient, untrained_models, tmp_path,
                                                      capsys, input_kind, frame, shape):
    path = cine[0] if input_kind == "4D" else patient / ED_FILE
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", path, "-o", out, "--frame", frame,
                        *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {path}: --frame {frame} needs a 4D cine with at least that many " \
                  f"frames (shape {shape})\n"
    assert not out.exists()


# ------------------------------------------------------------------------ bad patient folders
# Each: (break a writable copy of patient090's folder, the file the message names, the message
# as a regex of that file). Loading the ED frame raises `CaseError`; `segment` on the folder
# prints the message and writes nothing.

def label_4(folder: Path) -> Path:
    """One voxel of the ED ground truth labelled 4."""
    labels = np.asarray(nib.load(str(folder / ED_GT)).dataobj).copy()
    labels[77, 112, 3] = 4
    rewrite(folder / ED_GT, labels)
    return folder / ED_GT


def short_ground_truth(folder: Path) -> Path:
    """The ED ground truth without its last slice (6 slices for a 7-slice frame)."""
    rewrite(folder / ED_GT, np.asarray(nib.load(str(folder / ED_GT)).dataobj)[:, :, :6])
    return folder / ED_GT


def no_info_cfg(folder: Path) -> Path:
    (folder / "Info.cfg").unlink()
    return folder


BAD_FOLDERS = {
    "label 4 in the ground truth": (label_4, lambda gt: re.escape(
        f"{gt}: label map holds value(s) [4] outside 0..3 (0 background")),
    "ground truth of another shape": (short_ground_truth, lambda gt: re.escape(
        f"{gt}: label map shape (6, 224, 154) differs from the image shape (7, 224, 154)") +
        "$"),
    "no Info.cfg": (no_info_cfg, lambda folder: re.escape(
        f"{folder}: missing Info.cfg (needed for the ED/ES frame numbers)") + "$"),
}


@pytest.mark.parametrize("kind", BAD_FOLDERS)
def test_a_broken_patient_folder_is_refused_by_the_library(kind, patient, tmp_path):
    folder = copy_patient(patient, tmp_path / PATIENT)
    breaks, message = BAD_FOLDERS[kind]
    named = breaks(folder)
    with pytest.raises(CaseError, match="^" + message(named)):
        PatientFolder.open(folder).load("ED")


@pytest.mark.parametrize("kind", BAD_FOLDERS)
def test_a_broken_patient_folder_is_refused_by_segment(kind, patient, untrained_models, tmp_path,
                                                       capsys):
    folder = copy_patient(patient, tmp_path / PATIENT)
    breaks, message = BAD_FOLDERS[kind]
    named = breaks(folder)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "segment", folder, "-o", out, *models_args(untrained_models))
    assert code == 2
    assert re.match("error: " + message(named), err) and err.count("\n") == 1, err
    assert not out.exists()


def test_info_on_a_folder_without_info_cfg_says_no_patient_was_found(patient, tmp_path, capsys):
    folder = copy_patient(patient, tmp_path / PATIENT, skip=("Info.cfg",))
    code, err = run_cli(capsys, "info", folder)
    assert code == 2
    assert err == f"error: {folder}: no ACDC patient folders (with Info.cfg) found\n"


# ------------------------------------------------------------------------ broken members
# Each: (break the U-Net of a writable copy of the untrained models, the message as a regex of
# that member's folder). `load_member` raises `MemberError`; `segment` prints the message and
# writes nothing.

@pytest.fixture
def models_copy(untrained_models, tmp_path) -> Path:
    """A writable copy of the untrained models folder (manifest + 3 members)."""
    return Path(shutil.copytree(untrained_models, tmp_path / "models"))


def flip_last_bytes(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[-count:] = bytes(b ^ 0xFF for b in data[-count:])
    path.write_bytes(bytes(data))


def altered_weights(member: Path) -> None:
    flip_last_bytes(member / "model.safetensors")


def another_architectures_weights(member: Path) -> None:
    """The LinkNet's weights in the U-Net's folder, with member.json's sha256 made to match."""
    shutil.copyfile(member.parent / "linknet-mnv2" / "model.safetensors",
                    member / "model.safetensors")
    spec = json.loads((member / "member.json").read_text())
    spec["weights_sha256"] = sha256_of(member / "model.safetensors")
    (member / "member.json").write_text(json.dumps(spec, indent=1))
    manifest = json.loads((member.parent / "manifest.json").read_text())
    for entry in manifest["members"]:
        if entry["folder"] == member.name:  # and the manifest's hashes too
            entry["sha256"] = spec["weights_sha256"]
            entry["spec_sha256"] = sha256_of(member / "member.json")
    (member.parent / "manifest.json").write_text(json.dumps(manifest, indent=1))
    verify_member(member)  # the sha256 now matches: only loading can tell


def spec_names_another_architecture(member: Path) -> None:
    spec = json.loads((member / "member.json").read_text())
    spec["arch"] = "Linknet"
    (member / "member.json").write_text(json.dumps(spec, indent=1))


BROKEN_MEMBERS = {
    "altered weights": (altered_weights, lambda member: re.escape(
        f"{member / 'model.safetensors'}: sha256 ") + r"[0-9a-f]{12}\.\.\. does not match "
        r"member\.json \([0-9a-f]{12}\.\.\.\): the weights are not the ones this spec "
        r"describes$"),
    "another architecture's weights": (another_architectures_weights, lambda member: re.escape(
        f"{member / 'model.safetensors'}: weights do not fit the network in config.json: ")),
    "spec names another architecture": (spec_names_another_architecture, lambda member:
        re.escape(f"{member / 'config.json'}: does not match member.json (_model_class: "
                  f"config 'Unet' vs spec 'Linknet')") + "$"),
}


@pytest.mark.filterwarnings(r"ignore:\s+!+ Mismatched keys:UserWarning")
@pytest.mark.parametrize("kind", BROKEN_MEMBERS)
def test_a_broken_member_does_not_load(kind, models_copy):
    breaks, message = BROKEN_MEMBERS[kind]
    member = models_copy / "unet-mnv2"
    breaks(member)
    with pytest.raises(MemberError, match="^" + message(member)):
        load_member(member)


@pytest.mark.filterwarnings(r"ignore:\s+!+ Mismatched keys:UserWarning")
@pytest.mark.parametrize("kind", BROKEN_MEMBERS)
def test_a_broken_member_is_refused_by_segment(kind, models_copy, patient, tmp_path, capsys):
    breaks, message = BROKEN_MEMBERS[kind]
    member = models_copy / "unet-mnv2"
    breaks(member)
    out = tmp_path / "seg.nii.gz"
    code, err = run_cli(capsys, "segment", patient / ED_FILE, "-o", out,
                        *models_args(models_copy))
    assert code == 2
    assert re.match("error: " + message(member), err) and err.count("\n") == 1, err
    assert not out.exists()


def test_models_command_refuses_a_member_with_altered_weights(models_copy, capsys):
    weights = models_copy / "fpn-mnv2" / "model.safetensors"
    flip_last_bytes(weights)
    code, err = run_cli(capsys, "models", "--models", models_copy)
    assert code == 2
    assert err.startswith(f"error: {weights}: sha256 ")


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


# Each: (patient090's folder, tmp_path) -> (the `segment` arguments, the output that already
# exists). It stops with the one error that names that file, before anything is written.
EXISTING_OUTPUTS = {
    "the output file": lambda patient, tmp: (
        [patient / ED_FILE, "-o", tmp / "seg.nii.gz"], tmp / "seg.nii.gz"),
    "one phase of a folder's outputs": lambda patient, tmp: (
        [patient, "-o", tmp / "out"], tmp / "out" / f"{PATIENT}_ES_seg.nii.gz"),
    "an extra map": lambda patient, tmp: (
        [patient / ED_FILE, "-o", tmp / "seg.nii.gz", "--uncertainty"],
        tmp / "seg_uncertainty.nii.gz"),
}


@pytest.mark.parametrize("kind", EXISTING_OUTPUTS)
def test_segment_refuses_an_existing_output(kind, untrained_models, patient, tmp_path, capsys):
    argv, existing = EXISTING_OUTPUTS[kind](patient, tmp_path)
    existing.parent.mkdir(exist_ok=True)
    existing.write_bytes(UNTOUCHED)
    before = sorted(tmp_path.rglob("*"))
    code, err = run_cli(capsys, "segment", *argv, *models_args(untrained_models))
    assert code == 2
    assert err == f"error: {existing}: already exists; refusing to overwrite it (pass " \
                  f"--overwrite to replace it)\n"
    assert existing.read_bytes() == UNTOUCHED
    assert sorted(tmp_path.rglob("*")) == before  # nothing else written either


def test_segment_overwrite_replaces_an_existing_output_file(existing, untrained_models, patient,
                                                            tmp_path, capsys):
    small = crop_slices(patient / ED_FILE, tmp_path / "small.nii.gz")
    code, _ = run_cli(capsys, "segment", small, "-o", existing, "--overwrite",
                      *models_args(untrained_models, "unet-mnv2"))
    assert code == 0
    written = nib.load(str(existing))
    assert written.shape == (154, 224, 2)
    assert written.get_data_dtype() == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz", "seg_qc.json",
                                                          "small.nii.gz"]


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
        "patient,group,phase,method,structure,dice,hd95_mm,msd_mm,flag,seconds," \
        "qc_score,qc_case_score,qc_slices_to_review"
    assert sorted(p.name for p in out.iterdir()) == ["clinical.csv", "scores.csv", "summary.md"]
