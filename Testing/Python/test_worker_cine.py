"""The inference worker's cine request, for real: a spawned worker segments every frame of a
cine crop in one request, reporting progress; its answer is in-process `segment_cine`'s, voxel
for voxel and ml for ml; Cancel kills it as for a frame, and the frame path still works after.
Untrained members on the shipped sample's ED and ES frames stacked as a 3-frame cine (fast);
`test_slicer_cine` runs the real 12-frame cine through the bridge. No MRML."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from mrml_fixtures import SAMPLE, untrained_request, worker  # noqa: F401  (fixtures)

HANG_GUARD = 600.0  # seconds: a hung worker fails the test; no test depends on speed


@pytest.fixture(scope="module")
def small_cine():
    """A (3, Z, Y, X) cine: ED, ES, ED of the sample (frames of one grid, as a cine's are)."""
    from CardiacEnsembleLib.io.acdc import PatientFolder

    patient = PatientFolder.open(SAMPLE)
    ed, es = (patient.load(phase, with_gt=False) for phase in ("ED", "ES"))
    return np.stack([ed.image, es.image, ed.image]), ed.geometry


@pytest.fixture(scope="module")
def direct(untrained_models, small_cine):
    """In-process `segment_cine` on one torch thread, as the worker runs it."""
    import torch

    from CardiacEnsembleLib.inference.cine import segment_cine
    from CardiacEnsembleLib.inference.ensemble import load_ensemble

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return segment_cine(load_ensemble(untrained_models, device="cpu"), *small_cine)
    finally:
        torch.set_num_threads(before)


def test_the_worker_segments_every_frame_as_segment_cine_does(worker, untrained_request,
                                                              small_cine, direct):
    cine, geometry = small_cine
    job = worker.submit_cine(cine, geometry, untrained_request, name="patient090 crop")
    assert job.wait(HANG_GUARD)
    result = job.result()
    assert result.labels.shape == cine.shape and result.labels.dtype == np.uint8
    np.testing.assert_array_equal(result.labels, direct.labels)
    assert set(result.volumes_ml) == {"LV", "RV", "Myo"}
    for name, values in direct.volumes_ml.items():
        np.testing.assert_array_equal(result.volumes_ml[name], values)
    assert (result.ed_frame, result.es_frame) == (direct.ed_frame, direct.es_frame)
    assert result.geometry is geometry
    assert job.reports and job.reports[-1][0] == job.reports[-1][1]
    assert [d for d, _, _ in job.reports] == sorted(d for d, _, _ in job.reports)
    assert not job.folder.exists(), "the request's files are removed once read"


@pytest.mark.skipif(os.name == "nt", reason="checks the process with POSIX signals")
def test_cancel_kills_a_cine_and_the_frame_path_still_works(worker, untrained_request,
                                                            small_cine):
    from CardiacEnsembleLib.core.case import Case
    from CardiacEnsembleLib.core.progress import Cancelled

    cine, geometry = small_cine
    job = worker.submit_cine(cine, geometry, untrained_request)
    deadline = time.monotonic() + HANG_GUARD
    while job.poll().state == "starting":
        assert time.monotonic() < deadline, "the worker never started the request"
        time.sleep(0.01)
    pid = worker.pid
    job.cancel()
    with pytest.raises(Cancelled):
        job.result()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    frame = worker.submit(Case(cine[1], geometry, patient_id="patient090", phase="ES"),
                          untrained_request)
    assert frame.wait(HANG_GUARD) and frame.result().labels.shape == cine.shape[1:]
