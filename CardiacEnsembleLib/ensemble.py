"""Members + a fusion rule + weights: `Ensemble.predict(case) -> Prediction`.

Members whose preprocessing specs agree share one preprocessing pass; every member's
probabilities go back to the case's own grid on the device, and fusion runs there too, so the
only host copies are the final label maps.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .case import Case, MemberOutput, Prediction
from .fusion import FUSION_RULES, MemberWeight, fuse, member_counts
from .inference import (CancelToken, Progress, optimize_for_inference, pick_device,
                        predict_slices)
from .members import Member, MemberError, load_member
from .postprocess import apply_steps, check_steps, lone_member_steps, variant_name
from .preprocess import PreprocessSpec, prepare_slices, restore_probabilities, stack_neighbours

MANIFEST_FILE = "manifest.json"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass
class Ensemble:
    members: list[Member]
    fusion: str = "mean"
    # one per member (a number, or one per class), used by the "weighted" rule
    weights: Optional[list[MemberWeight]] = None
    tta: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    description: str = ""
    postprocess: tuple[str, ...] = ()  # steps of `postprocess.POSTPROCESS_STEPS` after fusion

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if self.fusion not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {self.fusion!r}; choose one of "
                             f"{', '.join(FUSION_RULES)}")
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        self.postprocess = check_steps(self.postprocess)
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def subset(self, names: Sequence[str]) -> "Ensemble":
        """The same ensemble restricted to some members (weights follow their members)."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"no member(s) {unknown}; this ensemble has {self.names}")
        keep = [self.names.index(n) for n in names]
        if len(keep) == 1:  # one member alone: its own argmax, whatever the rule and weights
            return replace(self, members=[self.members[keep[0]]], fusion="mean", weights=None,
                           postprocess=lone_member_steps(self.postprocess))
        return self._keeping(keep)

    def _keeping(self, keep: Sequence[int]) -> "Ensemble":
        """The same settings for the members at `keep` (weights follow their members)."""
        weights = None if self.weights is None else [self.weights[i] for i in keep]
        return replace(self, members=[self.members[i] for i in keep], weights=weights)

    def active(self, rule: Optional[str] = None) -> "Ensemble":
        """The ensemble without members that cannot change `rule`'s result (default: its own).

        Why: weighted fusion multiplies a zero-weight member's probabilities by 0, yet running it
        costs a whole network pass per slice. Only `weighted` drops members; every other rule
        (and an explicit override of the shipped one) runs them all. Members left out also take
        no part in the gate step's slice vote.
        """
        rule = rule or self.fusion
        if rule != "weighted" or self.weights is None or all(map(member_counts, self.weights)):
            return self
        keep = [i for i, w in enumerate(self.weights) if member_counts(w)]
        if not keep:
            raise ValueError(f"every member of {self.names} has weight 0")
        return replace(self._keeping(keep), fusion=rule)

    def member_probabilities(self, case: Case, progress: Optional[Progress] = None,
                             cancel: Optional[CancelToken] = None,
                             timings: Optional[dict] = None) -> tuple[torch.Tensor, list[float]]:
        """(M, C, Z, Y, X) float32 probabilities on the case grid, and seconds per member."""
        return self.volume_probabilities(torch.from_numpy(case.image), case.spacing_zyx,
                                         progress, cancel, timings)

    def volume_probabilities(self, volume: torch.Tensor, spacing_zyx,
                             progress: Optional[Progress] = None,
                             cancel: Optional[CancelToken] = None,
                             timings: Optional[dict] = None) -> tuple[torch.Tensor, list[float]]:
        """Members on a (Z, Y, X) frame or a (T, Z, Y, X) stack of cine frames.

        Returns (M, C, N, Y, X) probabilities with N = Z or T*Z slices, and seconds per member.
        `timings` accumulates the stage split: preprocess, network, restore (seconds).
        """
        timings = {} if timings is None else timings
        volume = volume.to(self.device)
        slices_per_member = int(np.prod(volume.shape[:-2]))
        total = len(self.members) * slices_per_member
        prepared: dict[PreprocessSpec, tuple] = {}
        per_member, seconds = [], []
        for index, member in enumerate(self.members):
            started = time.perf_counter()
            spec = member.spec.preprocess
            if spec not in prepared:
                prepared[spec] = prepare_slices(volume, spacing_zyx, spec)
                _add_stage(timings, "preprocess", started, self.device)
            slices, grid = prepared[spec]
            slices = stack_neighbours(slices, int(volume.shape[-3]), member.spec.context_slices)

            def report(done, _total, _label, offset=index * slices_per_member, name=member.name):
                if progress is not None:
                    progress(offset + done, total, name)

            t0 = time.perf_counter()
            probabilities = predict_slices(member.network, slices, tta=self.tta,
                                           progress=report, cancel=cancel, label=member.name)
            t1 = _add_stage(timings, "network", t0, self.device)
            per_member.append(restore_probabilities(probabilities, grid).transpose(0, 1))
            _add_stage(timings, "restore", t1, self.device)
            seconds.append(time.perf_counter() - started)
        return torch.stack(per_member), seconds

    def predict(self, case: Case, *, progress: Optional[Progress] = None,
                cancel: Optional[CancelToken] = None, keep_member_probabilities: bool = False,
                fusion: Optional[str] = None) -> Prediction:
        """Segment one frame. `fusion` overrides the ensemble's rule for this call.

        Zero-weight members are skipped under weighted fusion (`active`), so `Prediction.members`
        lists the members that ran."""
        rule = fusion or self.fusion
        active = self.active(rule)
        if active is not self:
            return active.predict(case, progress=progress, cancel=cancel, fusion=rule,
                                  keep_member_probabilities=keep_member_probabilities)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        member_probs, seconds = self.member_probabilities(case, progress, cancel, timings)
        prediction = self.fuse(case, member_probs, seconds, fusion or self.fusion,
                               keep_member_probabilities, timings)
        prediction.timings["total"] = time.perf_counter() - started
        return prediction

    def fuse(self, case: Case, member_probs: torch.Tensor, seconds: Sequence[float],
             rule: str, keep_member_probabilities: bool = False,
             timings: Optional[dict] = None,
             postprocess: Optional[Sequence[str]] = None) -> Prediction:
        """Turn member probabilities into a Prediction with one rule; evaluation calls this
        once per rule on the same member outputs instead of re-running the networks.

        `postprocess` (steps, default: the ensemble's own) cleans the fused labels only; the
        members' label maps stay as the networks produced them."""
        timings = dict(timings or {})
        timings["members"] = float(sum(seconds))
        t0 = time.perf_counter()
        result = fuse(rule, member_probs, self.weights if rule == "weighted" else None)
        member_labels = result.member_labels.cpu().numpy()
        labels = np.asarray(result.labels, dtype=np.uint8)
        timings["fusion"] = time.perf_counter() - t0
        steps = self.postprocess if postprocess is None else check_steps(postprocess)
        if steps:
            t0 = time.perf_counter()
            labels = apply_steps(labels, steps, member_labels)
            timings["postprocess"] = time.perf_counter() - t0
        members = [MemberOutput(m.name, member_labels[i], float(seconds[i]),
                                member_probs[i].cpu().numpy() if keep_member_probabilities
                                else None) for i, m in enumerate(self.members)]
        probabilities = None if result.probabilities is None else \
            result.probabilities.float().cpu().numpy()
        return Prediction(labels=labels,
                          probabilities=probabilities, members=members,
                          uncertainty=result.uncertainty.float().cpu().numpy(),
                          disagreement=result.disagreement.float().cpu().numpy(),
                          geometry=case.geometry, fusion=rule + variant_name(steps),
                          device=str(self.device),
                          timings=timings, case_name=case.name)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _add_stage(timings: dict, stage: str, started: float, device: torch.device) -> float:
    """Add the time since `started` to `timings[stage]` (after the GPU caught up); return now."""
    _synchronize(device)
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - started
    return now


