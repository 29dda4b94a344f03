"""Measure what the ensemble costs next to its members, side by side in one run.

For each member alone and for the ensemble, on the same frames: wall time per frame (median and
spread over repeats, warm-up excluded) split into load / preprocess / network / restore
(inverse resampling) / fusion / write, slices per second, peak resident memory (and peak CUDA
memory), and the time for a whole cine. Ratios come from this one run, never from numbers taken
at different times or on different machines.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from CardiacEnsembleLib import io
from CardiacEnsembleLib.io.acdc import PHASES, PatientFolder
from CardiacEnsembleLib.inference.cine import segment_cine
from CardiacEnsembleLib.core.options import Method
from CardiacEnsembleLib.inference.ensemble import Ensemble

STAGES = ("load", "preprocess", "network", "restore", "fusion", "write")
#: Today's path, the reference of every ratio: every member with torch on the full grid.
TORCH_FULL_GRID = "ensemble torch full-grid"
#: The single-network rival with three passes: the best-validated member with flip TTA.
BEST_MEMBER_TTA = "best member + flip TTA"
#: A preset's configuration name is this prefix + its name ("preset fast").
PRESET_PREFIX = "preset "


class PeakMemory:
    """Peak resident memory of this process during a block, in bytes.

    Linux keeps the high-water mark in /proc/self/status (VmHWM); writing 5 to
    /proc/self/clear_refs resets it, so each configuration gets its own peak. Where that is not
    possible the peak since process start is reported (and says so).
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.resettable = True

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.resettable = False
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        self.peak_bytes = _vm_hwm_bytes()

    @property
    def cuda_peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def _vm_hwm_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class ConfigResult:
    name: str  # a member's name or "ensemble"
    members: list[str]
    frame_seconds: list[float] = field(default_factory=list)  # one per (frame, repeat)
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    slices: int = 0  # slices per pass over all frames
    cine_seconds: list[float] = field(default_factory=list)
    peak_rss_bytes: int = 0
    peak_cuda_bytes: int = 0

    @property
    def median_frame(self) -> float:
        return float(np.median(self.frame_seconds))

    def stage_median(self, stage: str) -> float:
        return float(np.median(self.stages[stage])) if self.stages[stage] else 0.0


@dataclass
class BenchmarkResult:
    device: str
    machine: str
    frames: list[str]
    repeats: int
    configs: list[ConfigResult]
    cine_name: str = ""
    cine_frames: int = 0
    best_member: str = ""  # the best-validated member (its row is "best member" in ratios)
    cold_segment_seconds: list[float] = field(default_factory=list)
    cold_segment_peak_rss_bytes: int = 0
    cold_cine_seconds: list[float] = field(default_factory=list)  # `segment --cine`, fresh
    cold_cine_peak_rss_bytes: int = 0

    def config(self, name: str) -> ConfigResult:
        return next(c for c in self.configs if c.name == name)

    @property
    def ensemble(self) -> ConfigResult:
        return self.config("ensemble")

    @property
    def member_results(self) -> list[ConfigResult]:
        """The members alone (every configuration that is not an ensemble, preset or rival)."""
        return [c for c in self.configs if not c.name.startswith(("ensemble", PRESET_PREFIX))
                and c.name != BEST_MEMBER_TTA]

    def optional(self, name: str) -> Optional[ConfigResult]:
        return next((c for c in self.configs if c.name == name), None)

    @property
    def presets(self) -> list[ConfigResult]:
        return [c for c in self.configs if c.name.startswith(PRESET_PREFIX)]

    def ratios(self) -> dict[str, float]:
        ensemble = self.ensemble.median_frame
        members = [c.median_frame for c in self.member_results]
        fusion = self.ensemble.stage_median("fusion")
        ratios = {"ensemble / sum of members": ensemble / sum(members),
                  "ensemble / slowest member": ensemble / max(members),
                  "fusion share of ensemble time": fusion / ensemble}
        reference = self.optional(TORCH_FULL_GRID)
        best = self.optional(self.best_member)
        for config in [self.ensemble, *self.presets, self.optional(BEST_MEMBER_TTA)]:
            if config is None:
                continue
            if reference is not None:
                ratios[f"{config.name} / torch full-grid"] = \
                    config.median_frame / reference.median_frame
            if best is not None:
                ratios[f"{config.name} / best member"] = config.median_frame / best.median_frame
        return ratios


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")


