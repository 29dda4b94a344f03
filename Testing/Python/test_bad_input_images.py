"""Bad input images and Info.cfg files: never a silent wrong answer, and validation before any
computing.

Every broken input is a real ACDC file (patient090: ED frame 4, 154x224x7 voxels of 1.79 x
1.79 x 10 mm) changed in `tmp_path`. Where accuracy is the point (non-finite voxels), the
shipped models segment it (one member, so the module stays fast) and Dice against the expert
labels is compared with the clean frame's; where the point is a refusal, it must come before
any network runs, with the one-line message `<file>: <what is wrong> (<value>); expected <what>`.
"""
from __future__ import annotations

import gzip
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.core.case import Case, CaseError
from CardiacEnsembleLib.core.limits import MEMORY_LIMIT_VARIABLE
from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR
from CardiacEnsembleLib.evaluation.metrics import score_labels
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.io.acdc import PatientFolder, parse_info_cfg
from CardiacEnsembleLib.io.images import read_image

from cli_helpers import exactly, run_cli

PATIENT = "patient090"
ED_FILE = "patient090_frame04.nii.gz"
ED_GT = "patient090_frame04_gt.nii.gz"
MEMBER = "unetpp25d-mnv2"  # one shipped member: real accuracy at a fifth of the cost

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture
def patient(patient_dir) -> Path:
    return patient_dir(PATIENT)


@pytest.fixture(scope="module")
def shipped():
    """The shipped models, one member, on the CPU."""
    return load_ensemble(DEFAULT_MODELS_DIR, members=[MEMBER], device="cpu")


def voxels_xyz(patient: Path) -> np.ndarray:
    return np.asarray(nib.load(str(patient / ED_FILE)).dataobj)


def write_frame(patient: Path, path: Path, data: np.ndarray | None = None,
                zooms: tuple | None = None) -> Path:
    """patient090's ED frame with its own header, other voxels (x, y, z) or other pixdims."""
    image = nib.load(str(patient / ED_FILE))
    header = image.header.copy()
    data = np.asarray(image.dataobj) if data is None else data
    header.set_data_dtype(data.dtype)
    if zooms is not None:
        header.set_zooms(zooms)
    nib.save(nib.Nifti1Image(data, None, header), str(path))
    return path


def dice_of(ensemble, path: Path, patient: Path):
    """(Prediction, {structure: Dice}) of `ensemble` on the image at `path` vs the ED labels."""
    image, geometry = read_image(path)
    truth, _ = read_image(patient / ED_GT)
    prediction = ensemble.predict(Case(image=image, geometry=geometry, source=str(path)))
    scores = score_labels(prediction.labels, truth.astype(np.uint8), geometry.spacing_zyx)
    return prediction, {name: score.dice for name, score in scores.items()}


@pytest.fixture(scope="module")
def clean_dice(shipped, patient_dir):
    patient = patient_dir(PATIENT)
    return dice_of(shipped, patient / ED_FILE, patient)[1]


# ------------------------------------------------------------------------ non-finite voxels

