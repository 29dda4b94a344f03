"""research/gpu_train.py, the driver that fine-tuned release 1.4's members on a lent GPU: run
for real on the CPU with a fixed step count (never a time budget, so a busy machine only makes
it slower), its job syntax, and the schedule it sizes from a probe (plain arithmetic)."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from CardiacEnsembleDev.training.recipes import PREPROCESS
from CardiacEnsembleDev.training.slicepack import write_pack

import gpu_train  # research/, put on sys.path by conftest.py


@pytest.fixture(scope="module")
def small_pack(acdc, tmp_path_factory):
    """One train and one validation patient."""
    return write_pack(acdc, tmp_path_factory.mktemp("pack") / "slices.npz.xz", PREPROCESS,
                      max_patients=1)


def test_the_gpu_driver_trains_members_side_by_side_and_brings_back_fp16(small_pack, tmp_path,
                                                                         untrained_models):
    """Two steps each: every member's process leaves <member>.tar with an fp16 best member.
    A job with @SEED trains from scratch with that seed, named RECIPE-sSEED, beside the
    warm-started one (a 2D member inflated into the 2.5D recipe)."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, gpu_train.__file__, "--pack", str(small_pack), "--out", str(out),
         "--work", str(tmp_path / "work"), "--device", "cpu", "--steps", "2",
         "--iterations", "2", "--batch-size", "4", "--patch-size", "64", "--threads", "1",
         "--job", f"fpn25d-mnv2={untrained_models / 'fpn-mnv2'}", "--job", "fpn25d-mnv2@3="],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "inflated from 1 to 3 channels" in done.stdout
    assert "fpn25d-mnv2-s3: " in done.stdout and "warm start none (from scratch)" in done.stdout
    assert "fixed schedule, 1 epochs of 2 steps" in done.stdout and "probe" not in done.stdout
    specs = {}
    for name in ("fpn25d-mnv2", "fpn25d-mnv2-s3"):
        with tarfile.open(out / f"{name}.tar") as tar:
            specs[name] = json.load(tar.extractfile(f"{name}/best/member.json"))
    for name, spec in specs.items():
        assert spec["name"] == name
        assert spec["weights_dtype"] == "float16" and spec["context_slices"] == 1
        assert spec["training"]["form"].startswith("slice pack")
        assert spec["training"]["config"]["epochs"] == 1
        assert spec["training"]["config"]["iterations_per_epoch"] == 2
    assert specs["fpn25d-mnv2"]["training"]["config"]["seed"] == 4  # the driver's --seed
    assert specs["fpn25d-mnv2-s3"]["training"]["config"]["seed"] == 3
    assert specs["fpn25d-mnv2-s3"]["training"]["config"]["init_from"] == ""


def test_a_gpu_job_names_its_recipe_and_an_optional_whole_number_seed():
    parse_job = gpu_train.parse_job
    assert parse_job("unet25d-mnv2=models/unet", 4) == ("unet25d-mnv2", "unet25d-mnv2", 4,
                                                        "models/unet")
    assert parse_job("unet25d-mnv2@7=", 4) == ("unet25d-mnv2", "unet25d-mnv2-s7", 7, "")
    with pytest.raises(SystemExit, match="RECIPE=FOLDER"):
        parse_job("unet25d-mnv2", 4)
    with pytest.raises(SystemExit, match="whole number"):
        parse_job("unet25d-mnv2@x=", 4)
    with pytest.raises(SystemExit, match="repeat"):
        gpu_train.main(["--pack", "p", "--out", "o", "--job", "unet25d-mnv2=",
                        "--job", "unet25d-mnv2=a"])


@pytest.mark.parametrize("per_step, per_validation, left, expected", [
    (0.1, 2.0, 1000.0, (42, 180)),  # fast steps: epochs long enough that validation is ~1/10
    (0.1, 0.5, 1000.0, (54, 150)),  # validation cheap: the minimum epoch length
    (1.0, 30.0, 100.0, (1, 55)),  # no room for a full epoch: one shorter epoch that fits
    (1.0, 30.0, 20.0, (1, 10)),  # hardly any time: never fewer than 10 steps
])
def test_the_probe_sizes_the_schedule_to_the_time_left(per_step, per_validation, left,
                                                       expected):
    assert gpu_train.plan_schedule(per_step, per_validation, left, min_iterations=150) == \
        expected
