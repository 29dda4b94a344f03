"""`cardiac-ensemble` (also `python -m CardiacEnsembleLib`): segment, evaluate, info, models, train.

Errors the user can act on (a wrong file, an existing output, a bad member) print one line and
exit with status 2; nothing the user made is overwritten without `--overwrite`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .case import CaseError
from .fusion import FUSION_RULES

SAMPLE_DIR = Path(__file__).resolve().parent / "sample" / "patient090"
EXIT_USAGE = 2


class ProgressBar:
    """A tqdm bar behind the package's `progress(done, total, message)` callback."""

    def __init__(self, description: str, enabled: bool = True) -> None:
        self.description, self.enabled, self.bar = description, enabled, None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.description, unit="", leave=False,
                            file=sys.stderr, mininterval=0.5)
        self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ensemble")
    group.add_argument("--models", type=Path, default=None,
                       help="folder with manifest.json and member folders "
                            "(default: the ensemble shipped with the package)")
    group.add_argument("--members", nargs="+", default=None,
                       help="use only these members (names from `cardiac-ensemble models`)")
    group.add_argument("--fusion", default=None, choices=FUSION_RULES,
                       help="fusion rule (default: the manifest's)")
    group.add_argument("--tta", action="store_true", help="flip test-time augmentation (3x cost)")
    group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")


def _load_ensemble(args):
    from .ensemble import DEFAULT_MODELS_DIR, load_ensemble, read_manifest

    models_dir = args.models or DEFAULT_MODELS_DIR
    ensemble = load_ensemble(models_dir, members=args.members, fusion=args.fusion,
                             device=args.device, tta=args.tta)
    note = read_manifest(models_dir).get("note")
    if note:
        print(f"note: {note}")
    steps = f" + {'+'.join(ensemble.postprocess)}" if ensemble.postprocess else ""
    print(f"ensemble: {', '.join(ensemble.names)} | fusion {ensemble.fusion}{steps} | "
          f"device {ensemble.device}{' | flip TTA' if ensemble.tta else ''}")
    return ensemble


def cmd_segment(args) -> int:
    from . import io
    from .acdc import PHASES, PatientFolder
    from .case import Case
    from .metrics import score_labels

    source = args.input or SAMPLE_DIR
    if args.cine:
        return _segment_cine(args, source)
    if args.input is None:
        print(f"no INPUT given: using the built-in sample case {SAMPLE_DIR.name} "
              f"(ACDC, CC BY-NC-SA 4.0, see {SAMPLE_DIR.parent / 'README.md'})")
    if source.is_dir():
        patient = PatientFolder.open(source)
        cases = [patient.load(phase) for phase in PHASES]
        outputs = {case.phase: args.output / f"{patient.patient_id}_{case.phase}_seg.nii.gz"
                   for case in cases}
        references = {case.phase: patient.frame_path(case.phase) for case in cases}
    else:
        image, geometry = io.read_image(source, allow_4d=args.frame is not None)
        if args.frame is not None:
            if image.ndim != 4 or not 1 <= args.frame <= image.shape[0]:
                raise CaseError(f"{source}: --frame {args.frame} needs a 4D cine with at least "
                                f"that many frames (shape {image.shape})")
            image = image[args.frame - 1]
        if args.output.suffix == "" or args.output.is_dir():
            raise CaseError(f"{args.output}: for a single image, --output must be a file name "
                            f"ending in .nii.gz, .nii or .nrrd")
        name = io.image_suffix(source)
        stem = source.name[: -len(name)]
        cases = [Case(image=image, geometry=geometry, patient_id=stem, source=str(source))]
        outputs = {cases[0].phase: args.output}
        references = {cases[0].phase: source if name in io.NIFTI_SUFFIXES else None}
    extra = [p for out in outputs.values() for p in _extra_outputs(out, args)]
    existing = [p for p in list(outputs.values()) + extra if p.exists()]
    if existing and not args.overwrite:
        raise io.OutputExistsError(f"{existing[0]}: already exists; refusing to overwrite it "
                                   f"(pass --overwrite to replace it)")
    ensemble = _load_ensemble(args)
    for case in cases:
        bar = ProgressBar(f"segment {case.name}", not args.quiet)
        try:
            prediction = ensemble.predict(case, progress=bar)
        finally:
            bar.close()
        out = outputs[case.phase]
        io.write_image(out, prediction.labels, prediction.geometry, overwrite=args.overwrite,
                       reference=references[case.phase])
        if args.uncertainty:
            io.write_image(_with_suffix(out, "_uncertainty"), prediction.uncertainty,
                           prediction.geometry, overwrite=args.overwrite,
                           reference=references[case.phase])
        if args.probabilities and prediction.probabilities is not None:
            for label in range(1, prediction.probabilities.shape[0]):
                io.write_image(_with_suffix(out, f"_prob{label}"),
                               prediction.probabilities[label], prediction.geometry,
                               overwrite=args.overwrite, reference=references[case.phase])
        t = prediction.timings
        line = (f"{case.name}: wrote {out} ({case.image.shape[0]} slices, "
                f"{t['total']:.2f} s: members {t['members']:.2f} s, fusion {t['fusion']:.2f} s)")
        if case.labels is not None:
            scores = score_labels(prediction.labels, case.labels, case.spacing_zyx)
            line += " | Dice vs ground truth " + " ".join(
                f"{name} {s.dice:.3f}" for name, s in scores.items())
        print(line)
    return 0


