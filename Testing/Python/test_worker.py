"""The inference worker process (`CardiacEnsembleLib.inference.server`) and its client
(`CardiacEnsembleLib.slicer.worker`), for real: a spawned process on the sample patient's ED
frame with untrained members. Progress arrives; its answer is in-process `Ensemble.predict`'s,
voxel for voxel; the second request reuses the loaded ensemble; Cancel kills the process; a
SIGKILLed worker gives one clear error and the next request starts a new one; and a main thread
that holds the GIL between polls (as Slicer's does) still gets its segmentation. No MRML."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from mrml_fixtures import ROOT, SAMPLE, UNTRAINED_MEMBERS, untrained_request, \
    worker  # noqa: F401  (fixtures)

HANG_GUARD = 600.0  # seconds: a hung worker fails the test; no test depends on speed
posix_only = pytest.mark.skipif(os.name == "nt", reason="checks the process with POSIX signals")


@pytest.fixture(scope="module")
def ed_case():
    from CardiacEnsembleLib.io.acdc import PatientFolder

    return PatientFolder.open(SAMPLE).load("ED", with_gt=False)


@pytest.fixture(scope="module")
def direct(untrained_models, ed_case):
    """In-process `Ensemble.predict` on one torch thread, as the worker runs it."""
    import torch

    from CardiacEnsembleLib.inference.ensemble import load_ensemble

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_ensemble(untrained_models, device="cpu").predict(ed_case)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def request_(untrained_request):
    return untrained_request


def _wait_until_busy(job):
    """Poll until the worker has begun the request (loading or running)."""
    deadline = time.monotonic() + HANG_GUARD
    while job.poll().state == "starting":
        assert time.monotonic() < deadline, "the worker never started the request"
        time.sleep(0.01)
    assert not job.poll().finished, "finished before it could be interrupted"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_progress_arrives_and_the_answer_is_in_process_predicts(worker, request_, ed_case,
                                                                direct):
    job = worker.submit(ed_case, request_)
    assert job.wait(HANG_GUARD)
    prediction = job.result()
    slices = ed_case.image.shape[0]
    total = len(UNTRAINED_MEMBERS) * slices
    assert job.reports and all(t == total for _, t, _ in job.reports)
    assert [d for d, _, _ in job.reports] == sorted(d for d, _, _ in job.reports)
    assert job.reports[-1][0] == total and job.poll().fraction == 1.0
    assert {m for _, _, m in job.reports} == UNTRAINED_MEMBERS
    np.testing.assert_array_equal(prediction.labels, direct.labels)
    for ours, theirs in zip(prediction.members, direct.members):
        assert ours.name == theirs.name
        np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_allclose(prediction.uncertainty, direct.uncertainty, atol=1e-6)
    np.testing.assert_allclose(prediction.probabilities, direct.probabilities, atol=1e-6)
    assert (prediction.fusion, prediction.device) == (direct.fusion, direct.device)
    assert prediction.geometry is ed_case.geometry
    assert not job.folder.exists(), "the request's files are removed once read"


def test_the_second_request_reuses_the_loaded_ensemble(worker, request_, ed_case):
    from dataclasses import replace

    first = worker.submit(ed_case, request_)
    assert first.wait(HANG_GUARD)
    first.result()
    pid = worker.pid
    for again in (request_, replace(request_, members=("fpn-mnv2", "unet-mnv2"),
                                    fusion="vote")):
        job = worker.submit(ed_case, again)
        assert job.wait(HANG_GUARD)
        prediction = job.result()
        assert job.info["ensemble_reused"] is True
        assert job.info["loads"] == first.info["loads"] and job.info["pid"] == pid
    assert [m.name for m in prediction.members] == ["fpn-mnv2", "unet-mnv2"]
    assert prediction.fusion == "vote"
    print(f"\nload {first.info['load_seconds']:.2f} s saved by the warm worker")


def test_heart_region_and_warnings_come_back_as_in_process(worker, request_, ed_case,
                                                           untrained_models):
    """The panel's request carries the heart margin; the answer carries what the result line
    says in the CLI (where the members ran, the warnings), not the labels alone."""
    from dataclasses import replace

    import torch

    from CardiacEnsembleLib.inference.ensemble import load_ensemble

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        direct = replace(load_ensemble(untrained_models, device="cpu"),
                         heart_margin=32).predict(ed_case)
    finally:
        torch.set_num_threads(before)
    job = worker.submit(ed_case, replace(request_, heart_margin=32))
    assert job.wait(HANG_GUARD)
    prediction = job.result()
    assert prediction.heart_region and prediction.heart_region == direct.heart_region
    assert prediction.warnings == direct.warnings
    np.testing.assert_array_equal(prediction.labels, direct.labels)


def test_a_lone_member_is_its_own_argmax(worker, request_, ed_case, direct):
    from dataclasses import replace

    job = worker.submit(ed_case, replace(request_, members=("linknet-mnv2",),
                                         fusion="weighted"))
    assert job.wait(HANG_GUARD)
    prediction = job.result()
    lone = {m.name: m.labels for m in direct.members}["linknet-mnv2"]
    np.testing.assert_array_equal(prediction.labels, lone)


@posix_only
def test_cancel_kills_the_worker_and_the_next_request_starts_a_new_one(worker, request_,
                                                                       ed_case):
    from CardiacEnsembleLib.core.progress import Cancelled

    job = worker.submit(ed_case, request_)
    _wait_until_busy(job)
    pid = worker.pid
    started = time.monotonic()
    job.cancel()
    print(f"\ncancel took {time.monotonic() - started:.3f} s")
    assert _gone(pid), "the worker process is still there after cancel"
    assert job.poll().state == "cancelled" and not worker.running
    with pytest.raises(Cancelled):
        job.result()
    again = worker.submit(ed_case, request_)
    assert again.wait(HANG_GUARD) and again.result().labels.shape == ed_case.image.shape
    assert worker.pid != pid


@posix_only
def test_a_killed_worker_gives_one_clear_error_and_the_next_request_works(worker, request_,
                                                                          ed_case):
    from CardiacEnsembleLib.slicer.worker import WorkerError

    job = worker.submit(ed_case, request_)
    _wait_until_busy(job)
    pid = worker.pid
    os.kill(pid, signal.SIGKILL)
    assert job.wait(HANG_GUARD)
    assert job.poll().state == "failed"
    with pytest.raises(WorkerError, match=r"the inference worker stopped unexpectedly \(exit "
                                          r"code -9, SIGKILL \(out of memory"):
        job.result()
    again = worker.submit(ed_case, request_)
    assert again.wait(HANG_GUARD) and again.result().labels.shape == ed_case.image.shape
    assert worker.pid != pid


def test_a_refused_request_says_why_and_the_worker_stays_up(worker, request_, ed_case):
    from dataclasses import replace

    from CardiacEnsembleLib.slicer.worker import WorkerRequestError

    job = worker.submit(ed_case, replace(request_, members=("no-such-member",)))
    assert job.wait(HANG_GUARD)
    pid = worker.pid
    with pytest.raises(WorkerRequestError, match="no-such-member"):
        job.result()
    assert worker.running and worker.pid == pid


@posix_only
def test_another_device_or_stop_ends_the_worker(worker, request_, ed_case):
    from dataclasses import replace

    job = worker.submit(ed_case, request_)
    assert job.wait(HANG_GUARD)
    pid = worker.pid
    other = worker.submit(ed_case, replace(request_, device="auto"))  # CPU here, still "other"
    assert _gone(pid) and worker.pid != pid
    assert other.wait(HANG_GUARD) and other.result() is not None
    assert other.info["loads"] == 1
    pid = worker.pid
    worker.stop()
    assert _gone(pid) and not worker.running


@pytest.mark.skipif(not hasattr(ctypes, "PyDLL") or os.name == "nt",
                    reason="emulating Slicer's main thread needs libc's usleep")
def test_a_main_thread_holding_the_gil_between_polls_still_gets_its_segmentation(
        worker, request_, ed_case, direct):
    """Slicer's main thread keeps the GIL while Qt idles; a QTimer polls every 200 ms. Emulated:
    poll, then 200 ms in a C call that keeps the GIL (PyDLL does not release it)."""
    usleep = ctypes.PyDLL(None).usleep
    job = worker.submit(ed_case, request_)
    deadline = time.monotonic() + HANG_GUARD
    while not job.poll().finished:
        assert time.monotonic() < deadline, "no answer under a GIL-holding main thread"
        usleep(200_000)
    np.testing.assert_array_equal(job.result().labels, direct.labels)


def test_the_client_runs_no_thread_of_its_own(worker, request_, ed_case):
    """Inside Slicer a Python thread only moves when the main thread runs Python: the client
    reads the worker's pipe on the caller's thread instead."""
    import threading

    before = {thread.ident for thread in threading.enumerate()}
    job = worker.submit(ed_case, request_)
    assert job.wait(HANG_GUARD)
    job.result()
    assert {thread.ident for thread in threading.enumerate()} <= before
    assert not [thread.name for thread in threading.enumerate()
                if thread.name.startswith("CardiacEnsemble")]  # the old reader's name


def test_the_client_imports_neither_mrml_nor_torch():
    code = ("import sys, CardiacEnsembleLib.slicer.worker; "
            "print('slicer' in sys.modules, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "False"]