def read_manifest(models_dir: Path | str = DEFAULT_MODELS_DIR) -> dict:
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST_FILE
    if not path.is_file():
        raise MemberError(f"{models_dir}: no {MANIFEST_FILE} (the list of ensemble members)")
    manifest = json.loads(path.read_text())
    if not manifest.get("members"):
        raise MemberError(f"{path}: lists no members")
    return manifest


def load_ensemble(models_dir: Path | str = DEFAULT_MODELS_DIR, *,
                  members: Optional[Sequence[str]] = None, fusion: Optional[str] = None,
                  device: str = "auto", tta: bool = False, optimize: bool = True,
                  postprocess: Optional[Sequence[str]] = None) -> Ensemble:
    """Load the ensemble a manifest describes (by default the one shipped with the package).

    Every member is verified (sha256 against the manifest and its own spec) before loading;
    `optimize` folds BatchNorm into the convolutions (`inference.optimize_for_inference`).
    """
    models_dir = Path(models_dir)
    manifest = read_manifest(models_dir)
    torch_device = pick_device(device)
    entries = manifest["members"]
    if members is not None:
        by_name = {e["name"]: e for e in entries}
        unknown = [n for n in members if n not in by_name]
        if unknown:
            raise MemberError(f"{models_dir / MANIFEST_FILE}: no member(s) named {unknown}; "
                              f"available: {sorted(by_name)}")
        entries = [by_name[n] for n in members]
    loaded = []
    for entry in entries:
        member = load_member(models_dir / entry["folder"], torch_device)
        if entry.get("sha256") and entry["sha256"] != member.spec.weights_sha256:
            raise MemberError(f"{models_dir / MANIFEST_FILE}: sha256 of member "
                              f"{entry['name']!r} differs from its folder's spec")
        if optimize:
            optimize_for_inference(member.network)
        loaded.append(member)
    weights_by_name = manifest.get("weights") or {}
    weights = [_member_weight(weights_by_name[m.name]) for m in loaded] \
        if all(m.name in weights_by_name for m in loaded) and weights_by_name else None
    rule = fusion or manifest.get("fusion", "mean")
    steps = tuple(manifest.get("postprocess") or ()) if postprocess is None else postprocess
    return Ensemble(loaded, rule, weights, tta, torch_device, manifest.get("description", ""),
                    steps)


