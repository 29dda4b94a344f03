"""The workbench's commands of `cardiac-ensemble` (CardiacEnsembleDev/cli.py), found through
the entry point `cardiac_ensemble.commands`; here `report`: the test-split evaluation, the
release report and the test metrics recorded in the manifest.

Runs use the untrained members of `conftest.untrained_models` (plumbing, not accuracy) on two
slices of patient090, so a whole `report` costs seconds.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from CardiacEnsembleLib.cli import ENTRY_POINT_GROUP, installed_groups, main

PATIENT = "patient090"
MEMBERS = ("unet-mnv2", "linknet-mnv2", "fpn-mnv2")
STRUCTURES = ("RV", "Myo", "LV")
WORKBENCH_COMMANDS = ("train", "pack", "ship", "select", "benchmark", "report", "quality")


def run_cli(*argv) -> tuple[int, str, str]:
    """main(argv) with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while this module runs (a busy 2-core machine runs 2 threads 4-6x
    slower); restored afterwards. Results here do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def test_split_root(patient_dir, tmp_path_factory) -> Path:
    """An ACDC root whose test split is patient090 cut to slices 3-4 (real voxels, headers)."""
    root = tmp_path_factory.mktemp("acdc_small")
    source, folder = patient_dir(PATIENT), root / "testing" / PATIENT
    folder.mkdir(parents=True)
    shutil.copyfile(source / "Info.cfg", folder / "Info.cfg")
    for path in source.glob(f"{PATIENT}_frame*.nii.gz"):
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 2:4], None, image.header),
                 folder / path.name)
    (root / "splits.json").write_text(json.dumps({"train": [], "validation": [],
                                                  "test": [PATIENT]}))
    return root


@pytest.fixture(scope="module")
def report_run(untrained_models, test_split_root, tmp_path_factory):
    """`report --split test --record-in-manifest --benchmark` on a copy of the models folder:
    (code, stdout, evaluation folder, report path, models folder)."""
    work = tmp_path_factory.mktemp("report_run")
    models = work / "models"
    shutil.copytree(untrained_models, models)
    out, report = work / "eval", work / "reports" / "acdc_test.md"
    code, stdout, _ = run_cli("-q", "report", "--data", test_split_root, "--split", "test",
                              "--rules", "mean", "--out", out, "--report", report, "--benchmark",
                              "--record-in-manifest", "--models", models, "--device", "cpu")
    return code, stdout, out, report, models


def mean_dice_from_scores(scores_csv: Path, method: str) -> dict[str, float]:
    """Mean Dice per structure over frames and their mean, straight from scores.csv."""
    with open(scores_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == method]
    per = {s: float(np.mean([float(r["dice"]) for r in rows if r["structure"] == s]))
           for s in STRUCTURES}
    return {**per, "mean": float(np.mean(list(per.values())))}


# ------------------------------------------------------------------------ discovery

def test_the_workbench_registers_its_commands_through_the_entry_point():
    from CardiacEnsembleDev.cli import register

    assert ENTRY_POINT_GROUP == "cardiac_ensemble.commands"
    assert register in installed_groups()


def test_help_lists_the_workbench_commands_after_the_runtime_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed == ["segment", "evaluate", "info", "models", "batch", *WORKBENCH_COMMANDS]


# ------------------------------------------------------------------------ report

def test_report_exits_0_and_writes_the_evaluation_tables_as_evaluate_does(report_run):
    code, _, out, _, _ = report_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["clinical.csv", "scores.csv", "summary.md"]
    assert (out / "summary.md").read_text().startswith(
        f"# Evaluation on 1 patient(s), ED and ES\n\nPatients: {PATIENT}\n")


def test_report_writes_the_markdown_report_and_its_two_charts(report_run):
    _, stdout, _, report, _ = report_run
    assert sorted(p.name for p in report.parent.iterdir()) == [
        "acdc_test.md", "acdc_test_accuracy_cost.png", "acdc_test_dice_boxes.png"]
    text = report.read_text()
    assert text.startswith("# Ensemble on the test split of ACDC\n\n"
                           f"1 patients, ED and ES frames: {PATIENT}.  \n")
    assert "Produced by `cardiac-ensemble -q report --data " in text
    assert "## Cost on this machine" in text  # --benchmark without ids: the first patients
    assert f"benchmark on {PATIENT} (each member alone, then the ensemble)" in stdout


def test_report_records_the_shipped_settings_test_metrics_in_the_manifest(report_run):
    _, stdout, out, _, models = report_run
    test = json.loads((models / "manifest.json").read_text())["test"]
    assert f"recorded the test metrics in {models / 'manifest.json'}" in stdout
    assert test["patients"] == 1
    assert test["method"] == "ensemble-mean"  # the manifest's rule, no clean-up
    assert test["dice"] == pytest.approx(mean_dice_from_scores(out / "scores.csv",
                                                               "ensemble-mean"), abs=1e-9)
    rivals = [*MEMBERS, *(f"{m}+lcc" for m in MEMBERS)]
    assert sorted(test["members"]) == sorted(rivals)
    for method, dice in test["members"].items():
        assert dice == pytest.approx(mean_dice_from_scores(out / "scores.csv", method)["mean"],
                                     abs=1e-9)
    assert test["best_member"] == max(rivals, key=lambda m: test["members"][m])
    assert test["best_member_dice"]["mean"] == test["members"][test["best_member"]]


