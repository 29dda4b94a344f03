"""Loading ACDC patients and writing images keeps voxels and geometry exact."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from CardiacEnsembleLib import io
from CardiacEnsembleLib.io.acdc import PatientFolder, find_patients, load_splits, parse_info_cfg
from CardiacEnsembleLib.core.case import Geometry


def test_info_cfg_gives_frames_group_and_body_size(patient_dir):
    info = parse_info_cfg(patient_dir("patient001") / "Info.cfg")
    assert (info.ed, info.es, info.group, info.nb_frames) == (1, 12, "DCM", 30)
    assert (info.height_cm, info.weight_kg) == (184.0, 95.0)


def test_case_array_is_z_y_x_with_spacing_from_pixdim(patient_dir):
    """ACDC's sform has unit scales; the spacing lives in pixdim, as ITK/Slicer read it."""
    case = PatientFolder.open(patient_dir("patient001")).load("ED")
    raw = nib.load(patient_dir("patient001") / "patient001_frame01.nii.gz")
    assert case.image.shape == (10, 256, 216)  # file is 216 x 256 x 10 (x, y, z)
    np.testing.assert_array_equal(case.image, np.asarray(raw.dataobj).transpose(2, 1, 0))
    assert case.spacing_zyx == pytest.approx((10.0, 1.5625, 1.5625))
    np.testing.assert_allclose(case.geometry.direction_ras, np.diag([-1.0, -1.0, 1.0]))
    assert case.labels.shape == case.image.shape and set(np.unique(case.labels)) == {0, 1, 2, 3}
    assert (case.patient_id, case.phase, case.frame, case.group) == ("patient001", "ED", 1, "DCM")


def test_geometry_matches_simpleitk_reading(patient_dir):
    """Slicer reads NIfTI through ITK: our geometry must equal ITK's (in LPS) exactly."""
    import SimpleITK as sitk

    path = patient_dir("patient081") / "patient081_frame01.nii.gz"
    _, geometry = io.read_image(path)
    itk = sitk.ReadImage(str(path))
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(geometry.spacing_xyz, itk.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(lps @ geometry.origin_ras, itk.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(lps @ geometry.direction_ras,
                               np.reshape(itk.GetDirection(), (3, 3)), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("patient, name", [("patient001", "patient001_frame01.nii.gz"),
                                           ("patient090", "patient090_frame04_gt.nii.gz"),
                                           ("patient092", "patient092_frame01.nii.gz")])
def test_load_save_load_keeps_voxels_and_affine(patient_dir, tmp_path, patient, name, suffix):
    array, geometry = io.read_image(patient_dir(patient) / name)
    out = io.write_image(tmp_path / f"copy{suffix}", array, geometry)
    again, again_geometry = io.read_image(out)
    np.testing.assert_array_equal(again, array)
    assert again.dtype == array.dtype
    np.testing.assert_allclose(again_geometry.affine, geometry.affine, atol=1e-6, rtol=0)


def test_output_written_for_an_input_carries_its_exact_header(patient_dir, tmp_path):
    source = patient_dir("patient001") / "patient001_frame01.nii.gz"
    array, geometry = io.read_image(source)
    out = io.write_image(tmp_path / "labels.nii.gz", (array > 100).astype(np.uint8), geometry,
                         reference=source)
    written, original = nib.load(out), nib.load(source)
    np.testing.assert_array_equal(written.affine, original.affine)
    assert written.header.get_zooms() == original.header.get_zooms()
    assert written.get_data_dtype() == np.uint8
    assert io.read_image(out)[1].allclose(geometry, atol=0)


def test_rotated_oblique_geometry_survives_nrrd_lps_round_trip(tmp_path):
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    geometry = Geometry.from_spacing((1.25, 1.5, 8.0), (-12.5, 40.0, 3.25), rotation)
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    for suffix in (".nrrd", ".nii.gz"):
        again, again_geometry = io.read_image(io.write_image(tmp_path / f"r{suffix}", array,
                                                             geometry))
        np.testing.assert_array_equal(again, array)
        np.testing.assert_allclose(again_geometry.affine, geometry.affine, atol=1e-5)


def test_existing_output_is_refused_and_kept(tmp_path):
    geometry = Geometry.from_spacing((1, 1, 1))
    target = tmp_path / "mine.nii.gz"
    io.write_image(target, np.ones((2, 3, 4), np.uint8), geometry)
    before = target.read_bytes()
    with pytest.raises(io.OutputExistsError, match="already exists"):
        io.write_image(target, np.zeros((2, 3, 4), np.uint8), geometry)
    assert target.read_bytes() == before
    io.write_image(target, np.zeros((2, 3, 4), np.uint8), geometry, overwrite=True)
    assert io.read_image(target)[0].max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["mine.nii.gz"]  # no temporary left behind


def test_cine_frames_equal_the_ed_and_es_files(patient_dir):
    patient = PatientFolder.open(patient_dir("patient090"))
    cine, geometry = patient.load_cine()
    assert cine.shape == (12, 7, 224, 154)
    for phase in ("ED", "ES"):
        frame = patient.load_cine_frame(patient.frame_number(phase))
        np.testing.assert_array_equal(frame.image, patient.load(phase).image)
        assert frame.geometry.allclose(geometry)


def test_find_patients_reads_both_splits_and_named_ids(acdc):
    everything = find_patients(acdc)
    assert len(everything) == 140
    picked = find_patients(acdc, ["patient101", "patient002"])
    assert [p.patient_id for p in picked] == ["patient101", "patient002"]
    assert find_patients(acdc / "training" / "patient005")[0].patient_id == "patient005"


def test_splits_are_disjoint_and_cover_the_data(acdc):
    splits = load_splits(acdc)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (80, 20, 40)
    assert not set(splits["train"]) & set(splits["validation"])
    assert not (set(splits["train"]) | set(splits["validation"])) & set(splits["test"])
