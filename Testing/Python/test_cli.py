"""`cardiac-ensemble`'s runtime commands (segment, evaluate, info, models) end to end, on real
ACDC frames, through `cli.main([...])` in-process; the workbench's commands are in
test_cli_workbench.py.

The members are the untrained ones of `conftest.untrained_models`: they test plumbing (files,
geometry, options, reports), not accuracy. Every network run costs CPU time, so each expensive
command runs once per module (a module-scoped fixture, which captures stdout itself because
`capsys` is per test) and several tests read what it wrote. Cheap commands use `capsys`.

Note: `-q` is an option of the top-level parser, so it goes before the sub-command.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.core.case import Case
from CardiacEnsembleLib.core.quality import QualityReport
from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.io.images import read_image
from CardiacEnsembleLib.io.outputs import CineOutputs, SegmentationOutputs, frame_output

#: Smallest ACDC frames: 154x224x7, ED = frame 4, ES = frame 11 (Info.cfg).
PATIENT = "patient090"
ED_FILE = "patient090_frame04.nii.gz"
ES_FILE = "patient090_frame11.nii.gz"
EVAL_PATIENTS = ("patient090", "patient041")
MEMBERS = ("unet-mnv2", "linknet-mnv2", "fpn-mnv2")  # manifest order of untrained_models
#: Rules `evaluate` compares by default when the manifest has weights (it has).
RULES = ("mean", "weighted", "vote", "staple")
#: Members raw, then with the largest-component clean-up even though this ensemble ships none:
#: the rival an ensemble must beat is the best single member with every help it could have.
METHODS = (MEMBERS + tuple(f"{m}+lcc" for m in MEMBERS)
           + tuple(f"ensemble-{rule}" for rule in RULES))
STRUCTURE_LABELS = {"RV": 1, "Myo": 2, "LV": 3}


# ------------------------------------------------------------------------ helpers

def run_cli(*argv) -> tuple[int, str, str]:
    """main(argv) with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def model_options(models: Path) -> list[str]:
    return ["--models", str(models), "--device", "cpu"]


def read_zyx(path: Path) -> np.ndarray:
    """A NIfTI's voxels in the package's (Z, Y, X) order, read with nibabel alone."""
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def ensemble_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("ensemble: ")]
    assert len(lines) == 1, stdout
    return lines[0]


def numpy_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """2|P∩R| / (|P|+|R|); ACDC ground truth always holds every structure, so |R| > 0."""
    return 2.0 * np.count_nonzero(pred & ref) / (np.count_nonzero(pred) + np.count_nonzero(ref))


# ------------------------------------------------------------------------ shared runs

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the networks on one thread while this module runs, then restore the setting.

    Why: on a 2-core machine that is busy with training, two OpenMP threads spin against the
    other jobs and inference is 4-6x slower than on one. Results do not depend on it: the CLI
    and the library reference run under the same setting.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ed_case(patient_dir) -> Case:
    return PatientFolder.open(patient_dir(PATIENT)).load("ED")


@pytest.fixture(scope="module")
def library_ed(untrained_models, ed_case):
    """What the library itself predicts for patient090 ED: the reference for the CLI."""
    return load_ensemble(untrained_models, device="cpu").predict(ed_case)


@pytest.fixture(scope="module")
def frame_run(untrained_models, patient_dir, tmp_path_factory):
    """`segment patient090_frame04.nii.gz -o seg.nii.gz`: (code, stdout, input, output)."""
    source = patient_dir(PATIENT) / ED_FILE
    out = tmp_path_factory.mktemp("frame_run") / "seg.nii.gz"
    code, stdout, _ = run_cli("segment", source, "--output", out,
                              *model_options(untrained_models))
    return code, stdout, source, out


@pytest.fixture(scope="module")
def folder_run(untrained_models, patient_dir, tmp_path_factory):
    """`segment <patient090 folder> -o out --uncertainty --probabilities`."""
    out = tmp_path_factory.mktemp("folder_run") / "out"
    code, stdout, _ = run_cli("-q", "segment", patient_dir(PATIENT), "--output", out,
                              "--uncertainty", "--probabilities",
                              *model_options(untrained_models))
    return code, stdout, out


