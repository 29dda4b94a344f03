"""The ensemble's manifest (`models/manifest.json`) as a typed record, read in one place.

The manifest is data: which members, their sha256, the fusion rule, the member weights and the
clean-up chosen on validation, and what the release measured. Nothing here imports torch, so
the Slicer module reads the member list and the shipped rule before torch is installed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import MemberError
from .labels import NUM_CLASSES
from .options import FusionRule, check_steps

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"  # a member folder's weights (safetensors)
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class WeightTable:
    """Fusion weights as one (members x classes) table: row m weighs member `names[m]`, column c
    class c (background first). A member with one number weighs every class alike.

    Why a table: members are good at different structures, so the weights are per class; one
    shape everywhere replaces "a number or a list" branches in every reader.
    """

    names: tuple[str, ...]
    table: np.ndarray  # float64 (M, C)

    def __post_init__(self) -> None:
        table = np.asarray(self.table, dtype=np.float64)
        if table.ndim == 1:
            table = np.repeat(table[:, None], NUM_CLASSES, axis=1)
        if table.ndim != 2 or table.shape[0] != len(self.names):
            raise ValueError(f"fusion weights: a table of shape {table.shape} for "
                             f"{len(self.names)} members {list(self.names)}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "table", table)

    @classmethod
    def from_json(cls, weights: Mapping[str, Any], names: Sequence[str],
                  where: str = "manifest") -> "WeightTable":
        """From the manifest's {member: number or [one per class]} form, for `names` in order."""
        missing = [n for n in names if n not in weights]
        if missing:
            raise MemberError(f"{where}: no fusion weight for member(s) {missing}")
        rows = []
        for name in names:
            value = weights[name]
            row = [float(v) for v in value] if isinstance(value, (list, tuple)) \
                else [float(value)] * NUM_CLASSES
            if len(row) != NUM_CLASSES or not all(math.isfinite(v) and v >= 0 for v in row):
                raise MemberError(f"{where}: fusion weight of {name!r} is {value!r}; expected a "
                                  f"non-negative number or {NUM_CLASSES} (one per class, "
                                  f"background first)")
            rows.append(row)
        return cls(tuple(names), np.array(rows))

    def to_json(self, digits: Optional[int] = None) -> dict[str, Any]:
        """The manifest's form: a number where a member weighs every class alike."""
        out: dict[str, Any] = {}
        for name, row in zip(self.names, self.table):
            values = [round(float(v), digits) if digits else float(v) for v in row]
            out[name] = values[0] if len(set(values)) == 1 else values
        return out

    @property
    def per_class(self) -> bool:
        return bool(np.any(self.table != self.table[:, :1]))

    def row(self, name: str) -> np.ndarray:
        return self.table[self.names.index(name)]

    def counts(self, name: str) -> bool:
        """Whether the member can change a weighted fusion's result (some weight above 0)."""
        return bool(np.any(self.row(name) > 0))

    def subset(self, names: Sequence[str]) -> "WeightTable":
        return WeightTable(tuple(names), np.array([self.row(n) for n in names]))

    def text(self, name: str) -> str:
        row = self.row(name)
        return f"{row[0]:.3f}" if np.all(row == row[0]) else "/".join(f"{w:.3f}" for w in row)


@dataclass(frozen=True)
class ManifestMember:
    """One member entry: where its folder is and what its weights must hash to."""

    name: str
    folder: str
    sha256: str = ""
    arch: str = ""
    encoder: str = ""
    context_slices: int = 0
    version: str = ""
    size_bytes: int = 0
    validation: Optional[float] = None
    download_url: Optional[str] = None


@dataclass
class Manifest:
    """`manifest.json` of a models folder, typed; `raw` keeps every key (the release's recorded
    selection and test metrics) so an update never drops what it does not know."""

    models_dir: Path
    name: str
    version: str
    members: list[ManifestMember]
    fusion: FusionRule = FusionRule.MEAN
    weights: Optional[WeightTable] = None
    postprocess: tuple[str, ...] = ()
    note: str = ""
    description: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.models_dir / MANIFEST_FILE

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> ManifestMember:
        for entry in self.members:
            if entry.name == name:
                return entry
        raise MemberError(f"{self.path}: no member named {name!r}; available: "
                          f"{sorted(self.names)}")

    def weights_for(self, names: Sequence[str]) -> Optional[WeightTable]:
        """The weight rows of `names`, or None when the manifest weighs none of them all."""
        if self.weights is None or not all(n in self.weights.names for n in names):
            return None
        return self.weights.subset(names)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_member_weights(manifest: Manifest, entry: ManifestMember) -> None:
    """Refuse a member whose weights are not the ones the manifest names (a swapped, truncated
    or retrained file), without loading them: hashing needs no torch."""
    weights = manifest.models_dir / entry.folder / WEIGHTS_FILE
    if not weights.is_file():
        raise MemberError(f"{weights.parent}: missing {WEIGHTS_FILE}")
    if not entry.sha256:
        return
    actual = sha256_of(weights)
    if actual != entry.sha256:
        raise MemberError(f"{weights}: sha256 {actual[:12]}... does not match {manifest.path} "
                          f"({entry.sha256[:12]}...): the weights are not the ones the manifest "
                          f"names")


def read_manifest(models_dir: Path | str = DEFAULT_MODELS_DIR) -> Manifest:
    """Read and check a models folder's manifest; every problem names the file."""
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST_FILE
    if not path.is_file():
        raise MemberError(f"{models_dir}: no {MANIFEST_FILE} (the list of ensemble members)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MemberError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict) or not raw.get("members"):
        raise MemberError(f"{path}: lists no members")
    known = set(ManifestMember.__dataclass_fields__)
    try:
        members = [ManifestMember(**{k: v for k, v in entry.items() if k in known})
                   for entry in raw["members"]]
    except TypeError as error:
        raise MemberError(f"{path}: a member entry lacks a name or folder ({error})") from None
    names = [m.name for m in members]
    weights = raw.get("weights") or {}
    try:
        fusion = FusionRule.parse(raw.get("fusion", "mean"), "fusion rule")
        steps = check_steps(raw.get("postprocess") or ())
    except ValueError as error:
        raise MemberError(f"{path}: {error}") from None
    table = WeightTable.from_json(weights, [n for n in names if n in weights], str(path)) \
        if weights else None
    return Manifest(models_dir, raw.get("name", ""), str(raw.get("version", "")), members,
                    fusion, table, steps, raw.get("note", ""), raw.get("description", ""), raw)


def update_manifest(models_dir: Path | str, updates: dict) -> Path:
    """Merge settings (chosen on validation) or metrics (measured on test) into manifest.json.

    Why a merge and not a rewrite: the member entries and their sha256 describe the weights and
    must not change when only the ensemble's settings or its report change. Keys that would
    touch them are refused.
    """
    if "members" in updates:
        raise ValueError("update_manifest does not change member entries; re-ship the members")
    manifest = read_manifest(models_dir)
    raw = dict(manifest.raw)
    raw.update(updates)
    return write_json(manifest.path, raw)


def write_json(path: Path, data: dict) -> Path:
    """Write JSON through a staging file and a rename, so a reader never sees half a file."""
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(data, indent=1) + "\n")
    staging.replace(path)
    return path
