"""Members + a fusion rule + weights: `Ensemble.predict(case) -> Prediction`.

The main job is written here once: `Ensemble.volume_probabilities` runs the members on a frame
or a cine stack (`runner.network_probabilities`, then `restore_timed`; optionally on the heart's
box only, `heart_region`), and `fuse_and_clean` fuses their probabilities and
applies the clean-up. `predict`, cine, evaluation, selection and batch all go through them.

Members whose preprocessing specs agree share one preprocessing pass; every member's
probabilities go back to the case's own grid on the device, and fusion runs there too, so the
only host copies are the final label maps.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from CardiacEnsembleLib.core.case import Case, MemberOutput, Prediction
from CardiacEnsembleLib.core.errors import MemberError
from CardiacEnsembleLib.core.manifest import (DEFAULT_MODELS_DIR, MANIFEST_FILE,  # noqa: F401
                                              Manifest, PresetEntry, WeightTable,
                                              check_member_files, read_manifest)
from CardiacEnsembleLib.core.options import Backend, FusionRule, Method, Preset
from CardiacEnsembleLib.core.progress import CancelToken, Progress
from CardiacEnsembleLib.inference.fusion import FusionResult, fuse
from CardiacEnsembleLib.inference import onnx_runtime
from CardiacEnsembleLib.inference.heart_region import HeartRegion, locate_heart
from CardiacEnsembleLib.inference.members import (Member, MemberSpec, load_member,  # noqa: F401
                                                  load_verified, verify_member)
from CardiacEnsembleLib.inference.onnx_runtime import OnnxNetwork
from CardiacEnsembleLib.inference.postprocess import apply_steps, check_steps, lone_member_steps
from CardiacEnsembleLib.inference.preprocess import PreprocessSpec, check_volume, prepare_slices
from CardiacEnsembleLib.inference.runner import (DeviceError, add_stage,
                                                 network_probabilities, optimize_for_inference,
                                                 pick_device, restore_timed)
from CardiacEnsembleLib.inference.sanity import check_intensities, prediction_warnings

log = logging.getLogger(__name__)


def fuse_and_clean(rule: str, member_probs: torch.Tensor, weights: Optional[WeightTable] = None,
                   steps: Sequence[str] = (), volumes: int = 1,
                   timings: Optional[dict] = None) -> FusionResult:
    """Fuse (M, C, N, Y, X) member probabilities with `rule`, then clean the fused labels with
    `steps`, volume by volume (N = `volumes` x Z slices: one frame, or a cine chunk).

    `weights` are used by the "weighted" rule only. The members' own label maps and the
    uncertainty maps stay as fusion made them; only `labels` is cleaned. `timings`
    accumulates the seconds of the two parts ("fusion", "postprocess").
    """
    timings = {} if timings is None else timings
    started = time.perf_counter()
    result = fuse(rule, member_probs, weights if rule == FusionRule.WEIGHTED else None)
    cleaning = time.perf_counter()
    timings["fusion"] = timings.get("fusion", 0.0) + cleaning - started
    steps = check_steps(steps)
    if steps:
        shape = result.labels.shape
        labels = np.asarray(result.labels, dtype=np.uint8).reshape(volumes, -1, *shape[-2:])
        member_labels = result.member_labels.cpu().numpy().reshape(
            member_probs.shape[0], volumes, -1, *shape[-2:])
        for t in range(volumes):
            labels[t] = apply_steps(labels[t], steps, member_labels[:, t])
        result.labels = labels.reshape(shape)
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - cleaning
    return result


@dataclass
class Ensemble:
    members: list[Member]
    fusion: str = "mean"
    weights: Optional[WeightTable] = None  # rows follow `members`; the "weighted" rule's

    tta: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    description: str = ""
    postprocess: tuple[str, ...] = ()  # steps of `postprocess.POSTPROCESS_STEPS` after fusion
    max_memory_gb: Optional[float] = None  # None: `core.limits`' default or its variable
    # heart-region inference (`heart_region`): None runs every member on the full grid; a margin
    # in network-grid pixels runs the others on the box the locator found (the member named:
    # `load_ensemble` names the best-validated one; None or a member left out: the first)
    heart_margin: Optional[int] = None
    heart_locator: Optional[str] = None
    # a network that only locates the heart, outside `members` (no vote): a cheap member
    # finding the box lets even the best member run on the box alone (the fast preset)
    locator: Optional[Member] = None
    preset: Optional[str] = None  # the manifest preset it was loaded as, if any
    # the manifest's validated QC thresholds per score (`core.quality`); empty: flag nothing
    quality_control: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        self.fusion = FusionRule.parse(self.fusion, "fusion rule").value
        self.postprocess = check_steps(self.postprocess)
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if self.weights is not None and list(self.weights.names) != names:
            raise ValueError(f"weights for members {list(self.weights.names)}, but the "
                             f"ensemble's members are {names}")
        if self.heart_margin is not None and self.heart_margin < 0:
            raise ValueError(f"heart margin must be >= 0 pixels, got {self.heart_margin}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def method(self) -> Method:
        """What `predict` produces with this ensemble's own settings."""
        return Method.ensemble(self.fusion, self.postprocess)

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
        members = [self.members[i] for i in keep]
        weights = None if self.weights is None else self.weights.subset([m.name for m in members])
        return replace(self, members=members, weights=weights)

    def active(self, rule: Optional[str] = None) -> "Ensemble":
        """The ensemble without members that cannot change `rule`'s result (default: its own).

        Why: weighted fusion multiplies a zero-weight member's probabilities by 0, yet running it
        costs a whole network pass per slice. Only `weighted` drops members; every other rule
        (and an explicit override of the shipped one) runs them all. Members left out also take
        no part in the gate step's slice vote.
        """
        rule = rule or self.fusion
        if rule != FusionRule.WEIGHTED or self.weights is None or \
                all(map(self.weights.counts, self.names)):
            return self
        keep = [i for i, name in enumerate(self.names) if self.weights.counts(name)]
        if not keep:
            raise ValueError(f"every member of {self.names} has weight 0")
        return replace(self._keeping(keep), fusion=rule)

    def member_probabilities(self, case: Case, progress: Optional[Progress] = None,
                             cancel: Optional[CancelToken] = None,
                             timings: Optional[dict] = None,
                             regions: Optional[list] = None) -> tuple[torch.Tensor, list[float]]:
        """(M, C, Z, Y, X) float32 probabilities on the case grid, and seconds per member."""
        return self.volume_probabilities(torch.from_numpy(case.image), case.spacing_zyx,
                                         progress, cancel, timings, regions)

    @property
    def backend(self) -> str:
        """What runs the networks, read off the members (and locator) themselves, so a subset
        says what it runs: "onnxruntime", "torch", or both joined by "+" when a member fell back
        to torch under AUTO after others had their export."""
        kinds = [Backend.ONNXRUNTIME.value if isinstance(member.network, OnnxNetwork) else
                 Backend.TORCH.value for member in [*self.members, self.locator]
                 if member is not None]
        return "+".join(dict.fromkeys(kinds))

    @property
    def settings_line(self) -> str:
        """What runs, in one line (preset, members, rule and clean-up, device and backend, TTA,
        heart region), so a log or a report says what made its numbers."""
        steps = f" + {'+'.join(self.postprocess)}" if self.postprocess else ""
        region = "" if self.heart_margin is None else \
            f" | heart region: {self.locator_name}" \
            f"{' (locates only)' if self.locator is not None else ''} + {self.heart_margin} px"
        preset = f"preset {self.preset} | " if self.preset else ""
        return (f"{preset}{', '.join(self.names)} | fusion {self.fusion}{steps} | "
                f"device {self.device} ({self.backend}){' | flip TTA' if self.tta else ''}"
                f"{region}")

    @property
    def locator_name(self) -> str:
        """The network that locates the heart under `heart_margin`."""
        return self.locator.name if self.locator is not None else \
            self.names[self.locator_index]

    @property
    def locator_index(self) -> int:
        """The member that runs on the full grid first and locates the heart for the others:
        `heart_locator`, or the first member (also when a `subset` left the named one out)."""
        if self.heart_locator in self.names:
            return self.names.index(self.heart_locator)
        return 0

    def volume_probabilities(self, volume: torch.Tensor, spacing_zyx,
                             progress: Optional[Progress] = None,
                             cancel: Optional[CancelToken] = None,
                             timings: Optional[dict] = None,
                             regions: Optional[list] = None) -> tuple[torch.Tensor, list[float]]:
        """Members on a (Z, Y, X) frame or a (T, Z, Y, X) stack of cine frames.

        Returns (M, C, N, Y, X) probabilities with N = Z or T*Z slices, and seconds per member.
        `timings` accumulates the stage split: preprocess, network, restore (seconds).
        With `heart_margin`, the locator runs first on the full grid and the members that share
        its preprocessing run on the heart's box; `regions` (a list) receives the `HeartRegion`.
        """
        timings = {} if timings is None else timings
        volume = volume.to(self.device)
        slices_per_member = int(np.prod(volume.shape[:-2]))
        order: list[Optional[int]] = list(range(len(self.members)))
        if self.heart_margin is not None:
            order.insert(0, None if self.locator is not None else order.pop(self.locator_index))
        total = len(order) * slices_per_member
        prepared: dict[PreprocessSpec, tuple] = {}
        region: Optional[HeartRegion] = None
        stacked: Optional[torch.Tensor] = None  # (M, C, N, Y, X), filled member by member
        seconds = {}
        for done_members, index in enumerate(order):
            member = self.locator if index is None else self.members[index]
            started = time.perf_counter()
            spec = member.spec.preprocess
            if spec not in prepared:
                prepared[spec] = prepare_slices(volume, spacing_zyx, spec,
                                                max_memory_gb=self.max_memory_gb)
                add_stage(timings, "preprocess", started, self.device)
            slices, grid = prepared[spec]

            def report(done, _total, _label, offset=done_members * slices_per_member,
                       name=member.name):
                if progress is not None:
                    progress(offset + done, total, name)

            locator = self.locator if order[0] is None else self.members[order[0]]
            box = region.box if region is not None and \
                spec == locator.spec.preprocess else None
            probabilities = network_probabilities(
                member.network, slices, int(volume.shape[-3]), member.spec.context_slices,
                tta=self.tta and index is not None, progress=report, cancel=cancel,
                label=member.name, timings=timings, box=box)
            if self.heart_margin is not None and region is None:
                region = locate_heart(probabilities, self.heart_margin, spec.size_multiple)
                if not region.found:
                    log.info("%s", region.reason)
                if regions is not None:
                    regions.append(region)
            if index is None:  # the locator alone: its box is all it gives
                timings["locate"] = timings.get("locate", 0.0) + time.perf_counter() - started
                continue
            restored = restore_timed(probabilities, grid, timings).transpose(0, 1)
            del probabilities
            if stacked is None:  # written in place: torch.stack would hold every member twice
                stacked = restored.new_empty((len(self.members), *restored.shape))
            stacked[index] = restored
            del restored
            seconds[index] = time.perf_counter() - started
        return stacked, [seconds[i] for i in range(len(self.members))]

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
        self.check_input(case)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        regions: list[HeartRegion] = []
        member_probs, seconds = self.member_probabilities(case, progress, cancel, timings,
                                                          regions)
        prediction = self.fuse(case, member_probs, seconds, fusion or self.fusion,
                               keep_member_probabilities, timings)
        prediction.timings["total"] = time.perf_counter() - started
        if regions:
            prediction.heart_region = regions[0].describe()
        return prediction

    def check_input(self, case: Case) -> None:
        """Refuse, naming the case's file, what no network should see: an implausible spacing,
        a resampled volume over the memory limit, an image without finite contrast."""
        where = case.source or case.name
        for spec in {member.spec.preprocess for member in self.members}:
            check_volume(case.image.shape, case.spacing_zyx, spec, where, self.max_memory_gb)
        check_intensities(case.image, where)

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
        steps = self.postprocess if postprocess is None else check_steps(postprocess)
        result = fuse_and_clean(rule, member_probs, self.weights, steps, timings=timings)
        member_labels = result.member_labels.cpu().numpy()
        labels = np.asarray(result.labels, dtype=np.uint8)
        members = [MemberOutput(m.name, member_labels[i], float(seconds[i]),
                                member_probs[i].cpu().numpy() if keep_member_probabilities
                                else None) for i, m in enumerate(self.members)]
        probabilities = None if result.probabilities is None else \
            result.probabilities.float().cpu().numpy()
        return Prediction(labels=labels,
                          probabilities=probabilities, members=members,
                          uncertainty=result.uncertainty.float().cpu().numpy(),
                          disagreement=result.disagreement.float().cpu().numpy(),
                          geometry=case.geometry,
                          fusion=rule + Method.ensemble(rule, steps).suffix,
                          device=str(self.device),
                          timings=timings, case_name=case.name,
                          warnings=prediction_warnings(case, labels))


