"""The ensemble's manifest (`models/manifest.json`) as a typed record, read in one place.

The manifest is data: which members, the sha256 of each member's files, the fusion rule, the
member weights and the clean-up chosen on validation, and what the release measured. Nothing
here imports torch, so the Slicer module reads the member list and the shipped rule before
torch is installed.

Every file of a member folder that decides what the member outputs is hashed in the manifest
(`MEMBER_FILES`): the weights, but also the spec (its preprocessing: a spacing edited from 1.5
to 3.0 mm takes RV Dice from 0.93 to 0.54 with the same weights) and smp's config (an
activation or an interpolation mode changes the output without changing a weight's shape).
The hashes are required, and the rule and weights are checked here, so a manifest that cannot
give the result it promises is refused when it is read, before any network runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import MemberError
from .labels import LABEL_NAMES, NUM_CLASSES
from .options import FusionRule, Preset, check_steps
from .quality import QualityScore, QualityThresholds, thresholds_from_json

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"  # a member folder's weights (safetensors)
SPEC_FILE = "member.json"  # a member folder's spec: preprocessing, labels, training record
CONFIG_FILE = "config.json"  # smp's description of the network (save_pretrained)
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: A manifest member entry's key -> the member file whose sha256 it holds.
MEMBER_FILES: dict[str, str] = {"sha256": WEIGHTS_FILE, "spec_sha256": SPEC_FILE,
                                "config_sha256": CONFIG_FILE}
#: What to do about a manifest that lacks a member's hashes.
RESHIP_HINT = ("re-ship the models with `cardiac-ensemble ship` (or "
               "CardiacEnsembleDev.release.ship.write_manifest), which records them")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        return cls(tuple(names), np.array([_weight_row(weights[n], n, where) for n in names]))

    def check_usable(self, where: str = "manifest") -> None:
        """Refuse weights the weighted rule cannot fuse with: a class that every member weighs
        0 could never be labelled (and fusion would stop on it after the networks ran)."""
        zero = [LABEL_NAMES[c] for c in range(self.table.shape[1])
                if not np.any(self.table[:, c] > 0)]
        if len(zero) == self.table.shape[1]:
            raise MemberError(f"{where}: every fusion weight of members {list(self.names)} is "
                              f"0; expected at least one positive weight per class")
        if zero:
            raise MemberError(f"{where}: no member of {list(self.names)} has a positive fusion "
                              f"weight for {', '.join(zero)}; the weighted rule could never "
                              f"label it (choose members that weigh it, or another fusion rule)")

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


def _weight_row(value: Any, name: str, where: str) -> list[float]:
    """One member's weight as C numbers; a number stands for every class alike."""
    number = (int, float)
    values = list(value) if isinstance(value, (list, tuple)) else [value] * NUM_CLASSES
    if len(values) != NUM_CLASSES or not all(isinstance(v, number) and not isinstance(v, bool)
                                             and math.isfinite(v) and v >= 0 for v in values):
        raise MemberError(f"{where}: fusion weight of {name!r} is {value!r}; expected a "
                          f"non-negative number or {NUM_CLASSES} (one per class, "
                          f"background first)")
    return [float(v) for v in values]


@dataclass(frozen=True)
class ManifestMember:
    """One member entry: where its folder is and what its files must hash to (`MEMBER_FILES`:
    weights, spec and config, each required)."""

    name: str
    folder: str
    sha256: str = ""
    spec_sha256: str = ""
    config_sha256: str = ""
    arch: str = ""
    encoder: str = ""
    context_slices: int = 0
    version: str = ""
    size_bytes: int = 0
    validation: Optional[dict | float] = None  # Dice per structure and "mean" (old: a number)
    download_url: Optional[str] = None

    @property
    def validation_dice(self) -> Optional[float]:
        """The member's mean validation Dice, if the manifest records it."""
        if isinstance(self.validation, dict):
            return self.validation.get("mean")
        return self.validation


