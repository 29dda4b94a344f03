"""Segment many studies on many machines with Dask's distributed scheduler.

One task per patient folder; each worker process loads the ensemble once (cached per process)
and writes its own outputs, so only file names travel over the network. Locally,
`LocalCluster(n_workers=N)` gives N processes on this machine; across machines, start
`dask scheduler` on one host and `dask worker tcp://HOST:8786 --nthreads 1` on each of the
others (with this package installed and the data on a shared path), then pass the scheduler
address. No home-made scheduler: retries, placement and monitoring are Dask's.

A batch is many independent studies, so one bad study must not cost the others:

- each study is a task whose failure is caught and reported (the study, the error line) while
  the others finish; the result lists every study as ok, failed (why) or skipped;
- a study's outputs appear whole or not at all: both frames are segmented first, written under
  temporary names in the output folder, then published together; a failure removes what was
  published of that study, and a killed worker's temporaries are cleaned by the next write;
- `resume` skips studies whose outputs all exist, so a rerun continues a partial run;
- what can be checked before the work is (the models folder, every output: never an input,
  not inside a patient folder, writable, not existing unless asked), so a refused run costs
  nothing and writes nothing.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional, Sequence

_ENSEMBLES: dict[tuple, object] = {}  # per worker process: loaded once, reused by every task

#: Seconds to wait for a `--scheduler` to answer before saying it is unreachable (Dask's own
#: default, 30 s, reads as a hang at the start of a run).
SCHEDULER_TIMEOUT_S = 10


class StudyStatus(str, Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass
class StudyResult:
    patient: str
    outputs: list[str]
    seconds: float = 0.0
    dice: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> structure -> Dice
    worker: str = ""
    status: StudyStatus = StudyStatus.OK
    reason: str = ""  # why it failed or was skipped: the error's one line


class SchedulerUnreachable(ConnectionError):
    """No Dask scheduler answered at the address given; nothing was run."""


@dataclass(frozen=True)
class StudyPlan:
    """One study of a batch, before any work: its folder and the outputs it will write."""

    patient: str
    folder: Path
    outputs: tuple[Path, ...]
    inputs: tuple[Path, ...]

    @property
    def done(self) -> bool:
        return all(path.exists() for path in self.outputs)


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
    """Segment the ED and ES frames of one patient folder; runs inside a worker.

    Both frames are read and segmented before anything is written, then written together
    (`_write_study`), so a study that fails leaves no output behind."""
    import socket

    from CardiacEnsembleLib.evaluation.metrics import score_labels
    from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
    from CardiacEnsembleLib.io.outputs import frame_output

    started = time.perf_counter()
    ensemble = _ensemble(models_dir, device, fusion, threads)
    patient = PatientFolder.open(folder)
    cases = [patient.load(phase) for phase in PHASES]
    predictions = [ensemble.predict(case) for case in cases]
    outputs = [frame_output(out_dir, patient.patient_id, case.phase) for case in cases]
    _write_study([(target, prediction.labels, case.geometry, patient.frame_path(case.phase))
                  for target, prediction, case in zip(outputs, predictions, cases)],
                 overwrite, patient.input_paths)
    dice = {case.phase: {name: score.dice for name, score in
                         score_labels(prediction.labels, case.labels, case.spacing_zyx).items()}
            for case, prediction in zip(cases, predictions) if case.labels is not None}
    return StudyResult(patient.patient_id, [str(p) for p in outputs],
                       time.perf_counter() - started, dice,
                       f"{socket.gethostname()}:{os.getpid()}")


def _write_study(items: Sequence[tuple], overwrite: bool, protected: Sequence[Path]) -> None:
    """Write a study's label maps `(target, labels, geometry, reference)` so that they appear
    together: each is written (atomically) under a temporary name in its folder, then all are
    published; if any fails, the ones already published are removed again."""
    from CardiacEnsembleLib import io
    from CardiacEnsembleLib.io.atomic import partial_name_prefix

    staged, published = [], []
    try:
        for target, labels, geometry, reference in items:
            temporary = Path(target).with_name(f"{partial_name_prefix()}study-{Path(target).name}")
            io.write_image(temporary, labels, geometry, overwrite=True, reference=reference,
                           protected=protected)
            staged.append((temporary, Path(target)))
        for temporary, target in staged:
            _publish(temporary, target, overwrite)
            published.append(target)
    except BaseException:
        for target in published:
            target.unlink(missing_ok=True)
        raise
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def _publish(temporary: Path, target: Path, overwrite: bool) -> None:
    """Give `temporary` the name `target`; without `overwrite` never over an existing file
    (a hard link fails if the name exists, so of two racing runs one wins)."""
    from CardiacEnsembleLib.core.errors import OutputExistsError

    if overwrite:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise OutputExistsError(f"{target}: already exists; refusing to overwrite it (pass "
                                f"--overwrite to replace it)") from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise OutputExistsError(f"{target}: already exists; refusing to overwrite it "
                                    f"(pass --overwrite to replace it)") from None
        os.replace(temporary, target)


def plan_studies(folders: Sequence[Path], out_dir: Path
                 ) -> tuple[list[StudyPlan], list[StudyResult]]:
    """The studies of a batch and their outputs, and the studies that cannot run (a folder whose
    Info.cfg is broken: that study's failure, the others still run). Refuses an output folder
    inside a patient folder (the data is never written, and a later run would take a label map
    there for part of the study)."""
    from CardiacEnsembleLib.core.errors import CaseError
    from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
    from CardiacEnsembleLib.io.outputs import frame_output

    plans, unusable = [], []
    target = Path(os.path.realpath(out_dir))
    for folder in folders:
        home = Path(os.path.realpath(folder))
        if target == home or home in target.parents:
            raise CaseError(f"{out_dir}: is inside the patient folder {folder}, an input "
                            f"of this run; choose an output folder outside the data")
        try:
            patient = PatientFolder.open(folder)
        except CaseError as error:
            unusable.append(StudyResult(Path(folder).name, [], status=StudyStatus.FAILED,
                                        reason=str(error)))
            continue
        plans.append(StudyPlan(patient.patient_id, patient.folder,
                               tuple(frame_output(out_dir, patient.patient_id, phase)
                                     for phase in PHASES), patient.input_paths))
    return plans, unusable


def check_models(models_dir: Optional[Path]) -> None:
    """The models folder as far as it can be checked without torch (manifest, rule, weights,
    every member file's sha256), so a broken one stops the batch before a cluster starts."""
    from CardiacEnsembleLib.core.manifest import (DEFAULT_MODELS_DIR, check_member_files,
                                                  read_manifest)

    manifest = read_manifest(models_dir or DEFAULT_MODELS_DIR)
    for entry in manifest.members:
        check_member_files(manifest, entry)


def segment_studies(folders: Sequence[Path], out_dir: Path, *, workers: int = 2,
                    scheduler: Optional[str] = None, models_dir: Optional[Path] = None,
                    device: str = "cpu", fusion: Optional[str] = None, overwrite: bool = False,
                    resume: bool = False, progress=None,
                    log_level: int = logging.WARNING) -> list[StudyResult]:
    """Segment every patient folder on a Dask cluster (a new local one, or `scheduler`).

    Returns one result per study, sorted by patient: ok, failed (with the error's line), or
    skipped (`resume`: all its outputs exist). The models and every output are checked before
    anything is submitted, so a refused run writes nothing. `log_level`: Dask's loggers, here
    and in the workers (its INFO lines are for people running clusters, not for a user).
    """
    from CardiacEnsembleLib.io.atomic import check_outputs

    out_dir = Path(out_dir)
    plans, results = plan_studies(folders, out_dir)
    skipped = [plan for plan in plans if resume and not overwrite and plan.done]
    todo = [plan for plan in plans if plan not in skipped]
    hint = "a study partly done: remove it, or pass --overwrite" if resume else \
        "pass --resume to skip finished studies, or --overwrite to replace them"
    check_outputs([path for plan in todo for path in plan.outputs], overwrite=overwrite,
                  inputs=[path for plan in plans for path in plan.inputs], hint=hint)
    check_models(models_dir)
    results += [StudyResult(plan.patient, [str(p) for p in plan.outputs],
                            status=StudyStatus.SKIPPED, reason="already done (its outputs exist)")
                for plan in skipped]
    if todo:
        results += _run_on_cluster(todo, out_dir, workers, scheduler, models_dir, device, fusion,
                                   overwrite, progress, log_level)
    return sorted(results, key=lambda r: r.patient)


def _run_on_cluster(plans: Sequence[StudyPlan], out_dir: Path, workers: int,
                    scheduler: Optional[str], models_dir: Optional[Path], device: str,
                    fusion: Optional[str], overwrite: bool, progress,
                    log_level: int) -> list[StudyResult]:
    from dask.distributed import as_completed

    client, cluster = _connect(scheduler, workers, log_level)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        futures = {client.submit(segment_study, str(Path(plan.folder).resolve()),
                                 str(out_dir.resolve()),
                                 str(models_dir) if models_dir else None, device, fusion, 1,
                                 overwrite, pure=False): plan for plan in plans}
        results = []
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results.append(_outcome(future, futures[future]))
                if progress is not None:
                    progress(done, len(futures), results[-1].patient)
        except BaseException:
            client.cancel(list(futures))
            raise
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _outcome(future, plan: StudyPlan) -> StudyResult:
    """The study's result, or its failure as a result: the error's own line (it names the file
    and the problem), so one bad study never stops the others."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - any failure of one study is that study's
        reason = " ".join(str(error).split()) or type(error).__name__
        return StudyResult(plan.patient, [], status=StudyStatus.FAILED, reason=reason)


def _connect(scheduler: Optional[str], workers: int, log_level: int):
    """(client, cluster): a new local cluster of `workers` processes, or the running
    `scheduler` (refused with one line, quickly, when it does not answer)."""
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(log_level)  # after the import, which sets it
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=log_level)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S), None
    except (OSError, TimeoutError, ValueError) as error:
        raise SchedulerUnreachable(f"--scheduler {scheduler}: no Dask scheduler answered "
                                   f"({' '.join(str(error).split())}); start one with "
                                   f"`dask scheduler` or check the address") from None
