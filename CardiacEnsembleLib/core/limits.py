"""The one memory limit of the package, and the refusal when an estimate goes over it.

Why a limit at all: an image header can declare any size (a 1 MB file may say 30000 x 30000 x
10), and resampling a frame with a large field of view multiplies its pixels; without a bound
the process grows until the machine swaps or the kernel kills it, long after the input could
have been refused. Both the read (`io.images`: declared voxels x bytes) and the preprocessing
(`inference.preprocess`: resampled slices x the pipeline's measured bytes per pixel) compare
their estimate with this limit *before* allocating anything.

The default, 8 GB, is five to ten times what the largest ACDC frame needs with the shipped
ensemble (about 0.8 GB on top of the ~1 GB of torch and weights) and fits a laptop. Raise it
with the environment variable `CARDIAC_ENSEMBLE_MAX_MEMORY_GB` or the `max_memory_gb` parameter
of the functions that check it.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from .errors import CaseError

MEMORY_LIMIT_VARIABLE = "CARDIAC_ENSEMBLE_MAX_MEMORY_GB"
DEFAULT_MAX_MEMORY_GB = 8.0
_GB = 1e9


def memory_limit_gb(max_memory_gb: Optional[float] = None) -> float:
    """The limit in GB: `max_memory_gb` if given, else the environment variable, else 8."""
    if max_memory_gb is not None:
        return _positive(max_memory_gb, "max_memory_gb")
    text = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if text is None or not text.strip():
        return DEFAULT_MAX_MEMORY_GB
    try:
        value = float(text)
    except ValueError as error:
        raise CaseError(f"{MEMORY_LIMIT_VARIABLE}: not a number ({text!r}); expected a size in "
                        f"GB, e.g. 16") from error
    return _positive(value, MEMORY_LIMIT_VARIABLE)


def _positive(value: float, name: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise CaseError(f"{name}: must be a positive number of GB ({value}); expected e.g. 16")
    return float(value)


def check_memory(needed_bytes: float, where: str, what: str,
                 max_memory_gb: Optional[float] = None) -> None:
    """Refuse `what` at `where` when it would need more than the limit, saying how to raise it."""
    limit = memory_limit_gb(max_memory_gb)
    if needed_bytes > limit * _GB:
        raise CaseError(f"{where}: {what} would need too much memory ({needed_bytes / _GB:.1f} "
                        f"GB); expected at most {limit:g} GB (raise the limit with "
                        f"{MEMORY_LIMIT_VARIABLE} or max_memory_gb if this machine has the "
                        f"memory)")
