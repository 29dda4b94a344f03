"""research/member_pool.py judges candidate runs at the size and precision they would ship in,
so a run's fp32 best/ folder must enter the pool as fp16 without touching the run itself, and
a fixed member set is scored on patients its weights were not fitted on."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleLib.core.manifest import read_manifest
from CardiacEnsembleLib.inference.members import WEIGHTS_FILE, create_network, load_member, save_member
from CardiacEnsembleDev.training.recipes import recipe_spec
from CardiacEnsembleDev.release.selection import ValidationFrame

import member_pool  # research/, put on sys.path by conftest.py


def fp32_run(folder, member_name=""):
    """A draw's best/ folder as training writes it: fp32 weights, named as asked."""
    spec = recipe_spec("unet25d-mnv2", member_name=member_name)
    torch.manual_seed(0)
    return save_member(create_network(spec), spec, folder / "run" / "best").folder


def test_an_extra_run_enters_the_pool_as_fp16_and_the_run_is_untouched(tmp_path):
    run = fp32_run(tmp_path, "unet25d-mnv2-s99")
    before = (run / WEIGHTS_FILE).read_bytes()
    pool = tmp_path / "pool"
    pool.mkdir()
    shipped = member_pool.build_pool(pool, [], [run])
    sizes = {e.name: e.size_bytes for e in read_manifest(pool).members}
    assert "unet25d-mnv2-s99" in sizes and "unet25d-mnv2-s99" not in shipped
    # counted at its shipping size: about half the run's fp32 file, the size of the shipped
    # member of the same recipe
    assert sizes["unet25d-mnv2-s99"] < 0.55 * len(before)
    assert abs(sizes["unet25d-mnv2-s99"] - sizes["unet25d-mnv2"]) < 0.01 * sizes["unet25d-mnv2"]
    pooled = load_member(pool / "unet25d-mnv2-s99").network.state_dict()
    for key, value in load_member(run).network.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(pooled[key], value, rtol=1e-3, atol=1e-4)
    assert (run / WEIGHTS_FILE).read_bytes() == before


def test_an_extra_named_like_a_shipped_member_is_refused(tmp_path):
    run = fp32_run(tmp_path)
    pool = tmp_path / "pool"
    pool.mkdir()
    with pytest.raises(SystemExit, match="named 'unet25d-mnv2' is already in the pool"):
        member_pool.build_pool(pool, [], [run])


def soft(labels: np.ndarray, confidence: float = 0.8) -> torch.Tensor:
    one_hot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), 4).permute(3, 0, 1, 2)
    return one_hot.float() * confidence + (1 - confidence) / 4


def test_a_fixed_set_is_scored_held_out_and_its_weights_find_the_right_member(patient_dir):
    """Member 0 is the truth, member 1 the truth shifted 8 px, on both patients: the mean of
    the two errs, per-class weights fitted on one patient carry to the other (the same member
    is right there too), and a set of the true member alone scores what the rival (that member
    + lcc) scores: no gain."""
    frames = []
    for patient in ("patient001", "patient002"):
        for phase in ("ED", "ES"):
            case = PatientFolder.open(patient_dir(patient)).load(phase)
            truth = case.labels.astype(np.uint8)
            probs = torch.stack([soft(truth), soft(np.roll(truth, 8, axis=2))]).half()
            frames.append(ValidationFrame(patient, phase, probs, torch.from_numpy(truth),
                                          case.spacing_zyx))
    rivals = member_pool.best_shipped_per_fold(frames, [0], members=2)  # the truth + lcc
    alone = member_pool.fixed_set(frames, [0], rivals)
    assert alone["mean"] == alone["per-class"] == pytest.approx(np.mean(rivals))
    assert np.mean(rivals) > 0.99
    assert alone["mean gain"] == alone["per-class gain"] == 0.0
    pair = member_pool.fixed_set(frames, [0, 1], rivals)
    assert pair["mean"] < np.mean(rivals) - 0.02
    assert pair["per-class"] > pair["mean"] + 0.02
    assert pair["per-class gain"] == pytest.approx(100 * (pair["per-class"] - np.mean(rivals)))