def one_nan(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    data[77, 112, 3] = np.nan  # one voxel, in the heart's slice range
    return data


def two_percent_inf(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    chosen = np.random.default_rng(0).random(data.shape) < 0.02
    data[chosen] = np.inf
    return data


NON_FINITE = {"one NaN voxel": (one_nan, "1 voxel(s) were NaN/Inf (1 NaN, 0 infinite)"),
              "2% +Inf voxels": (two_percent_inf, "were NaN/Inf (0 NaN, ")}


@pytest.mark.parametrize("kind", NON_FINITE)
def test_non_finite_voxels_are_filled_and_the_segmentation_stays_as_good(
        kind, shipped, clean_dice, patient, tmp_path):
    spoil, _ = NON_FINITE[kind]
    path = write_frame(patient, tmp_path / "spoilt.nii.gz", spoil(voxels_xyz(patient)))
    _, dice = dice_of(shipped, path, patient)
    for structure, clean in clean_dice.items():
        assert dice[structure] == pytest.approx(clean, abs=0.03), structure


@pytest.mark.parametrize("kind", NON_FINITE)
def test_non_finite_voxels_are_said_in_the_prediction_and_the_log(kind, shipped, patient,
                                                                  tmp_path, caplog):
    spoil, said = NON_FINITE[kind]
    path = write_frame(patient, tmp_path / "spoilt.nii.gz", spoil(voxels_xyz(patient)))
    with caplog.at_level(logging.WARNING):
        prediction, _ = dice_of(shipped, path, patient)
    assert len(prediction.warnings) == 1
    assert prediction.warnings[0].startswith(f"{path}: ") and said in prediction.warnings[0]
    assert prediction.warnings[0].endswith("were filled with the image's clipped minimum "
                                           "before segmenting")
    assert prediction.warnings[0] in caplog.messages


def test_segment_of_a_frame_with_a_nan_voxel_writes_a_full_map_and_says_so(patient, tmp_path,
                                                                          capsys, caplog):
    """The command a user runs: exit 0, a label map with all three structures, and the
    warning on the result line (stdout) as well as in the log (stderr)."""
    path = write_frame(patient, tmp_path / "spoilt.nii.gz", one_nan(voxels_xyz(patient)))
    output = tmp_path / "labels.nii.gz"
    code = main(["-q", "segment", str(path), "--output", str(output), "--members", MEMBER,
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    labels, _ = read_image(output)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    said = "1 voxel(s) were NaN/Inf (1 NaN, 0 infinite)"
    assert f"| WARNING {said}" in captured.out
    assert any(message.startswith(f"{path}: {said}") for message in caplog.messages)


def test_a_clean_frame_has_no_warning(shipped, patient):
    prediction, _ = dice_of(shipped, patient / ED_FILE, patient)
    assert prediction.warnings == ()


NO_CONTRAST = {
    "all NaN": (lambda data: np.full(data.shape, np.nan, np.float32),
                "every voxel is NaN or infinite (no intensity at all); expected an MRI with "
                "finite voxels"),
    "constant": (lambda data: np.full(data.shape, 37, np.int16),
                 "image is constant (every finite voxel is 37); expected an MRI with contrast"),
    "constant but for NaN": (lambda data: np.where(one_nan(data) == one_nan(data), 5.0,
                                                   np.nan).astype(np.float32),
                             "image is constant (every finite voxel is 5); expected an MRI "
                             "with contrast"),
}


@pytest.mark.parametrize("kind", NO_CONTRAST)
def test_an_image_without_contrast_is_refused_before_the_networks(kind, shipped, patient,
                                                                  tmp_path, monkeypatch):
    spoil, message = NO_CONTRAST[kind]
    path = write_frame(patient, tmp_path / "flat.nii.gz", spoil(voxels_xyz(patient)))
    image, geometry = read_image(path)
    monkeypatch.setattr(type(shipped), "member_probabilities",
                        lambda *a, **k: pytest.fail("the networks ran"))
    with pytest.raises(CaseError, match=exactly(f"{path}: {message}")):
        shipped.predict(Case(image=image, geometry=geometry, source=str(path)))


# ------------------------------------------------------------------------ empty results

ADVICE = "check its spacing, orientation and that it is a short-axis cine frame"
NO_HEART = {  # the frame's own voxels without a heart -> what the prediction says
    "voxels shuffled": (lambda data: np.random.default_rng(0).permutation(data.ravel())
                        .reshape(data.shape),
                        re.escape("the label map is empty (no RV cavity, LV myocardium or LV "
                                  f"cavity anywhere) although the image has signal; {ADVICE}")),
    "rows above the heart": (lambda data: np.ascontiguousarray(data[:, :60]),
                             r"the label map is near-empty \(0\.0\d\d% of voxels are heart; "
                             r"ACDC frames have 1\.35-7\.7%\); " + re.escape(ADVICE)),
}


@pytest.mark.parametrize("kind", NO_HEART)
def test_an_empty_result_on_an_image_with_signal_is_said_in_the_prediction_and_the_log(
        kind, shipped, patient, tmp_path, caplog):
    cut, said = NO_HEART[kind]
    path = write_frame(patient, tmp_path / "no_heart.nii.gz", cut(voxels_xyz(patient)))
    image, geometry = read_image(path)
    with caplog.at_level(logging.WARNING):
        prediction = shipped.predict(Case(image=image, geometry=geometry, source=str(path)))
    assert len(prediction.warnings) == 1
    assert re.fullmatch(re.escape(f"{path}: ") + said, prediction.warnings[0])
    assert prediction.warnings[0] in caplog.messages


# ------------------------------------------------------------------------ spacing

SPACINGS = {  # pixdim (x, y, z) -> what is said
    "in-plane 1e-6 mm": ((1e-6, 1e-6, 10.0), "in-plane spacing is implausible for cardiac MRI "
                                             "(1e-06 x 1e-06 mm); expected 0.3-5 mm"),
    "in-plane 30 mm": ((30.0, 30.0, 10.0), "in-plane spacing is implausible for cardiac MRI "
                                           "(30 x 30 mm); expected 0.3-5 mm"),
    "slice 0.01 mm": ((1.78571, 1.78571, 0.01), "slice spacing is implausible for cardiac MRI "
                                                "(0.01 mm); expected 1-30 mm"),
    "slice 100 mm": ((1.78571, 1.78571, 100.0), "slice spacing is implausible for cardiac MRI "
                                                "(100 mm); expected 1-30 mm"),
}


@pytest.mark.parametrize("kind", SPACINGS)
def test_an_implausible_spacing_is_refused_by_the_library(kind, patient, tmp_path):
    zooms, message = SPACINGS[kind]
    path = write_frame(patient, tmp_path / "spaced.nii.gz", zooms=zooms)
    image, geometry = read_image(path)
    with pytest.raises(CaseError, match=exactly(f"{path}: {message}")):
        Case(image=image, geometry=geometry, source=str(path))


@pytest.mark.parametrize("kind", ["in-plane 30 mm", "slice 0.01 mm"])
def test_an_implausible_spacing_is_refused_by_segment(kind, untrained_models, patient, tmp_path,
                                                      capsys):
    zooms, message = SPACINGS[kind]
    path = write_frame(patient, tmp_path / "spaced.nii.gz", zooms=zooms)
    code, err = run_cli(capsys, "segment", path, "--output", tmp_path / "seg.nii.gz",
                        "--models", untrained_models, "--device", "cpu")
    assert (code, err) == (2, f"error: {path}: {message}\n")
    assert not (tmp_path / "seg.nii.gz").exists()


# ------------------------------------------------------------------------ memory

def header_bomb(patient: Path, path: Path, shape_xyz: tuple[int, int, int]) -> Path:
    """A small .nii.gz: patient090's header declaring `shape_xyz`, and a few real bytes."""
    header = nib.load(str(patient / ED_FILE)).header.copy()
    header.set_data_shape(shape_xyz)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * 4 + voxels_xyz(patient).tobytes(order="F")
    path.write_bytes(gzip.compress(raw))
    return path


def test_a_header_declaring_a_huge_image_is_refused_before_reading_it(patient, tmp_path):
    path = header_bomb(patient, tmp_path / "bomb.nii.gz", (3000, 3000, 10))
    with pytest.raises(CaseError, match=exactly(
            f"{path}: reading the 3000 x 3000 x 10 voxels its header declares would need too "
            f"much memory (0.5 GB); expected at most 0.1 GB (raise the limit with "
            f"{MEMORY_LIMIT_VARIABLE} or max_memory_gb if this machine has the memory)")):
        read_image(path, max_memory_gb=0.1)


def test_the_header_limit_comes_from_the_environment_in_segment(patient, untrained_models,
                                                                tmp_path, capsys, monkeypatch):
    path = header_bomb(patient, tmp_path / "bomb.nii.gz", (3000, 3000, 10))
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "0.2")
    code, err = run_cli(capsys, "segment", path, "--output", tmp_path / "seg.nii.gz",
                        "--models", untrained_models, "--device", "cpu")
    assert code == 2
    assert err.startswith(f"error: {path}: reading the 3000 x 3000 x 10 voxels its header "
                          f"declares would need too much memory (0.5 GB); expected at most "
                          f"0.2 GB")


def test_an_uncompressed_file_shorter_than_its_header_declares_is_refused(patient, tmp_path):
    path = write_frame(patient, tmp_path / "frame.nii")
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) - 1000])
    with pytest.raises(CaseError, match=exactly(
            f"{path}: file is truncated ({len(whole) - 1000} bytes); expected the {len(whole)} "
            f"bytes its header declares")):
        read_image(path)


