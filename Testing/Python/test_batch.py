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