def load_ensemble(models_dir: Path | str = DEFAULT_MODELS_DIR, *,
                  members: Optional[Sequence[str]] = None, fusion: Optional[str] = None,
                  device: str = "auto", tta: Optional[bool] = None, optimize: bool = True,
                  postprocess: Optional[Sequence[str]] = None,
                  heart_margin: Optional[int] = None,
                  heart_locator: Optional[str] = None,
                  backend: str = Backend.AUTO, preset: Optional[str] = None) -> Ensemble:
    """Load the ensemble a manifest describes (by default the one shipped with the package).

    Everything is checked before the first network is built, so a bad models folder costs
    nothing: the manifest (`read_manifest`: entries, hashes, rule, steps, weights), the rule
    and weights for the members asked for, and every member's files (its spec, its weights
    against the spec, both against the manifest, its config). `optimize` folds BatchNorm into
    the convolutions (`inference.optimize_for_inference`) of torch members.

    `backend` (`core.options.Backend`): "auto" runs the members with ONNX Runtime on the CPU
    when it is installed (`inference.onnx_runtime`: same labels, about half the time) and with
    torch on CUDA or where it is not; "onnxruntime" insists (CPU only), "torch" is the
    reference.

    `preset` (`core.options.Preset`; default: the manifest's `default_preset`) names one of the
    manifest's presets: its members, rule, clean-up, heart region and TTA, each replaced by an
    option given here. A manifest without presets runs every member on the full grid.
    """
    manifest = read_manifest(models_dir)
    settings = resolve_settings(manifest, preset, members=members, fusion=fusion,
                                postprocess=postprocess, tta=tta, heart_margin=heart_margin,
                                heart_locator=heart_locator)
    members, fusion, postprocess = settings.members, settings.fusion, settings.postprocess
    tta, heart_margin, heart_locator = settings.tta, settings.heart_margin, settings.heart_locator
    entries = _chosen_entries(manifest, members)
    outside = heart_locator is not None and heart_margin is not None and \
        heart_locator in manifest.names and heart_locator not in [e.name for e in entries]
    locator_entry = manifest.member(heart_locator) if outside else None
    if heart_locator is not None and heart_locator not in [e.name for e in entries] and \
            locator_entry is None:
        raise MemberError(f"{manifest.path}: heart locator {heart_locator!r} is not one of the "
                          f"members that run ({', '.join(e.name for e in entries)}), nor a "
                          f"member of the manifest to locate with ({', '.join(manifest.names)})")
    rule = FusionRule.parse(fusion or manifest.fusion.value, "fusion rule").value
    steps = check_steps(manifest.postprocess if postprocess is None else postprocess)
    weights = _chosen_weights(manifest, [e.name for e in entries], rule)
    specs = [_verified_spec(manifest, entry) for entry in entries]
    locator_spec = None if locator_entry is None else _verified_spec(manifest, locator_entry)
    torch_device = pick_device(device)
    chosen = _chosen_backend(Backend.parse(backend, "backend"), torch_device)
    loaded = []
    for entry, spec in zip(entries, specs):
        folder = manifest.models_dir / entry.folder
        member = _loaded_member(folder, spec, torch_device, chosen, optimize)
        if chosen == Backend.AUTO and not isinstance(member.network, OnnxNetwork):
            chosen = Backend.TORCH  # its cause (no onnx, no cache folder) holds for the rest
        loaded.append(member)
    locator = None if locator_entry is None else _loaded_member(
        manifest.models_dir / locator_entry.folder, locator_spec, torch_device, chosen, optimize)
    return Ensemble(loaded, rule, weights, bool(tta), torch_device, manifest.description, steps,
                    heart_margin=heart_margin,
                    heart_locator=heart_locator or best_validated(entries),
                    locator=locator, preset=settings.preset,
                    quality_control=dict(manifest.quality_control))


