"""Read and write images with their geometry kept exactly.

NIfTI goes through nibabel (it keeps the sform/qform codes ACDC uses); NRRD, MHA and the rest go
through SimpleITK. Arrays come back in the package's (Z, Y, X) order and geometry as a RAS affine
(see `case.py`); the one LPS <-> RAS flip of the package lives here, in `_lps_to_ras`.

Writes go through `atomic.atomic_output`: refused over an existing file unless `overwrite=True`
(and that refusal holds when two writers race), never over one of the run's inputs (`protected`),
published whole from an fsynced temporary, with the mode the umask gives. Only single-file
formats are written (NIfTI, .nrrd, .mha): a detached header (.nhdr, .mhd) would point at a data
file with the temporary's name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from CardiacEnsembleLib.core.case import Geometry
from CardiacEnsembleLib.core.errors import (CaseError, OutputExistsError,  # noqa: F401
                                            refuse_existing)
from CardiacEnsembleLib.io.atomic import atomic_output

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: What `write_image` writes: the formats that keep header and voxels in one file.
WRITABLE_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".mha")
_LPS_RAS = np.diag([-1.0, -1.0, 1.0])



def image_suffix(path: Path | str) -> str:
    name = str(path).lower()
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def read_image(path: Path | str, *, allow_4d: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read an image as ((Z, Y, X) or (T, Z, Y, X) array, Geometry of one 3D frame).

    A 4D file is refused unless `allow_4d`: a cine passed where one frame is expected is the
    most common mix-up with ACDC folders, and segmenting it as 3D would be silently wrong.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if not path.is_file():
        raise CaseError(f"{path}: file not found")
    if not suffix:
        raise CaseError(f"{path}: not a NIfTI or NRRD image (expected one of "
                        f"{', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)})")
    array, geometry = _read_nifti(path) if suffix in NIFTI_SUFFIXES else _read_itk(path)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 4 and not allow_4d:
        raise CaseError(f"{path}: is a 4D image ({array.shape[0]} frames) where one 3D frame is "
                        f"expected; pick a frame (e.g. the ED or ES file, or --frame N)")
    if array.ndim not in (3, 4) or (array.ndim == 4 and not allow_4d):
        raise CaseError(f"{path}: expected a 3D image, got {array.ndim} dimensions "
                        f"(shape {array.shape})")
    return array, geometry


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise CaseError(f"{path}: cannot be read as NIfTI ({error})") from error
    _check_stored_spacing(path, type(img.header))
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:
        raise CaseError(f"{path}: {data.ndim}-dimensional NIfTI is not supported")
    # nibabel stores (x, y, z[, t]); the package uses (Z, Y, X) and (T, Z, Y, X).
    array = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    return np.ascontiguousarray(array), _checked_geometry(nifti_affine(img, path), path)


def _check_stored_spacing(path: Path, header_class) -> None:
    """Refuse a NIfTI whose stored voxel size is zero or not finite.

    nibabel quietly turns a zero pixdim into 1 mm while loading; a frame read that way would be
    segmented and measured in made-up millimetres. So look at the bytes as stored.
    """
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as handle:
        stored = header_class.from_fileobj(handle, check=False)
    dims = int(stored["dim"][0])
    pixdim = np.asarray(stored["pixdim"][1:1 + min(max(dims, 3), 3)], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise CaseError(f"{path}: voxel spacing is missing or invalid in the header (pixdim "
                        f"{pixdim.tolist()}); millimetre metrics and resampling need it")


def nifti_affine(img: nib.Nifti1Image, path: Path | str = "image") -> np.ndarray:
    """The RAS affine of a NIfTI the way ITK (and so Slicer) reads it.

    ACDC files carry an sform with unit scales while `pixdim` holds the true spacing (e.g.
    1.5625 x 1.5625 x 10 mm). ITK takes the direction from the sform and the spacing from
    pixdim; nibabel's `img.affine` would say 1 mm. We follow ITK so that millimetres are right
    and the geometry equals what Slicer shows for the same file.
    """
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if zooms.size < 3 or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise CaseError(f"{path}: voxel spacing is missing or invalid ({tuple(zooms)}); "
                        f"millimetre metrics and resampling need it")
    affine = np.asarray(img.affine, dtype=np.float64)
    scales = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(scales <= 0) or np.allclose(scales, zooms, rtol=1e-4):
        return affine
    fixed = affine.copy()
    fixed[:3, :3] = affine[:3, :3] / scales[None, :] * zooms[None, :]
    return fixed


def _read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CaseError(f"{path}: cannot be read by SimpleITK ({str(error).strip()[:200]})") \
            from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{path}: expected a scalar 3D image, got {image.GetDimension()}D with "
                        f"{image.GetNumberOfComponentsPerPixel()} components")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    affine_lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), _checked_geometry(_lps_to_ras(affine_lps), path)


def _lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """ITK speaks LPS, NIfTI and Slicer speak RAS: flip x and y of the physical space.

    The same matrix converts both ways (it is its own inverse).
    """
    flipped = affine.copy()
    flipped[:3, :] = _LPS_RAS @ affine[:3, :]
    return flipped


def _checked_geometry(affine: np.ndarray, path: Path) -> Geometry:
    try:
        return Geometry(affine)
    except CaseError as error:
        raise CaseError(f"{path}: {error}") from error


def write_image(path: Path | str, array: np.ndarray, geometry: Geometry, *,
                overwrite: bool = False, reference: Optional[Path | str] = None,
                protected: Iterable[Path | str] = ()) -> Path:
    """Write a (Z, Y, X) array (or a (T, Z, Y, X) cine, NIfTI only) with `geometry`; NIfTI or
    NRRD chosen by the file name.

    `reference`: a NIfTI whose header (sform/qform codes, units) the output should copy, so a
    label map written for an ACDC frame opens exactly on top of it in any viewer.
    `protected`: the run's inputs (image, ground truth, ...), which `path` may never be.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise CaseError(f"{path}: output name must end in one of {', '.join(WRITABLE_SUFFIXES)}")
    if array.ndim not in (3, 4) or (array.ndim == 4 and suffix not in NIFTI_SUFFIXES):
        raise CaseError(f"{path}: can write (Z, Y, X) arrays, and (T, Z, Y, X) cines as NIfTI "
                        f"only; got shape {array.shape}")
    with atomic_output(path, overwrite=overwrite, protected=protected,
                       suffix=suffix) as temporary:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(temporary, array, geometry, reference)
        else:
            _write_itk(temporary, array, geometry)
    return path