def _time_frame(ensemble: Ensemble, patient: PatientFolder, phase: str, out_dir: Path
                ) -> tuple[float, dict[str, float], int]:
    """One full frame: read the file, segment, write the label map; seconds per stage."""
    started = time.perf_counter()
    case = patient.load(phase, with_gt=False)
    loaded = time.perf_counter()
    prediction = ensemble.predict(case)
    predicted = time.perf_counter()
    io.write_image(out_dir / f"{case.name}.nii.gz", prediction.labels, case.geometry,
                   overwrite=True, reference=patient.frame_path(phase))
    written = time.perf_counter()
    t = prediction.timings
    stages = {"load": loaded - started, "preprocess": t.get("preprocess", 0.0),
              "network": t.get("network", 0.0), "restore": t.get("restore", 0.0),
              "fusion": t.get("fusion", 0.0), "write": written - predicted}
    return written - started, stages, case.image.shape[0]


def run_benchmark(ensemble: Ensemble, patients: Sequence[PatientFolder], *, repeats: int = 5,
                  cine_patient: Optional[PatientFolder] = None, cine_repeats: int = 2,
                  reference: Optional[Ensemble] = None,
                  presets: Optional[dict[str, Ensemble]] = None,
                  best_member: Optional[str] = None,
                  cold_segment: Optional[Sequence[str]] = None, cold_repeats: int = 3,
                  cold_cine: Optional[Sequence[str]] = None, log=print) -> BenchmarkResult:
    """Time side by side, on the ED and ES frames of `patients` (and the cine of
    `cine_patient`), one warm-up pass then `repeats` timed passes each: every member alone
    (full grid, no clean-up, `ensemble`'s backend), the best member (`best_member`) with flip
    TTA, `reference` (today's path: torch, full grid) as "ensemble torch full-grid", each of
    `presets` as "preset <name>", and `ensemble` itself as "ensemble". `cold_segment`: a
    command line run `cold_repeats` times as a fresh process (a one-frame `segment`): its
    wall time and peak RSS are the cold start. `cold_cine`: a `segment --cine` command line run
    once the same way: the peak RSS of the longest job a user runs."""
    full_grid = replace(ensemble, heart_margin=None, locator=None)
    runners: list[tuple[str, Ensemble]] = []
    for name in ensemble.names if ensemble.locator is None else \
            [*ensemble.names, ensemble.locator.name]:
        alone = full_grid.subset([name]) if name in ensemble.names else \
            replace(full_grid, members=[ensemble.locator], fusion="mean", weights=None)
        runners.append((name, replace(alone, postprocess=())))  # as the network produces it
    if best_member in ensemble.names:
        runners.append((BEST_MEMBER_TTA, replace(full_grid.subset([best_member]), tta=True)))
    if reference is not None:
        runners.append((TORCH_FULL_GRID, reference))
    for name, preset in (presets or {}).items():
        runners.append((PRESET_PREFIX + name, preset))
    runners.append(("ensemble", ensemble))
    results = []
    frames = [(p, phase) for p in patients for phase in PHASES]
    cine = cine_patient.load_cine() if cine_patient is not None else None
    with tempfile.TemporaryDirectory(prefix="ce-bench-") as scratch:
        for name, runner in runners:
            result = ConfigResult(name, runner.names)
            with PeakMemory() as memory:
                for patient, phase in frames:  # warm-up: allocator, caches, first-call costs
                    result.slices += _time_frame(runner, patient, phase, Path(scratch))[2]
                for _ in range(repeats):
                    for patient, phase in frames:
                        seconds, stages, slices = _time_frame(runner, patient, phase,
                                                              Path(scratch))
                        result.frame_seconds.append(seconds)
                        for stage, value in stages.items():
                            result.stages[stage].append(value)
                if cine is not None:
                    segment_cine(runner, cine[0], cine[1])  # warm-up at the cine's size
                    for _ in range(cine_repeats):
                        result.cine_seconds.append(segment_cine(runner, cine[0], cine[1]).seconds)
            result.peak_rss_bytes = memory.peak_bytes
            result.peak_cuda_bytes = memory.cuda_peak_bytes
            log(f"{name:26s} median frame {result.median_frame:.3f} s"
                + (f", cine {np.median(result.cine_seconds):.2f} s" if result.cine_seconds
                   else "") + f", peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB")
            results.append(result)
        cold, cold_peak = _run_cold(cold_segment, cold_repeats,
                                    ["--output", str(Path(scratch) / "cold.nii.gz")])
        if cold:
            log(f"cold segment {np.median(cold):.2f} s, peak RSS {cold_peak / 2**30:.2f} GiB")
        cold_cine_time, cold_cine_peak = _run_cold(cold_cine, 1,
                                                   ["--output", str(Path(scratch) / "cine")])
        if cold_cine_time:
            log(f"cold cine segment {cold_cine_time[0]:.2f} s, peak RSS "
                f"{cold_cine_peak / 2**30:.2f} GiB")
    return BenchmarkResult(
        device=str(ensemble.device), machine=machine_description(ensemble.device),
        frames=[f"{p.patient_id} {phase}" for p, phase in frames], repeats=repeats,
        configs=results, cine_name=cine_patient.patient_id if cine_patient else "",
        cine_frames=cine[0].shape[0] if cine is not None else 0,
        best_member=best_member or "", cold_segment_seconds=cold,
        cold_segment_peak_rss_bytes=cold_peak, cold_cine_seconds=cold_cine_time,
        cold_cine_peak_rss_bytes=cold_cine_peak)


