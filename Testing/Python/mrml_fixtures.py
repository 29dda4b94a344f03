"""What the tests of the MRML side (test_slicer_*.py) share: the skip where slicer-core is
absent, a wired scene, the sample patient in a scene, an untrained ensemble and its answer
through the bridge, and a cheap fake prediction.

Everything the module's panel and the headless script do to a scene goes through
`CardiacEnsembleLib.slicer`, so these tests exercise the Slicer side for real, on real ACDC
data, without the Slicer application (which cannot run here). A test module imports the
fixtures it uses from here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

try:
    import slicer

    HAVE_MRML = hasattr(slicer, "vtkMRMLScene") and hasattr(slicer, "vtkMRMLSegmentationNode")
except ImportError:
    HAVE_MRML = False

requires_mrml = pytest.mark.skipif(
    not HAVE_MRML, reason="Slicer's MRML classes are not importable: install the test extra "
    "(pip install -e '.[test]', which pins slicer-core==5.13.31053.0)")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "CardiacEnsembleLib" / "sample" / "patient090"
UNTRAINED_MEMBERS = {"unet-mnv2", "linknet-mnv2", "fpn-mnv2"}  # conftest's untrained_models


@pytest.fixture
def scene():
    from CardiacEnsembleLib.slicer.scene import create_scene

    return create_scene().scene


@pytest.fixture(scope="module")
def sample_loaded():
    """patient090 (the shipped sample), both phases, in a scene kept for the test module."""
    from CardiacEnsembleLib.slicer.acdc import load_acdc_case
    from CardiacEnsembleLib.slicer.scene import create_scene

    wired = create_scene()
    return wired.scene, load_acdc_case(wired.scene, SAMPLE)


@pytest.fixture(scope="module")
def untrained_ensemble(untrained_models):
    from CardiacEnsembleLib.inference.ensemble import load_ensemble

    return load_ensemble(untrained_models, device="cpu")


@pytest.fixture(scope="module")
def worker():
    """An inference worker process (one torch thread) for a test module, stopped after it."""
    from CardiacEnsembleLib.slicer.worker import InferenceWorker

    worker = InferenceWorker(threads=1)
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def untrained_request(untrained_models):
    """What the panel sends the worker, for conftest's untrained members on the CPU."""
    from CardiacEnsembleLib.slicer.worker import EnsembleRequest

    return EnsembleRequest(str(untrained_models), device="cpu")


@pytest.fixture(scope="module")
def bridged_prediction(sample_loaded, worker, untrained_request):
    """The ED frame segmented through the worker process, as the panel does it."""
    from CardiacEnsembleLib.slicer.prediction import SegmentationJob

    scene, loaded = sample_loaded
    job = SegmentationJob(loaded["ED"].volume, worker, untrained_request)
    assert job.wait(timeout=600), "segmentation job did not finish in 10 min (hung?)"
    return job, job.finish(name="patient090 ED prediction")


def fake_prediction(case, fusion: str = "vote"):
    """A Prediction built from the ground truth (no network): cheap results for file tests."""
    from CardiacEnsembleLib.core.case import MemberOutput, Prediction

    rolled = np.roll(case.labels, 1, axis=1)
    uncertainty = np.linspace(0, 1, case.labels.size, dtype=np.float32).reshape(case.labels.shape)
    return Prediction(labels=np.roll(case.labels, 1, axis=2), probabilities=None,
                      members=[MemberOutput("a", case.labels, 0.1), MemberOutput("b", rolled, 0.2)],
                      uncertainty=uncertainty, disagreement=np.zeros_like(uncertainty),
                      geometry=case.geometry, fusion=fusion, device="cpu", case_name=case.name)