@pytest.fixture(scope="module")
def evaluation_run(untrained_models, acdc, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation") / "eval"
    code, stdout, _ = run_cli("-q", "evaluate", "--data", acdc, "--patients", *EVAL_PATIENTS,
                              "--out", out, *model_options(untrained_models))
    return code, stdout, out


@pytest.fixture(scope="module")
def small_frame(patient_dir, tmp_path_factory) -> Path:
    """Slices 3-4 of patient090 ED (real voxels, real header): cheap runs for option tests."""
    image = nib.load(str(patient_dir(PATIENT) / ED_FILE))
    path = tmp_path_factory.mktemp("small") / "patient090_ED_slices3-4.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 2:4], None, image.header), path)
    return path


@pytest.fixture(scope="module")
def small_member_probs(untrained_models, small_frame):
    """(ensemble, case, member probabilities, seconds) of the library on `small_frame`."""
    image, geometry = read_image(small_frame)
    case = Case(image=image, geometry=geometry)
    ensemble = load_ensemble(untrained_models, device="cpu")
    probs, seconds = ensemble.member_probabilities(case)
    return ensemble, case, probs, seconds


# ------------------------------------------------------------------------ segment: one frame

def test_segment_frame_exits_0_and_writes_uint8_labels_0_to_3_of_the_input_shape(frame_run):
    code, _, source, out = frame_run
    assert code == 0
    assert out.is_file()
    written = nib.load(str(out))
    assert written.shape == nib.load(str(source)).shape == (154, 224, 7)
    assert written.get_data_dtype() == np.uint8
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8
    assert set(np.unique(data).tolist()) <= {0, 1, 2, 3}


def test_segment_frame_output_has_the_input_affine_and_zooms_exactly(frame_run):
    _, _, source, out = frame_run
    written, original = nib.load(str(out)), nib.load(str(source))
    assert np.array_equal(written.affine, original.affine)
    assert written.header.get_zooms() == original.header.get_zooms()
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    assert int(written.header["qform_code"]) == int(original.header["qform_code"])


def test_segment_frame_reports_the_manifest_ensemble_and_its_default_fusion(frame_run):
    _, stdout, _, _ = frame_run
    assert ensemble_line(stdout) == "ensemble: unet-mnv2, linknet-mnv2, fpn-mnv2 | fusion mean | " \
                                    "device cpu (onnxruntime)"


def test_cli_labels_equal_the_library_prediction_voxel_for_voxel(frame_run, folder_run,
                                                                 library_ed):
    _, _, _, frame_out = frame_run
    _, _, folder_out = folder_run
    assert np.array_equal(read_zyx(frame_out), library_ed.labels)
    assert np.array_equal(read_zyx(folder_out / f"{PATIENT}_ED_seg.nii.gz"), library_ed.labels)


# ------------------------------------------------------------------------ segment: a patient

def test_segment_folder_writes_ed_and_es_label_maps_on_their_frames(folder_run, patient_dir):
    code, _, out = folder_run
    assert code == 0
    for phase, frame_file in (("ED", ED_FILE), ("ES", ES_FILE)):
        written = nib.load(str(out / f"{PATIENT}_{phase}_seg.nii.gz"))
        original = nib.load(str(patient_dir(PATIENT) / frame_file))
        assert written.shape == original.shape
        assert written.get_data_dtype() == np.uint8
        assert np.array_equal(written.affine, original.affine)


def test_segment_folder_writes_exactly_the_label_uncertainty_and_probability_maps(folder_run):
    _, _, out = folder_run
    expected = {f"{PATIENT}_{phase}_seg{tag}.nii.gz" for phase in ("ED", "ES")
                for tag in ("", "_uncertainty", "_prob1", "_prob2", "_prob3")}
    expected |= {f"{PATIENT}_{phase}_seg_qc.json" for phase in ("ED", "ES")}
    assert {p.name for p in out.iterdir()} == expected


def test_segment_folder_writes_the_files_the_library_names_for_it(folder_run):
    """One naming rule for the CLI, batch and scripts: `io.outputs`."""
    _, _, out = folder_run
    named = [SegmentationOutputs.beside(frame_output(out, PATIENT, phase), uncertainty=True,
                                        probabilities=True) for phase in ("ED", "ES")]
    assert sorted(out.iterdir()) == sorted(p for outputs in named for p in outputs.paths)


def test_segment_folder_prints_the_dice_of_each_written_map_against_ground_truth(folder_run,
                                                                                 patient_dir):
    _, stdout, out = folder_run
    folder = patient_dir(PATIENT)
    for phase, frame_file in (("ED", ED_FILE), ("ES", ES_FILE)):
        pattern = (rf"^{PATIENT}_{phase}: wrote .*{PATIENT}_{phase}_seg\.nii\.gz .* \| Dice vs "
                   rf"ground truth RV (\d\.\d{{3}}) Myo (\d\.\d{{3}}) LV (\d\.\d{{3}}) "
                   rf"\| (QC: .*)$")
        match = re.search(pattern, stdout, flags=re.MULTILINE)
        assert match, stdout
        predicted = read_zyx(out / f"{PATIENT}_{phase}_seg.nii.gz")
        truth = read_zyx(folder / frame_file.replace(".nii.gz", "_gt.nii.gz"))
        *dice, qc_line = match.groups()
        written = json.loads((out / f"{PATIENT}_{phase}_seg_qc.json").read_text())
        assert qc_line == QualityReport.from_json(written).summary()
        for printed, label in zip(dice, STRUCTURE_LABELS.values()):
            assert abs(float(printed) - numpy_dice(predicted == label, truth == label)) <= 5e-4


def test_segment_uncertainty_lies_in_0_1_and_equals_the_library_map(folder_run, library_ed):
    _, _, out = folder_run
    uncertainty = read_zyx(out / f"{PATIENT}_ED_seg_uncertainty.nii.gz")
    assert uncertainty.dtype == np.float32
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0
    np.testing.assert_allclose(uncertainty, library_ed.uncertainty, rtol=0, atol=1e-6)


def test_segment_probability_maps_are_the_fused_foreground_probabilities(folder_run,
                                                                         library_ed):
    _, _, out = folder_run
    maps = np.stack([read_zyx(out / f"{PATIENT}_ED_seg_prob{label}.nii.gz")
                     for label in (1, 2, 3)])
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.sum(axis=0).max() <= 1.0 + 1e-6  # background takes the rest
    np.testing.assert_allclose(maps, library_ed.probabilities[1:], rtol=0, atol=1e-6)


def test_segment_extra_maps_lie_on_the_frame_grid_as_itk_reads_it(folder_run, patient_dir):
    """Slicer reads NIfTI through ITK: the maps must overlay the frame there."""
    _, _, out = folder_run
    frame = sitk.ReadImage(str(patient_dir(PATIENT) / ED_FILE))
    for tag in ("_uncertainty", "_prob1", "_prob2", "_prob3"):
        extra = sitk.ReadImage(str(out / f"{PATIENT}_ED_seg{tag}.nii.gz"))
        assert extra.GetSize() == frame.GetSize()
        np.testing.assert_allclose(extra.GetSpacing(), frame.GetSpacing(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(extra.GetOrigin(), frame.GetOrigin(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(extra.GetDirection(), frame.GetDirection(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ ensemble options

def test_fusion_option_changes_the_rule_used(untrained_models, small_frame, small_member_probs,
                                             tmp_path, capsys):
    ensemble, case, probs, seconds = small_member_probs
    vote = ensemble.fuse(case, probs, seconds, "vote").labels
    mean = ensemble.fuse(case, probs, seconds, "mean").labels
    assert not np.array_equal(vote, mean)  # else this test could not tell the rules apart
    out = tmp_path / "vote.nii.gz"
    code = main(["segment", str(small_frame), "-o", str(out), "--fusion", "vote",
                 *model_options(untrained_models)])
    assert code == 0
    assert ensemble_line(capsys.readouterr().out) == \
        "ensemble: unet-mnv2, linknet-mnv2, fpn-mnv2 | fusion vote | device cpu (onnxruntime)"
    assert np.array_equal(read_zyx(out), vote)


def test_members_option_restricts_the_ensemble(untrained_models, small_frame, small_member_probs,
                                               tmp_path, capsys):
    ensemble, case, probs, seconds = small_member_probs
    chosen = ensemble.subset(["unet-mnv2", "fpn-mnv2"])
    pair = chosen.fuse(case, probs[[0, 2]], [seconds[0], seconds[2]], "mean").labels
    assert not np.array_equal(pair, ensemble.fuse(case, probs, seconds, "mean").labels)
    out = tmp_path / "pair.nii.gz"
    code = main(["segment", str(small_frame), "-o", str(out),
                 "--members", "unet-mnv2", "fpn-mnv2", *model_options(untrained_models)])
    assert code == 0
    assert ensemble_line(capsys.readouterr().out) == \
        "ensemble: unet-mnv2, fpn-mnv2 | fusion mean | device cpu (onnxruntime)"
    assert np.array_equal(read_zyx(out), pair)



def test_quiet_prints_the_result_lines_only(untrained_models, small_frame, tmp_path):
    """-q: results and errors only. Without it the run also says what runs (the ensemble
    line); the manifest's training note needs -v (it is history, printed on every run before)."""
    out = tmp_path / "seg.nii.gz"
    code, stdout, stderr = run_cli("-q", "segment", small_frame, "-o", out,
                                   *model_options(untrained_models))
    assert code == 0, stderr
    assert stdout.splitlines() == [line for line in stdout.splitlines()
                                   if line.startswith(f"patient090_ED_slices3-4: wrote {out} ")]
    assert len(stdout.splitlines()) == 1 and stderr == ""
    code, stdout, _ = run_cli("segment", small_frame, "-o", tmp_path / "plain.nii.gz",
                              *model_options(untrained_models))
    assert code == 0 and "note:" not in stdout and ensemble_line(stdout)
    code, stdout, _ = run_cli("-v", "segment", small_frame, "-o", tmp_path / "verbose.nii.gz",
                              *model_options(untrained_models))
    assert code == 0 and "note: untrained test members" in stdout.splitlines()


def test_progress_bar_times_from_its_start_not_from_the_first_report():
    """The first report comes after the first piece of work: timed from it, the rate read
    889700/s. Started 10 s before 7 of 35 slices are reported, the rate is about 0.7/s."""
    from CardiacEnsembleLib.cli.common import ProgressBar

    bar = ProgressBar("segment", unit="slice")
    bar.started -= 10.0
    with contextlib.redirect_stderr(io.StringIO()) as shown:
        bar(7, 35, "unet")
        bar.close()
    assert 0.6 < bar_rate(shown.getvalue()) < 0.8, shown.getvalue()
    assert " slice/s" in shown.getvalue()


def test_progress_bar_written_to_a_log_ends_on_its_final_count():
    """Throttled refreshes (mininterval) leave 9/12 as the last line a log shows unless the bar
    is kept at the end; a StringIO is no terminal, as a batch job's log is not."""
    from CardiacEnsembleLib.cli.common import ProgressBar

    bar = ProgressBar("cine", unit="frame")
    with contextlib.redirect_stderr(io.StringIO()) as shown:
        for done in range(1, 13):
            bar(done, 12, "")
        bar.close()
    last = [line for line in shown.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert "12/12 frame" in last[-1] and "100%" in last[-1], shown.getvalue()


def bar_rate(text: str) -> float:
    """The last rate a tqdm bar printed (`0.70 slice/s` or `1.43s/ slice` inverted)."""
    rate = re.findall(r"([0-9.]+) ?slice/s", text)
    if rate:
        return float(rate[-1])
    inverse = re.findall(r"([0-9.]+)s/ ?slice", text)
    return 1.0 / float(inverse[-1])

# ------------------------------------------------------------------------ segment: a 4D cine

@pytest.fixture(scope="module")
def small_cine(patient_dir, tmp_path_factory) -> Path:
    """Frames 1-3, slices 3-4 of patient090's real 4D cine (real header): a cheap cine."""
    image = nib.load(str(patient_dir(PATIENT) / f"{PATIENT}_4d.nii.gz"))
    path = tmp_path_factory.mktemp("small_cine") / "patient090_part_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 2:4, :3], None, image.header), path)
    return path


@pytest.fixture(scope="module")
def cine_run(untrained_models, small_cine, tmp_path_factory):
    """`segment --cine <small 4D file> -o out`: (code, stdout, output folder)."""
    out = tmp_path_factory.mktemp("cine_run") / "out"
    code, stdout, _ = run_cli("-q", "segment", small_cine, "--cine", "--output", out,
                              *model_options(untrained_models))
    return code, stdout, out


def test_segment_cine_writes_the_4d_labels_and_the_volume_curve_the_library_names(cine_run):
    code, stdout, out = cine_run
    assert code == 0
    outputs = CineOutputs.in_folder(out, "patient090_part_4d")
    assert sorted(out.iterdir()) == sorted(outputs.paths)
    assert [p.name for p in outputs.paths] == ["patient090_part_4d_cine_seg.nii.gz",
                                               "patient090_part_4d_volumes.csv",
                                               "patient090_part_4d_volumes.png"]
    assert re.search(r"^patient090_part_4d: 3 frames in \d+\.\d\d s \| ED/ES from the curve: "
                     r"[123]/[123] \| QC \(disagreement\): frame [123] the most in doubt "
                     r"\(\d\.\d{3}\) \| LV EF ", stdout, flags=re.MULTILINE), stdout


def test_segment_cine_labels_lie_on_the_cine_grid_one_volume_per_frame(cine_run, small_cine):
    _, _, out = cine_run
    written = nib.load(str(CineOutputs.in_folder(out, "patient090_part_4d").labels))
    assert written.shape == nib.load(str(small_cine)).shape == (154, 224, 2, 3)
    assert np.array_equal(written.affine, nib.load(str(small_cine)).affine)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}
    with open(out / "patient090_part_4d_volumes.csv", newline="") as handle:
        assert [row["frame"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def test_segment_cine_refuses_to_replace_its_outputs(cine_run, untrained_models, small_cine):
    _, _, out = cine_run
    before = {p: p.read_bytes() for p in out.iterdir()}
    code, stdout, stderr = run_cli("-q", "segment", small_cine, "--cine", "--output", out,
                                   *model_options(untrained_models))
    labels = CineOutputs.in_folder(out, "patient090_part_4d").labels
    assert code == 2
    assert stderr == f"error: {labels}: already exists; refusing to overwrite it " \
                     f"(pass --overwrite to replace it)\n"
    assert "ensemble: " not in stdout  # refused before the members load
    assert {p: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------ evaluate

def test_evaluate_exits_0_and_writes_scores_clinical_and_summary(evaluation_run):
    code, _, out = evaluation_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["clinical.csv", "scores.csv", "summary.md"]


def test_evaluate_scores_one_row_per_patient_phase_method_and_structure(evaluation_run):
    _, _, out = evaluation_run
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * (3 + 3 + 4) * 3 == 120
    keys = Counter((r["patient"], r["phase"], r["method"], r["structure"]) for r in rows)
    assert set(keys) == {(p, ph, m, s) for p in EVAL_PATIENTS for ph in ("ED", "ES")
                         for m in METHODS for s in STRUCTURE_LABELS}
    assert set(keys.values()) == {1}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)


def test_evaluate_clinical_has_reference_and_every_method_per_patient(evaluation_run):
    _, _, out = evaluation_run
    with open(out / "clinical.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["patient"], r["method"]) for r in rows) == \
        sorted((p, m) for p in EVAL_PATIENTS for m in ("reference",) + METHODS)


def test_evaluate_summary_table_has_one_row_per_method(evaluation_run):
    _, _, out = evaluation_run
    rows = [line for line in (out / "summary.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| method |")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(METHODS)


def test_evaluate_prints_a_table_row_for_every_method(evaluation_run):
    _, stdout, _ = evaluation_run
    for method in METHODS:
        assert re.search(rf"^\| {re.escape(method)} \|", stdout, flags=re.MULTILINE), method


@pytest.mark.parametrize("option", ["--report", "--benchmark", "--record-in-manifest"])
def test_evaluate_leaves_the_release_report_to_the_workbench(option, tmp_path, capsys):
    """The report writer and the release targets are workbench code (`report` command)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--out", str(tmp_path / "eval"), option])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------ info, models, help

def test_info_prints_the_ed_and_es_frames_of_info_cfg(patient_dir, capsys):
    folder = patient_dir(PATIENT)
    config = dict(line.split(":", 1) for line in (folder / "Info.cfg").read_text().splitlines()
                  if ":" in line)
    assert main(["info", str(folder)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    values = dict(zip(header.split(" | "), row.split(" | ")))
    assert values["patient"] == PATIENT
    assert (values["ED"], values["ES"]) == (config["ED"].strip(), config["ES"].strip()) \
        == ("4", "11")


def test_models_lists_the_three_members_with_their_sha256(untrained_models, capsys):
    assert main(["models", "--models", str(untrained_models)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [line.split()[0] for line in lines] == list(MEMBERS)
    for line, name in zip(lines, MEMBERS):
        spec = json.loads((untrained_models / name / "member.json").read_text())
        assert f"{spec['arch']}/{spec['encoder']}" in line
        assert f"sha256 {spec['weights_sha256'][:12]}" in line


def test_models_prints_the_manifest_setting_note_and_weights_first(untrained_models, capsys):
    assert main(["models", "--models", str(untrained_models)]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"untrained-test 0 ({untrained_models}): fusion mean",
        "note: untrained test members",
        "weights: unet-mnv2 2.000, linknet-mnv2 1.000, fpn-mnv2 1.000"]


def test_module_help_runs_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-m", "CardiacEnsembleLib", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cardiac-ensemble")
    commands = re.search(r"\{([a-z,]+)\}", result.stdout)
    assert commands, result.stdout
    assert {"segment", "evaluate", "info", "models", "batch"} <= set(commands.group(1).split(","))


#: Run `main(argv)` in a fresh interpreter; print the torch modules it imported, as JSON.
IMPORTS_AFTER = """
import json, sys
from CardiacEnsembleLib.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
heavy = {"torch", "torchvision", "segmentation_models_pytorch"}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("command", ["--help", "--version", "models", "info"])
def test_read_only_commands_start_without_importing_torch(command, untrained_models,
                                                          patient_dir):
    """`--help`, `models` and `info` only read files: they must answer before torch loads
    (seconds saved per call, and usable where torch is not installed yet)."""
    argv = {"--help": ["--help"], "--version": ["--version"],
            "models": ["models", "--models", str(untrained_models)],
            "info": ["info", str(patient_dir(PATIENT))]}[command]
    result = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.splitlines()[-1]) == []
    assert result.stdout.strip()


def test_version_names_the_package_and_the_models_release(capsys):
    from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, read_manifest
    from CardiacEnsembleLib.core.version import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == (f"cardiac-ensemble {__version__} (models release "
                                               f"{read_manifest(DEFAULT_MODELS_DIR).version})")


def test_the_runtime_never_imports_the_workbench_by_name():
    """The workbench's commands come through the entry point `cardiac_ensemble.commands`."""
    runtime = Path(__file__).resolve().parents[2] / "CardiacEnsembleLib"
    importing = [f"{path.relative_to(runtime)}:{number}" for path in sorted(runtime.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if re.match(r"\s*(from|import)\s+CardiacEnsembleDev\b", line)]
    assert importing == []


def test_evaluate_summary_names_the_ensemble_that_made_its_numbers(evaluation_run,
                                                                  untrained_models):
    _, _, out = evaluation_run
    lines = [line for line in (out / "summary.md").read_text().splitlines()
             if line.startswith("Ensemble: ")]
    expected = load_ensemble(untrained_models, device="cpu").settings_line
    assert lines == [f"Ensemble: {expected}"]
    assert "unet-mnv2, linknet-mnv2, fpn-mnv2 | fusion" in lines[0]
