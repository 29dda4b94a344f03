"""Many studies on a local Dask cluster give the same labels as one process, and refuse to
overwrite before any work is sent out."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install "
                                          "'cardiac-ensemble[scale]')")

from CardiacEnsembleLib import io  # noqa: E402
from CardiacEnsembleLib.io.acdc import PatientFolder  # noqa: E402
from CardiacEnsembleLib.inference.batch import segment_studies  # noqa: E402
from CardiacEnsembleLib.inference.ensemble import load_ensemble  # noqa: E402


def test_two_workers_segment_every_study_like_a_single_process(untrained_models, patient_dir,
                                                               tmp_path):
    folders = [patient_dir("patient090"), patient_dir("patient094")]
    results = segment_studies(folders, tmp_path, workers=2, models_dir=untrained_models)
    assert [r.patient for r in results] == ["patient090", "patient094"]
    ensemble = load_ensemble(untrained_models, device="cpu")
    for folder in folders:
        patient = PatientFolder.open(folder)
        for phase in ("ED", "ES"):
            written, _ = io.read_image(tmp_path / f"{patient.patient_id}_{phase}_seg.nii.gz")
            np.testing.assert_array_equal(written, ensemble.predict(patient.load(phase)).labels)
    assert all(set(r.dice) == {"ED", "ES"} for r in results)


def test_an_existing_output_stops_the_batch_before_any_work(untrained_models, patient_dir,
                                                            tmp_path):
    existing = tmp_path / "patient094_ES_seg.nii.gz"
    existing.write_bytes(b"mine")
    with pytest.raises(io.OutputExistsError, match="patient094_ES_seg"):
        segment_studies([patient_dir("patient090"), patient_dir("patient094")], tmp_path,
                        workers=2, models_dir=untrained_models)
    assert existing.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patient094_ES_seg.nii.gz"]


# ------------------------------------------------------------------------ failures, resume
# Real ACDC studies copied into a writable data root (without their 4D cines): patient090 and
# patient094, the two smallest, with the untrained members. Through the CLI, as a user runs it.

import logging  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from CardiacEnsembleLib.cli import main  # noqa: E402
from CardiacEnsembleLib.core.errors import CaseError  # noqa: E402
from CardiacEnsembleLib.inference import batch as batch_module  # noqa: E402


def data_root(tmp_path: Path, patient_dir, *patients: str) -> Path:
    root = tmp_path / "data"
    for patient in patients:
        (root / patient).mkdir(parents=True)
        for path in patient_dir(patient).iterdir():
            if path.is_file() and not path.name.endswith("_4d.nii.gz"):
                shutil.copyfile(path, root / patient / path.name)
    return root


def batch_cli(capsys, root: Path, out: Path, models: Path, *extra) -> tuple[int, str, str]:
    code = main(["-q", "batch", "--data", str(root), "-o", str(out), "--models", str(models),
                 "--workers", "2", *[str(e) for e in extra]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def truncate_es_frame(folder: Path) -> str:
    broken = folder / "patient094_frame07.nii.gz"
    broken.write_bytes(broken.read_bytes()[:5000])
    return f"{broken}: cannot be read as NIfTI"


def break_info_cfg(folder: Path) -> str:
    """Found when the batch plans its studies, not in a worker: still that study's failure."""
    info = folder / "Info.cfg"
    info.write_text(info.read_text().replace("ED: 1", "ED: 1.7"))
    return f"{info}: 'ED' should be a whole number ('1.7'); expected e.g. 'ED: 1'"


@pytest.mark.parametrize("spoil", [truncate_es_frame, break_info_cfg])
def test_a_failed_study_is_reported_and_the_others_finish(spoil, untrained_models, patient_dir,
                                                          tmp_path, capsys, caplog):
    root = data_root(tmp_path, patient_dir, "patient090", "patient094")
    said = spoil(root / "patient094")
    out = tmp_path / "out"
    code, stdout, _ = batch_cli(capsys, root, out, untrained_models)
    assert code == 1
    lines = stdout.splitlines()
    assert lines[0].startswith("patient090: ok, ")
    assert lines[1].startswith(f"patient094: failed: {said}")
    assert lines[2] == f"1 ok, 1 failed: wrote 2 label maps to {out}"
    # the failed study left nothing, not even its ED map or a temporary
    assert sorted(p.name for p in out.iterdir()) == ["patient090_ED_seg.nii.gz",
                                                     "patient090_ES_seg.nii.gz"]
    assert not [r for r in caplog.records
                if r.name.startswith("distributed") and r.levelno < logging.WARNING]


def test_resume_skips_finished_studies_and_runs_the_rest(untrained_models, patient_dir,
                                                        tmp_path, capsys):
    root = data_root(tmp_path, patient_dir, "patient090", "patient094")
    out = tmp_path / "out"
    out.mkdir()
    finished = [out / f"patient090_{phase}_seg.nii.gz" for phase in ("ED", "ES")]
    for path in finished:
        path.write_bytes(b"an earlier run's result")
    code, stdout, _ = batch_cli(capsys, root, out, untrained_models, "--resume")
    assert code == 0
    assert stdout.splitlines()[0] == "patient090: skipped: already done (its outputs exist)"
    assert stdout.splitlines()[1].startswith("patient094: ok, ")
    assert all(path.read_bytes() == b"an earlier run's result" for path in finished)
    assert (out / "patient094_ES_seg.nii.gz").is_file()


def test_batch_refuses_an_output_folder_inside_a_patient_folder(untrained_models, patient_dir,
                                                                tmp_path):
    root = data_root(tmp_path, patient_dir, "patient090")
    with pytest.raises(CaseError, match=f"^{root / 'patient090' / 'seg'}: is inside the patient "
                                        f"folder {root / 'patient090'}, an input of this run"):
        segment_studies([root / "patient090"], root / "patient090" / "seg",
                        models_dir=untrained_models)
    assert sorted(p.name for p in (root / "patient090").iterdir()) == sorted(
        p.name for p in patient_dir("patient090").iterdir() if not p.name.endswith("_4d.nii.gz"))


def test_an_unreachable_scheduler_is_one_line(untrained_models, patient_dir, tmp_path, capsys,
                                              monkeypatch):
    monkeypatch.setattr(batch_module, "SCHEDULER_TIMEOUT_S", 1)
    root = data_root(tmp_path, patient_dir, "patient090")
    code, _, err = batch_cli(capsys, root, tmp_path / "out", untrained_models,
                             "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2
    assert err.startswith("error: --scheduler tcp://127.0.0.1:1: no Dask scheduler answered (")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_batch_without_dask_says_which_extra_to_install(untrained_models, patient_dir, tmp_path,
                                                        capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else find_spec(name, *a))
    code, _, err = batch_cli(capsys, patient_dir("patient090"), tmp_path / "out",
                             untrained_models)
    assert code == 2
    assert err == "error: batch needs Dask's distributed scheduler, which is not installed: pip " \
                  "install 'cardiac-ensemble[scale]' (in a clone: pip install -e '.[scale]')\n"
