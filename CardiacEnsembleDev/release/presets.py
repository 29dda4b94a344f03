"""The presets of the shipped manifest, from validation runs and the benchmark, and their
accuracy-cost front as a chart.

    python -m CardiacEnsembleDev.release.presets --validation RUNS [--benchmark REPORT.md]
        [--models DIR] [--chart reports/presets_front.png] [--apply]

RUNS is the folder `CardiacEnsembleDev/scripts/preset_validation.sh` fills (one `evaluate --out`
per candidate); REPORT.md a benchmark report (`cardiac-ensemble benchmark`), whose summary lines
give each preset's and rival's median seconds per frame. `--apply` writes `presets` and
`default_preset` into the manifest (validation Dice always; seconds when a report is given).

The choice itself is data, below, made from reports/preset_validation.md (validation only):
- fast: the best-validated member alone on the heart's box, which the cheapest member
  (LinkNet) finds on the full grid without a vote: 0.9177 validation Dice, above the best
  member alone on the full grid (0.9129, or unetpp-scse's 0.9142);
- balanced: every member, the others on the box the best member found (0.9207);
- full: every member on the full grid, release 1.4's path (0.9199).
The default is balanced: the best validation Dice of the three, and the one that keeps five
opinions per voxel (the disagreement map) at a cost below the 0.8 s target.
"""
from __future__ import annotations

import argparse
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from CardiacEnsembleDev.release.compare import run_means
from CardiacEnsembleLib.cli.evaluate import SUMMARY_ENSEMBLE
from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, update_manifest
from CardiacEnsembleLib.core.options import Preset

BEST = "unetpp25d-mnv2"
DEFAULT_PRESET = Preset.BALANCED


@dataclass(frozen=True)
class Candidate:
    """A point of the front: the validation run and method that scored it, the benchmark row
    that timed it, and (for a preset) the settings the manifest records."""

    label: str
    run: str
    method: str
    benchmark_row: str
    settings: Optional[dict] = None  # None: a rival, not a preset


CANDIDATES = (
    Candidate("fast", "fast-linknet", f"{BEST}+lcc", "preset fast",
              {"members": [BEST], "heart_locator": "linknet25d-mnv2", "heart_margin": 16,
               "fusion": "mean", "postprocess": ["lcc"],
               "note": f"{BEST} on the heart box LinkNet finds"}),
    Candidate("balanced", "heart-16", "ensemble-weighted+lcc", "preset balanced",
              {"heart_margin": 16, "note": "five members, four on the heart box"}),
    Candidate("full", "full", "ensemble-weighted+lcc", "preset full",
              {"heart_margin": None, "note": "five members on the full grid (release 1.4)"}),
    Candidate("torch full-grid (1.4's path)", "full", "ensemble-weighted+lcc",
              "ensemble torch full-grid"),
    Candidate(f"best member ({BEST}+lcc)", "full", f"{BEST}+lcc", f"best member ({BEST})"),
    Candidate(f"best member + flip TTA", "best-tta", f"{BEST}+lcc", "best member + flip TTA"),
)


def check_region(runs: Path, candidate: Candidate) -> None:
    """Stop unless the candidate's run ran its heart region, as its evaluate summary.md names
    it: a run left to the manifest's default preset (heart region on) once stood in for the
    full grid, and recorded the balanced Dice as the full preset's."""
    summary = runs / candidate.run / "summary.md"
    lines = [line for line in summary.read_text().splitlines()
             if line.startswith(SUMMARY_ENSEMBLE)] if summary.exists() else []
    if not lines:
        raise SystemExit(f"{summary}: no '{SUMMARY_ENSEMBLE}' line (a run from before it was "
                         f"written); run preset_validation.sh again")
    margin = candidate.settings["heart_margin"]
    found = re.search(r"\| heart region: .* \+ (\d+) px$", lines[0])
    ran = int(found.group(1)) if found else None
    if ran != margin:
        raise SystemExit(f"{summary}: ran heart margin {ran}, the {candidate.label} preset "
                         f"records {margin} (None: the full grid)")


def validation_dice(runs: Path, candidate: Candidate) -> tuple[float, float]:
    """(mean Dice, mean HD95) of a candidate over its run's frames."""
    _, dice, hd95 = run_means(runs / candidate.run / "scores.csv", candidate.method)
    return statistics.mean(dice.values()), statistics.mean(hd95.values())


def benchmark_seconds(report: Path) -> dict[str, float]:
    """Median seconds per frame of every row the report's summary names (`X median frame
    time: S s`); the default preset's row is "ensemble"."""
    seconds = {}
    for match in re.finditer(r"^(.+?) median frame time: ([0-9.]+) s$", report.read_text(),
                             re.M):
        seconds[match.group(1)] = float(match.group(2))
    if "ensemble" in seconds:
        seconds.setdefault(f"preset {DEFAULT_PRESET.value}", seconds["ensemble"])
    return seconds


def preset_entries(runs: Path, seconds: dict[str, float]) -> dict[str, dict]:
    presets = {}
    for candidate in CANDIDATES:
        if candidate.settings is None:
            continue
        check_region(runs, candidate)
        dice, _ = validation_dice(runs, candidate)
        entry = {**candidate.settings, "validation_dice": round(dice, 4)}
        if candidate.benchmark_row in seconds:
            entry["seconds_per_frame"] = round(seconds[candidate.benchmark_row], 3)
        presets[candidate.label] = entry
    return presets


def plot_front(runs: Path, seconds: dict[str, float], png: Path, title: str) -> None:
    """Validation Dice against seconds per frame: the presets filled, the rivals hollow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from CardiacEnsembleDev.release.report import separate_labels

    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    labels = []
    for index, candidate in enumerate(CANDIDATES):
        if candidate.benchmark_row not in seconds:
            continue
        dice, _ = validation_dice(runs, candidate)
        x = seconds[candidate.benchmark_row]
        colour = plt.get_cmap("tab10")(index)
        axis.scatter(x, dice, s=50, color=colour,
                     facecolors=colour if candidate.settings else "none")
        labels.append(axis.annotate(candidate.label, (x, dice), fontsize=7, xytext=(5, 3),
                                    textcoords="offset points"))
    axis.set_xlabel("seconds per frame (benchmark, median)")
    axis.set_ylabel("validation mean Dice (20 patients, ED+ES)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    separate_labels(labels)
    figure.savefig(png)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--benchmark", type=Path, default=None)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--chart", type=Path, default=Path("reports/presets_front.png"))
    parser.add_argument("--apply", action="store_true")
    args = parser.parse_args(argv)
    seconds = benchmark_seconds(args.benchmark) if args.benchmark else {}
    presets = preset_entries(args.validation, seconds)
    for name, entry in presets.items():
        print(f"{name}: validation Dice {entry['validation_dice']:.4f}"
              + (f", {entry['seconds_per_frame']:.3f} s/frame" if "seconds_per_frame" in entry
                 else ""))
    if seconds:
        plot_front(args.validation, seconds, args.chart,
                   "presets (filled) and single-network rivals (hollow)")
        print(f"wrote {args.chart}")
    if args.apply:
        update = {"presets": presets, "default_preset": DEFAULT_PRESET.value}
        print(f"updated {update_manifest(args.models, update)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
