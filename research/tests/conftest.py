"""The research scripts' tests use the unit tests' fixtures (real ACDC data, untrained models).
Run them with `.venv/bin/python -m pytest research/tests`; they are not part of the README's
test command, because what they test answers a research question, not what ships."""
import sys
from pathlib import Path

from Testing.Python.conftest import acdc, patient_dir, untrained_models  # noqa: F401

#: The scripts run as `python research/<script>.py`, which puts research/ first on sys.path
#: (that is how they import each other); the tests import them the same way.
RESEARCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(RESEARCH))
