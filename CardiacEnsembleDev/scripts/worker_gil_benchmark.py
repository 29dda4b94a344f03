"""How long one segmentation by the inference worker process takes when the main thread is idle
between polls, and when it holds the GIL between polls as Slicer's main thread does (PythonQt
keeps the GIL while Qt's event loop idles). A benchmark: it prints, it asserts nothing.

    .venv/bin/python CardiacEnsembleDev/scripts/worker_gil_benchmark.py [--rounds 2]

The shipped ensemble on the sample patient's ED frame, on the CPU unless --device says
otherwise. The panel's QTimer polls every 200 ms; "GIL held" spends those 200 ms in a C call
that keeps the GIL (`ctypes.PyDLL(None).usleep`), "idle" in `time.sleep` (which releases it).
Also printed: the first request (start the process, load the ensemble) against a warm one.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR  # noqa: E402
from CardiacEnsembleLib.io.acdc import PatientFolder  # noqa: E402
from CardiacEnsembleLib.slicer.worker import EnsembleRequest, InferenceWorker  # noqa: E402

SAMPLE = ROOT / "CardiacEnsembleLib" / "sample" / "patient090"
POLL_SECONDS = 0.2


def _idle(seconds: float) -> None:
    time.sleep(seconds)


def _gil_held(seconds: float) -> None:
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def segment_once(worker: InferenceWorker, case, request: EnsembleRequest, between) -> tuple:
    """Seconds from submit to the Prediction in hand, polling as the panel does; the seconds
    the worker itself spent predicting; and the worker's info (what it reused)."""
    started = time.perf_counter()
    job = worker.submit(case, request)
    while not job.poll().finished:
        between(POLL_SECONDS)
    prediction = job.result()
    return time.perf_counter() - started, prediction.timings["total"], job.info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="warm runs of each kind")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the worker")
    args = parser.parse_args()
    case = PatientFolder.open(SAMPLE).load("ED", with_gt=False)
    request = EnsembleRequest(str(DEFAULT_MODELS_DIR), device=args.device)
    worker = InferenceWorker(threads=args.threads)
    try:
        first, _, info = segment_once(worker, case, request, _idle)
        times = {"idle": [], "GIL held": []}
        inside = {"idle": [], "GIL held": []}
        for _ in range(args.rounds):  # interleaved, so a busy moment hits both kinds
            for kind, between in (("idle", _idle), ("GIL held", _gil_held)):
                seconds, predicting, warm = segment_once(worker, case, request, between)
                assert warm["ensemble_reused"], "the warm worker reloaded the ensemble"
                times[kind].append(seconds)
                inside[kind].append(predicting)
    finally:
        worker.close()
    idle, held = (statistics.median(times[k]) for k in ("idle", "GIL held"))
    print(f"patient090 ED, shipped ensemble, device {args.device}, poll every "
          f"{POLL_SECONDS * 1000:.0f} ms, median of {args.rounds} warm runs each")
    work = {k: statistics.median(v) for k, v in inside.items()}
    print(f"{'main thread between polls':<28}{'seconds':>10}{'in worker':>11}")
    print(f"{'idle (time.sleep)':<28}{idle:>10.2f}{work['idle']:>11.2f}")
    print(f"{'GIL held (PyDLL usleep)':<28}{held:>10.2f}{work['GIL held']:>11.2f}")
    print(f"{'ratio GIL held / idle':<28}{held / idle:>10.2f}x")
    print(f"{'first request (cold)':<28}{first:>10.2f}   (ensemble load "
          f"{info['load_seconds']:.2f} s in the worker)")
    print(f"{'warm request (idle)':<28}{idle:>10.2f}   (saved {first - idle:.2f} s)")
    print("runs (seconds, in worker):", {k: [(round(a, 2), round(b, 2)) for a, b in
                                             zip(times[k], inside[k])] for k in times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
