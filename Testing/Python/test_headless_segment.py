"""The batch script installed with the module (CardiacEnsemble/Resources/Scripts/
headless_segment.py): one ACDC patient segmented in an MRML scene without the application, its
files readable by Slicer, existing outputs never overwritten, any error one line and status 2;
with its cine (patient090 of ../shared/acdc), every frame as a segmentation sequence, a label
sequence and the volume curve whose ED/ES frames it reports."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys

from mrml_fixtures import ROOT, SAMPLE, requires_mrml

pytestmark = requires_mrml

HEADLESS = ROOT / "CardiacEnsemble" / "Resources" / "Scripts" / "headless_segment.py"


def test_headless_script_segments_a_patient_and_refuses_to_overwrite(tmp_path,
                                                                     untrained_models):
    import slicer

    from CardiacEnsembleLib.core.terminology import SEGMENTS
    from CardiacEnsembleLib.slicer.scene import create_scene
    from CardiacEnsembleLib.slicer.segmentations import segment_terminology

    patient = tmp_path / "patient090"
    shutil.copytree(SAMPLE, patient)
    out = tmp_path / "out"
    command = [sys.executable, str(HEADLESS), str(patient), str(out),
               "--models", str(untrained_models), "--device", "cpu"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "patient090_ED.seg.nrrd", "patient090_ES.seg.nrrd", "patient090_metrics.csv"]

    fresh = create_scene().scene
    for phase in ("ED", "ES"):
        node = fresh.AddNewNodeByClass("vtkMRMLSegmentationNode", phase)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(out / f"patient090_{phase}.seg.nrrd"))
        assert storage.ReadData(node)
        segmentation = node.GetSegmentation()
        assert [(segmentation.GetNthSegment(i).GetName(),
                 segment_terminology(segmentation.GetNthSegment(i))) for i in range(3)] == \
            [(spec.name, spec.terminology) for spec in SEGMENTS]

    with open(out / "patient090_metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = [r for r in rows if r["measure"] in ("Dice", "HD95", "MSD")]
    assert len(scores) == 2 * 3 * 3
    assert {r["method"] for r in scores} == {"ensemble-mean"}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in scores if r["measure"] == "Dice")
    clinical = [r for r in rows if r["measure"] in ("volume", "EF", "mass")]
    assert {r["method"] for r in clinical} == {"ensemble-mean", "ground truth"}
    assert len(clinical) == 2 * 7

    before = (out / "patient090_metrics.csv").read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2
    assert "refusing to overwrite it (remove it or pick another OUT_DIR)" in again.stderr
    assert "Traceback" not in again.stderr
    assert (out / "patient090_metrics.csv").read_bytes() == before


def _run(*arguments, cwd=None):
    return subprocess.run([sys.executable, str(HEADLESS), *map(str, arguments)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def test_any_error_is_one_line_and_status_2(tmp_path):
    run = _run(tmp_path / "no such patient", tmp_path / "out", "--device", "cpu")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such patient" in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_script_finds_the_library_beside_it_as_when_installed(tmp_path):
    """Installed, the script sits in <module>/Resources/Scripts and the library in <module>."""
    module = tmp_path / "qt-scripted-modules"
    (module / "Resources" / "Scripts").mkdir(parents=True)
    shutil.copy(HEADLESS, module / "Resources" / "Scripts")
    (module / "CardiacEnsembleLib").symlink_to(ROOT / "CardiacEnsembleLib")
    script = module / "Resources" / "Scripts" / HEADLESS.name
    code = f"import runpy; print(runpy.run_path({str(script)!r}, run_name='x')['LIBRARY_ROOT'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(module)


def test_with_its_cine_every_frame_is_written_and_the_reported_ed_es_are_the_curves(
        tmp_path, untrained_models, patient_dir):
    import numpy as np
    import slicer

    from CardiacEnsembleLib.slicer.files import read_sequence
    from CardiacEnsembleLib.slicer.scene import create_scene
    from CardiacEnsembleLib.slicer.segmentations import segment_ids_by_name

    out = tmp_path / "out"
    run = _run(patient_dir("patient090"), out, "--models", untrained_models, "--device", "cpu",
               "--cine")
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "patient090_ED.seg.nrrd", "patient090_ES.seg.nrrd", "patient090_cine.seg.seq.mrb",
        "patient090_cine_labels.seq.nrrd", "patient090_cine_volumes.csv",
        "patient090_metrics.csv"]
    reported = re.search(r"patient090 cine, 12 frames: ED frame (\d+), ES frame (\d+)",
                         run.stdout)
    assert reported, run.stdout
    with open(out / "patient090_cine_volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(1, 13))
    lv = np.array([float(r["lv_ml"]) for r in rows])
    assert (int(np.argmax(lv)) + 1, int(np.argmin(lv)) + 1) == tuple(map(int, reported.groups()))

    fresh = create_scene()
    sequence = read_sequence(fresh, out / "patient090_cine.seg.seq.mrb", "read back")
    assert sequence.GetNumberOfDataNodes() == 12
    for index in (0, 11):
        segment_ids_by_name(sequence.GetNthDataNode(index))  # the three ACDC segments
    labels = read_sequence(fresh, out / "patient090_cine_labels.seq.nrrd", "labels")
    assert labels.GetNumberOfDataNodes() == 12
    written = np.stack([slicer.util.arrayFromVolume(labels.GetNthDataNode(i))
                        for i in range(12)])
    assert written.shape[0] == 12 and set(np.unique(written).tolist()) <= {0, 1, 2, 3}
    # the label sequence is the curve's labels: its LV voxels per frame give the CSV's LV ml
    voxel_ml = float(np.prod(labels.GetNthDataNode(0).GetSpacing())) / 1000.0
    np.testing.assert_allclose((written == 3).sum(axis=(1, 2, 3)) * voxel_ml, lv, rtol=1e-4,
                               atol=1e-3)


def test_no_cine_in_the_folder_but_asked_for_is_one_line_and_status_2(tmp_path):
    patient = tmp_path / "patient090"
    shutil.copytree(SAMPLE, patient)
    run = _run(patient, tmp_path / "out", "--device", "cpu", "--cine")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: {patient}: has no cine (patient090_4d.nii.gz) to segment (--cine)"]
