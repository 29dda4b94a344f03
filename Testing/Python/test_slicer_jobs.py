"""One long call on a worker thread (`CardiacEnsembleLib.slicer.jobs`): progress and the work's
error reach the main thread. No MRML needed."""
from __future__ import annotations

import pytest


def test_a_failing_background_job_hands_its_error_to_the_main_thread():
    from CardiacEnsembleLib.slicer.jobs import BackgroundJob

    def work(progress, cancel):
        progress(1, 4, "first")
        raise ArithmeticError("member 2 failed")

    job = BackgroundJob(work, name="failing")
    assert job.wait(timeout=600)  # a hang guard, not a speed check
    status = job.status()
    assert (status.done, status.completed, status.total, status.message) == (True, 1, 4, "first")
    with pytest.raises(ArithmeticError, match="member 2 failed"):
        job.result()


def test_the_jobs_module_loads_without_mrml():
    """The worker side needs no Slicer: importing it must not import the MRML modules."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, CardiacEnsembleLib.slicer.jobs; "
            "print('slicer' in sys.modules, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "False"]
