"""`batch`: many patient folders on a Dask cluster (local worker processes or a scheduler).

A failed study is reported and the others finish: the run ends with one line per study (ok,
failed and why, skipped) and exit status 1 when any failed; 2 is kept for a usage error, found
before any work (nothing was run).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from CardiacEnsembleLib.cli.common import ProgressBar, say
from CardiacEnsembleLib.cli.evaluate import SPLITS
from CardiacEnsembleLib.core.errors import CaseError
from CardiacEnsembleLib.core.options import FUSION_RULES

#: Exit status of a run in which some studies failed (the others finished).
EXIT_STUDIES_FAILED = 1
#: What `batch` needs beyond the base install.
SCALE_EXTRA = ("batch needs Dask's distributed scheduler, which is not installed: pip install "
               "'cardiac-ensemble[scale]' (in a clone: pip install -e '.[scale]')")


def register(commands) -> None:
    batch = commands.add_parser(
        "batch", help="segment many patient folders on a Dask cluster (local workers or a "
                      "remote scheduler); needs the [scale] extra",
        epilog="A study that fails is reported (which file, why) and the others finish. Exit "
               f"status: 0 every study done (or skipped with --resume); {EXIT_STUDIES_FAILED} "
               "some studies failed; 2 a usage error, found before any work (nothing ran).")
    batch.add_argument("--data", type=Path, required=True, help="ACDC root or folder of patients")
    picked = batch.add_mutually_exclusive_group()
    picked.add_argument("--patients", nargs="+", default=None)
    picked.add_argument("--split", choices=SPLITS)
    batch.add_argument("--output", "-o", type=Path, required=True, help="folder for label maps")
    batch.add_argument("--workers", type=int, default=2,
                       help="local worker processes (ignored with --scheduler)")
    batch.add_argument("--scheduler", default=None,
                       help="address of a running Dask scheduler, e.g. tcp://host:8786")
    batch.add_argument("--models", type=Path, default=None)
    batch.add_argument("--fusion", default=None, choices=FUSION_RULES)
    batch.add_argument("--device", default="cpu")
    batch.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs")
    batch.add_argument("--resume", action="store_true",
                       help="skip studies whose outputs all exist (a rerun continues a partial "
                            "run) instead of refusing")
    batch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("distributed") is None:
        raise CaseError(SCALE_EXTRA)
    from CardiacEnsembleLib.inference.batch import StudyStatus, segment_studies
    from CardiacEnsembleLib.io.acdc import find_patient_folders, load_splits

    ids = load_splits(args.data)[args.split] if args.split else args.patients
    patients = find_patient_folders(args.data, ids)
    if not patients:
        raise CaseError(f"{args.data}: no ACDC patient folders found")
    where = args.scheduler or f"a local Dask cluster of {args.workers} worker processes"
    say(args, f"segmenting {len(patients)} studies on {where}")
    bar = ProgressBar("batch", not args.quiet, unit="study")
    try:
        results = segment_studies(patients, args.output,
                                  workers=args.workers, scheduler=args.scheduler,
                                  models_dir=args.models, device=args.device,
                                  fusion=args.fusion, overwrite=args.overwrite,
                                  resume=args.resume, progress=bar,
                                  log_level=logging.INFO if args.verbose else logging.WARNING)
    finally:
        bar.close()
    for result in results:
        print(_study_line(result))
    counts = {status: sum(r.status is status for r in results) for status in StudyStatus}
    written = sum(len(r.outputs) for r in results if r.status is StudyStatus.OK)
    print(", ".join(f"{n} {status}" for status, n in counts.items() if n)
          + f": wrote {written} label maps to {args.output}")
    return EXIT_STUDIES_FAILED if counts[StudyStatus.FAILED] else 0


def _study_line(result) -> str:
    """One line per study: ok with its time and Dice, failed with the error, or skipped."""
    from CardiacEnsembleLib.inference.batch import StudyStatus

    if result.status is not StudyStatus.OK:
        return f"{result.patient}: {result.status}: {result.reason}"
    dice = " ".join(f"{phase} " + "/".join(f"{v:.3f}" for v in scores.values())
                    for phase, scores in result.dice.items())
    return (f"{result.patient}: ok, {result.seconds:.1f} s on {result.worker}"
            + (f" | Dice RV/Myo/LV {dice}" if dice else ""))