def _segment_cine(args, source: Path) -> int:
    """All frames of a 4D cine -> 4D label map, volume-time curve (CSV + PNG), ED/ES check."""
    from . import io
    from .acdc import PatientFolder
    from .cine import segment_cine, write_volume_curve

    info_frames, reference = None, None
    if source.is_dir():
        patient = PatientFolder.open(source)
        info_frames = (patient.info.ed, patient.info.es)
        cine, geometry = patient.load_cine()
        reference, stem = patient.cine_path, patient.patient_id
    else:
        cine, geometry = io.read_image(source, allow_4d=True)
        if cine.ndim != 4:
            raise CaseError(f"{source}: --cine needs a 4D image, got shape {cine.shape}")
        suffix = io.image_suffix(source)
        reference = source if suffix in io.NIFTI_SUFFIXES else None
        stem = source.name[: -len(suffix)]
    out_dir = args.output
    outputs = [out_dir / f"{stem}_cine_seg.nii.gz", out_dir / f"{stem}_volumes.csv",
               out_dir / f"{stem}_volumes.png"]
    existing = [p for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise io.OutputExistsError(f"{existing[0]}: already exists; refusing to overwrite it "
                                   f"(pass --overwrite to replace it)")
    ensemble = _load_ensemble(args)
    bar = ProgressBar(f"cine {stem} ({cine.shape[0]} frames)", not args.quiet)
    try:
        result = segment_cine(ensemble, cine.astype("float32", copy=False), geometry,
                              progress=bar)
    finally:
        bar.close()
    io.write_image(outputs[0], result.labels, geometry, overwrite=args.overwrite,
                   reference=reference)
    write_volume_curve(result, outputs[1], outputs[2], info_frames, title=stem)
    line = (f"{stem}: {cine.shape[0]} frames in {result.seconds:.2f} s | ED/ES from the curve: "
            f"{result.ed_frame}/{result.es_frame}")
    if info_frames:
        line += f" (Info.cfg: {info_frames[0]}/{info_frames[1]})"
    print(line + f" | LV EF {result.lv_ef_pct:.1f}% | wrote {', '.join(map(str, outputs))}")
    return 0


def _with_suffix(path: Path, tag: str) -> Path:
    from .io import image_suffix
    suffix = image_suffix(path)
    return path.with_name(path.name[: -len(suffix)] + tag + suffix)


def _extra_outputs(out: Path, args) -> list[Path]:
    paths = [_with_suffix(out, "_uncertainty")] if args.uncertainty else []
    if args.probabilities:
        paths += [_with_suffix(out, f"_prob{label}") for label in (1, 2, 3)]
    return paths


def cmd_evaluate(args) -> int:
    from .acdc import find_patients, load_splits
    from .evaluation import (evaluate, member_methods, shipped_method, summary_table,
                             write_clinical_csv, write_scores_csv)

    if args.data is None:
        args.data = SAMPLE_DIR.parent
        print(f"no --data given: evaluating the built-in sample case {SAMPLE_DIR.name}")
    ids = args.patients
    if args.split:
        ids = load_splits(args.data)[args.split]
    patients = find_patients(args.data, ids)
    if not patients:
        raise CaseError(f"{args.data}: no ACDC patient folders found")
    if args.out.exists() and not args.out.is_dir():
        raise FileExistsError(f"{args.out}: is a file; --out must be a folder")
    if args.record_in_manifest and args.split != "test":
        raise SystemExit("--record-in-manifest records test metrics: use it with --split test")
    outputs = [args.out / name for name in ("scores.csv", "clinical.csv", "summary.md")]
    if args.report is not None:
        outputs.append(args.report)
    existing = [p for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]}: already exists; refusing to overwrite it "
                              f"(pass --overwrite to replace it)")
    ensemble = _load_ensemble(args)
    bar = ProgressBar("evaluate", not args.quiet)
    try:
        result = evaluate(ensemble, patients, args.rules, progress=bar)
    finally:
        bar.close()
    table = summary_table(result)
    names = ", ".join(p.patient_id for p in patients)
    text = (f"# Evaluation on {len(patients)} patient(s), ED and ES\n\nPatients: {names}\n\n"
            f"Dice and HD95 per structure (mean ± sd over frames), LV/RV ejection-fraction "
            f"absolute error (percentage points, mean ± sd over patients), median seconds per "
            f"frame on {ensemble.device}.\n\n{table}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    write_scores_csv(result, outputs[0])
    write_clinical_csv(result, outputs[1])
    outputs[2].write_text(text)
    print(table)
    print(f"wrote {outputs[0]}, {outputs[1]}, {outputs[2]}")
    shipped = shipped_method(ensemble)
    members = member_methods(ensemble)
    if args.report is not None:
        _write_evaluation_report(args, ensemble, result, patients, shipped, members)
    if args.record_in_manifest:
        _record_test_metrics(args, result, patients, shipped, members)
    return 0


def _write_evaluation_report(args, ensemble, result, patients, shipped, members) -> None:
    from .acdc import find_patients
    from .benchmark import run_benchmark
    from .report import write_report

    benchmark = None
    if args.benchmark is not None:
        ids = args.benchmark or [p.patient_id for p in patients[:2]]
        print(f"benchmark on {', '.join(ids)} (each member alone, then the ensemble)")
        benchmark = run_benchmark(ensemble, find_patients(args.data, ids), repeats=3)
    split = f"the {args.split} split" if args.split else "named patients"
    paths = write_report(result, args.report, shipped=shipped, member_methods=members,
                         patients=[p.patient_id for p in patients],
                         title=f"{ensemble.description or 'Ensemble'} on {split} of ACDC",
                         command="cardiac-ensemble " + " ".join(sys.argv[1:]),
                         benchmark=benchmark, device=str(ensemble.device))
    print(f"wrote {', '.join(map(str, paths))}")


def _record_test_metrics(args, result, patients, shipped, members) -> None:
    from .ensemble import DEFAULT_MODELS_DIR, update_manifest
    from .report import best_member, mean_dice

    if args.members or args.fusion:
        raise SystemExit("--record-in-manifest describes the shipped setting; drop --members "
                         "and --fusion")
    rival = best_member(result, members)
    path = update_manifest(args.models or DEFAULT_MODELS_DIR, {"test": {
        "patients": len(patients), "method": shipped, "dice": mean_dice(result, shipped),
        "best_member": rival, "best_member_dice": mean_dice(result, rival),
        "members": {m: mean_dice(result, m)["mean"] for m in members}}})
    print(f"recorded the test metrics in {path}")


def cmd_info(args) -> int:
    from .acdc import find_patients

    patients = find_patients(args.folder)
    if not patients:
        raise CaseError(f"{args.folder}: no ACDC patient folders (with Info.cfg) found")
    rows = [p.describe() for p in patients]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join("-" if row[k] is None else str(row[k]) for k in keys))
    return 0