@dataclass(frozen=True)
class EnsembleSettings:
    """What runs, once a preset and the options given beside it are combined (None: the
    manifest's own member list, rule or clean-up; no heart margin: the full grid)."""

    members: Optional[tuple[str, ...]] = None
    fusion: Optional[str] = None
    postprocess: Optional[tuple[str, ...]] = None
    tta: bool = False
    heart_margin: Optional[int] = None
    heart_locator: Optional[str] = None
    preset: Optional[str] = None


def resolve_settings(manifest: Manifest, preset: Optional[str] = None, *,
                     members: Optional[Sequence[str]] = None, fusion: Optional[str] = None,
                     postprocess: Optional[Sequence[str]] = None, tta: Optional[bool] = None,
                     heart_margin: Optional[int] = None,
                     heart_locator: Optional[str] = None) -> EnsembleSettings:
    """The preset (default: the manifest's `default_preset`), each setting replaced by the
    option given; `load_ensemble` and the Slicer worker decide with this one function."""
    entry = _chosen_preset(manifest, preset)
    if entry is not None:
        members = entry.members if members is None else members
        fusion = fusion or entry.fusion
        postprocess = entry.postprocess if postprocess is None else postprocess
        tta = entry.tta if tta is None else tta
        heart_margin = entry.heart_margin if heart_margin is None else heart_margin
        if heart_locator is None and (members is None or entry.members is None
                                      or tuple(members) == entry.members):
            heart_locator = entry.heart_locator  # the preset's, unless its members changed
    return EnsembleSettings(None if members is None else tuple(members), fusion,
                            None if postprocess is None else tuple(postprocess), bool(tta),
                            heart_margin, heart_locator,
                            entry.name if entry is not None else None)


