"""What the module asks before it runs (`CardiacEnsembleLib.core.requirements`): which packages
are missing or too old, pip pinned so it never replaces torch or SimpleITK, and the one-time
acknowledgement of the data terms, decided without Qt."""
from __future__ import annotations

import pytest

from CardiacEnsembleLib.core import requirements


@pytest.mark.parametrize("version, problem", [
    (None, "torch>=2.1 (not installed)"),
    ("2.0.1", "torch>=2.1 (found 2.0.1)"),
    ("2.1.0", None),
    ("2.10.0+cu128", None),
])
def test_torch_is_needed_at_its_minimum_version(version, problem):
    assert requirements.torch_problem(version) == problem


def test_nothing_is_missing_where_everything_is_installed():
    assert requirements.missing_packages() == []  # the test environment has all of them
    assert requirements.pip_requirements() == []


def test_a_missing_package_is_named_by_its_pip_requirement(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "nibabel") else real(name, *a))
    assert requirements.missing_packages() == ["torch>=2.1 (not installed)", "nibabel>=5.2"]
    assert requirements.pip_requirements() == ["nibabel>=5.2"]  # torch: the PyTorch extension


def test_pip_is_constrained_to_the_installed_torch_and_simpleitk():
    installed = {"torch": "2.5.1+cu121", "torchvision": None, "SimpleITK": "2.4.0",
                 "numpy": "2.1.0"}
    assert requirements.pip_constraints(installed) == ["torch==2.5.1+cu121",
                                                      "SimpleITK==2.4.0"]
    assert set(requirements.protected_versions()) == set(requirements.PROTECTED)


@pytest.mark.parametrize("stored, accepted", [
    (None, False), ("", False), ("ACDC CC BY-NC-SA 4.0, 0", False),
    (requirements.TERMS_VERSION, True),
])
def test_the_terms_are_asked_until_the_current_version_is_acknowledged(stored, accepted):
    assert requirements.terms_accepted(stored) is accepted


def test_the_terms_name_the_licence_and_the_citation():
    for needed in ("CC BY-NC-SA 4.0", "non-commercial", "doi:10.1109/TMI.2018.2837502",
                   "patient090"):
        assert needed in requirements.TERMS_TEXT
