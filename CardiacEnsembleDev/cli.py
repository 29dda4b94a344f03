"""The workbench's commands of `cardiac-ensemble`: train, pack, ship, select, benchmark, report.

The runtime's CLI finds `register` through the entry point `cardiac_ensemble.commands`
(pyproject.toml), so these commands exist wherever the workbench is installed and nowhere
else. Each command imports its work (torch, matplotlib) when it runs, never at start-up.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from CardiacEnsembleLib.cli import evaluate as evaluate_cli
from CardiacEnsembleLib.cli.common import (ProgressBar, add_model_options, command_line,
                                           load_ensemble, models_dir)
from CardiacEnsembleLib.core.errors import CaseError, refuse_existing
from CardiacEnsembleLib.core.options import FUSION_RULES


def register(commands) -> None:
    for add in (_add_train, _add_pack, _add_ship, _add_select, _add_benchmark, _add_report,
                _add_quality):
        add(commands)


# ------------------------------------------------------------------------ train, pack

def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train one member on the ACDC train split")
    train.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    train.add_argument("--recipe", required=True, help="member recipe name (see recipes.py)")
    train.add_argument("--name", default="",
                       help="member name (default: the recipe's); a second member of one recipe, "
                            "e.g. from another --seed, needs its own to join one ensemble")
    train.add_argument("--out", type=Path, required=True,
                       help="run folder (resumes from OUT/last.pt if present)")
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--patch-size", type=int, default=160)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--iterations", type=int, default=0, help="steps per epoch (0: one pass)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=0)
    train.add_argument("--version", default="0")
    train.add_argument("--max-train-patients", type=int, default=0)
    train.add_argument("--max-validation-patients", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--init-from", type=Path, default=None,
                       help="member folder to warm-start from (same recipe), e.g. an earlier "
                            "run's best/")
    train.add_argument("--init-encoder-from", type=Path, default=None,
                       help="member folder whose encoder (same encoder, any architecture) this "
                            "member starts from; the decoder starts from random weights")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from CardiacEnsembleDev.training.recipes import recipe_spec
    from CardiacEnsembleDev.training.training import TrainConfig, train_member
    from CardiacEnsembleLib.inference.runner import pick_device

    if args.init_from and args.init_encoder_from:
        raise SystemExit("train: give --init-from or --init-encoder-from, not both")
    spec = recipe_spec(args.recipe, version=args.version, member_name=args.name)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         patch_size=args.patch_size, learning_rate=args.lr, seed=args.seed,
                         iterations_per_epoch=args.iterations, num_threads=args.threads,
                         max_train_patients=args.max_train_patients,
                         max_validation_patients=args.max_validation_patients,
                         init_from=str(args.init_from or args.init_encoder_from or ""),
                         init_encoder_only=args.init_encoder_from is not None)
    bar = ProgressBar(f"train {spec.name}", not args.quiet, unit="step")
    try:
        member = train_member(spec, args.data, args.out, config, device=pick_device(args.device),
                              progress=bar, log=lambda line: (bar.close(), print(line, flush=True)))
    finally:
        bar.close()
    print(f"best member: {member.folder} (validation Dice "
          f"{member.spec.metrics['validation_dice']['mean']:.4f})")
    return 0


def _add_pack(commands) -> None:
    packer = commands.add_parser("pack", help="write the train and validation slices as one "
                                 "small file, for training on a machine without ACDC")
    packer.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    packer.add_argument("--out", type=Path, required=True, help="pack file (.npz.xz)")
    packer.add_argument("--margin", type=int, default=32,
                        help="px kept around the heart's bounding box (at 1.5 mm)")
    packer.add_argument("--max-patients", type=int, default=0,
                        help="first N patients of each split only (quick runs)")
    packer.add_argument("--overwrite", action="store_true")
    packer.set_defaults(run=run_pack)


def run_pack(args: argparse.Namespace) -> int:
    from CardiacEnsembleDev.training.recipes import PREPROCESS
    from CardiacEnsembleDev.training.slicepack import read_pack, write_pack

    path = write_pack(args.data, args.out, PREPROCESS, margin_px=args.margin,
                      max_patients=args.max_patients, overwrite=args.overwrite)
    pack = read_pack(path)
    print(f"wrote {path}: {len(pack.split('train'))} train and "
          f"{len(pack.split('validation'))} validation frames, {path.stat().st_size / 1e6:.1f} MB")
    return 0


# ------------------------------------------------------------------------ release

def _add_ship(commands) -> None:
    ship = commands.add_parser("ship", help="package training runs as the shipped ensemble "
                                            "(fp16 members + manifest.json)")
    ship.add_argument("runs", nargs="+", type=Path, help="training run folders (with best/)")
    ship.add_argument("--models", type=Path, default=None,
                      help="target folder (default: the package's models/)")
    ship.add_argument("--name", default="acdc-default")
    ship.add_argument("--version", required=True)
    ship.add_argument("--fusion", default="mean", choices=FUSION_RULES)
    ship.add_argument("--note", default="", help="shown to users whenever the ensemble loads")
    ship.add_argument("--description", default="", help="one line naming the ensemble (reports)")
    ship.add_argument("--overwrite", action="store_true")
    ship.add_argument("--data", type=Path, default=None,
                      help="ACDC root: members trained on a slice pack are re-scored on its "
                           "validation frames (their pack Dice is approximate)")
    ship.set_defaults(run=run_ship)


def run_ship(args: argparse.Namespace) -> int:
    from CardiacEnsembleDev.release.ship import ship_runs

    path = ship_runs(args.runs, models_dir(args), name=args.name, version=args.version,
                     fusion=args.fusion, note=args.note, description=args.description,
                     overwrite=args.overwrite, data_root=args.data)
    print(f"wrote {path}")
    return 0


def _add_select(commands) -> None:
    chooser = commands.add_parser("select", help="choose fusion rule, member weights and "
                                  "post-processing on the validation split")
    chooser.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    chooser.add_argument("--out", type=Path, default=Path("reports/validation_selection"))
    chooser.add_argument("--trials", type=int, default=64, help="random-search draws")
    chooser.add_argument("--seed", type=int, default=0)
    chooser.add_argument("--limit", type=int, default=0, help="first N validation patients only")
    chooser.add_argument("--apply", action="store_true",
                         help="write the choice into the models folder's manifest.json")
    chooser.add_argument("--overwrite", action="store_true")
    add_model_options(chooser)
    chooser.set_defaults(run=run_select)


def run_select(args: argparse.Namespace) -> int:
    from CardiacEnsembleDev.release.selection import (collect_validation_frames, select,
                                                      write_selection)
    from CardiacEnsembleLib.core.manifest import update_manifest

    if args.fusion is not None:
        raise SystemExit("select chooses the fusion rule itself; drop --fusion")
    if args.apply and args.members:
        raise SystemExit("--apply records a choice for the whole manifest; drop --members")
    refuse_existing([args.out / "selection.md", args.out / "selection.json"], args.overwrite)
    ensemble = load_ensemble(args)
    bar = ProgressBar("members on validation", not args.quiet, unit="frame")
    try:
        frames = collect_validation_frames(ensemble, args.data, limit=args.limit, progress=bar)
    finally:
        bar.close()
    selection = select(ensemble, frames, trials=args.trials, seed=args.seed)
    markdown, data = write_selection(selection, args.out)
    chosen = selection.chosen
    print(f"chosen: {chosen.name} (validation mean Dice {chosen.dice['mean']:.4f}, mean HD95 "
          f"{chosen.hd95_mm['mean']:.2f} mm) | wrote {markdown}, {data}")
    if args.apply:
        print(f"updated {update_manifest(models_dir(args), selection.manifest_update())}")
    return 0


def _add_benchmark(commands) -> None:
    bench = commands.add_parser("benchmark", help="time each member and the ensemble side by "
                                                  "side; writes reports/benchmark_<device>.md")
    bench.add_argument("--data", type=Path, required=True, help="ACDC root")
    bench.add_argument("--patients", nargs="+", required=True, help="patients whose ED/ES frames "
                                                                     "are timed")
    bench.add_argument("--cine", default=None, help="patient whose 4D cine is timed "
                                                    "(e.g. patient090)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--accuracy", type=Path, default=None,
                       help="scores.csv from `evaluate`, for the accuracy-vs-cost panel")
    bench.add_argument("--report", type=Path, default=None,
                       help="report path (default reports/benchmark_<device>.md)")
    bench.add_argument("--record-command", action="store_true",
                       help="write the command line into the report")
    bench.add_argument("--overwrite", action="store_true")
    add_model_options(bench)
    bench.set_defaults(run=run_benchmark)


def run_benchmark(args: argparse.Namespace) -> int:
    from CardiacEnsembleDev.release.benchmark import (accuracy_from_scores, plot_benchmark,
                                                      report_markdown, run_benchmark as timed,
                                                      summary_lines)
    from CardiacEnsembleLib.evaluation.scoring import shipped_method
    from CardiacEnsembleLib.io.acdc import find_patients

    patients = find_patients(args.data, args.patients)
    cine_patient = None
    if args.cine:
        cine_patient = find_patients(args.data, [args.cine])[0]
        if not cine_patient.cine_path.is_file():
            raise CaseError(f"{cine_patient.folder}: has no 4D cine for --cine")
    ensemble = load_ensemble(args)
    report = args.report or Path("reports") / f"benchmark_{ensemble.device.type}.md"
    chart = report.with_suffix(".png")
    refuse_existing([report, chart], args.overwrite)
    result = timed(ensemble, patients, repeats=args.repeats, cine_patient=cine_patient,
                   **_benchmark_rivals(args, ensemble, patients[0], cine_patient))
    text = report_markdown(result, command_line(args) if args.record_command else "")
    accuracy = accuracy_from_scores(args.accuracy) if args.accuracy else None
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text + f"\n![time per frame]({chart.name})\n")
    plot_benchmark(result, chart, accuracy, shipped_method(ensemble))
    print(text.split("## Summary")[0])
    print("\n".join(summary_lines(result)))
    print(f"wrote {report} and {chart}")
    return 0


def _benchmark_rivals(args: argparse.Namespace, ensemble, patient, cine_patient=None) -> dict:
    """What the benchmark times beside `ensemble`: today's torch full-grid path, the other
    presets of the manifest (same backend, same device), the best-validated member (alone and
    with TTA), a cold one-frame `segment` of `patient`'s ED frame with the same options, and a
    cold `segment --cine` of `cine_patient`'s cine."""
    import sys

    from CardiacEnsembleLib.core.manifest import read_manifest
    from CardiacEnsembleLib.inference.ensemble import best_validated, load_ensemble as load

    folder = models_dir(args)
    manifest = read_manifest(folder)
    reference = load(folder, device=args.device, backend="torch", preset="full")
    presets = {name: load(folder, device=args.device, backend=args.backend, preset=name)
               for name in manifest.presets if name != ensemble.preset}
    script = Path(sys.executable).with_name("cardiac-ensemble")  # what a user runs
    program = [str(script)] if script.is_file() else \
        [sys.executable, "-c", "from CardiacEnsembleLib.cli import main; raise SystemExit(main())"]
    options = ["--models", str(folder), "--device", args.device, "--backend", args.backend] + \
        (["--preset", args.preset] if args.preset else [])
    cold = [*program, "-q", "segment", str(patient.frame_path("ED")), *options]
    cold_cine = [*program, "-q", "segment", "--cine", str(cine_patient.cine_path), *options] \
        if cine_patient is not None else None
    return {"reference": reference, "presets": presets,
            "best_member": best_validated(manifest.members), "cold_segment": cold,
            "cold_cine": cold_cine}