def _chosen_preset(manifest: Manifest, preset: Optional[str]) -> Optional[PresetEntry]:
    """The manifest's preset named (None: its default, which may be none)."""
    if preset is None:
        preset = manifest.default_preset
        if preset is None:
            return None
    try:
        name = Preset.parse(preset, "preset").value
    except ValueError as error:
        raise MemberError(f"{manifest.path}: {error}") from None
    if name == Preset.FULL and name not in manifest.presets:
        return None  # every member on the full grid: what a manifest without presets runs
    if name not in manifest.presets:
        raise MemberError(f"{manifest.path}: defines no preset {name!r} (its presets: "
                          f"{', '.join(manifest.presets) or 'none'})")
    return manifest.presets[name]


def _chosen_backend(backend: Backend, device: torch.device) -> Backend:
    """AUTO -> ONNX Runtime on the CPU where it is installed (AUTO is kept: a failed export
    may still fall back), torch on CUDA; ONNX Runtime on CUDA is refused."""
    if backend == Backend.ONNXRUNTIME and device.type != "cpu":
        raise DeviceError(f"the onnxruntime backend runs on the CPU only, not {device}; use "
                          f"--device cpu, or --backend torch for the GPU")
    if backend == Backend.AUTO and (device.type != "cpu" or not onnx_runtime.available()):
        return Backend.TORCH
    return backend


