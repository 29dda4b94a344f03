"""Assemble the shipped ensemble from training runs: fp16 member folders + manifest.json.

Why a command and not a copy by hand: the shipped weights, their sha256 and the metrics quoted
beside them must be reproducible from the runs they came from.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

from CardiacEnsembleLib.core.case import Case
from CardiacEnsembleLib.core.manifest import MANIFEST_FILE, MEMBER_FILES, sha256_of, write_json
from CardiacEnsembleLib.inference.members import (WEIGHTS_FILE, Member, MemberError, load_member,
                                                  save_member, verify_member)
from CardiacEnsembleDev.training.training import load_split_cases, validation_dice


def trained_on_pack(member: Member) -> bool:
    return str(member.spec.training.get("form", "")).startswith("slice pack")


def rescore_on_validation(member: Member, cases: Sequence[Case]) -> dict:
    """Replace a pack-trained member's validation Dice (scored on the pack's cropped 1.5 mm
    grid) by the exact one, on the real validation frames (`cases`: the validation split) and
    their own grid, as every other member's is measured; the pack's number stays beside it as
    `pack_validation_dice`."""
    recorded = list(member.spec.training.get("validation_patients") or [])
    outside = sorted(set(recorded) - {case.patient_id for case in cases})
    if not recorded or outside:
        raise MemberError(f"{member.folder}: its training record names validation patients "
                          f"{outside or 'none'} that the validation split does not hold")
    exact = validation_dice(member.network, [c for c in cases if c.patient_id in recorded],
                            member.spec, "cpu")
    member.spec.metrics = {**member.spec.metrics,
                           "pack_validation_dice": member.spec.metrics.get("validation_dice"),
                           "validation_dice": exact}
    return exact


def ship_runs(run_dirs: Sequence[Path], models_dir: Path, *, name: str, version: str,
              fusion: str = "mean", weights: Optional[dict] = None, note: str = "",
              description: str = "", overwrite: bool = False,
              data_root: Optional[Path] = None) -> Path:
    """Copy each run's `best/` member into `models_dir/<member name>/` as fp16, then write the
    manifest. Refuses to replace an existing models folder unless `overwrite`. Members trained
    on a slice pack are re-scored on the real validation frames first (`data_root` needed)."""
    models_dir = Path(models_dir)
    if (models_dir / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{models_dir}: already holds a manifest.json; refusing to "
                              f"replace the shipped ensemble (pass --overwrite)")
    members = [load_member(Path(run) / "best") for run in run_dirs]
    packed = [member for member in members if trained_on_pack(member)]
    if packed and data_root is None:
        raise MemberError(f"{', '.join(m.name for m in packed)}: trained on a slice pack, whose "
                          f"validation Dice is approximate; give the ACDC root (--data) so "
                          f"ship scores them on the real validation frames")
    if packed:
        validation = load_split_cases(Path(data_root), "validation")  # read once for all
        for member in packed:
            rescore_on_validation(member, validation)
    if overwrite and models_dir.exists():
        for child in models_dir.iterdir():
            if child.is_dir() and (child / "member.json").exists():
                shutil.rmtree(child)
    models_dir.mkdir(parents=True, exist_ok=True)
    folders = [save_member(m.network, m.spec, models_dir / m.name, half=True,
                           overwrite=True).folder for m in members]
    return write_manifest(models_dir, folders, name=name, version=version, fusion=fusion,
                          weights=weights, note=note, description=description)


def write_manifest(models_dir: Path | str, member_folders: Sequence[Path], *, name: str,
                   version: str, fusion: str = "mean", weights: Optional[dict] = None,
                   note: str = "", description: str = "") -> Path:
    """Describe the members in `models_dir` as data (the model zoo's manifest.json).

    Each entry records the folder, the size of its weights and the sha256 of every file that
    decides the member's output (`MEMBER_FILES`: weights, spec, config), so a swapped weights
    file or an edited preprocessing is caught before loading; `load_ensemble` checks them.
    """
    models_dir = Path(models_dir)
    entries = []
    for folder in member_folders:
        folder = Path(folder)
        spec = verify_member(folder)
        entries.append({"name": spec.name, "folder": folder.relative_to(models_dir).as_posix(),
                        "arch": spec.arch, "encoder": spec.encoder,
                        "context_slices": spec.context_slices, "version": spec.version,
                        **{key: sha256_of(folder / file) for key, file in MEMBER_FILES.items()},
                        "size_bytes": (folder / WEIGHTS_FILE).stat().st_size,
                        "validation": spec.metrics.get("validation_dice"),
                        "download_url": None})
    manifest = {"name": name, "version": version, "fusion": fusion, "weights": weights or {},
                "note": note, "description": description, "members": entries}
    return write_json(models_dir / MANIFEST_FILE, manifest)