def _run_cold(command: Optional[Sequence[str]], repeats: int,
              output: Sequence[str]) -> tuple[list[float], int]:
    """`command` + `output` + --overwrite as `repeats` fresh processes: their wall seconds and
    the highest of their peak RSS (bytes); nothing for no command."""
    seconds, peak = [], 0
    for _ in range(repeats if command else 0):
        took, process_peak = time_process([*command, *output, "--overwrite"])
        seconds.append(took)
        peak = max(peak, process_peak)
    return seconds, peak


#: Runs argv[2:] as a forked child of this small process and writes the child's own peak RSS
#: (KiB) to argv[1]. Why not the benchmark's own wait4: Linux keeps ru_maxrss across exec, so a
#: child forked from the benchmark (which holds every configuration's networks) reports at least
#: the benchmark's resident size; a child forked from this probe starts from the probe's ~10 MB.
_PEAK_PROBE = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def time_process(command: Sequence[str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of one fresh process running `command` (it must
    succeed): the cost a user pays for one command, imports and loading included. The peak is
    the command's own (see `_PEAK_PROBE`); the probe adds a few milliseconds to the time."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="ce-peak-") as scratch:
        peak_file = Path(scratch) / "peak_kib"
        started = time.perf_counter()
        process = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(peak_file),
                                  *command], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            errors = process.stderr.decode(errors="replace")
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): "
                               f"{errors[-500:]}")
        return seconds, int(peak_file.read_text()) * 1024


def _spread(values: Sequence[float]) -> str:
    low, high = np.percentile(values, [25, 75])
    return f"{low:.3f}-{high:.3f}"


def report_markdown(result: BenchmarkResult, command: str = "") -> str:
    lines = [f"# Benchmark on {result.device}", "",
             f"Machine: {result.machine}.  ", f"Frames: {', '.join(result.frames)}; "
             f"{result.repeats} timed repeats after one warm-up pass.  "]
    if command:
        lines.append(f"Command: `{command}`")
    lines += ["", "Seconds per frame (median, interquartile range) and the median of each stage; "
              "slices per second over the whole frame time; peak resident memory of the benchmark "
              "process while that configuration ran (it holds every configuration's networks "
              "at once, so this overstates one configuration's need: the cold `segment` lines "
              "of the summary are one command each, as a user runs it).", "",
              "| configuration | median s/frame | IQR | " + " | ".join(STAGES)
              + " | slices/s | cine s | peak RSS GiB |" + (" peak CUDA GiB |"
                                                         if result.device.startswith("cuda")
                                                         else ""),
              "|---" * (len(STAGES) + 6 + result.device.startswith("cuda")) + "|"]
    for c in result.configs:
        slices_per_second = c.slices / (c.median_frame * len(result.frames))
        cine = f"{np.median(c.cine_seconds):.2f}" if c.cine_seconds else "-"
        cells = [c.name, f"{c.median_frame:.3f}", _spread(c.frame_seconds)] + \
            [f"{c.stage_median(s):.3f}" for s in STAGES] + \
            [f"{slices_per_second:.1f}", cine, f"{c.peak_rss_bytes / 2**30:.2f}"]
        if result.device.startswith("cuda"):
            cells.append(f"{c.peak_cuda_bytes / 2**30:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Summary", "", "```"] + summary_lines(result) + ["```", ""]
    return "\n".join(lines)


