"""`segment`: a frame, a patient folder's ED and ES frames, or (`--cine`) every frame of a cine."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

from CardiacEnsembleLib.cli.common import (SAMPLE_DIR, ProgressBar, add_model_options,
                                           load_ensemble, say)
from CardiacEnsembleLib.core.errors import CaseError

if TYPE_CHECKING:  # imported when a command runs: nibabel and SimpleITK cost `--help` time
    from CardiacEnsembleLib.core.case import Case
    from CardiacEnsembleLib.io.acdc import PatientFolder
    from CardiacEnsembleLib.io.outputs import SegmentationOutputs


class Job(NamedTuple):
    """One volume to segment: the case, the files it becomes, the image whose header they copy,
    and the input files no output may be written over."""

    case: Case
    outputs: SegmentationOutputs
    reference: Optional[Path]
    inputs: tuple[Path, ...]


def register(commands) -> None:
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
    segment.add_argument("--no-qc", dest="qc", action="store_false",
                         help="do not write the QC file (*_qc.json: the slices to review, "
                              "ranked by how much the members disagree)")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_options(segment)
    segment.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    source = args.input or SAMPLE_DIR
    if args.cine:
        return run_cine(args, source)
    if args.input is None:
        say(args, f"no INPUT given: using the built-in sample case {SAMPLE_DIR.name} "
                  f"(ACDC, CC BY-NC-SA 4.0, see {SAMPLE_DIR.parent / 'README.md'})")
    from CardiacEnsembleLib.io.atomic import check_outputs

    jobs = _patient_jobs(args, source) if source.is_dir() else [_frame_job(args, source)]
    inputs = [path for job in jobs for path in job.inputs]
    check_outputs([path for job in jobs for path in job.outputs.paths],
                  overwrite=args.overwrite, inputs=inputs)
    ensemble = load_ensemble(args)
    for job in jobs:
        bar = ProgressBar(f"segment {job.case.name}", not args.quiet, unit="slice")
        try:
            prediction = ensemble.predict(job.case, progress=bar)
        finally:
            bar.close()
        quality = _write_prediction(prediction, job.outputs, job.reference, args.overwrite,
                                    inputs, ensemble.quality_control)
        print(_result_line(job.case, prediction, job.outputs.labels, quality))
    return 0


def _outputs(args: argparse.Namespace, labels: Path) -> SegmentationOutputs:
    from CardiacEnsembleLib.io.outputs import SegmentationOutputs

    return SegmentationOutputs.beside(labels, uncertainty=args.uncertainty,
                                      probabilities=args.probabilities, quality=args.qc)


def _patient_jobs(args: argparse.Namespace, folder: Path) -> list[Job]:
    """The ED and ES frames of a patient folder."""
    from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
    from CardiacEnsembleLib.io.outputs import frame_output

    patient = PatientFolder.open(folder)
    inputs = patient.input_paths
    return [Job(case, _outputs(args, frame_output(args.output, patient.patient_id, case.phase)),
                patient.frame_path(case.phase), inputs)
            for case in (patient.load(phase) for phase in PHASES)]


def frame_inputs(source: Path) -> tuple[Path, ...]:
    """A frame, and the expert labels beside it where there are some (`X_gt.nii.gz` for
    `X.nii.gz`): a label map written over them would pass for ground truth from then on."""
    from CardiacEnsembleLib.io.outputs import with_tag

    ground_truth = with_tag(source, "_gt")
    return (source, ground_truth) if ground_truth.exists() else (source,)


def _frame_job(args: argparse.Namespace, source: Path) -> Job:
    """One image file (with --frame, one frame of a 4D cine)."""
    from CardiacEnsembleLib.core.case import Case
    from CardiacEnsembleLib.io import images
    from CardiacEnsembleLib.io.outputs import image_stem

    if images.image_suffix(args.output) not in images.WRITABLE_SUFFIXES or \
            os.path.isdir(args.output):  # not Path.is_dir: it raises on a name too long
        raise CaseError(f"{args.output}: for a single image, --output must be a file name "
                        f"ending in .nii.gz, .nii or .nrrd")
    image, geometry = images.read_image(source, allow_4d=args.frame is not None)
    if args.frame is not None:
        if image.ndim != 4 or not 1 <= args.frame <= image.shape[0]:
            raise CaseError(f"{source}: --frame {args.frame} needs a 4D cine with at least "
                            f"that many frames (shape {image.shape})")
        image = image[args.frame - 1]
    case = Case(image=image, geometry=geometry, patient_id=image_stem(source), source=str(source))
    reference = source if images.image_suffix(source) in images.NIFTI_SUFFIXES else None
    return Job(case, _outputs(args, args.output), reference, frame_inputs(source))


def _write_prediction(prediction, outputs, reference, overwrite: bool, inputs,
                      thresholds=None):
    """The label map, then the uncertainty and probability maps asked for, on the input's grid,
    and the QC file (`inference.quality.assess` with the manifest's `thresholds`); none of them
    over one of the run's `inputs`. Returns the QC report, or None when not asked."""
    import json

    from CardiacEnsembleLib.inference.quality import assess
    from CardiacEnsembleLib.io.atomic import write_text_atomic
    from CardiacEnsembleLib.io.images import write_image

    def write(path: Path, array) -> None:
        write_image(path, array, prediction.geometry, overwrite=overwrite, reference=reference,
                    protected=inputs)

    write(outputs.labels, prediction.labels)
    if outputs.uncertainty is not None:
        write(outputs.uncertainty, prediction.uncertainty)
    if prediction.probabilities is not None:
        for label, path in enumerate(outputs.probabilities, start=1):
            write(path, prediction.probabilities[label])
    if outputs.quality is None:
        return None
    quality = assess(prediction, thresholds)
    record = {"labels": outputs.labels.name, **quality.to_json()}
    write_text_atomic(outputs.quality, json.dumps(record, indent=1) + "\n", overwrite=overwrite,
                      protected=inputs)
    return quality


def _result_line(case, prediction, written: Path, quality=None) -> str:
    """What was written, how long it took, the Dice against ground truth where there is one,
    the QC summary, and any warning the prediction carries (filled NaN voxels, an empty map)."""
    from CardiacEnsembleLib.evaluation.metrics import score_labels

    t = prediction.timings
    line = (f"{case.name}: wrote {written} ({case.image.shape[0]} slices, "
            f"{t['total']:.2f} s: members {t['members']:.2f} s, fusion {t['fusion']:.2f} s)")
    if case.labels is not None:
        scores = score_labels(prediction.labels, case.labels, case.spacing_zyx)
        line += " | Dice vs ground truth " + " ".join(
            f"{name} {s.dice:.3f}" for name, s in scores.items())
    if prediction.heart_region:
        line += f" | {prediction.heart_region}"
    if quality is not None:
        line += " | " + quality.summary()
    for warning in prediction.warnings:  # also logged on stderr; here so stdout alone tells
        line += " | WARNING " + warning.removeprefix(f"{case.source or case.name}: ")
    return line


def run_cine(args: argparse.Namespace, source: Path) -> int:
    """All frames of a 4D cine -> 4D label map, volume-time curve (CSV + PNG), ED/ES check."""
    from CardiacEnsembleLib.inference.cine import segment_cine, write_volume_curve
    from CardiacEnsembleLib.io.atomic import check_outputs
    from CardiacEnsembleLib.io.images import write_image
    from CardiacEnsembleLib.io.outputs import CineOutputs

    cine, geometry, reference, stem, info_frames, inputs = _read_cine(source)
    outputs = CineOutputs.in_folder(args.output, stem)
    check_outputs(outputs.paths, overwrite=args.overwrite, inputs=inputs)
    ensemble = load_ensemble(args)
    bar = ProgressBar(f"cine {stem} ({cine.shape[0]} frames)", not args.quiet)
    try:
        result = segment_cine(ensemble, cine.astype("float32", copy=False), geometry,
                              progress=bar)
    finally:
        bar.close()
    write_image(outputs.labels, result.labels, geometry, overwrite=args.overwrite,
                reference=reference, protected=inputs)
    write_volume_curve(result, outputs.curve_csv, outputs.curve_png, info_frames, title=stem,
                       overwrite=args.overwrite, protected=inputs)
    line = (f"{stem}: {cine.shape[0]} frames in {result.seconds:.2f} s | ED/ES from the curve: "
            f"{result.ed_frame}/{result.es_frame}")
    if info_frames:
        line += f" (Info.cfg: {info_frames[0]}/{info_frames[1]})"
    if result.quality is not None:
        worst = int(result.quality.argmax())
        line += (f" | QC ({result.quality_score}): frame {worst + 1} the most in doubt "
                 f"({result.quality[worst]:.3f})")
    print(line + f" | LV EF {result.lv_ef_pct:.1f}% | wrote {', '.join(map(str, outputs.paths))}")
    return 0


def _read_cine(source: Path) -> tuple:
    """(cine, geometry, reference image, name stem, Info.cfg's (ED, ES) or None, the input files)
    of a patient folder's 4D cine or of a 4D image file."""
    from CardiacEnsembleLib.io import images
    from CardiacEnsembleLib.io.acdc import PatientFolder
    from CardiacEnsembleLib.io.outputs import image_stem

    if source.is_dir():
        patient = PatientFolder.open(source)
        cine, geometry = patient.load_cine()
        info_frames = (patient.info.ed, patient.info.es)
        return (cine, geometry, patient.cine_path, patient.patient_id, info_frames,
                patient.input_paths)
    cine, geometry = images.read_image(source, allow_4d=True)
    if cine.ndim != 4:
        raise CaseError(f"{source}: --cine needs a 4D image, got shape {cine.shape}")
    reference = source if images.image_suffix(source) in images.NIFTI_SUFFIXES else None
    return cine, geometry, reference, image_stem(source), None, (source,)