@dataclass(frozen=True)
class PresetEntry:
    """One preset of the manifest: what runs (None: the manifest's own setting) and what the
    release measured for it (validation Dice, seconds per frame on the benchmark machine)."""

    name: str
    members: Optional[tuple[str, ...]] = None  # None: every member
    heart_margin: Optional[int] = None  # None: the full grid
    heart_locator: Optional[str] = None  # None: the best-validated member
    fusion: Optional[str] = None
    postprocess: Optional[tuple[str, ...]] = None
    tta: bool = False
    validation_dice: Optional[float] = None
    seconds_per_frame: Optional[float] = None
    note: str = ""

    def describe(self) -> str:
        """What it costs and what it scored, for `models` and the Slicer panel."""
        parts = []
        if self.seconds_per_frame is not None:
            parts.append(f"{self.seconds_per_frame:.2f} s/frame")
        if self.validation_dice is not None:
            parts.append(f"validation Dice {self.validation_dice:.4f}")
        if self.note:
            parts.append(self.note)
        return " | ".join(parts) or "not measured"


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
    presets: dict[str, PresetEntry] = field(default_factory=dict)
    default_preset: Optional[str] = None  # None: every member on the full grid
    # when a QC score is a flag, per score, fitted on validation (`core.quality`); a score
    # without thresholds flags nothing
    quality_control: dict[QualityScore, QualityThresholds] = field(default_factory=dict)

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


def check_member_files(manifest: Manifest, entry: ManifestMember,
                       files: Sequence[str] = tuple(MEMBER_FILES)) -> None:
    """Refuse a member whose files are not the ones the manifest names (swapped, truncated or
    retrained weights, an edited spec or config), without loading them: hashing needs no torch.

    `files`: the entry's keys to check (default all of `MEMBER_FILES`)."""
    folder = manifest.models_dir / entry.folder
    for key in files:
        path = folder / MEMBER_FILES[key]
        if not path.is_file():
            raise MemberError(f"{folder}: missing {path.name}")
        expected, actual = getattr(entry, key), sha256_of(path)
        if actual != expected:
            raise MemberError(f"{path}: sha256 {actual[:12]}... does not match {manifest.path} "
                              f"({expected[:12]}...): the {_WHAT[key]} not the one the manifest "
                              f"names; restore the shipped file, or re-ship the models")


_WHAT = {"sha256": "weights are", "spec_sha256": "member spec (preprocessing, labels) is",
         "config_sha256": "network config is"}


