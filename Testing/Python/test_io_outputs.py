"""The names of what a segmentation writes (`io.outputs`): the one rule the CLI, batch and
scripts share, so every tool finds a label map and the maps beside it where the others put it."""
from __future__ import annotations

from pathlib import Path

import pytest

from CardiacEnsembleLib.io.outputs import (CineOutputs, EvaluationOutputs, SegmentationOutputs,
                                           frame_output, image_stem, probability_output,
                                           uncertainty_output, with_tag)


def test_a_patient_frame_is_named_patient_phase_seg():
    assert frame_output(Path("out"), "patient090", "ES") == Path("out/patient090_ES_seg.nii.gz")


@pytest.mark.parametrize("name, stem", [("a_4d.nii.gz", "a_4d"), ("a.nii", "a"),
                                        ("a.nrrd", "a"), ("A.NII.GZ", "A"), ("a.b.mha", "a.b")])
def test_the_stem_drops_exactly_the_image_suffix(name, stem):
    assert image_stem(Path("d") / name) == stem


def test_a_tag_goes_before_the_whole_image_suffix():
    assert with_tag(Path("d/seg.nii.gz"), "_x") == Path("d/seg_x.nii.gz")
    assert with_tag("seg.nrrd", "_x") == Path("seg_x.nrrd")
    assert with_tag("SEG.NII.GZ", "_x") == Path("SEG_x.NII.GZ")


def test_a_name_without_an_image_suffix_is_refused_with_the_file_named():
    with pytest.raises(ValueError, match=r"^seg\.txt: not an image file name"):
        with_tag("seg.txt", "_uncertainty")


def test_uncertainty_and_probability_maps_sit_beside_their_label_map():
    labels = Path("out/patient090_ED_seg.nii.gz")
    assert uncertainty_output(labels) == Path("out/patient090_ED_seg_uncertainty.nii.gz")
    assert probability_output(labels, 2) == Path("out/patient090_ED_seg_prob2.nii.gz")


@pytest.mark.parametrize("uncertainty, probabilities, tags", [
    (False, False, [""]),
    (True, False, ["", "_uncertainty"]),
    (False, True, ["", "_prob1", "_prob2", "_prob3"]),
    (True, True, ["", "_uncertainty", "_prob1", "_prob2", "_prob3"])])
def test_segmentation_outputs_list_the_label_map_first_then_what_was_asked(uncertainty,
                                                                           probabilities, tags):
    outputs = SegmentationOutputs.beside("seg.nii", uncertainty=uncertainty,
                                         probabilities=probabilities, quality=False)
    assert outputs.paths == [Path(f"seg{tag}.nii") for tag in tags]
    with_qc = SegmentationOutputs.beside("seg.nii", uncertainty=uncertainty,
                                         probabilities=probabilities)
    assert with_qc.quality == Path("seg_qc.json")  # the QC file by default, beside the labels
    assert with_qc.paths == [outputs.paths[0], *outputs.paths[1:2 if uncertainty else 1],
                             Path("seg_qc.json"), *outputs.paths[2 if uncertainty else 1:]]


def test_cine_and_evaluation_outputs_in_their_folder():
    assert [p.name for p in CineOutputs.in_folder("out", "patient090").paths] == [
        "patient090_cine_seg.nii.gz", "patient090_volumes.csv", "patient090_volumes.png"]
    assert EvaluationOutputs.in_folder("eval").paths == [
        Path("eval/scores.csv"), Path("eval/clinical.csv"), Path("eval/summary.md")]
