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

import gzip
import zlib
from pathlib import Path
from typing import Iterable, Optional

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from CardiacEnsembleLib.core.case import Geometry
from CardiacEnsembleLib.core.errors import (CaseError, OutputExistsError,  # noqa: F401
                                            refuse_existing)
from CardiacEnsembleLib.core.limits import check_memory
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


def read_image(path: Path | str, *, allow_4d: bool = False,
               max_memory_gb: Optional[float] = None) -> tuple[np.ndarray, Geometry]:
    """Read an image as ((Z, Y, X) or (T, Z, Y, X) array, Geometry of one 3D frame).

    A 4D file is refused unless `allow_4d`: a cine passed where one frame is expected is the
    most common mix-up with ACDC folders, and segmenting it as 3D would be silently wrong.

    The header is checked before any voxel is read: its dimensions (a 2D image is not a stack
    of slices), its pixel type (real scalars only) and the memory its declared size needs
    (`core.limits`, `max_memory_gb`), so a small file whose header declares a huge image costs
    nothing.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if not path.is_file():
        raise CaseError(f"{path}: file not found")
    if not suffix:
        raise CaseError(f"{path}: not a NIfTI or NRRD image (expected one of "
                        f"{', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)})")
    array, geometry = _read_nifti(path, max_memory_gb) if suffix in NIFTI_SUFFIXES else \
        _read_itk(path, max_memory_gb)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 4 and not allow_4d:
        raise CaseError(f"{path}: is a 4D image ({array.shape[0]} frames) where one 3D frame is "
                        f"expected; pick a frame (e.g. the ED or ES file, or --frame N)")
    if array.ndim not in (3, 4) or (array.ndim == 4 and not allow_4d):
        raise CaseError(f"{path}: expected a 3D image, got {array.ndim} dimensions "
                        f"(shape {array.shape})")
    return array, geometry


def _read_nifti(path: Path, max_memory_gb: Optional[float] = None
                ) -> tuple[np.ndarray, Geometry]:
    try:
        img = nib.load(str(path))  # the header only: nibabel reads voxels on demand
        header = img.header
        _check_declared_image(path, tuple(int(n) for n in header.get_data_shape()),
                              header.get_data_dtype(), max_memory_gb)
        _check_nifti_file_size(path, img)
        _check_stored_spacing(path, type(header))
        data = np.asarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        if isinstance(error, CaseError):
            raise
        raise CaseError(f"{path}: cannot be read as NIfTI ({error})") from error
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim > 4:
        raise CaseError(f"{path}: {data.ndim}-dimensional NIfTI is not supported")
    # nibabel stores (x, y, z[, t]); the package uses (Z, Y, X) and (T, Z, Y, X).
    array = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    return np.ascontiguousarray(array), _checked_geometry(nifti_affine(img, path), path)


#: Pixel types a case can be made of: real scalars (what MRI scanners and ACDC store).
ACCEPTED_PIXEL_TYPES = "scalar integer or floating-point voxels (e.g. int16, uint8, float32)"


def _check_declared_image(path: Path, shape_xyz: tuple[int, ...], dtype: np.dtype,
                          max_memory_gb: Optional[float]) -> None:
    """What a header declares, refused before its voxels are read.

    Complex, RGB and other structured voxels have no single intensity to normalise; a 2D image
    has no slices for a short-axis stack. Memory: the stored voxels plus the float32 copy a
    Case holds, so the refusal comes before the allocation, not after the swap.
    """
    if len(shape_xyz) == 2:
        raise CaseError(f"{path}: is a 2D image (shape {' x '.join(map(str, shape_xyz))}); a "
                        f"short-axis stack of slices is expected")
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise CaseError(f"{path}: unsupported pixel type ({_dtype_name(dtype)}); expected "
                        f"{ACCEPTED_PIXEL_TYPES}")
    voxels = float(np.prod(np.asarray(shape_xyz, dtype=np.float64)))
    check_memory(voxels * (dtype.itemsize + 4), str(path),
                 f"reading the {' x '.join(map(str, shape_xyz))} voxels its header declares",
                 max_memory_gb)


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return f"{len(dtype.fields)}-channel {'/'.join(dtype.names)} colour"
    return {"c": f"complex {dtype.name}", "b": "boolean"}.get(dtype.kind, dtype.name)


#: Declared sizes above which a compressed NIfTI is measured before it is read (`_stored_bytes`):
#: below it, allocating what the header says is harmless even if the file holds less.
GZIP_CHECK_BYTES = 64 * 2**20


def _check_nifti_file_size(path: Path, img) -> None:
    """The file must hold the bytes its header declares, checked before the array is allocated.

    An uncompressed .nii: its size on disk. A .nii.gz may legitimately be far smaller than its
    data, so a large declared size is checked by decompressing the stream in chunks, counting
    and discarding (constant memory, about a second per GB): a 1 MB file declaring 1.6 GB would
    otherwise be allocated in full before the read fails. The data start where nibabel will read
    them (`dataobj.offset`: a stored vox_offset of 0 means 352).
    """
    header = img.header
    declared = int(img.dataobj.offset) + int(np.prod(header.get_data_shape())) * \
        header.get_data_dtype().itemsize
    if image_suffix(path) == ".nii":
        actual = path.stat().st_size
    elif declared > GZIP_CHECK_BYTES:
        actual = _stored_bytes(path, declared)
    else:
        return
    if actual < declared:
        raise CaseError(f"{path}: file is truncated ({actual} bytes"
                        f"{' uncompressed' if image_suffix(path) == '.nii.gz' else ''}); "
                        f"expected the {declared} bytes its header declares")


def _stored_bytes(path: Path, enough: int, chunk: int = 8 * 2**20) -> int:
    """How many bytes the gzip file at `path` decompresses to, counting no further than
    `enough`. A corrupt stream counts as what was readable before it."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < enough:
                block = stream.read(min(chunk, enough - total))
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, zlib.error):
        pass
    return total


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


