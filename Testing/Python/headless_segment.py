"""Segment one ACDC patient folder in an MRML scene, headless, and write what a reader needs.

    python Testing/Python/headless_segment.py CASE_FOLDER OUT_DIR [--models DIR] [--device cpu]
    Slicer --no-main-window --python-script Testing/Python/headless_segment.py CASE_FOLDER OUT_DIR

The same code path as the module's panel (the MRML bridge and the library), without Qt: load
the folder's ED and ES frames (and ground truth) into a scene, segment both with the ensemble
(the shipped one unless `--models`), evaluate against the ground truth, and write

    OUT_DIR/<patient>_ED.seg.nrrd, OUT_DIR/<patient>_ES.seg.nrrd   three named segments with
                                                                   SNOMED-CT terminology
    OUT_DIR/<patient>_metrics.csv                                  the metrics table node: Dice,
                                                                   HD95, MSD per structure and
                                                                   phase; volumes, EF, mass

Existing outputs are never overwritten (exit status 2, nothing written), nor are any written
when an input is unusable (status 2, one line saying which file and why).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Slicer's --python-script may run this without __file__; its argv[0] is then the script.
REPOSITORY = Path(globals().get("__file__") or sys.argv[0]).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # run from a checkout, inside Slicer or plain Python
    sys.path.insert(0, str(REPOSITORY))

EXIT_OK, EXIT_ERROR = 0, 2


def parse_arguments(argv):
    from CardiacEnsembleLib.core.options import FUSION_RULES

    parser = argparse.ArgumentParser(prog="headless_segment.py", description=__doc__.split("\n")[0])
    parser.add_argument("case_folder", type=Path, help="ACDC patient folder (with Info.cfg)")
    parser.add_argument("out_dir", type=Path, help="folder for the .seg.nrrd files and metrics")
    parser.add_argument("--models", type=Path, default=None,
                        help="ensemble folder with a manifest.json (default: the shipped one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--fusion", default=None, choices=FUSION_RULES,
                        help="fusion rule (default: the manifest's)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    return parser.parse_args(argv)


def output_paths(patient_id: str, out_dir: Path) -> dict[str, Path]:
    from CardiacEnsembleLib.io.acdc import PHASES

    paths = {phase: out_dir / f"{patient_id}_{phase}.seg.nrrd" for phase in PHASES}
    paths["metrics"] = out_dir / f"{patient_id}_metrics.csv"
    return paths


def run(args) -> int:
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
    refuse_existing(outputs.values(), hint="remove it or pick another OUT_DIR")
    ensemble = load_ensemble(args.models or DEFAULT_MODELS_DIR, device=args.device,
                             fusion=args.fusion, tta=args.tta)
    print(f"ensemble: {', '.join(ensemble.names)} ({ensemble.fusion} fusion) on "
          f"{ensemble.device}")

    scene = create_scene().scene
    loaded = load_acdc_case(scene, patient.folder)
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
    for path in outputs.values():
        print(f"wrote {path}")
    return EXIT_OK


def main(argv=None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        # CaseError, MemberError and SlicerBridgeError are ValueErrors, OutputExistsError a
        # FileExistsError, each with an actionable message
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    status = main()
    import slicer

    if hasattr(slicer, "app"):  # inside the Slicer application: leave it with our status
        slicer.util.exit(status)
    else:
        sys.exit(status)
