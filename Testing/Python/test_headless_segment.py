"""The batch script installed with the module (CardiacEnsemble/Resources/Scripts/
headless_segment.py): one ACDC patient segmented in an MRML scene without the application, its
files readable by Slicer, existing outputs never overwritten, any error one line and status 2."""
from __future__ import annotations

import csv
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
