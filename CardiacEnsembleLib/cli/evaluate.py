"""`evaluate`: members and fusion rules against ground truth -> scores.csv, clinical.csv,
summary.md.

The workbench's `report` command runs the same evaluation (`add_options`, `patients_to_score`,
`run_evaluation`) and writes the release report on top of it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from CardiacEnsembleLib.cli.common import (SAMPLE_DIR, ProgressBar, add_model_options,
                                           load_ensemble, say)
from CardiacEnsembleLib.core.errors import CaseError
from CardiacEnsembleLib.core.options import FUSION_RULES

SPLITS = ("train", "validation", "test")
#: How summary.md's line naming the ensemble begins (`settings_line` follows).
SUMMARY_ENSEMBLE = "Ensemble: "


def register(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="members and ensemble vs ground truth")
    add_options(evaluate)
    evaluate.set_defaults(run=run)


def add_options(parser: argparse.ArgumentParser) -> None:
    """Which patients, which rules, where the tables go, and the ensemble options."""
    parser.add_argument("--data", type=Path, default=None,
                        help="ACDC root or patient folder (default: the built-in sample)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--patients", nargs="+", default=None, help="patient ids, e.g. patient001")
    chosen.add_argument("--split", choices=SPLITS,
                        help="all patients of a split from DATA/splits.json")
    parser.add_argument("--rules", nargs="+", default=None, choices=FUSION_RULES,
                        help="fusion rules to compare (default: all that apply)")
    parser.add_argument("--out", type=Path, default=Path("evaluation"),
                        help="folder for scores.csv, clinical.csv, summary.md")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    patients = patients_to_score(args)
    run_evaluation(args, patients)
    return 0


def patients_to_score(args: argparse.Namespace, also_written: Sequence[Path] = ()) -> list:
    """The patient folders to evaluate, after refusing, before the ensemble loads, outputs (the
    three tables and `also_written`) that exist, cannot be written, or are one of the patients'
    files. Without --data: the built-in sample."""
    from CardiacEnsembleLib.io.acdc import find_patients, load_splits
    from CardiacEnsembleLib.io.atomic import check_outputs
    from CardiacEnsembleLib.io.outputs import EvaluationOutputs

    if args.data is None:
        args.data = SAMPLE_DIR.parent
        say(args, f"no --data given: evaluating the built-in sample case {SAMPLE_DIR.name}")
    ids = load_splits(args.data)[args.split] if args.split else args.patients
    patients = find_patients(args.data, ids)
    if not patients:
        raise CaseError(f"{args.data}: no ACDC patient folders found")
    if args.out.exists() and not args.out.is_dir():
        raise FileExistsError(f"{args.out}: is a file; --out must be a folder")
    check_outputs([*EvaluationOutputs.in_folder(args.out).paths, *also_written],
                  overwrite=args.overwrite, inputs=evaluation_inputs(patients))
    return patients


def evaluation_inputs(patients: Sequence) -> list[Path]:
    """Every file the evaluation of `patients` reads, which none of its outputs may be."""
    return [path for patient in patients for path in patient.input_paths]


def run_evaluation(args: argparse.Namespace, patients: Sequence) -> tuple:
    """(ensemble, evaluation) after scoring `patients` and writing the three tables."""
    from CardiacEnsembleLib.evaluation.scoring import (evaluate, summary_table,
                                                       write_clinical_csv, write_scores_csv)
    from CardiacEnsembleLib.io.atomic import write_text_atomic
    from CardiacEnsembleLib.io.outputs import EvaluationOutputs

    ensemble = load_ensemble(args)
    bar = ProgressBar("evaluate", not args.quiet, unit="frame")
    try:
        result = evaluate(ensemble, patients, args.rules, progress=bar)
    finally:
        bar.close()
    table = summary_table(result)
    outputs = EvaluationOutputs.in_folder(args.out)
    written = {"overwrite": args.overwrite, "protected": evaluation_inputs(patients)}
    write_scores_csv(result, outputs.scores, **written)
    write_clinical_csv(result, outputs.clinical, **written)
    write_text_atomic(outputs.summary, summary_markdown(table, patients, ensemble),
                      **written)
    print(table)
    print(f"wrote {outputs.scores}, {outputs.clinical}, {outputs.summary}")
    return ensemble, result


def summary_markdown(table: str, patients: Sequence, ensemble) -> str:
    """summary.md: which patients, which ensemble, what the columns mean, the table."""
    names = ", ".join(p.patient_id for p in patients)
    return (f"# Evaluation on {len(patients)} patient(s), ED and ES\n\nPatients: {names}\n\n"
            f"{SUMMARY_ENSEMBLE}{ensemble.settings_line}\n\n"
            f"Dice and HD95 per structure (mean ± sd over frames), LV/RV ejection-fraction "
            f"absolute error (percentage points, mean ± sd over patients), median seconds per "
            f"frame on {ensemble.device}.\n\n{table}\n")
