"""Files at the edge: images (NIfTI, NRRD, MHA) <-> arrays with their geometry, and ACDC patient
folders -> `Case`. The rest of the package never sees a file format."""
from .images import (ITK_SUFFIXES, NIFTI_SUFFIXES, OutputExistsError, image_suffix,  # noqa: F401
                     nifti_affine, read_image, write_image)