# ------------------------------------------------------------------------ quality

def _add_quality(commands) -> None:
    quality = commands.add_parser(
        "quality", help="does the QC score find the errors? The ensemble's disagreement and the "
                        "best member's entropy / TTA disagreement on a split; on validation it "
                        "fits the flag thresholds")
    quality.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    quality.add_argument("--split", choices=("validation", "test"), required=True)
    quality.add_argument("--limit", type=int, default=0, help="first N patients only (0: all)")
    quality.add_argument("--out", type=Path, required=True,
                         help="folder: units.csv, report.md, error_caught.png (validation: also "
                              "thresholds.json)")
    quality.add_argument("--thresholds", type=Path, default=None,
                         help="thresholds.json of a validation run, applied in the report")
    quality.add_argument("--apply", action="store_true",
                         help="validation only: write the fitted thresholds into the models "
                              "folder's manifest (quality_control)")
    quality.add_argument("--record-command", action="store_true")
    quality.add_argument("--overwrite", action="store_true")
    add_model_options(quality)
    quality.set_defaults(run=run_quality)


def run_quality(args: argparse.Namespace) -> int:
    from CardiacEnsembleDev.release import quality as study
    from CardiacEnsembleLib.core.manifest import read_manifest, update_manifest
    from CardiacEnsembleLib.inference.ensemble import best_validated
    from CardiacEnsembleLib.io.acdc import find_patients, load_splits

    if args.apply and args.split != "validation":
        raise ValueError(f"--apply with --split {args.split}: the thresholds are fitted on "
                         f"validation only (use --split validation; test only reports)")
    thresholds = study.load_thresholds(args.thresholds) if args.thresholds else None
    outputs = {name: args.out / name for name in ("units.csv", "report.md", "error_caught.png")}
    if args.split == "validation":
        outputs["thresholds.json"] = args.out / "thresholds.json"
    refuse_existing(list(outputs.values()), args.overwrite)
    ids = load_splits(args.data)[args.split]
    patients = find_patients(args.data, ids[:args.limit] if args.limit else ids)
    ensemble = load_ensemble(args)
    best = best_validated(read_manifest(models_dir(args)).members)
    bar = ProgressBar(f"QC systems on {args.split}", not args.quiet, unit="frame")
    try:
        units = study.collect_units(ensemble, best, patients, progress=bar)
    finally:
        bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    study.write_units(units, outputs["units.csv"])
    if args.split == "validation":
        thresholds = study.fit_thresholds(
            units, f"validation, {len(patients)} patients, recall {study.RECALL_TARGET:.0%}")
        study.save_thresholds(thresholds, outputs["thresholds.json"])
    title = f"{args.split}: {len(patients)} patients, best member {best}"
    study.plot_error_caught(units, outputs["error_caught.png"], title)
    outputs["report.md"].write_text(study.report_markdown(
        units, args.split, [p.patient_id for p in patients], thresholds,
        outputs["error_caught.png"].name, command_line(args) if args.record_command else ""))
    for m in study.measures(units):
        print(f"{m.system:30s} {m.level:9s} AUROC {m.auroc:.3f}  AP {m.average_precision:.3f}  "
              f"({m.errors}/{m.units} errors)")
    if args.apply:
        print(f"updated {update_manifest(models_dir(args), study.manifest_update(thresholds))}")
    print(f"wrote {', '.join(map(str, outputs.values()))}")
    return 0


