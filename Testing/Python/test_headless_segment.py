"""Testing/Python/headless_segment.py: one ACDC patient segmented in an MRML scene without the
application, its files readable by Slicer, and existing outputs never overwritten."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys

from mrml_fixtures import ROOT, SAMPLE, requires_mrml

pytestmark = requires_mrml

HEADLESS = ROOT / "Testing" / "Python" / "headless_segment.py"


def test_headless_script_segments_a_patient_and_refuses_to_overwrite(tmp_path,
                                                                     untrained_models):
    import slicer

    from CardiacEnsembleLib.core.terminology import SEGMENTS
    from CardiacEnsembleLib.slicer.scene import create_scene

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
                 segmentation.GetNthSegment(i).GetTerminology()) for i in range(3)] == \
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
