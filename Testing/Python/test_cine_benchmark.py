"""The 4D cine path, inference-time optimisation, and the benchmark's report."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from CardiacEnsembleLib.io.acdc import PatientFolder
from CardiacEnsembleDev.release.benchmark import (BEST_MEMBER_TTA, TORCH_FULL_GRID, BenchmarkResult,
                                                  ConfigResult, accuracy_points, report_markdown,
                                                  run_benchmark, summary_lines, time_process)
from CardiacEnsembleLib.inference.cine import CineSegmentation, segment_cine
from CardiacEnsembleLib.cli import main
from CardiacEnsembleLib.inference.ensemble import load_ensemble
from CardiacEnsembleLib.inference.runner import optimize_for_inference, predict_slices
from CardiacEnsembleLib.inference.members import create_network
from CardiacEnsembleLib.inference.preprocess import prepare_slices
from CardiacEnsembleDev.training.recipes import recipe_spec


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def patient090(patient_dir):
    return PatientFolder.open(patient_dir("patient090"))


@pytest.fixture(scope="module")
def ensemble(untrained_models):
    return load_ensemble(untrained_models, members=["unet-mnv2", "fpn-mnv2"], device="cpu")


def test_a_stack_of_frames_is_normalised_frame_by_frame(patient090):
    cine, geometry = patient090.load_cine()
    spec = recipe_spec("unet-mnv2").preprocess
    stacked, _ = prepare_slices(torch.from_numpy(cine[:3]), geometry.spacing_zyx, spec)
    single, _ = prepare_slices(torch.from_numpy(cine[1]), geometry.spacing_zyx, spec)
    z = cine.shape[1]
    torch.testing.assert_close(stacked[z:2 * z], single)


@pytest.mark.parametrize("steps", [(), ("lcc", "gate")], ids=["raw", "post-processed"])
def test_cine_labels_equal_frame_by_frame_predictions(ensemble, patient090, steps):
    ensemble = copy.copy(ensemble)
    ensemble.postprocess = steps
    cine, geometry = patient090.load_cine()
    frames = cine[:3]
    result = segment_cine(ensemble, frames, geometry, chunk=2)  # chunks of 2 + 1 frames
    assert result.labels.shape == frames.shape and result.labels.dtype == np.uint8
    for index in range(3):
        case = patient090.load_cine_frame(index + 1)
        np.testing.assert_array_equal(result.labels[index], ensemble.predict(case).labels)
    voxel_ml = np.prod(geometry.spacing_zyx) / 1000
    assert result.volumes_ml["LV"][0] == pytest.approx((result.labels[0] == 3).sum() * voxel_ml)


def test_ed_and_es_come_from_the_largest_and_smallest_lv_volume(patient090):
    _, geometry = patient090.load_cine()
    lv = np.array([100.0, 120.0, 80.0, 60.0, 90.0])
    result = CineSegmentation(np.zeros((5, 1, 1, 1), np.uint8), geometry,
                              {"LV": lv, "RV": lv, "Myo": lv}, 1.0)
    assert (result.ed_frame, result.es_frame) == (2, 4)
    assert result.lv_ef_pct == pytest.approx(50.0)


def test_folding_batchnorm_keeps_the_outputs(patient090):
    torch.manual_seed(0)
    network = create_network(recipe_spec("unet-mnv2")).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics to fold
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    case = patient090.load("ED")
    slices, _ = prepare_slices(torch.from_numpy(case.image), case.spacing_zyx,
                               recipe_spec("unet-mnv2").preprocess)
    folded = optimize_for_inference(copy.deepcopy(network))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(predict_slices(folded, slices), predict_slices(network, slices),
                               atol=1e-4, rtol=1e-4)


def test_benchmark_times_members_and_ensemble_side_by_side(ensemble, patient090):
    result = run_benchmark(ensemble, [patient090], repeats=1, log=lambda line: None)
    assert [c.name for c in result.configs] == ["unet-mnv2", "fpn-mnv2", "ensemble"]
    for config in result.configs:
        assert len(config.frame_seconds) == 2 and config.slices == 14
        assert config.peak_rss_bytes > 100 * 2**20
        stage_sum = sum(config.stages[s][0] for s in config.stages)
        assert stage_sum <= config.frame_seconds[0] * 1.01
    assert result.ensemble.stages["fusion"][0] > 0


def test_summary_lines_state_the_ratios_a_script_reads():
    def config(name, seconds, fusion=0.0):
        result = ConfigResult(name, [name], frame_seconds=[seconds], slices=10)
        result.stages["fusion"] = [fusion]
        return result

    result = BenchmarkResult("cpu", "test", ["p ED"], 1,
                             [config("a", 1.0), config("b", 3.0), config("ensemble", 4.4, 0.4)])
    lines = summary_lines(result)
    assert "ensemble median frame time: 4.400 s" in lines
    assert "ensemble / sum of members: 1.10" in lines
    assert "ensemble / slowest member: 1.47" in lines
    assert "fusion share of ensemble time: 0.09" in lines
    assert "| ensemble | 4.400 |" in report_markdown(result)
    assert not [line for line in lines if "torch full-grid" in line]

    result.configs += [config(TORCH_FULL_GRID, 8.8, 0.4), config("preset fast", 0.9)]
    result.best_member = "a"
    lines = summary_lines(result)
    assert "ensemble / torch full-grid: 0.50" in lines
    assert "preset fast / torch full-grid: 0.10" in lines
    assert "preset fast / best member: 0.90" in lines
    assert "best member (a) median frame time: 1.000 s" in lines
    assert "ensemble / sum of members: 1.10" in lines  # the members are still a and b only


def test_the_benchmark_times_the_rivals_presets_and_a_cold_start(ensemble, patient090):
    """Beside the members: the best member with TTA, today's path, each preset, the ensemble
    itself, and a fresh `segment` process for the cold start."""
    import sys

    frame = str(patient090.frame_path("ED"))
    cold = [sys.executable, "-c", "from CardiacEnsembleLib.cli import main; raise "
            "SystemExit(main())", "-q", "segment", frame, "--models",
            str(ensemble.members[0].folder.parent)]
    cold_cine = [*cold[:5], "--cine", str(patient090.cine_path), *cold[6:]]
    region = replace(ensemble, heart_margin=32)
    result = run_benchmark(region, [patient090], repeats=1, log=lambda line: None,
                           reference=ensemble, presets={"full": ensemble},
                           best_member="fpn-mnv2", cold_segment=cold, cold_repeats=1,
                           cold_cine=cold_cine)
    assert [c.name for c in result.configs] == ["unet-mnv2", "fpn-mnv2", BEST_MEMBER_TTA,
                                                TORCH_FULL_GRID, "preset full", "ensemble"]
    assert result.config(BEST_MEMBER_TTA).members == ["fpn-mnv2"]
    assert len(result.cold_segment_seconds) == 1 and result.cold_segment_seconds[0] > 0
    assert result.cold_segment_peak_rss_bytes > 100 * 2**20
    lines = summary_lines(result)
    assert any(line.startswith("cold segment time: ") for line in lines)
    assert len(result.cold_cine_seconds) == 1
    assert result.cold_cine_peak_rss_bytes > result.cold_segment_peak_rss_bytes / 2
    assert any(line.startswith("cold cine segment peak RSS: ") for line in lines)
    assert any(line.startswith("ensemble / torch full-grid: ") for line in lines)


def test_the_cost_chart_sets_the_ensemble_beside_members_with_the_same_clean_up():
    result = BenchmarkResult("cpu", "test", ["p ED"], 1,
                             [ConfigResult(name, [name], frame_seconds=[seconds], slices=10)
                              for name, seconds in (("a", 1.0), ("ab", 2.0), ("ensemble", 3.0))])
    accuracy = {"a": 0.80, "a+lcc": 0.85, "ab": 0.70, "ensemble-weighted+lcc": 0.90,
                "ensemble-mean": 0.88}
    points = accuracy_points(result, accuracy, "ensemble-weighted+lcc")
    assert points == [(0, "a", 1.0, 0.80, True), (0, "a+lcc", 1.0, 0.85, False),
                      (1, "ab", 2.0, 0.70, True),
                      (2, "ensemble (ensemble-weighted+lcc)", 3.0, 0.90, False)]


def test_quiet_flag_is_accepted_after_the_sub_command(patient090, capsys):
    assert main(["info", str(patient090.folder), "-q"]) == 0
    assert "patient090" in capsys.readouterr().out


def test_chart_labels_on_one_spot_are_moved_apart_and_keep_their_x():
    """Three rules with the same Dice and cost (as the +lcc rules of release 1.4 were) must
    not print their names over each other."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from CardiacEnsembleDev.release.report import separate_labels

    figure, axis = plt.subplots(figsize=(4, 3), dpi=100)
    labels = [axis.annotate(name, (2.5, 0.92), fontsize=6.5, xytext=(4, 2),
                            textcoords="offset points")
              for name in ("ensemble-weighted+lcc", "ensemble-mean+lcc", "ensemble-vote+lcc")]
    labels.append(axis.annotate("unet", (0.5, 0.80), xytext=(4, 2), textcoords="offset points"))
    axis.set_xlim(0, 3), axis.set_ylim(0.75, 0.95)
    renderer = figure.canvas.get_renderer()
    before = [label.get_window_extent(renderer) for label in labels]
    assert before[0].overlaps(before[1])
    separate_labels(labels)
    after = [label.get_window_extent(renderer) for label in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(after) for b in after[i + 1:])
    assert [round(b.x0, 3) for b in after] == [round(b.x0, 3) for b in before]
    assert after[3].y0 == pytest.approx(before[3].y0)  # a label alone stays where it was
    plt.close(figure)


def test_a_cold_process_reports_its_own_peak_not_the_benchmarks():
    """Linux keeps ru_maxrss across exec: a child forked straight from a large benchmark process
    would report the benchmark's size. The probe forks from a small process instead."""
    import sys

    held = np.ones(2**27)  # 1 GiB resident in this process
    seconds, peak = time_process([sys.executable, "-c", "import numpy; "
                                  "numpy.ones(2**25).sum()"])  # 256 MiB in the child
    assert held.sum() == 2**27 and seconds > 0
    assert 256 * 2**20 < peak < 600 * 2**20