def cmd_models(args) -> int:
    from .ensemble import DEFAULT_MODELS_DIR, read_manifest
    from .fusion import weight_text
    from .members import verify_member

    models_dir = args.models or DEFAULT_MODELS_DIR
    manifest = read_manifest(models_dir)
    steps = manifest.get("postprocess") or []
    print(f"{manifest.get('name', 'ensemble')} {manifest.get('version', '')} "
          f"({models_dir}): fusion {manifest.get('fusion', 'mean')}"
          + (f" + {'+'.join(steps)}" if steps else ""))
    if manifest.get("note"):
        print(f"note: {manifest['note']}")
    if manifest.get("weights"):
        print("weights" + (" (background, RV, Myo, LV)" if any(
            isinstance(v, list) for v in manifest["weights"].values()) else "") + ": " + ", ".join(
            f"{k} {weight_text(v)}" for k, v in manifest["weights"].items()))
    chosen = (manifest.get("selection") or {}).get("validation", {}).get("dice", {})
    if chosen:
        print(f"validation mean Dice {chosen['mean']:.4f} ({manifest['selection']['chosen']}, "
              f"{len(manifest['selection']['patients'])} validation patients)")
    test = manifest.get("test") or {}
    if test:
        print(f"test mean Dice {test['dice']['mean']:.4f} ({test['method']}, {test['patients']} "
              f"test patients; best member {test['best_member']} "
              f"{test['best_member_dice']['mean']:.4f})")
    for entry in manifest["members"]:
        spec = verify_member(models_dir / entry["folder"])
        dice = spec.metrics.get("validation_dice", {}).get("mean")
        view = f"2.5D±{spec.context_slices}" if spec.context_slices else "2D"
        print(f"  {spec.name:20s} {spec.arch + '/' + spec.encoder:28s} {view:7s} "
              f"{entry.get('size_bytes', 0) / 1e6:5.1f} MB  sha256 {spec.weights_sha256[:12]}  "
              f"validation Dice {dice if dice is None else f'{dice:.3f}'}")
    return 0