def test_models_then_shows_the_recorded_test_score(report_run, capsys):
    _, _, _, _, models = report_run
    test = json.loads((models / "manifest.json").read_text())["test"]
    assert main(["models", "--models", str(models)]) == 0
    assert (f"test mean Dice {test['dice']['mean']:.4f} (ensemble-mean, 1 test patients; best "
            f"member {test['best_member']} {test['best_member_dice']['mean']:.4f})"
            in capsys.readouterr().out.splitlines())


NOT_TEST = "--record-in-manifest records test metrics: use it with --split test"
NOT_SHIPPED = "--record-in-manifest describes the shipped setting; drop --members and --fusion"


@pytest.mark.parametrize("options, message", [
    (["--patients", PATIENT], NOT_TEST),
    (["--split", "test", "--fusion", "vote"], NOT_SHIPPED),
    (["--split", "test", "--members", "unet-mnv2"], NOT_SHIPPED)])
def test_report_refuses_to_record_another_setting_before_any_work(options, message,
                                                                  untrained_models,
                                                                  test_split_root, tmp_path):
    with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
        run_cli("report", "--data", test_split_root, *options, "--out", tmp_path / "eval",
                "--report", tmp_path / "r.md", "--record-in-manifest",
                "--models", untrained_models, "--device", "cpu")
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_an_existing_report_before_the_ensemble_loads(untrained_models,
                                                                     test_split_root, tmp_path):
    report = tmp_path / "acdc_test.md"
    report.write_text("the user's own report")
    code, stdout, stderr = run_cli("report", "--data", test_split_root, "--split", "test",
                                   "--out", tmp_path / "eval", "--report", report,
                                   "--models", untrained_models, "--device", "cpu")
    assert code == 2
    assert stderr == f"error: {report}: already exists; refusing to overwrite it " \
                     f"(pass --overwrite to replace it)\n"
    assert "ensemble: " not in stdout
    assert report.read_text() == "the user's own report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acdc_test.md"]


@pytest.fixture(scope="module")
def quality_run(untrained_models, test_split_root, tmp_path_factory):
    """`quality --split validation --apply` on patient090 (2 slices) with a copy of the models
    folder: (code, stdout, out folder, models folder)."""
    work = tmp_path_factory.mktemp("quality_run")
    root = work / "acdc"
    shutil.copytree(test_split_root, root)
    (root / "splits.json").write_text(json.dumps({"train": [], "validation": [PATIENT],
                                                  "test": []}))
    models = work / "models"
    shutil.copytree(untrained_models, models)
    out = work / "qc"
    code, stdout, _ = run_cli("-q", "quality", "--data", root, "--split", "validation",
                              "--out", out, "--apply", "--models", models, "--device", "cpu")
    return code, stdout, out, models


def test_quality_writes_its_report_and_puts_the_fitted_thresholds_in_the_manifest(quality_run):
    from CardiacEnsembleLib.core.manifest import read_manifest
    from CardiacEnsembleLib.core.quality import QualityScore

    code, stdout, out, models = quality_run
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["error_caught.png", "report.md",
                                                     "thresholds.json", "units.csv"]
    assert (out / "error_caught.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Error caught in the top 10% of slices" in (out / "report.md").read_text()
    fitted = json.loads((out / "thresholds.json").read_text())
    assert len(fitted) == 4  # the ensemble's two scores and the best member's two
    stored = read_manifest(models).quality_control
    assert set(stored) == {QualityScore.DISAGREEMENT, QualityScore.ENTROPY}
    for score, thresholds in stored.items():
        assert thresholds.source.startswith("validation, 1 patients")
        assert 0.0 <= thresholds.slice <= 1.0 and 0.0 <= thresholds.case <= 1.0
    # the product's scores: the ensemble's disagreement, a lone network's own entropy
    for score, system in ((QualityScore.DISAGREEMENT, "ensemble disagreement"),
                          (QualityScore.ENTROPY, "best member entropy")):
        assert (stored[score].slice, stored[score].case) == (
            fitted[system]["slice_threshold"], fitted[system]["case_threshold"])
    assert re.search(r"^ensemble disagreement +slice +AUROC ", stdout, flags=re.MULTILINE)


def test_quality_refuses_to_fit_thresholds_on_the_test_split_before_any_work(
        untrained_models, test_split_root, tmp_path):
    code, stdout, stderr = run_cli("quality", "--data", test_split_root, "--split", "test",
                                   "--out", tmp_path / "qc", "--apply",
                                   "--models", untrained_models, "--device", "cpu")
    assert code == 2
    assert stderr == ("error: --apply with --split test: the thresholds are fitted on "
                      "validation only (use --split validation; test only reports)\n")
    assert "ensemble: " not in stdout and list(tmp_path.iterdir()) == []
