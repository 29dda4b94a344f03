"""`batch`: many patient folders on a Dask cluster (local worker processes or a scheduler)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from CardiacEnsembleLib.cli.common import ProgressBar, say
from CardiacEnsembleLib.cli.evaluate import SPLITS
from CardiacEnsembleLib.core.errors import CaseError
from CardiacEnsembleLib.core.options import FUSION_RULES


def register(commands) -> None:
    batch = commands.add_parser("batch", help="segment many patient folders on a Dask cluster "
                                              "(local workers or a remote scheduler)")
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
    batch.add_argument("--overwrite", action="store_true")
    batch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from CardiacEnsembleLib.inference.batch import segment_studies
    from CardiacEnsembleLib.io.acdc import find_patients, load_splits

    ids = load_splits(args.data)[args.split] if args.split else args.patients
    patients = find_patients(args.data, ids)
    if not patients:
        raise CaseError(f"{args.data}: no ACDC patient folders found")
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    where = args.scheduler or f"a local Dask cluster of {args.workers} worker processes"
    say(args, f"segmenting {len(patients)} studies on {where}")
    bar = ProgressBar("batch", not args.quiet, unit="study")
    try:
        results = segment_studies([p.folder for p in patients], args.output,
                                  workers=args.workers, scheduler=args.scheduler,
                                  models_dir=args.models, device=args.device,
                                  fusion=args.fusion, overwrite=args.overwrite, progress=bar)
    finally:
        bar.close()
    for r in results:
        print(_study_line(r))
    print(f"wrote {2 * len(results)} label maps to {args.output}")
    return 0


def _study_line(result) -> str:
    dice = " ".join(f"{phase} " + "/".join(f"{v:.3f}" for v in scores.values())
                    for phase, scores in result.dice.items())
    return (f"{result.patient}: {result.seconds:.1f} s on {result.worker}"
            + (f" | Dice RV/Myo/LV {dice}" if dice else ""))
