"""Shared fixtures: where the real ACDC data is, and skips with a reason when it is not.

The release check (`Testing/Release`) and the research tests (`research/tests`) import these
fixtures from here rather than keeping copies."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Set by Testing/run_tests.sh for its second run (the MRML tests on the stable slicer-core, put
# first on PYTHONPATH): the slicer-core version that run must import.
EXPECTED_SLICER_CORE = "CARDIAC_ENSEMBLE_EXPECT_SLICER_CORE"


def _where(distribution: str, module: str) -> str:
    """'slicer-core 5.13.31053.0 (/its/folder)', found without importing the module (the main
    run must not load slicer for tests that never use it)."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin).parent if spec and spec.origin else "not importable"
    return f"{distribution} {version} ({origin})"


def pytest_report_header(config):
    """Which slicer-core and vtk this run tests, so a log says which of the two runs it is."""
    return f"MRML: {_where('slicer-core', 'slicer')}, {_where('vtk', 'vtk')}"


def pytest_configure(config):
    """Give the run its own ONNX export cache (the onnxruntime backend's), inherited by the
    CLI subprocesses, so tests neither read nor fill the user's; then the slicer-core check."""
    import tempfile

    os.environ["CARDIAC_ENSEMBLE_CACHE_DIR"] = tempfile.mkdtemp(prefix="cardiac-ensemble-cache-")
    _check_expected_slicer_core()


def _check_expected_slicer_core() -> None:
    """In the stable-slicer-core run, refuse to start unless that version is what `import slicer`
    loads, with the vtk it was built against and its MRML classes. Why: a PYTHONPATH overlay
    that did not take effect would test the venv's slicer-core twice, and a missing one would
    skip every MRML test, and either run would still pass."""
    expected = os.environ.get(EXPECTED_SLICER_CORE)
    if not expected:
        return
    try:
        import slicer
        import vtk
    except ImportError as error:
        raise pytest.UsageError(f"{EXPECTED_SLICER_CORE}={expected}, but slicer or vtk does not "
                                f"import: {error}") from error
    problems = []
    core = importlib.metadata.distribution("slicer-core")
    if core.version != expected:
        problems.append(f"slicer-core is {core.version}, not {expected}")
    for distribution, module in ((core, slicer), (importlib.metadata.distribution("vtk"), vtk)):
        home = Path(os.path.abspath(distribution.locate_file("")))
        if home not in Path(os.path.abspath(module.__file__)).parents:
            problems.append(f"{module.__name__} imports from {module.__file__}, not from the "
                            f"{distribution.name} {distribution.version} in {home}")
    pins = [r.split("==")[1].strip() for r in core.requires or [] if r.startswith("vtk==")]
    if pins and vtk.VTK_VERSION != pins[0]:
        problems.append(f"vtk is {vtk.VTK_VERSION}, slicer-core {core.version} needs {pins[0]}")
    if not (hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkMRMLSegmentationNode")):
        problems.append("slicer has no MRML classes (every MRML test would skip)")
    if problems:
        raise pytest.UsageError(f"{EXPECTED_SLICER_CORE}={expected}: " + "; ".join(problems))


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