def _write_nifti(path: Path, array: np.ndarray, geometry: Geometry,
                 reference: Optional[Path | str]) -> None:
    data = np.ascontiguousarray(array.transpose(tuple(reversed(range(array.ndim)))))
    if reference is not None:
        template = nib.load(str(reference))
        same_grid = template.shape[:data.ndim] == data.shape and \
            np.allclose(nifti_affine(template, reference), geometry.affine, atol=1e-6)
        if same_grid:
            # Copy the reference header as it is (sform, qform, pixdim and their codes) so the
            # output overlays its input in every reader, quirks included.
            header = template.header.copy()
            header.set_data_dtype(data.dtype)
            header["scl_slope"], header["scl_inter"] = np.nan, np.nan
            nib.save(nib.Nifti1Image(data, None, header), str(path))
            return
    image = nib.Nifti1Image(data, geometry.affine)
    image.set_sform(geometry.affine, code=2)  # ACDC's own convention: sform only
    image.set_qform(geometry.affine, code=0)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))


def _write_itk(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    affine_lps = _lps_to_ras(geometry.affine)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine_lps[:3, 3].tolist())
    image.SetDirection((affine_lps[:3, :3] / spacing[None, :]).ravel().tolist())
    sitk.WriteImage(image, str(path), useCompression=True)