# ------------------------------------------------------------------------ report

def _add_report(commands) -> None:
    report = commands.add_parser(
        "report", help="evaluate (as `evaluate` does), then write the release report and "
                       "optionally record the test metrics in the manifest")
    evaluate_cli.add_options(report)
    report.add_argument("--report", type=Path, required=True,
                        help="the Markdown report (plus a Dice box plot and an accuracy-vs-cost "
                             "chart beside it), e.g. reports/acdc_test.md")
    report.add_argument("--benchmark", nargs="*", default=None, metavar="PATIENT",
                        help="time each member and the ensemble alone on these patients "
                             "(default: the first two evaluated) for the cost table")
    report.add_argument("--record-in-manifest", action="store_true",
                        help="store the shipped setting's test metrics in the models folder's "
                             "manifest.json (needs --split test)")
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from CardiacEnsembleLib.evaluation.scoring import member_methods, shipped_method

    if args.record_in_manifest:
        _check_recordable(args)
    patients = evaluate_cli.patients_to_score(args, also_written=[args.report])
    ensemble, result = evaluate_cli.run_evaluation(args, patients)
    shipped, members = shipped_method(ensemble), member_methods(ensemble)
    _write_report(args, ensemble, result, patients, shipped, members)
    if args.record_in_manifest:
        _record_test_metrics(args, result, patients, shipped, members)
    return 0


