"""Shared fixtures: where the real ACDC data is, and skips with a reason when it is not.

The release check (`Testing/Release`) and the research tests (`research/tests`) import these
fixtures from here rather than keeping copies."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def acdc_root() -> Path | None:
    """The ACDC folder: $ACDC_ROOT, else ../shared/acdc beside the repository."""
    candidate = Path(os.environ.get("ACDC_ROOT", REPO_ROOT.parent / "shared" / "acdc"))
    return candidate if (candidate / "training").is_dir() else None


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread while a module runs, restored afterwards. Why: many small tensor
    operations on a 2-core machine that anything else keeps busy run up to 10x slower on two
    threads (each operation waits for the thread the other load has descheduled), while on an
    idle machine one thread makes them only about 10% slower. Results do not depend on it. A
    module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def untrained_models(tmp_path_factory) -> Path:
    """A models folder (manifest + 3 members of different architectures) with seeded random
    weights: fast, deterministic, for testing plumbing (not accuracy)."""
    import torch

    from CardiacEnsembleDev.release.ship import write_manifest
    from CardiacEnsembleLib.inference.members import create_network, save_member
    from CardiacEnsembleDev.training.recipes import recipe_spec

    root = tmp_path_factory.mktemp("models")
    folders = []
    for seed, recipe in enumerate(("unet-mnv2", "linknet-mnv2", "fpn-mnv2")):
        torch.manual_seed(seed)
        spec = recipe_spec(recipe)
        folders.append(save_member(create_network(spec), spec, root / recipe).folder)
    write_manifest(root, folders, name="untrained-test", version="0", fusion="mean",
                   weights={"unet-mnv2": 2.0, "linknet-mnv2": 1.0, "fpn-mnv2": 1.0},
                   note="untrained test members")
    return root


@pytest.fixture
def patients_read(monkeypatch) -> list[str]:
    """Ids of every patient whose frames get loaded during the test, for the split-leak tests:
    they must see train/validation ids only, whatever code path does the reading."""
    from CardiacEnsembleLib.io import acdc as acdc_module

    read: list[str] = []
    original = acdc_module.PatientFolder.load
    monkeypatch.setattr(acdc_module.PatientFolder, "load",
                        lambda self, *a, **k: read.append(self.patient_id) or
                        original(self, *a, **k))
    return read
