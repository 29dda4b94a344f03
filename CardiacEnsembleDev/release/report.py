"""The accuracy-and-cost report of an ensemble on ground-truth patients (`reports/acdc_test.md`).

Built from one `evaluation.Evaluation` (members, fusion rules, post-processing, all on the same
member outputs) and, optionally, one `benchmark.BenchmarkResult` (time and peak memory of each
member alone and of the ensemble, measured side by side). It answers the project's question in
its first lines: how much accuracy does the shipped ensemble buy over its best member, per
structure, and at what cost. Every table below that is the evidence.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from CardiacEnsembleLib.io.acdc import PHASES
from CardiacEnsembleDev.release.benchmark import BenchmarkResult
from CardiacEnsembleLib.core.case import STRUCTURES
from CardiacEnsembleLib.core.options import Method
from CardiacEnsembleLib.evaluation.metrics import with_mean
from CardiacEnsembleLib.evaluation.scoring import Evaluation, ScoreRow, _mean_sd, summary_table
from CardiacEnsembleLib.io.atomic import atomic_output, write_text_atomic

#: The issue's bar for the shipped ensemble on the test split.
TARGET_MEAN_DICE = 0.89
TARGET_GAIN_POINTS = 0.5
MAX_STRUCTURE_LOSS_POINTS = 0.2
#: Bootstrap resamples of the patients behind the gain's confidence interval.
GAIN_RESAMPLES = 10_000


def mean_dice(evaluation: Evaluation, method: str) -> dict[str, float]:
    """Mean Dice per structure over frames, and "mean": their average (the ACDC headline)."""
    rows = [r for r in evaluation.scores if r.method == method]
    if not rows:
        raise ValueError(f"no scores for method {method!r}; have {evaluation.methods}")
    return with_mean({s: np.mean([r.dice for r in rows if r.structure == s]) for s in STRUCTURES})


def best_member(evaluation: Evaluation, member_methods: Sequence[str]) -> str:
    return max(member_methods, key=lambda m: mean_dice(evaluation, m)["mean"])


def gain_interval(evaluation: Evaluation, ours: str, theirs: str, confidence: float = 0.95,
                  resamples: int = GAIN_RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of the Dice gain of `ours` over `theirs`, in points, per
    structure and for "mean", with the patients resampled (the unit the test split draws).

    Why: a gain of a few tenths of a point on 40 patients is the size of its own sampling
    error; the report says how sure it is instead of leaving the reader to guess. Patients, not
    frames, are resampled because a patient's ED and ES frames err together. Seeded: the same
    scores give the same interval.
    """
    def per_patient(method: str) -> dict[str, np.ndarray]:
        dice: dict[str, dict[str, list[float]]] = {}
        for r in evaluation.scores:
            if r.method == method:
                dice.setdefault(r.patient, {}).setdefault(r.structure, []).append(r.dice)
        return {p: np.array([np.mean(by[s]) for s in STRUCTURES]) for p, by in dice.items()}
    a, b = per_patient(ours), per_patient(theirs)
    if set(a) != set(b):
        raise ValueError(f"{ours} and {theirs} were scored on different patients")
    gains = 100 * np.array([a[p] - b[p] for p in sorted(a)])  # patients x structures
    gains = np.column_stack([gains, gains.mean(axis=1)])
    picks = np.random.default_rng(seed).integers(0, len(gains), (resamples, len(gains)))
    means = gains[picks].mean(axis=1)  # resamples x (structures + mean)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return {key: (float(lo), float(hi))
            for key, lo, hi in zip(list(STRUCTURES) + ["mean"], low, high)}


def headline(evaluation: Evaluation, shipped: str, member_methods: Sequence[str]) -> list[str]:
    """The verdict lines: the shipped ensemble against the best member, in Dice points, with the
    gain's 95% interval over patients. The verdicts judge the point estimates, as the targets
    are stated; the interval is there to read them by."""
    ours = mean_dice(evaluation, shipped)
    rival = best_member(evaluation, member_methods)
    theirs = mean_dice(evaluation, rival)
    gain = {k: 100 * (ours[k] - theirs[k]) for k in ours}
    interval = gain_interval(evaluation, shipped, rival)
    worst = min(STRUCTURES, key=lambda s: gain[s])
    checks = [
        (f"mean Dice {ours['mean']:.4f}", ours["mean"] >= TARGET_MEAN_DICE,
         f"target >= {TARGET_MEAN_DICE}"),
        (f"gain over the best member ({rival}, {theirs['mean']:.4f}): "
         f"{gain['mean']:+.2f} points (95% interval {interval['mean'][0]:+.2f} to "
         f"{interval['mean'][1]:+.2f})", gain["mean"] >= TARGET_GAIN_POINTS,
         f"target >= +{TARGET_GAIN_POINTS}"),
        (f"largest per-structure loss: {worst} {gain[worst]:+.2f} points",
         gain[worst] >= -MAX_STRUCTURE_LOSS_POINTS,
         f"target no loss over {MAX_STRUCTURE_LOSS_POINTS}"),
    ]
    lines = [f"Shipped ensemble: **{shipped}**. Best single member by mean Dice: **{rival}**.", "",
             "| | " + " | ".join(f"Dice {s}" for s in STRUCTURES) + " | Dice mean |",
             "|---|---|---|---|---|"]
    for name, values in ((shipped, ours), (rival, theirs)):
        lines.append(f"| {name} | " + " | ".join(f"{values[s]:.4f}" for s in STRUCTURES)
                     + f" | {values['mean']:.4f} |")
    lines.append("| difference (points) | " + " | ".join(f"{gain[s]:+.2f}" for s in STRUCTURES)
                 + f" | {gain['mean']:+.2f} |")
    lines.append("| 95% interval (patients resampled) | "
                 + " | ".join(f"{interval[k][0]:+.2f} to {interval[k][1]:+.2f}"
                              for k in list(STRUCTURES) + ["mean"]) + " |")
    lines += [""] + [f"- {text}: **{'met' if ok else 'NOT met'}** ({target})"
                     for text, ok, target in checks]
    return lines


