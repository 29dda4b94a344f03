"""Assemble the shipped ensemble from training runs: fp16 member folders + manifest.json.

Why a command and not a copy by hand: the shipped weights, their sha256 and the metrics quoted
beside them must be reproducible from the runs they came from.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

from .ensemble import write_manifest
from .members import load_member, save_member


def ship_runs(run_dirs: Sequence[Path], models_dir: Path, *, name: str, version: str,
              fusion: str = "mean", weights: Optional[dict] = None, note: str = "",
              description: str = "", overwrite: bool = False) -> Path:
    """Copy each run's `best/` member into `models_dir/<member name>/` as fp16, then write the
    manifest. Refuses to replace an existing models folder unless `overwrite`."""
    models_dir = Path(models_dir)
    if (models_dir / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{models_dir}: already holds a manifest.json; refusing to "
                              f"replace the shipped ensemble (pass --overwrite)")
    members = [load_member(Path(run) / "best") for run in run_dirs]
    if overwrite and models_dir.exists():
        for child in models_dir.iterdir():
            if child.is_dir() and (child / "member.json").exists():
                shutil.rmtree(child)
    models_dir.mkdir(parents=True, exist_ok=True)
    folders = [save_member(m.network, m.spec, models_dir / m.name, half=True,
                           overwrite=True).folder for m in members]
    return write_manifest(models_dir, folders, name=name, version=version, fusion=fusion,
                          weights=weights, note=note, description=description)