def summary_lines(result: BenchmarkResult) -> list[str]:
    """Lines a script can read: `key: value unit`."""
    ensemble = result.ensemble
    lines = [f"ensemble median frame time: {ensemble.median_frame:.3f} s",
             f"sum of members median frame time: "
             f"{sum(c.median_frame for c in result.member_results):.3f} s",
             f"slowest member median frame time: "
             f"{max(c.median_frame for c in result.member_results):.3f} s"]
    best = result.optional(result.best_member)
    if best is not None:
        lines.append(f"best member ({best.name}) median frame time: {best.median_frame:.3f} s")
    for config in [result.optional(BEST_MEMBER_TTA), result.optional(TORCH_FULL_GRID),
                   *result.presets]:
        if config is not None:
            lines.append(f"{config.name} median frame time: {config.median_frame:.3f} s")
    for config in [ensemble, result.optional(TORCH_FULL_GRID), *result.presets]:
        if config is not None and config.cine_seconds:
            lines.append(f"{config.name} cine time ({result.cine_name}, {result.cine_frames} "
                         f"frames): {np.median(config.cine_seconds):.2f} s")
    lines.append(f"ensemble peak RSS: {ensemble.peak_rss_bytes / 2**30:.2f} GiB")
    if result.cold_segment_seconds:
        lines.append(f"cold segment time: {np.median(result.cold_segment_seconds):.2f} s")
        lines.append(f"cold segment peak RSS: "
                     f"{result.cold_segment_peak_rss_bytes / 2**30:.2f} GiB")
    if result.cold_cine_seconds:
        lines.append(f"cold cine segment time ({result.cine_name}): "
                     f"{result.cold_cine_seconds[0]:.2f} s")
        lines.append(f"cold cine segment peak RSS: "
                     f"{result.cold_cine_peak_rss_bytes / 2**30:.2f} GiB")
    lines += [f"{key}: {value:.2f}" for key, value in result.ratios().items()]
    return lines


def accuracy_from_scores(scores_csv: Path) -> dict[str, float]:
    """method -> mean Dice over all rows of an `evaluate` scores.csv (for the cost plot)."""
    import csv

    values: dict[str, list[float]] = {}
    with open(scores_csv) as handle:
        for row in csv.DictReader(handle):
            values.setdefault(row["method"], []).append(float(row["dice"]))
    return {method: float(np.mean(v)) for method, v in values.items()}


def accuracy_points(result: BenchmarkResult, accuracy: dict[str, float],
                    ensemble_method: str) -> list[tuple[int, str, float, float, bool]]:
    """(config index, label, seconds per frame, mean Dice, raw?) for the accuracy-vs-cost panel.

    A member appears raw and, where the evaluation scored it so, with the ensemble's clean-up
    (`name+lcc`, not raw): the ensemble's own point includes that clean-up, so the fair
    comparison is with those."""
    points = []
    for index, config in enumerate(result.configs):
        if config.name in accuracy:
            points.append((index, config.name, config.median_frame, accuracy[config.name], True))
            points += [(index, key, config.median_frame, value, False)
                       for key, value in accuracy.items()
                       if Method.parse(key).base == config.name and Method.parse(key).steps]
        elif config.name == "ensemble" and ensemble_method in accuracy:
            points.append((index, f"ensemble ({ensemble_method})", config.median_frame,
                           accuracy[ensemble_method], False))
    return points


def plot_benchmark(result: BenchmarkResult, png_path: Path,
                   accuracy: Optional[dict[str, float]] = None,
                   ensemble_method: str = "ensemble-mean") -> None:
    """Stacked bars of the stage split per configuration; with `accuracy` (method -> mean Dice)
    a second panel plots accuracy against cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if accuracy else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 3.8), dpi=120)
    axes = np.atleast_1d(axes)
    names = [c.name for c in result.configs]
    left = np.zeros(len(names))
    colours = plt.get_cmap("tab10")
    for index, stage in enumerate(STAGES):
        values = np.array([c.stage_median(stage) for c in result.configs])
        axes[0].barh(names, values, left=left, color=colours(index), label=stage)
        left += values
    axes[0].set_xlabel(f"seconds per frame ({result.device})")
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7, ncol=3, loc="lower right")
    axes[0].grid(axis="x", alpha=0.3)
    axes[0].set_title("time per frame by stage", fontsize=9)
    if accuracy:
        for index, label, seconds, value, raw in accuracy_points(result, accuracy,
                                                                 ensemble_method):
            axes[1].scatter(seconds, value, s=40, color=colours(index),
                            facecolors=colours(index) if raw else "none")
            axes[1].annotate(label, (seconds, value), fontsize=7, xytext=(4, 2),
                             textcoords="offset points")
        axes[1].set_xlabel("seconds per frame")
        axes[1].set_ylabel("mean Dice")
        axes[1].grid(alpha=0.3)
        axes[1].set_title("accuracy vs cost", fontsize=9)
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