def phase_table(evaluation: Evaluation, phase: str) -> str:
    """Dice, HD95 and MSD per structure (mean ± sd over patients) for one phase."""
    header = (["method"] + [f"Dice {s}" for s in STRUCTURES] + [f"HD95 {s}" for s in STRUCTURES]
              + [f"MSD {s}" for s in STRUCTURES])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in evaluation.methods:
        rows = [r for r in evaluation.scores if r.method == method and r.phase == phase]
        cells = [method]
        for attribute, digits in (("dice", 3), ("hd95_mm", 1), ("msd_mm", 2)):
            cells += [_mean_sd([getattr(r, attribute) for r in rows if r.structure == s], digits)
                      for s in STRUCTURES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def clinical_table(evaluation: Evaluation) -> str:
    """LV and RV ejection fraction: absolute error (points) and Pearson r against the ground
    truth, over patients; plus LV end-diastolic volume error."""
    reference = {r.patient: r.indices for r in evaluation.clinical if r.method == "reference"}
    lines = ["| method | LV EF abs. error (%) | LV EF r | RV EF abs. error (%) | RV EF r "
             "| LV EDV abs. error (ml) |", "|---|---|---|---|---|---|"]
    for method in evaluation.methods:
        rows = [r for r in evaluation.clinical if r.method == method]
        cells = [method]
        for field in ("lv_ef_pct", "rv_ef_pct"):
            predicted = np.array([getattr(r.indices, field) for r in rows])
            truth = np.array([getattr(reference[r.patient], field) for r in rows])
            cells += [_mean_sd(list(np.abs(predicted - truth)), 1), _pearson(predicted, truth)]
        cells.append(_mean_sd([abs(r.indices.lv_edv_ml - reference[r.patient].lv_edv_ml)
                               for r in rows], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pearson(a: np.ndarray, b: np.ndarray) -> str:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return "n/a"
    return f"{np.corrcoef(a[keep], b[keep])[0, 1]:.3f}"


def cost_table(benchmark: BenchmarkResult, evaluation: Evaluation, shipped: str) -> str:
    lines = ["| configuration | median s/frame | peak RSS (GiB) | mean Dice (this evaluation) |",
             "|---|---|---|---|"]
    for config in benchmark.configs:
        method = shipped if config.name == "ensemble" else config.name
        dice = mean_dice(evaluation, method)["mean"] if method in evaluation.methods else math.nan
        lines.append(f"| {config.name}{' (' + shipped + ')' if config.name == 'ensemble' else ''}"
                     f" | {config.median_frame:.3f} | {config.peak_rss_bytes / 2**30:.2f} | "
                     f"{dice:.4f} |")
    return "\n".join(lines)


def plot_dice_boxes(evaluation: Evaluation, methods: Sequence[str], png_path: Path, *,
                    overwrite: bool = False) -> None:
    """Per-frame Dice of each structure, one box per method (members beside the ensembles)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(STRUCTURES), figsize=(4.2 * len(STRUCTURES), 4.4),
                                dpi=110, sharey=True)
    for axis, structure in zip(axes, STRUCTURES):
        data = [[r.dice for r in evaluation.scores if r.method == m and r.structure == structure]
                for m in methods]
        boxes = axis.boxplot(data, orientation="vertical", patch_artist=True, showfliers=True,
                             flierprops={"markersize": 3})
        for patch, method in zip(boxes["boxes"], methods):
            patch.set_facecolor("#f4a261" if Method.parse(method).is_ensemble else "#8ecae6")
        axis.set_xticks(range(1, len(methods) + 1), methods, rotation=60, ha="right",
                        fontsize=7)
        axis.set_title(f"{structure} Dice per frame", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice")
    figure.tight_layout()
    _save_figure(figure, png_path, overwrite)


def plot_accuracy_cost(evaluation: Evaluation, png_path: Path,
                       benchmark: Optional[BenchmarkResult] = None, shipped: str = "", *,
                       overwrite: bool = False) -> None:
    """Mean Dice against seconds per frame: every method from the evaluation run (its own
    timing), and, when given, the benchmark's quiet-machine timing for members and ensemble."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.8, 4.4), dpi=110)
    labels = []
    for method in evaluation.methods:
        seconds = _median_frame_seconds([r for r in evaluation.scores if r.method == method])
        if benchmark is not None:
            name = "ensemble" if method == shipped else method
            if any(c.name == name for c in benchmark.configs):
                seconds = benchmark.config(name).median_frame
        dice = mean_dice(evaluation, method)["mean"]
        colour = "#e76f51" if method == shipped else (
            "#f4a261" if Method.parse(method).is_ensemble else "#219ebc")
        axis.scatter(seconds, dice, s=60 if method == shipped else 30, color=colour, zorder=3)
        labels.append(axis.annotate(method, (seconds, dice), fontsize=6.5, xytext=(4, 2),
                                    textcoords="offset points"))
    axis.axhline(TARGET_MEAN_DICE, color="grey", lw=0.8, ls="--")
    axis.set_xlabel("seconds per frame" + (f" ({benchmark.device}, benchmark)"
                                           if benchmark is not None else ""))
    axis.set_ylabel("test mean Dice (RV, Myo, LV)")
    axis.set_title("accuracy vs cost", fontsize=9)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    separate_labels(labels)
    _save_figure(figure, png_path, overwrite)


def _save_figure(figure, png_path: Path, overwrite: bool) -> None:
    """A chart, whole or not at all (`io.atomic.atomic_output`); the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(png_path, overwrite=overwrite) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)


def separate_labels(labels: Sequence, gap_px: float = 1.0) -> None:
    """Move point labels down until no two overlap, top label first.

    Why: rules with almost the same Dice and cost (weighted, mean and vote with the same
    clean-up) land on one spot, and their names printed over each other could not be read.
    A label keeps its x; the link to its point stays readable because it only moves down past
    the labels it would hide.
    """
    if not labels:
        return
    figure = labels[0].figure
    renderer = figure.canvas.get_renderer()
    points_per_px = 72.0 / figure.dpi
    placed = []
    for label in sorted(labels, key=lambda t: -t.get_window_extent(renderer).y1):
        box = label.get_window_extent(renderer)
        drop = 0.0
        moved = True
        while moved:
            moved = False
            for other in placed:
                if (box.x1 > other.x0 and box.x0 < other.x1
                        and box.y0 - drop < other.y1 and box.y1 - drop > other.y0):
                    drop = max(drop, box.y1 - other.y0 + gap_px)  # only down: it ends
                    moved = True
        if drop:
            x, y = label.xyann
            label.xyann = (x, y - drop * points_per_px)
        placed.append(label.get_window_extent(renderer))


def _median_frame_seconds(rows: Sequence[ScoreRow]) -> float:
    return float(np.median(list({(r.patient, r.phase): r.seconds for r in rows}.values())))


def write_report(evaluation: Evaluation, path: Path, *, shipped: str,
                 member_methods: Sequence[str], patients: Sequence[str], title: str,
                 command: str = "", benchmark: Optional[BenchmarkResult] = None,
                 device: str = "", overwrite: bool = False) -> list[Path]:
    """Write the Markdown report and its two charts beside it; returns the paths written.

    Each file is published whole (`io.atomic.atomic_output`); existing ones are refused unless
    `overwrite`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boxes = path.with_name(path.stem + "_dice_boxes.png")
    cost = path.with_name(path.stem + "_accuracy_cost.png")
    shown = list(member_methods) + [m for m in evaluation.methods if Method.parse(m).is_ensemble]
    plot_dice_boxes(evaluation, shown, boxes, overwrite=overwrite)
    plot_accuracy_cost(evaluation, cost, benchmark, shipped, overwrite=overwrite)
    text = [f"# {title}", "",
            f"{len(patients)} patients, ED and ES frames: {', '.join(patients)}.  ",
            f"Produced by `{command}`." if command else "", ""]
    text += headline(evaluation, shipped, member_methods)
    text += ["", "## All methods (mean ± sd over frames; EF error over patients)", "",
             f"Seconds per frame as measured during this evaluation on {device or 'this machine'}"
             " (members run once; each rule's time is the members' plus its own fusion).", "",
             summary_table(evaluation), ""]
    for phase in PHASES:
        text += [f"## {phase}: Dice, HD95 (mm), MSD (mm) per structure (mean ± sd)", "",
                 phase_table(evaluation, phase), ""]
    text += ["## Clinical indices against the ground truth", "", clinical_table(evaluation), ""]
    if benchmark is not None:
        text += ["## Cost on this machine (benchmark: each configuration alone, side by side)",
                 "", f"{benchmark.machine}; frames {', '.join(benchmark.frames)}, "
                 f"{benchmark.repeats} timed repeats after a warm-up.", "",
                 cost_table(benchmark, evaluation, shipped), ""]
    text += ["## Figures", "", f"![Dice per frame, members and ensembles]({boxes.name})", "",
             f"![accuracy vs cost]({cost.name})", ""]
    write_text_atomic(path, "\n".join(text), overwrite=overwrite)
    return [path, boxes, cost]
