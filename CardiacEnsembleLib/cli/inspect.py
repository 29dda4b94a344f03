"""`info` and `models`: what a data folder and a models folder hold. Both only read files, so
neither imports torch: they answer in a fraction of a second, before the dependencies load."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from CardiacEnsembleLib.core.errors import CaseError, MemberError


def register(commands) -> None:
    info = commands.add_parser("info", help="what an ACDC patient folder (or root) holds")
    info.add_argument("folder", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=run_info)

    models = commands.add_parser("models", help="list the ensemble's members (manifest)")
    models.add_argument("--models", type=Path, default=None)
    models.set_defaults(run=run_models)


def run_info(args: argparse.Namespace) -> int:
    from CardiacEnsembleLib.io.acdc import find_patients

    patients = find_patients(args.folder)
    if not patients:
        raise CaseError(f"{args.folder}: no ACDC patient folders (with Info.cfg) found")
    rows = [p.describe() for p in patients]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join("-" if row[k] is None else str(row[k]) for k in keys))
    return 0


def run_models(args: argparse.Namespace) -> int:
    """The manifest's setting and what the release measured, then one line per member; every
    member's files (weights, spec, config) are checked against the sha256 the manifest recorded
    for them."""
    from CardiacEnsembleLib.cli.common import models_dir
    from CardiacEnsembleLib.core.manifest import check_member_files, read_manifest

    manifest = read_manifest(models_dir(args))
    for line in _setting_lines(manifest) + _measured_lines(manifest.raw):
        print(line)
    for entry in manifest.members:
        check_member_files(manifest, entry)
        print(_member_line(entry))
    return 0


def _setting_lines(manifest) -> list[str]:
    steps = f" + {'+'.join(manifest.postprocess)}" if manifest.postprocess else ""
    lines = [f"{manifest.name or 'ensemble'} {manifest.version} ({manifest.models_dir}): "
             f"fusion {manifest.fusion}{steps}"]
    if manifest.note:
        lines.append(f"note: {manifest.note}")
    weights = manifest.weights
    if weights is not None:
        lines.append("weights" + (" (background, RV, Myo, LV)" if weights.per_class else "")
                     + ": " + ", ".join(f"{name} {weights.text(name)}" for name in weights.names))
    for name, preset in manifest.presets.items():
        default = " (default)" if name == manifest.default_preset else ""
        lines.append(f"preset {name}{default}: {preset.describe()}")
    return lines


def _measured_lines(raw: dict) -> list[str]:
    """The validation score of the chosen setting and the test scores, where recorded."""
    lines = []
    selection = raw.get("selection") or {}
    chosen = selection.get("validation", {}).get("dice", {})
    if chosen:
        lines.append(f"validation mean Dice {chosen['mean']:.4f} ({selection['chosen']}, "
                     f"{len(selection['patients'])} validation patients)")
    test = raw.get("test") or {}
    if test:
        lines.append(f"test mean Dice {test['dice']['mean']:.4f} ({test['method']}, "
                     f"{test['patients']} test patients; best member {test['best_member']} "
                     f"{test['best_member_dice']['mean']:.4f})")
    return lines


def _member_line(entry) -> str:
    dice = entry.validation_dice
    view = f"2.5D±{entry.context_slices}" if entry.context_slices else "2D"
    return (f"  {entry.name:20s} {entry.arch + '/' + entry.encoder:28s} {view:7s} "
            f"{entry.size_bytes / 1e6:5.1f} MB  sha256 {entry.sha256[:12]}  "
            f"validation Dice {dice if dice is None else f'{dice:.3f}'}")