def cmd_train(args) -> int:
    from .recipes import recipe_spec
    from .training import TrainConfig, train_member

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
    from .inference import pick_device
    bar = ProgressBar(f"train {spec.name}", not args.quiet)
    try:
        member = train_member(spec, args.data, args.out, config, device=pick_device(args.device),
                              progress=bar, log=lambda line: (bar.close(), print(line, flush=True)))
    finally:
        bar.close()
    print(f"best member: {member.folder} (validation Dice "
          f"{member.spec.metrics['validation_dice']['mean']:.4f})")
    return 0


def cmd_benchmark(args) -> int:
    from .acdc import find_patients
    from .benchmark import (accuracy_from_scores, plot_benchmark, report_markdown,
                            run_benchmark, summary_lines)

    patients = find_patients(args.data, args.patients)
    cine_patient = None
    if args.cine:
        cine_patient = find_patients(args.data, [args.cine])[0]
        if not cine_patient.cine_path.is_file():
            raise CaseError(f"{cine_patient.folder}: has no 4D cine for --cine")
    ensemble = _load_ensemble(args)
    device_tag = ensemble.device.type
    report = args.report or Path("reports") / f"benchmark_{device_tag}.md"
    chart = report.with_suffix(".png")
    existing = [p for p in (report, chart) if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]}: already exists; refusing to overwrite it "
                              f"(pass --overwrite to replace it)")
    result = run_benchmark(ensemble, patients, repeats=args.repeats, cine_patient=cine_patient)
    command = "cardiac-ensemble " + " ".join(sys.argv[1:]) if args.record_command else ""
    text = report_markdown(result, command)
    accuracy = accuracy_from_scores(args.accuracy) if args.accuracy else None
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text + (f"\n![time per frame]({chart.name})\n"))
    from .evaluation import shipped_method
    plot_benchmark(result, chart, accuracy, shipped_method(ensemble))
    print(text.split("## Summary")[0])
    print("\n".join(summary_lines(result)))
    print(f"wrote {report} and {chart}")
    return 0


