"""Segment many studies on many machines with Dask's distributed scheduler.

One task per patient folder; each worker process loads the ensemble once (cached per process)
and writes its own outputs, so only file names travel over the network. Locally,
`LocalCluster(n_workers=N)` gives N processes on this machine; across machines, start
`dask scheduler` on one host and `dask worker tcp://HOST:8786 --nthreads 1` on each of the
others (with this package installed and the data on a shared path), then pass the scheduler
address. No home-made scheduler: retries, placement and monitoring are Dask's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

_ENSEMBLES: dict[tuple, object] = {}  # per worker process: loaded once, reused by every task


@dataclass
class StudyResult:
    patient: str
    outputs: list[str]
    seconds: float
    dice: dict[str, dict[str, float]]  # phase -> structure -> Dice, when ground truth exists
    worker: str


def _ensemble(models_dir: Optional[str], device: str, fusion: Optional[str], threads: int):
    import torch

    from CardiacEnsembleLib.inference.ensemble import DEFAULT_MODELS_DIR, load_ensemble

    if threads:
        torch.set_num_threads(threads)
    key = (models_dir, device, fusion)
    if key not in _ENSEMBLES:
        _ENSEMBLES[key] = load_ensemble(models_dir or DEFAULT_MODELS_DIR, fusion=fusion,
                                        device=device)
    return _ENSEMBLES[key]


def segment_study(folder: str, out_dir: str, models_dir: Optional[str] = None,
                  device: str = "cpu", fusion: Optional[str] = None, threads: int = 1,
                  overwrite: bool = False) -> StudyResult:
    """Segment the ED and ES frames of one patient folder; runs inside a worker."""
    import os
    import socket

    from CardiacEnsembleLib import io
    from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
    from CardiacEnsembleLib.io.outputs import frame_output
    from CardiacEnsembleLib.evaluation.metrics import score_labels

    started = time.perf_counter()
    ensemble = _ensemble(models_dir, device, fusion, threads)
    patient = PatientFolder.open(folder)
    outputs, dice = [], {}
    for phase in PHASES:
        case = patient.load(phase)
        target = frame_output(out_dir, patient.patient_id, phase)
        prediction = ensemble.predict(case)
        io.write_image(target, prediction.labels, case.geometry, overwrite=overwrite,
                       reference=patient.frame_path(phase))
        outputs.append(str(target))
        if case.labels is not None:
            dice[phase] = {name: score.dice for name, score in
                           score_labels(prediction.labels, case.labels,
                                        case.spacing_zyx).items()}
    return StudyResult(patient.patient_id, outputs, time.perf_counter() - started, dice,
                       f"{socket.gethostname()}:{os.getpid()}")


def segment_studies(folders: Sequence[Path], out_dir: Path, *, workers: int = 2,
                    scheduler: Optional[str] = None, models_dir: Optional[Path] = None,
                    device: str = "cpu", fusion: Optional[str] = None, overwrite: bool = False,
                    progress=None) -> list[StudyResult]:
    """Segment every patient folder on a Dask cluster (a new local one, or `scheduler`).

    Existing outputs are checked before anything is submitted, so a refused run writes nothing.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    from CardiacEnsembleLib.core.errors import refuse_existing
    from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
    from CardiacEnsembleLib.io.outputs import frame_output

    out_dir = Path(out_dir)
    for folder in folders:
        patient = PatientFolder.open(folder)
        refuse_existing([frame_output(out_dir, patient.patient_id, phase) for phase in PHASES],
                        overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    client = Client(scheduler or cluster)
    try:
        futures = [client.submit(segment_study, str(Path(f).resolve()), str(out_dir.resolve()),
                                 str(models_dir) if models_dir else None, device, fusion, 1,
                                 overwrite, pure=False) for f in folders]
        results = []
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results.append(future.result())
                if progress is not None:
                    progress(done, len(futures), results[-1].patient)
        except BaseException:
            client.cancel(futures)
            raise
        return sorted(results, key=lambda r: r.patient)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