def _check_recordable(args: argparse.Namespace) -> None:
    """The manifest's test metrics describe the shipped setting on the test split: refuse any
    other run before it starts, not after."""
    if args.split != "test":
        raise SystemExit("--record-in-manifest records test metrics: use it with --split test")
    if args.members or args.fusion:
        raise SystemExit("--record-in-manifest describes the shipped setting; drop --members "
                         "and --fusion")


def _write_report(args, ensemble, result, patients, shipped, members) -> None:
    from CardiacEnsembleDev.release.benchmark import run_benchmark as timed
    from CardiacEnsembleDev.release.report import write_report
    from CardiacEnsembleLib.io.acdc import find_patients

    benchmark = None
    if args.benchmark is not None:
        ids = args.benchmark or [p.patient_id for p in patients[:2]]
        print(f"benchmark on {', '.join(ids)} (each member alone, then the ensemble)")
        benchmark = timed(ensemble, find_patients(args.data, ids), repeats=3)
    split = f"the {args.split} split" if args.split else "named patients"
    paths = write_report(result, args.report, shipped=shipped, member_methods=members,
                         patients=[p.patient_id for p in patients],
                         title=f"{ensemble.description or 'Ensemble'} on {split} of ACDC",
                         command=command_line(args), benchmark=benchmark,
                         device=str(ensemble.device), overwrite=args.overwrite)
    print(f"wrote {', '.join(map(str, paths))}")


def _record_test_metrics(args, result, patients, shipped, members) -> None:
    from CardiacEnsembleDev.release.report import best_member, mean_dice
    from CardiacEnsembleLib.core.manifest import update_manifest

    rival = best_member(result, members)
    path = update_manifest(models_dir(args), {"test": {
        "patients": len(patients), "method": str(shipped), "dice": mean_dice(result, shipped),
        "best_member": str(rival), "best_member_dice": mean_dice(result, rival),
        "members": {str(m): mean_dice(result, m)["mean"] for m in members}}})
    print(f"recorded the test metrics in {path}")