def test_a_compressed_file_declaring_more_than_it_holds_is_refused_without_allocating_it(
        patient, tmp_path):
    """Within the memory limit but far beyond the file: 3000 x 3000 x 10 voxels of patient090's
    uint8 are 90 MB, the file holds 0.2 MB. Refused as truncated, and with under 50 MB traced
    (numpy reports its allocations to tracemalloc): reading first would allocate all 90 MB,
    then fail."""
    import tracemalloc

    path = header_bomb(patient, tmp_path / "bomb.nii.gz", (3000, 3000, 10))
    held = len(gzip.decompress(path.read_bytes()))
    tracemalloc.start()
    try:
        with pytest.raises(CaseError, match=exactly(
                f"{path}: file is truncated ({held} bytes uncompressed); expected the "
                f"{352 + 3000 * 3000 * 10} bytes its header declares")):
            read_image(path, max_memory_gb=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_a_resampled_volume_over_the_memory_limit_is_refused_before_the_networks(
        untrained_models, patient, tmp_path, monkeypatch):
    """5 mm pixels (the largest accepted) resample 154x224 to 513x747 at the members' 1.5 mm:
    7 x 513 x 747 pixels x 3 channels x 4 bytes x 60 = 1.93 GB."""
    path = write_frame(patient, tmp_path / "coarse.nii.gz", zooms=(5.0, 5.0, 10.0))
    image, geometry = read_image(path)
    ensemble = load_ensemble(untrained_models, device="cpu")
    ensemble.max_memory_gb = 1.5
    monkeypatch.setattr(type(ensemble), "member_probabilities",
                        lambda *a, **k: pytest.fail("the networks ran"))
    with pytest.raises(CaseError, match=exactly(
            f"{path}: segmenting 7 x 224 x 154 voxels resampled to 1.5 mm would need too much "
            f"memory (1.9 GB); expected at most 1.5 GB (raise the limit with "
            f"{MEMORY_LIMIT_VARIABLE} or max_memory_gb if this machine has the memory)")):
        ensemble.predict(Case(image=image, geometry=geometry, source=str(path)))


# ------------------------------------------------------------------------ pixel types, 2D

def complex_nifti(patient: Path, tmp_path: Path) -> Path:
    data = voxels_xyz(patient).astype(np.complex64)
    return write_frame(patient, tmp_path / "complex.nii.gz", data)


def rgb_nifti(patient: Path, tmp_path: Path) -> Path:
    grey = voxels_xyz(patient)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for channel in "RGB":
        rgb[channel] = grey
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.diag([1.78571, 1.78571, 10.0, 1.0])), str(path))
    return path