def _loaded_member(folder: Path, spec: MemberSpec, device: torch.device, backend: Backend,
                   optimize: bool) -> Member:
    """One verified member, run by `backend`; under AUTO an export that cannot be made (no
    `onnx`, an unwritable cache folder) falls back to torch and says why in the log."""
    if backend != Backend.TORCH:
        try:
            return Member(spec, onnx_runtime.load_onnx_member(folder, spec), folder)
        except (onnx_runtime.BackendUnavailable, OSError) as error:
            if backend == Backend.ONNXRUNTIME:
                if isinstance(error, OSError):
                    raise MemberError(f"{onnx_runtime.cache_dir()}: cannot cache the ONNX "
                                      f"export of {spec.name!r} ({error}); set "
                                      f"{onnx_runtime.CACHE_ENVIRONMENT_VARIABLE} to a "
                                      f"writable folder, or use --backend torch") from error
                raise
            log.warning("running %s with torch: %s", spec.name, error)
    member = load_verified(folder, spec, device)
    if optimize:
        optimize_for_inference(member.network)
    return member


def _chosen_entries(manifest: Manifest, members: Optional[Sequence[str]]) -> list:
    if members is None:
        return list(manifest.members)
    unknown = [n for n in members if n not in manifest.names]
    if unknown:
        raise MemberError(f"{manifest.path}: no member(s) named {unknown}; "
                          f"available: {sorted(manifest.names)}")
    return [manifest.member(n) for n in members]


def best_validated(entries: Sequence) -> str:
    """The member with the best validation Dice the manifest records (the first if none does):
    the heart locator unless one is named, since its full-grid result is also the most reliable
    box."""
    scored = [entry for entry in entries if entry.validation_dice is not None]
    return max(scored, key=lambda entry: entry.validation_dice).name if scored else \
        entries[0].name


def _chosen_weights(manifest: Manifest, names: Sequence[str],
                    rule: str) -> Optional[WeightTable]:
    """The weight rows of the chosen members; the weighted rule needs them, usable."""
    weights = manifest.weights_for(names)
    if rule == FusionRule.WEIGHTED:
        if weights is None:
            raise MemberError(f"{manifest.path}: fusion rule 'weighted' needs fusion weights, "
                              f"and the manifest gives none; choose another --fusion")
        weights.check_usable(str(manifest.path))
    return weights


def _verified_spec(manifest: Manifest, entry) -> "MemberSpec":
    """A member's spec once its files are the ones the manifest names (no network loaded).

    The member's own check comes first (weights against its spec), then the manifest's: a
    consistent folder from another training run differs in its weights' sha256, an edited spec
    (preprocessing, labels) in the spec's, an edited config in the config's.
    """
    spec = verify_member(manifest.models_dir / entry.folder)
    if entry.sha256 != spec.weights_sha256:
        raise MemberError(f"{manifest.path}: sha256 of member "
                          f"{entry.name!r} differs from its folder's spec")
    check_member_files(manifest, entry, ("spec_sha256", "config_sha256"))
    return spec