def cmd_batch(args) -> int:
    from .acdc import find_patients, load_splits
    from .batch import segment_studies

    ids = load_splits(args.data)[args.split] if args.split else args.patients
    patients = find_patients(args.data, ids)
    if not patients:
        raise CaseError(f"{args.data}: no ACDC patient folders found")
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    where = args.scheduler or f"a local Dask cluster of {args.workers} worker processes"
    print(f"segmenting {len(patients)} studies on {where}")
    bar = ProgressBar("batch", not args.quiet)
    try:
        results = segment_studies([p.folder for p in patients], args.output,
                                  workers=args.workers, scheduler=args.scheduler,
                                  models_dir=args.models, device=args.device,
                                  fusion=args.fusion, overwrite=args.overwrite, progress=bar)
    finally:
        bar.close()
    for r in results:
        dice = " ".join(f"{phase} " + "/".join(f"{v:.3f}" for v in scores.values())
                        for phase, scores in r.dice.items())
        print(f"{r.patient}: {r.seconds:.1f} s on {r.worker}" + (f" | Dice RV/Myo/LV {dice}"
                                                                if dice else ""))
    print(f"wrote {2 * len(results)} label maps to {args.output}")
    return 0


def cmd_ship(args) -> int:
    from .ensemble import DEFAULT_MODELS_DIR
    from .zoo import ship_runs

    path = ship_runs(args.runs, args.models or DEFAULT_MODELS_DIR, name=args.name,
                     version=args.version, fusion=args.fusion, note=args.note,
                     description=args.description, overwrite=args.overwrite,
                     data_root=args.data)
    print(f"wrote {path}")
    return 0


def cmd_pack(args) -> int:
    from .recipes import PREPROCESS
    from .slicepack import read_pack, write_pack

    path = write_pack(args.data, args.out, PREPROCESS, margin_px=args.margin,
                      max_patients=args.max_patients, overwrite=args.overwrite)
    pack = read_pack(path)
    print(f"wrote {path}: {len(pack.split('train'))} train and "
          f"{len(pack.split('validation'))} validation frames, {path.stat().st_size / 1e6:.1f} MB")
    return 0


