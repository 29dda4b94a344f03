"""Shared fixtures: where the real ACDC data is, and skips with a reason when it is not."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def acdc_root() -> Path | None:
    """The ACDC folder: $ACDC_ROOT, else ../shared/acdc beside the repository."""
    candidate = Path(os.environ.get("ACDC_ROOT", REPO_ROOT.parent / "shared" / "acdc"))
    return candidate if (candidate / "training").is_dir() else None


@pytest.fixture(scope="session")
def acdc() -> Path:
    root = acdc_root()
    if root is None:
        pytest.skip("real ACDC data not found: set ACDC_ROOT or place it at ../shared/acdc "
                    "(see README, 'Data')")
    return root


@pytest.fixture(scope="session")
def patient_dir(acdc):
    """patient_dir('patient001') -> the folder, searching training/ and testing/."""
    def find(patient_id: str) -> Path:
        for split in ("training", "testing"):
            folder = acdc / split / patient_id
            if folder.is_dir():
                return folder
        pytest.skip(f"{patient_id} is not in {acdc}")
    return find
