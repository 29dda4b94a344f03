"""Options and method names: one spelling each, read back exactly, and refused with the valid
choices named. No torch: `core` must import without it (checked in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from CardiacEnsembleLib.core.errors import OutputExistsError, refuse_existing
from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, WeightTable, read_manifest
from CardiacEnsembleLib.core.options import FUSION_RULES, FusionRule, Method, check_steps


@pytest.mark.parametrize("method, name", [
    (Method.ensemble("weighted", ["lcc"]), "ensemble-weighted+lcc"),
    (Method.ensemble("mean"), "ensemble-mean"),
    (Method.ensemble("vote", ["gate", "lcc"]), "ensemble-vote+lcc+gate"),
    (Method.single("unetpp25d-mnv2", ["heart", "lcc"]), "unetpp25d-mnv2+lcc+heart"),
    (Method.single("fpn25d-mnv2"), "fpn25d-mnv2"),
])
def test_a_method_has_one_name_and_reads_back_from_it(method, name):
    assert method.name == name
    assert Method.parse(name) == method


def test_a_member_named_like_a_rule_is_still_a_member():
    assert not Method.parse("ensemble2").is_ensemble
    assert Method.parse("ensemble-staple").rule is FusionRule.STAPLE


def test_unknown_choices_are_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="mean, weighted, vote, staple"):
        Method.ensemble("median")
    with pytest.raises(ValueError, match="unknown post-processing step.*lcc, gate, heart"):
        check_steps(["erode"])
    assert FUSION_RULES == ("mean", "weighted", "vote", "staple")


def test_weight_table_reads_numbers_and_per_class_lists_as_one_table():
    table = WeightTable.from_json({"a": 0.5, "b": [0.0, 1.0, 0.25, 0.5]}, ["b", "a"])
    assert table.table.tolist() == [[0.0, 1.0, 0.25, 0.5], [0.5] * 4]
    assert table.per_class and table.counts("b") and table.text("a") == "0.500"
    assert table.to_json() == {"b": [0.0, 1.0, 0.25, 0.5], "a": 0.5}
    assert table.subset(["a"]).table.shape == (1, 4)
    with pytest.raises(ValueError, match="'b' is .*expected a non-negative number"):
        WeightTable.from_json({"b": [1.0, -1.0, 0.0, 0.0]}, ["b"])


def test_the_shipped_manifest_reads_typed():
    manifest = read_manifest(DEFAULT_MODELS_DIR)
    assert manifest.fusion is FusionRule.WEIGHTED and manifest.postprocess == ("lcc",)
    assert manifest.weights.names == tuple(manifest.names)
    assert np.all(manifest.weights.table >= 0) and manifest.weights.table.shape == (5, 4)


def test_a_broken_manifest_names_its_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"manifest\.json: not valid JSON"):
        read_manifest(tmp_path)


def test_refuse_existing_refuses_before_any_work_unless_asked(tmp_path):
    target = tmp_path / "out.nii.gz"
    refuse_existing([target])  # absent: fine
    target.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="out.nii.gz: already exists"):
        refuse_existing([tmp_path / "other", target])
    refuse_existing(target, overwrite=True)


def test_core_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "import CardiacEnsembleLib.core.options, CardiacEnsembleLib.core.manifest\n"
            "import CardiacEnsembleLib.core.case, CardiacEnsembleLib.core.errors\n"
            "print(CardiacEnsembleLib.core.manifest.read_manifest().fusion.value)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "weighted"


def test_the_package_names_the_model_release_it_ships():
    import CardiacEnsembleLib
    from CardiacEnsembleLib.core.version import MODELS_RELEASE

    assert read_manifest(DEFAULT_MODELS_DIR).version == MODELS_RELEASE
    assert CardiacEnsembleLib.__version__.count(".") == 2