def _member_weight(value) -> MemberWeight:
    """A manifest weight: a number, or a list of one number per class (background first)."""
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def write_manifest(models_dir: Path | str, member_folders: Sequence[Path], *, name: str,
                   version: str, fusion: str = "mean", weights: Optional[dict] = None,
                   note: str = "", description: str = "") -> Path:
    """Describe the members in `models_dir` as data (the model zoo's manifest.json).

    Each entry records the folder, sha256 and size of its weights, so a swapped file is caught
    before loading; `load_ensemble` checks them.
    """
    from .members import WEIGHTS_FILE, verify_member

    models_dir = Path(models_dir)
    entries = []
    for folder in member_folders:
        folder = Path(folder)
        spec = verify_member(folder)
        entries.append({"name": spec.name, "folder": folder.relative_to(models_dir).as_posix(),
                        "arch": spec.arch, "encoder": spec.encoder,
                        "context_slices": spec.context_slices, "version": spec.version,
                        "sha256": spec.weights_sha256,
                        "size_bytes": (folder / WEIGHTS_FILE).stat().st_size,
                        "validation": spec.metrics.get("validation_dice"),
                        "download_url": None})
    manifest = {"name": name, "version": version, "fusion": fusion, "weights": weights or {},
                "note": note, "description": description, "members": entries}
    return _write_json(models_dir / MANIFEST_FILE, manifest)


def update_manifest(models_dir: Path | str, updates: dict) -> Path:
    """Merge settings (chosen on validation) or metrics (measured on test) into manifest.json.

    Why a merge and not a rewrite: the member entries and their sha256 describe the weights and
    must not change when only the ensemble's settings or its report change. Keys that would
    touch them are refused.
    """
    if "members" in updates:
        raise ValueError("update_manifest does not change member entries; re-ship the members")
    models_dir = Path(models_dir)
    manifest = read_manifest(models_dir)
    manifest.update(updates)
    return _write_json(models_dir / MANIFEST_FILE, manifest)


def _write_json(path: Path, data: dict) -> Path:
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(data, indent=1) + "\n")
    staging.replace(path)
    return path