def cmd_select(args) -> int:
    from .ensemble import DEFAULT_MODELS_DIR, update_manifest
    from .selection import collect_validation_frames, select, write_selection

    if args.fusion is not None:
        raise SystemExit("select chooses the fusion rule itself; drop --fusion")
    if args.apply and args.members:
        raise SystemExit("--apply records a choice for the whole manifest; drop --members")
    existing = [p for p in (args.out / "selection.md", args.out / "selection.json") if p.exists()]
    if existing and not args.overwrite:  # refuse before minutes of work, not after
        raise FileExistsError(f"{existing[0]}: already exists; refusing to overwrite it "
                              f"(pass --overwrite to replace it)")
    models_dir = args.models or DEFAULT_MODELS_DIR
    ensemble = _load_ensemble(args)
    bar = ProgressBar("members on validation", not args.quiet)
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
        print(f"updated {update_manifest(models_dir, selection.manifest_update())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardiac-ensemble",
        description="Segment ACDC cardiac cine-MRI (RV cavity, LV myocardium, LV cavity) with an "
                    "ensemble of 2D networks, and measure it against ground truth.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # the same flags after the sub-command; SUPPRESS keeps them from resetting the ones before
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser = commands.add_parser
    commands.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)

    segment = commands.add_parser("segment", help="segment a frame or an ACDC patient folder")
    segment.add_argument("input", nargs="?", type=Path,
                         help="a NIfTI/NRRD frame, or a patient folder (ED and ES are segmented); "
                              "omitted: the built-in sample patient")
    segment.add_argument("--output", "-o", type=Path, required=True,
                         help="label map file (for a frame) or folder (for a patient)")
    segment.add_argument("--frame", type=int, default=None,
                         help="1-based frame to take when INPUT is a 4D cine")
    segment.add_argument("--cine", action="store_true",
                         help="segment every frame of a 4D cine (INPUT a _4d file or a patient "
                              "folder): 4D label map + volume-time curve (CSV, PNG) in OUTPUT/")
    segment.add_argument("--uncertainty", action="store_true",
                         help="also write the normalised-entropy map (*_uncertainty)")
    segment.add_argument("--probabilities", action="store_true",
                         help="also write fused probability maps per structure (*_probN)")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_model_options(segment)
    segment.set_defaults(run=cmd_segment)

    evaluate = commands.add_parser("evaluate", help="members and ensemble vs ground truth")
    evaluate.add_argument("--data", type=Path, default=None,
                          help="ACDC root or patient folder (default: the built-in sample)")
    chosen = evaluate.add_mutually_exclusive_group()
    chosen.add_argument("--patients", nargs="+", default=None, help="patient ids, e.g. patient001")
    chosen.add_argument("--split", choices=("train", "validation", "test"),
                        help="all patients of a split from DATA/splits.json")
    evaluate.add_argument("--rules", nargs="+", default=None, choices=FUSION_RULES,
                          help="fusion rules to compare (default: all that apply)")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"),
                          help="folder for scores.csv, clinical.csv, summary.md")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    evaluate.add_argument("--report", type=Path, default=None,
                          help="also write a full Markdown report here (plus a Dice box plot and "
                               "an accuracy-vs-cost chart beside it), e.g. reports/acdc_test.md")
    evaluate.add_argument("--benchmark", nargs="*", default=None, metavar="PATIENT",
                          help="with --report: time each member and the ensemble alone on these "
                               "patients (default: the first two evaluated) for the cost table")
    evaluate.add_argument("--record-in-manifest", action="store_true",
                          help="store the shipped setting's test metrics in the models folder's "
                               "manifest.json (needs --split test)")
    _add_model_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    info = commands.add_parser("info", help="what an ACDC patient folder (or root) holds")
    info.add_argument("folder", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=cmd_info)

    models = commands.add_parser("models", help="list the ensemble's members (manifest)")
    models.add_argument("--models", type=Path, default=None)
    models.set_defaults(run=cmd_models)

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
    train.set_defaults(run=cmd_train)

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
    _add_model_options(bench)
    bench.set_defaults(run=cmd_benchmark)

    batch = commands.add_parser("batch", help="segment many patient folders on a Dask cluster "
                                              "(local workers or a remote scheduler)")
    batch.add_argument("--data", type=Path, required=True, help="ACDC root or folder of patients")
    picked = batch.add_mutually_exclusive_group()
    picked.add_argument("--patients", nargs="+", default=None)
    picked.add_argument("--split", choices=("train", "validation", "test"))
    batch.add_argument("--output", "-o", type=Path, required=True, help="folder for label maps")
    batch.add_argument("--workers", type=int, default=2,
                       help="local worker processes (ignored with --scheduler)")
    batch.add_argument("--scheduler", default=None,
                       help="address of a running Dask scheduler, e.g. tcp://host:8786")
    batch.add_argument("--models", type=Path, default=None)
    batch.add_argument("--fusion", default=None, choices=FUSION_RULES)
    batch.add_argument("--device", default="cpu")
    batch.add_argument("--overwrite", action="store_true")
    batch.set_defaults(run=cmd_batch)

    packer = commands.add_parser("pack", help="write the train and validation slices as one "
                                 "small file, for training on a machine without ACDC")
    packer.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    packer.add_argument("--out", type=Path, required=True, help="pack file (.npz.xz)")
    packer.add_argument("--margin", type=int, default=32,
                        help="px kept around the heart's bounding box (at 1.5 mm)")
    packer.add_argument("--max-patients", type=int, default=0,
                        help="first N patients of each split only (quick runs)")
    packer.add_argument("--overwrite", action="store_true")
    packer.set_defaults(run=cmd_pack)

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
    _add_model_options(chooser)
    chooser.set_defaults(run=cmd_select)

    ship = commands.add_parser("ship", help="package training runs as the shipped ensemble "
                                            "(fp16 members + manifest.json)")
    ship.add_argument("runs", nargs="+", type=Path, help="training run folders (with best/)")
    ship.add_argument("--models", type=Path, default=None,
                      help="target folder (default: the package's models/)")
    ship.add_argument("--name", default="acdc-default")
    ship.add_argument("--version", required=True)
    ship.add_argument("--fusion", default="mean")
    ship.add_argument("--note", default="", help="shown to users whenever the ensemble loads")
    ship.add_argument("--description", default="", help="one line naming the ensemble (reports)")
    ship.add_argument("--overwrite", action="store_true")
    ship.add_argument("--data", type=Path, default=None,
                      help="ACDC root: members trained on a slice pack are re-scored on its "
                           "validation frames (their pack Dice is approximate)")
    ship.set_defaults(run=cmd_ship)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .cancel import Cancelled
    from .members import MemberError

    try:
        return args.run(args)
    except (CaseError, MemberError, FileExistsError, FileNotFoundError, ValueError) as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (Cancelled, KeyboardInterrupt):
        print("cancelled: nothing further was written", file=sys.stderr)
        return 130
