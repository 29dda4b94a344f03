"""One table from several `evaluate` runs of the same patients: the shipped method's Dice and
HD95 per structure, side by side (e.g. full grid against heart-region margins).

    python -m CardiacEnsembleDev.release.compare RUN_FOLDER[@METHOD] [...] [--method M]

Each RUN_FOLDER holds an `evaluate --out` (its scores.csv); the table is Markdown on stdout.
`@METHOD` picks that run's method (e.g. `runs/full@unetpp25d-mnv2+lcc`, a member alone);
`--method` is the default for the others.
Seconds are left out on purpose: `evaluate` times frames one by one, while the benchmark times
configurations side by side, which is the only comparison of cost this project trusts.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import Sequence

from CardiacEnsembleLib.core.labels import STRUCTURES

SHIPPED = "ensemble-weighted+lcc"


def run_means(scores_csv: Path, method: str) -> tuple[int, dict[str, float], dict[str, float]]:
    """(frames, Dice per structure, HD95 per structure) of `method`, means over frames."""
    with open(scores_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["method"] == method]
    if not rows:
        raise SystemExit(f"{scores_csv}: no rows for method {method!r}")
    dice = {s: statistics.mean(float(r["dice"]) for r in rows if r["structure"] == s)
            for s in STRUCTURES}
    hd95 = {s: statistics.mean(float(r["hd95_mm"]) for r in rows if r["structure"] == s)
            for s in STRUCTURES}
    return len(rows) // len(STRUCTURES), dice, hd95


def comparison_table(folders: Sequence[Path | str], method: str = SHIPPED) -> str:
    header = ("| run | frames | " + " | ".join(f"Dice {s}" for s in STRUCTURES)
              + " | Dice mean | HD95 " + " / ".join(STRUCTURES) + " (mm) | HD95 mean |")
    lines = [header, "|" + "---|" * (4 + len(STRUCTURES)) + "---|"]
    for run in folders:
        folder, _, chosen = str(run).partition("@")
        frames, dice, hd95 = run_means(Path(folder) / "scores.csv", chosen or method)
        name = Path(folder).name + (f" ({chosen})" if chosen else "")
        lines.append(f"| {name} | {frames} | "
                     + " | ".join(f"{dice[s]:.4f}" for s in STRUCTURES)
                     + f" | {statistics.mean(dice.values()):.4f} | "
                     + " / ".join(f"{hd95[s]:.2f}" for s in STRUCTURES)
                     + f" | {statistics.mean(hd95.values()):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--method", default=SHIPPED)
    args = parser.parse_args(argv)
    print(comparison_table(args.folders, args.method))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