def itk_image(patient: Path, tmp_path: Path, array: np.ndarray, name: str,
              vector: bool = False) -> Path:
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing((1.78571, 1.78571, 10.0)[:image.GetDimension()])
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def zyx(patient: Path) -> np.ndarray:
    return np.ascontiguousarray(voxels_xyz(patient).transpose(2, 1, 0))


PIXEL_TYPES = "expected scalar integer or floating-point voxels (e.g. int16, uint8, float32)"
UNSUPPORTED = {
    "complex NIfTI": (complex_nifti, f"unsupported pixel type (complex complex64); {PIXEL_TYPES}"),
    "RGB NIfTI": (rgb_nifti, f"unsupported pixel type (3-channel R/G/B colour); {PIXEL_TYPES}"),
    "complex NRRD": (lambda p, t: itk_image(p, t, zyx(p).astype(np.complex64), "c.nrrd"),
                     f"unsupported pixel type (complex of 32-bit float, 2 component(s)); "
                     f"{PIXEL_TYPES}"),
    "RGB NRRD": (lambda p, t: itk_image(p, t, np.stack([zyx(p)] * 3, axis=-1), "rgb.nrrd", True),
                 f"unsupported pixel type (vector of 8-bit unsigned integer, 3 component(s)); "
                 f"{PIXEL_TYPES}"),
    "2D NIfTI": (lambda p, t: write_frame_2d(p, t),
                 "is a 2D image (shape 154 x 224); a short-axis stack of slices is expected"),
    "2D NRRD": (lambda p, t: itk_image(p, t, zyx(p)[3], "slice.nrrd"),
                "is a 2D image (shape 154 x 224); a short-axis stack of slices is expected"),
}