def read_json(path: Path) -> object:
    """A models-folder JSON file (manifest, member spec, network config), or one `MemberError`
    naming it when it is not UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MemberError(f"{path}: not valid JSON ({error})") from None


def read_manifest(models_dir: Path | str = DEFAULT_MODELS_DIR) -> Manifest:
    """Read and check a models folder's manifest; every problem names the file.

    Checked here, so that every reader (the CLI, the Slicer panel, `load_ensemble`) refuses the
    same manifests before any work: the member entries and their hashes, the fusion rule, the
    clean-up steps and the weights (their form, and that the weighted rule has some).
    """
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST_FILE
    if not path.is_file():
        raise MemberError(f"{models_dir}: no {MANIFEST_FILE} (the list of ensemble members)")
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw.get("members"):
        raise MemberError(f"{path}: lists no members")
    members = _member_entries(raw["members"], path)
    try:
        fusion = FusionRule.parse(raw.get("fusion", "mean"), "fusion rule")
        steps = check_steps(_as_list_of_names(raw.get("postprocess") or (), "postprocess"))
    except ValueError as error:
        raise MemberError(f"{path}: {error}") from None
    table = _weight_table(raw.get("weights") or {}, [m.name for m in members], path)
    if fusion is FusionRule.WEIGHTED and table is None:
        raise MemberError(f"{path}: fusion rule 'weighted' needs fusion weights, and the "
                          f"manifest gives none; add \"weights\" or choose another rule")
    presets = _presets(raw.get("presets") or {}, [m.name for m in members], path)
    default = raw.get("default_preset")
    if default is not None and default not in presets:
        raise MemberError(f"{path}: default_preset {default!r} is not one of its presets "
                          f"({', '.join(presets) or 'none'})")
    quality = raw.get("quality_control")
    return Manifest(models_dir, raw.get("name", ""), str(raw.get("version", "")), members,
                    fusion, table, steps, raw.get("note", ""), raw.get("description", ""), raw,
                    presets, default,
                    thresholds_from_json(quality, str(path)) if quality is not None else {})


def _presets(entries: Any, names: Sequence[str], path: Path) -> dict[str, PresetEntry]:
    """The manifest's presets, each a known name whose members, rule and steps exist."""
    if not isinstance(entries, dict):
        raise MemberError(f"{path}: \"presets\" must be an object {{name: settings}}, not "
                          f"{entries!r:.80}")
    known = set(PresetEntry.__dataclass_fields__) - {"name"}
    presets = {}
    for name, entry in entries.items():
        where = f"{path}: preset {name!r}"
        try:
            Preset.parse(name, "preset")
            if not isinstance(entry, dict):
                raise ValueError(f"expected an object, not {entry!r:.60}")
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)}")
            values = dict(entry)
            if values.get("members") is not None:
                values["members"] = tuple(_as_list_of_names(values["members"], "members"))
                missing = [m for m in values["members"] if m not in names]
                if missing or not values["members"]:
                    raise ValueError(f"members {missing or '[]'} are not the manifest's "
                                     f"({', '.join(names)})")
            if values.get("heart_locator") not in (None, *names):
                raise ValueError(f"heart_locator {values['heart_locator']!r} is not a member of "
                                 f"the manifest")
            margin = values.get("heart_margin")
            if margin is not None and (not isinstance(margin, int) or margin < 0):
                raise ValueError(f"heart_margin {margin!r}: expected pixels >= 0 or null")
            if values.get("fusion") is not None:
                values["fusion"] = FusionRule.parse(values["fusion"], "fusion rule").value
            if values.get("postprocess") is not None:
                values["postprocess"] = check_steps(_as_list_of_names(values["postprocess"],
                                                                      "postprocess"))
        except ValueError as error:
            raise MemberError(f"{where}: {error}") from None
        presets[name] = PresetEntry(name=name, **values)
    return presets


def _member_entries(entries: Any, path: Path) -> list[ManifestMember]:
    """The member entries, each with a name, a folder inside the models folder and the sha256
    of every file in `MEMBER_FILES`."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise MemberError(f"{path}: \"members\" must be a list of objects (name, folder, "
                          f"hashes), not {entries!r:.80}")
    known = set(ManifestMember.__dataclass_fields__)
    members = []
    for entry in entries:
        name, folder = entry.get("name"), entry.get("folder")
        if not isinstance(name, str) or not name or not isinstance(folder, str) or not folder:
            raise MemberError(f"{path}: a member entry lacks a name or folder ({entry!r:.80})")
        if Path(folder).is_absolute() or ".." in Path(folder).parts:
            raise MemberError(f"{path}: member {name!r} has folder {folder!r}; expected a folder "
                              f"inside {path.parent}")
        for key, file in MEMBER_FILES.items():
            if not _SHA256.fullmatch(str(entry.get(key) or "")):
                raise MemberError(f"{path}: member {name!r} records no valid {key!r} (the "
                                  f"sha256 of its {file}: {entry.get(key)!r}); {RESHIP_HINT}")
        members.append(ManifestMember(**{k: v for k, v in entry.items() if k in known}))
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MemberError(f"{path}: member name(s) {twice} appear more than once")
    return members


def _as_list_of_names(value: Any, key: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key!r} must be a list of step names, not {value!r}")
    return list(value)


def _weight_table(weights: Any, names: Sequence[str], path: Path) -> Optional[WeightTable]:
    """The manifest's weights as a table over every member (none: None), checked usable."""
    if not isinstance(weights, dict):
        raise MemberError(f"{path}: \"weights\" must be an object {{member: number or "
                          f"[{NUM_CLASSES} numbers]}}, not {weights!r:.80}")
    if not weights:
        return None
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise MemberError(f"{path}: fusion weights for member(s) {unknown} that the manifest "
                          f"does not list; its members are {list(names)}")
    table = WeightTable.from_json(weights, names, str(path))
    table.check_usable(str(path))
    return table


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