def _read_itk(path: Path, max_memory_gb: Optional[float] = None
              ) -> tuple[np.ndarray, Geometry]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
        _check_declared_itk(path, reader, max_memory_gb)
        image = reader.Execute()
    except RuntimeError as error:
        raise CaseError(f"{path}: cannot be read by SimpleITK ({str(error).strip()[:200]})") \
            from error
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    affine_lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), _checked_geometry(_lps_to_ras(affine_lps), path)


_ITK_SCALARS = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32,
                sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64, sitk.sitkFloat32,
                sitk.sitkFloat64}


def _check_declared_itk(path: Path, reader: sitk.ImageFileReader,
                        max_memory_gb: Optional[float]) -> None:
    """`_check_declared_image` for SimpleITK's header: dimension, pixel type, memory."""
    size = tuple(int(n) for n in reader.GetSize())
    if reader.GetDimension() == 2:
        raise CaseError(f"{path}: is a 2D image (shape {' x '.join(map(str, size))}); a "
                        f"short-axis stack of slices is expected")
    pixel = reader.GetPixelID()
    if pixel not in _ITK_SCALARS or reader.GetNumberOfComponents() != 1:
        raise CaseError(f"{path}: unsupported pixel type ({sitk.GetPixelIDValueAsString(pixel)}, "
                        f"{reader.GetNumberOfComponents()} component(s)); expected "
                        f"{ACCEPTED_PIXEL_TYPES}")
    if reader.GetDimension() != 3:
        raise CaseError(f"{path}: expected a scalar 3D image, got {reader.GetDimension()}D "
                        f"(shape {' x '.join(map(str, size))})")
    itemsize = sitk.GetArrayFromImage(sitk.Image([1, 1, 1], pixel)).dtype.itemsize
    check_memory(float(np.prod(np.asarray(size, dtype=np.float64))) * (itemsize + 4), str(path),
                 f"reading the {' x '.join(map(str, size))} voxels its header declares",
                 max_memory_gb)


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
