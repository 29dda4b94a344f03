"""What every command group shares: the progress bar, the ensemble options and their loading.

Command groups (the runtime's and the workbench's) import this module; it imports nothing heavy
at the top, so `--help` and the read-only commands start without torch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from CardiacEnsembleLib.core.options import FUSION_RULES, Backend, Preset

#: Exit status of an error the user can act on (a wrong file, an existing output, a bad member).
EXIT_USAGE = 2
#: The built-in sample patient (ACDC, CC BY-NC-SA 4.0), used when a command is given no input.
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample" / "patient090"
PROG = "cardiac-ensemble"


class ProgressBar:
    """A tqdm bar behind the package's `progress(done, total, message)` callback.

    `unit` names what `done` counts ("slice", "frame", "study", "step"), so the rate reads
    "9.5 slice/s"; without one (a callback that reports a fraction, like the cine's per mille)
    the bar shows the percentage and the time left only. The clock starts when the bar is made,
    not at the first callback: the first report comes after the first piece of work, and timing
    from it gave rates like 889700/s. Written to a log (stderr not a terminal), the bar's last
    line stays: it used to be wiped, leaving the last throttled refresh (80%, 90%) as the end.
    """

    def __init__(self, description: str, enabled: bool = True, unit: str | None = None) -> None:
        self.description, self.enabled, self.unit, self.bar = description, enabled, unit, None
        self.started = time.time()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            counted = "{n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
            fraction = "[{elapsed}<{remaining}{postfix}]"
            # a terminal's bar is wiped when done; a log keeps its last line, the final count
            self.bar = tqdm(total=total, desc=self.description, leave=not sys.stderr.isatty(),
                            unit=f" {self.unit}" if self.unit else "", file=sys.stderr,
                            mininterval=0.5,
                            bar_format="{l_bar}{bar}| " + (counted if self.unit else fraction))
            self.bar.start_t = self.bar.last_print_t = self.started
        self.bar.total = total
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--models, --members, --fusion, --tta, --device: which ensemble a command runs."""
    group = parser.add_argument_group("ensemble")
    group.add_argument("--preset", default=None, choices=Preset.values(),
                       help="the accuracy-cost choice, from the manifest (`models` lists each "
                            "with its time and validation Dice): fast, balanced, full; "
                            "options below replace its settings (default: the manifest's)")
    group.add_argument("--models", type=Path, default=None,
                       help="folder with manifest.json and member folders "
                            "(default: the ensemble shipped with the package)")
    group.add_argument("--members", nargs="+", default=None,
                       help=f"use only these members (names from `{PROG} models`)")
    group.add_argument("--fusion", default=None, choices=FUSION_RULES,
                       help="fusion rule (default: the manifest's)")
    group.add_argument("--tta", action="store_true", default=None,
                       help="flip test-time augmentation (3x cost)")
    group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    group.add_argument("--backend", default=Backend.AUTO.value, choices=Backend.values(),
                       help="what runs the networks: auto = ONNX Runtime on the CPU when "
                            "installed (same labels as torch, about half the time; exported "
                            "once into a cache), torch on CUDA; torch = the reference")
    group.add_argument("--heart-margin", type=_pixels, default=None, metavar="PIXELS",
                       help="heart-region inference: the other members run only on the box "
                            "the locator member finds around the heart, grown by PIXELS of the "
                            "network grid (e.g. 16); default: the preset's")
    group.add_argument("--heart-locator", default=None, metavar="MEMBER",
                       help="the member that locates the heart (default: the one with the "
                            "best validation Dice in the manifest)")


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 0, got {text!r}")
    return value


def models_dir(args: argparse.Namespace) -> Path:
    from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR

    return args.models or DEFAULT_MODELS_DIR


def say(args: argparse.Namespace, line: str) -> None:
    """A line about the run, not a result (what runs, which input was assumed): left out by -q,
    which prints results and errors only."""
    if not getattr(args, "quiet", False):
        print(line)


def load_ensemble(args: argparse.Namespace):
    """The ensemble the model options name, after one line saying what runs (members, fusion,
    clean-up, device), so a log tells what made a result. The manifest's note (how the members
    were trained) is shown by `models`, and here with -v only: it is history, not news."""
    from CardiacEnsembleLib.core.manifest import read_manifest
    from CardiacEnsembleLib.inference.ensemble import load_ensemble as load

    folder = models_dir(args)
    ensemble = load(folder, members=args.members, fusion=args.fusion, device=args.device,
                    tta=args.tta, heart_margin=args.heart_margin,
                    heart_locator=args.heart_locator, backend=args.backend,
                    preset=args.preset)
    note = read_manifest(folder).note
    if note and getattr(args, "verbose", False):
        print(f"note: {note}")
    say(args, f"ensemble: {ensemble.settings_line}")
    return ensemble


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, for reports that say how they were made."""
    return " ".join([PROG, *args.argv])
