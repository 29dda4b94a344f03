"""Segment one ACDC patient folder in an MRML scene, headless, and write what a reader needs.

    Slicer --no-main-window --python-script SCRIPT CASE_FOLDER OUT_DIR [--models DIR] [--device cpu]
    python SCRIPT CASE_FOLDER OUT_DIR ...     (a Python with the package and slicer-core)

SCRIPT is installed with the extension, under the module's folder:
`<extension>/lib/Slicer-X.Y/qt-scripted-modules/Resources/Scripts/headless_segment.py`;
Slicer's Python console prints it:
`slicer.util.getModuleLogic("CardiacEnsemble").headlessScriptPath()`. In a checkout it is
`CardiacEnsemble/Resources/Scripts/headless_segment.py`. Install the Python packages first
(the module panel offers it); without them the script exits saying which are missing.

The same code path as the module's panel (the MRML bridge and the library), without Qt: load
the folder's ED and ES frames (and ground truth) into a scene, segment both with the ensemble
(the shipped one unless `--models`), evaluate against the ground truth, and write

    OUT_DIR/<patient>_ED.seg.nrrd, OUT_DIR/<patient>_ES.seg.nrrd   three named segments with
                                                                   SNOMED-CT terminology
    OUT_DIR/<patient>_metrics.csv                                  the metrics table node: Dice,
                                                                   HD95, MSD per structure and
                                                                   phase; volumes, EF, mass

and, when the folder has its cine (`<patient>_4d.nii.gz`; `--cine` requires it, `--no-cine`
skips it), every frame of it, printing the ED and ES frames found on the volume-time curve:

    OUT_DIR/<patient>_cine.seg.seq.mrb      the segmentation sequence (Slicer's format for one:
                                            a bundle of one segmentation per frame)
    OUT_DIR/<patient>_cine_labels.seq.nrrd  the same labels as a 4D label-map volume sequence
    OUT_DIR/<patient>_cine_volumes.csv      frame, LV, RV, Myo ml per frame

Existing outputs are never overwritten (exit status 2, nothing written), nor are any written
when an input is unusable (status 2, one line saying which file and why). Any other error also
ends the run with status 2 and one line; inside Slicer the application always exits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Slicer's --python-script may run this without __file__; its argv[0] is then the script.
SCRIPT = Path(globals().get("__file__") or sys.argv[0]).resolve()
# The folder holding CardiacEnsembleLib: the module's folder when installed, the repository in
# a checkout.
LIBRARY_ROOT = next((folder for folder in SCRIPT.parents
                     if (folder / "CardiacEnsembleLib").is_dir()), None)
if LIBRARY_ROOT is not None and str(LIBRARY_ROOT) not in sys.path:
    sys.path.insert(0, str(LIBRARY_ROOT))

EXIT_OK, EXIT_ERROR = 0, 2


def parse_arguments(argv):
    from CardiacEnsembleLib.core.options import FUSION_RULES, Preset

    parser = argparse.ArgumentParser(prog="headless_segment.py", description=__doc__.split("\n")[0])
    parser.add_argument("case_folder", type=Path, help="ACDC patient folder (with Info.cfg)")
    parser.add_argument("out_dir", type=Path, help="folder for the .seg.nrrd files and metrics")
    parser.add_argument("--models", type=Path, default=None,
                        help="ensemble folder with a manifest.json (default: the shipped one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--preset", default=None, choices=Preset.values(),
                        help="fast, balanced or full (default: the manifest's)")
    parser.add_argument("--fusion", default=None, choices=FUSION_RULES,
                        help="fusion rule (default: the manifest's)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    cine = parser.add_mutually_exclusive_group()
    cine.add_argument("--cine", dest="cine", action="store_const", const=True, default=None,
                      help="also segment every frame of the cine (an error without one; "
                           "default: when the folder has one)")
    cine.add_argument("--no-cine", dest="cine", action="store_const", const=False,
                      help="only the ED and ES frames, even when the folder has a cine")
    return parser.parse_args(argv)


def wants_cine(args, patient) -> bool:
    """Whether to segment the cine: asked for, or (by default) present."""
    from CardiacEnsembleLib.core.case import CaseError

    present = patient.cine_path.is_file()
    if args.cine and not present:
        raise CaseError(f"{patient.folder}: has no cine ({patient.cine_path.name}) to segment "
                        f"(--cine)")
    return present if args.cine is None else args.cine


def output_paths(patient_id: str, out_dir: Path) -> dict[str, Path]:
    from CardiacEnsembleLib.io.acdc import PHASES

    paths = {phase: out_dir / f"{patient_id}_{phase}.seg.nrrd" for phase in PHASES}
    paths["metrics"] = out_dir / f"{patient_id}_metrics.csv"
    return paths


def cine_output_paths(patient_id: str, out_dir: Path) -> dict[str, Path]:
    return {"segmentation": out_dir / f"{patient_id}_cine.seg.seq.mrb",
            "labels": out_dir / f"{patient_id}_cine_labels.seq.nrrd",
            "volumes": out_dir / f"{patient_id}_cine_volumes.csv"}


class MissingDependencies(RuntimeError):
    """Python packages the library needs are not installed."""


def check_dependencies() -> None:
    from CardiacEnsembleLib.core.requirements import missing_packages

    missing = missing_packages()
    if missing:
        raise MissingDependencies(
            f"missing Python packages: {', '.join(missing)}; install them from the Cardiac "
            f"Ensemble module panel (or with slicer.util.pip_install in Slicer)")


def run(args) -> int:
    check_dependencies()
    from CardiacEnsembleLib.core.errors import refuse_existing
    from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR
    from CardiacEnsembleLib.inference.ensemble import load_ensemble
    from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
    from CardiacEnsembleLib.slicer.acdc import load_acdc_case
    from CardiacEnsembleLib.slicer.files import save_segmentation
    from CardiacEnsembleLib.slicer.nodes import get_attribute
    from CardiacEnsembleLib.slicer.prediction import segment_volume
    from CardiacEnsembleLib.slicer.scene import create_scene
    from CardiacEnsembleLib.slicer.tables import add_metrics_table, \
        clinical_rows_from_segmentations, evaluate_segmentation, write_table_csv

    patient = PatientFolder.open(args.case_folder)
    outputs = output_paths(patient.patient_id, args.out_dir)
    cine = wants_cine(args, patient)
    cine_outputs = cine_output_paths(patient.patient_id, args.out_dir) if cine else {}
    refuse_existing([*outputs.values(), *cine_outputs.values()],
                    hint="remove it or pick another OUT_DIR")
    ensemble = load_ensemble(args.models or DEFAULT_MODELS_DIR, device=args.device,
                             fusion=args.fusion, tta=args.tta or None, preset=args.preset)
    print(f"ensemble: {', '.join(ensemble.names)} ({ensemble.fusion} fusion"
          f"{', preset ' + ensemble.preset if ensemble.preset else ''}) on {ensemble.device}")

    scene = create_scene().scene
    loaded = load_acdc_case(scene, patient.folder, cine=cine)
    rows, predicted = [], {}
    for phase in PHASES:
        volume = loaded[phase].volume
        nodes = segment_volume(volume, ensemble,
                               name=f"{patient.patient_id} {phase} segmentation")
        predicted[phase] = nodes.segmentation
        ground_truth = loaded[phase].ground_truth
        if ground_truth is None:
            print(f"{patient.patient_id} {phase}: segmented (no ground truth to score against)")
            continue
        scores = evaluate_segmentation(nodes.segmentation, ground_truth, volume)
        rows += scores
        dice = ", ".join(f"{r.structure} {r.value:.3f}" for r in scores if r.measure == "Dice")
        print(f"{patient.patient_id} {phase}: Dice {dice}")
    method = get_attribute(predicted["ED"], "method")
    volumes = [loaded[phase].volume for phase in PHASES]
    rows += clinical_rows_from_segmentations(predicted["ED"], predicted["ES"], *volumes,
                                             method=method)
    if all(loaded[phase].ground_truth is not None for phase in PHASES):
        rows += clinical_rows_from_segmentations(
            loaded["ED"].ground_truth, loaded["ES"].ground_truth, *volumes,
            method="ground truth")
    table = add_metrics_table(scene, rows, f"{patient.patient_id} metrics")

    for phase in PHASES:
        save_segmentation(predicted[phase], outputs[phase])
    write_table_csv(table, outputs["metrics"])
    if cine:
        segment_the_cine(scene, ensemble, loaded.cine, patient, cine_outputs)
    for path in [*outputs.values(), *cine_outputs.values()]:
        print(f"wrote {path}")
    return EXIT_OK


def segment_the_cine(scene, ensemble, cine, patient, outputs: dict[str, Path]) -> None:
    """Every frame of the cine: the segmentation sequence, its labels and the volume curve."""
    from CardiacEnsembleLib.inference.cine import segment_cine, write_volume_curve
    from CardiacEnsembleLib.slicer.cine import add_cine_result, save_label_sequence, \
        summary_text
    from CardiacEnsembleLib.slicer.files import save_node

    result = segment_cine(ensemble, cine.cine, cine.geometry)
    nodes = add_cine_result(scene, result, cine, name=f"{patient.patient_id} cine segmentation")
    print(f"{patient.patient_id} cine, {len(result.labels)} frames: "
          f"{summary_text(nodes.summary)} (Info.cfg: ED frame {patient.info.ed}, ES frame "
          f"{patient.info.es})")
    save_node(nodes.sequence, outputs["segmentation"])
    save_label_sequence(scene, result.labels, cine, outputs["labels"])
    write_volume_curve(result, outputs["volumes"])


def main(argv=None) -> int:
    try:
        return run(parse_arguments(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help, or a usage error argparse has already printed
        return EXIT_OK if stop.code in (0, None) else EXIT_ERROR
    except (ValueError, OSError, MissingDependencies) as error:
        # CaseError, MemberError and SlicerBridgeError are ValueErrors, OutputExistsError a
        # FileExistsError, each with an actionable message
        print(f"error: {error}", file=sys.stderr)
    except Exception as error:  # a fault of ours: still one line and an exit, never a hang
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    return EXIT_ERROR


def in_slicer_application() -> bool:
    slicer = sys.modules.get("slicer")
    return slicer is not None and hasattr(slicer, "app")


if __name__ == "__main__":
    status = EXIT_ERROR
    try:
        status = main()
    finally:
        # Slicer --python-script returns only when the script exits the application
        if in_slicer_application():
            sys.modules["slicer"].util.exit(status)
    if not in_slicer_application():
        sys.exit(status)