def write_frame_2d(patient: Path, tmp_path: Path) -> Path:
    """Slice 4 of the frame as a 2D NIfTI, with the frame's own header."""
    image = nib.load(str(patient / ED_FILE))
    header = image.header.copy()
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 3], None, header), str(path))
    return path


@pytest.mark.parametrize("kind", UNSUPPORTED)
def test_an_unsupported_pixel_type_or_a_2d_image_is_refused_by_name(kind, patient, tmp_path):
    build, message = UNSUPPORTED[kind]
    path = build(patient, tmp_path)
    with pytest.raises(CaseError, match=exactly(f"{path}: {message}")):
        read_image(path)


# ------------------------------------------------------------------------ Info.cfg

def patient_with_info(patient: Path, tmp_path: Path, info: bytes) -> Path:
    folder = tmp_path / PATIENT
    folder.mkdir()
    for name in (ED_FILE, ED_GT):
        shutil.copyfile(patient / name, folder / name)
    (folder / "Info.cfg").write_bytes(info)
    return folder


GOOD_INFO = b"ED: 4\nES: 11\nGroup: RV\nHeight: 150.0\nNbFrame: 12\nWeight: 66.0\n"
BROKEN_INFO = {
    "not UTF-8": (GOOD_INFO.replace(b"RV", b"R\xe9V"),
                  "is not UTF-8 text (byte 0xe9 at offset 21); expected 'key: value' lines"),
    "ED 1.7": (GOOD_INFO.replace(b"ED: 4", b"ED: 1.7"),
               "'ED' should be a whole number ('1.7'); expected e.g. 'ED: 1'"),
    "ES nan": (GOOD_INFO.replace(b"ES: 11", b"ES: nan"),
               "'ES' should be a whole number ('nan'); expected e.g. 'ES: 1'"),
    "ED twice": (GOOD_INFO + b"ED: 5\n",
                 ", line 7: 'ED' is given twice ('4', then '5'); expected it once"),
    "ES beyond NbFrame": (GOOD_INFO.replace(b"ES: 11", b"ES: 13"),
                          "ES is outside the cine (13); expected a frame in 1..12"),
    "ED 0": (GOOD_INFO.replace(b"ED: 4", b"ED: 0"),
             "ED is outside the cine (0); expected a frame in 1..12"),
    "NbFrame 0": (GOOD_INFO.replace(b"NbFrame: 12", b"NbFrame: 0"),
                  "NbFrame is not a frame count (0); expected 1 or more"),
}


@pytest.mark.parametrize("kind", BROKEN_INFO)
def test_a_broken_info_cfg_is_refused_naming_the_file(kind, patient, tmp_path):
    info, message = BROKEN_INFO[kind]
    folder = patient_with_info(patient, tmp_path, info)
    separator = "" if message.startswith(",") else ": "
    with pytest.raises(CaseError, match=exactly(f"{folder / 'Info.cfg'}{separator}{message}")):
        PatientFolder.open(folder)


@pytest.mark.parametrize("key, value", [("Height", "0"), ("Height", "nan"), ("Height", "600"),
                                        ("Weight", "-3"), ("Weight", "inf"),
                                        ("Weight", "501")])
def test_an_absurd_height_or_weight_is_ignored_with_a_warning(key, value, patient, tmp_path,
                                                              caplog):
    info = re.sub(rf"{key}: [0-9.]+".encode(), f"{key}: {value}".encode(), GOOD_INFO)
    folder = patient_with_info(patient, tmp_path, info)
    with caplog.at_level(logging.WARNING):
        parsed = parse_info_cfg(folder / "Info.cfg")
    kept = {"Height": parsed.height_cm, "Weight": parsed.weight_kg}
    assert kept == {"Height": None if key == "Height" else 150.0,
                    "Weight": None if key == "Weight" else 66.0}
    unit, high = ("cm", 300) if key == "Height" else ("kg", 500)
    assert caplog.messages == [f"{folder / 'Info.cfg'}: '{key}' is implausible ({value}); "
                               f"expected more than 0 and at most {high} {unit}; ignored"]
