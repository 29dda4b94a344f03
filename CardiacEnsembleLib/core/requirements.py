"""What the runtime needs before it can run inside Slicer: Python packages Slicer does not
bundle, and the user's acknowledgement of the terms of the shipped weights and sample.

Standard library only (no torch, no Qt, no slicer), so the module, the headless script and the
tests ask the same questions before anything is installed; the module does the installing and
the asking (dialogs, settings).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from typing import Mapping, Optional

#: The oldest torch the library runs with; the PyTorch extension installs at least this.
TORCH_MINIMUM = "2.1"
#: Python packages beyond what Slicer ships (import name -> pip requirement); torch comes
#: through the PyTorch extension, which picks the build for the machine's CUDA.
REQUIREMENTS: dict[str, str] = {
    "nibabel": "nibabel>=5.2",
    "segmentation_models_pytorch": "segmentation-models-pytorch>=0.5,<0.7",
    "safetensors": "safetensors>=0.4",
    # the CPU path (inference.onnx_runtime); without them the members run with torch
    "onnxruntime": "onnxruntime>=1.18",
    "onnx": "onnx>=1.16",
}
#: Distributions Slicer (or the PyTorch extension) installed: pip may need them, never replace
#: them (a pip-built torch loses the CUDA build; another SimpleITK breaks Slicer's own).
PROTECTED = ("torch", "torchvision", "SimpleITK")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def torch_problem(version: Optional[str]) -> Optional[str]:
    """Why the installed torch (`version`, None if absent) cannot be used; None if it can."""
    if version is None:
        return f"torch>={TORCH_MINIMUM} (not installed)"
    if _version_tuple(version) < _version_tuple(TORCH_MINIMUM):
        return f"torch>={TORCH_MINIMUM} (found {version})"
    return None


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages() -> list[str]:
    """pip requirements of the packages that are not importable yet (torch first)."""
    torch = torch_problem(installed_version("torch")
                          if importlib.util.find_spec("torch") else None)
    return ([torch] if torch else []) + [requirement for module, requirement in
                                         REQUIREMENTS.items()
                                         if importlib.util.find_spec(module) is None]


def pip_requirements() -> list[str]:
    """The pip requirements still to install (torch excluded: the PyTorch extension's job)."""
    return [requirement for module, requirement in REQUIREMENTS.items()
            if importlib.util.find_spec(module) is None]


def pip_constraints(installed: Mapping[str, Optional[str]]) -> list[str]:
    """Constraint lines that pin every protected distribution that is installed, so pip
    resolves the rest around them or fails saying why, instead of replacing them."""
    return [f"{name}=={version}" for name, version in installed.items()
            if name in PROTECTED and version]


def protected_versions() -> dict[str, Optional[str]]:
    return {name: installed_version(name) for name in PROTECTED}


#: The terms the user acknowledges once (`terms_accepted`); a new version asks again.
TERMS_VERSION = "ACDC CC BY-NC-SA 4.0, 1"
#: Where the module remembers the acknowledgement in Slicer's settings.
TERMS_SETTINGS_KEY = "CardiacEnsemble/AcceptedTerms"
TERMS_TEXT = (
    "The networks shipped with Cardiac Ensemble were trained on, and its sample patient "
    "(patient090) comes from, the ACDC challenge data, licensed CC BY-NC-SA 4.0 "
    "(https://creativecommons.org/licenses/by-nc-sa/4.0/) for non-commercial scientific "
    "research only, with a mandatory citation of Bernard et al., IEEE TMI 2018 "
    "(doi:10.1109/TMI.2018.2837502). Results are not for diagnosis.\n\n"
    "Do you use them under these terms?")


def terms_accepted(stored) -> bool:
    """Whether the value remembered in the settings acknowledges the current terms."""
    return str(stored or "") == TERMS_VERSION
