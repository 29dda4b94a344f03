"""A member = an smp network + the preprocessing it was trained with, stored as data.

On disk a member is a folder: smp's `save_pretrained` output (`config.json`,
`model.safetensors`) plus `member.json`, our spec: architecture, encoder, classes and label
names, preprocessing, how it was trained (data, split, patients), its metrics, and the sha256
of the weights. Never a pickled Python object: a folder can be inspected, verified and loaded by
any smp version that knows the architecture.

A spec is checked when it is read, naming the file, the key and the value: the labels must be
the package's (`core.labels`: a member trained on another label order would paint the LV as
RV), and every number the preprocessing divides or tiles by must be positive (a spacing of 0
would make an empty or enormous grid only after the volume was read).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from CardiacEnsembleLib.core.errors import MemberError, OutputExistsError
from CardiacEnsembleLib.core.labels import LABEL_NAMES, NUM_CLASSES
from CardiacEnsembleLib.core.manifest import (CONFIG_FILE, SPEC_FILE,  # noqa: F401
                                              WEIGHTS_FILE, read_json, sha256_of)
from CardiacEnsembleLib.inference.preprocess import PreprocessSpec

SPEC_VERSION = 1


@dataclass
class MemberSpec:
    name: str
    arch: str  # smp architecture, e.g. "Unet", "Linknet", "FPN", "DeepLabV3Plus"
    encoder: str  # smp encoder, e.g. "resnet18"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. decoder_channels
    # Neighbouring slices on each side given as extra input channels (0 = plain 2D, 1 = 2.5D
    # with the slices below and above): through-plane context a 2D member cannot see, which
    # helps at the base and apex and makes its mistakes differ from the 2D members'.
    context_slices: int = 0
    classes: int = NUM_CLASSES
    label_names: list[str] = field(default_factory=lambda: list(LABEL_NAMES))
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    training: dict[str, Any] = field(default_factory=dict)  # data, split, patients, epochs, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # validation (and later test) scores
    weights_sha256: str = ""
    weights_dtype: str = "float32"
    version: str = "0"
    spec_version: int = SPEC_VERSION

    @property
    def in_channels(self) -> int:
        return 1 + 2 * self.context_slices

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "member spec") -> "MemberSpec":
        if not isinstance(data, dict):
            raise MemberError(f"{where}: expected a JSON object (the member spec), not "
                              f"{type(data).__name__}")
        missing = [key for key in ("name", "arch", "encoder") if key not in data]
        if missing:
            raise MemberError(f"{where}: missing field(s) {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MemberError(f"{where}: unknown field(s) {', '.join(unknown)}")
        values = dict(data)
        values["preprocess"] = _checked_preprocess(data.get("preprocess", {}), where)
        context = values.get("context_slices", 0)
        if not _is_int(context) or not 0 <= context <= 3:
            raise MemberError(f"{where}: context_slices must be an integer 0..3, not {context!r}")
        _check_labels(values, where)
        _check_model_kwargs(values.get("model_kwargs", {}), where)
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_labels(values: dict, where: str) -> None:
    """The member's classes and label names must be the package's, in the package's order."""
    classes = values.get("classes", NUM_CLASSES)
    if classes != NUM_CLASSES or not _is_int(classes):
        raise MemberError(f"{where}: classes is {classes!r}; expected {NUM_CLASSES} (the ACDC "
                          f"labels {list(LABEL_NAMES)})")
    names = values.get("label_names", list(LABEL_NAMES))
    if not isinstance(names, (list, tuple)) or list(names) != list(LABEL_NAMES):
        raise MemberError(f"{where}: label_names is {names!r}; expected {list(LABEL_NAMES)} "
                          f"(the package's labels, in label order)")


def _check_model_kwargs(kwargs: Any, where: str) -> None:
    """Channel counts must be positive integers (smp would fail late, or build nonsense)."""
    if not isinstance(kwargs, dict):
        raise MemberError(f"{where}: model_kwargs is {kwargs!r}; expected an object")
    for key, value in kwargs.items():
        if "channels" not in key:
            continue
        counts = value if isinstance(value, (list, tuple)) else [value]
        if not counts or not all(_is_int(n) and n > 0 for n in counts):
            raise MemberError(f"{where}: model_kwargs.{key} is {value!r}; expected positive "
                              f"integers")


def _checked_preprocess(data: Any, where: str) -> PreprocessSpec:
    """The spec's preprocessing, each value checked: a zero or a typo is refused here, naming
    the key, not found out as an empty map (or a failure) after the image was read."""
    if not isinstance(data, dict):
        raise MemberError(f"{where}: preprocess is {data!r}; expected an object")
    known = set(PreprocessSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise MemberError(f"{where}: unknown preprocess field(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    spacing = data.get("spacing_mm", PreprocessSpec.spacing_mm)
    if spacing is not None and not (_is_number(spacing) and spacing > 0):
        raise MemberError(f"{where}: preprocess.spacing_mm is {spacing!r}; expected a positive "
                          f"number of mm (or null to keep the image's own spacing)")
    clip = data.get("clip_percentiles", PreprocessSpec.clip_percentiles)
    if not (isinstance(clip, (list, tuple)) and len(clip) == 2 and all(map(_is_number, clip))
            and 0 <= clip[0] < clip[1] <= 100):
        raise MemberError(f"{where}: preprocess.clip_percentiles is {clip!r}; expected two "
                          f"percentiles [low, high] with 0 <= low < high <= 100")
    multiple = data.get("size_multiple", PreprocessSpec.size_multiple)
    if not (_is_int(multiple) and multiple > 0):
        raise MemberError(f"{where}: preprocess.size_multiple is {multiple!r}; expected a "
                          f"positive integer (the network input's sides are multiples of it)")
    return PreprocessSpec.from_dict(data)


def create_network(spec: MemberSpec) -> torch.nn.Module:
    """A fresh, untrained network for a spec (no downloads: encoder_weights=None)."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(spec.arch, encoder_name=spec.encoder, encoder_weights=None,
                                in_channels=spec.in_channels, classes=spec.classes,
                                **spec.model_kwargs)
    except (KeyError, ValueError, TypeError) as error:
        raise MemberError(f"member {spec.name!r}: smp cannot build arch={spec.arch!r} "
                          f"encoder={spec.encoder!r} {spec.model_kwargs}: {error}") from error


@dataclass
class Member:
    spec: MemberSpec
    network: torch.nn.Module  # or an `onnx_runtime.OnnxNetwork`: called the same way
    folder: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def save_member(network: torch.nn.Module, spec: MemberSpec, folder: Path | str, *,
                half: bool = False, overwrite: bool = False) -> Member:
    """Write a member folder; `half` stores fp16 weights (half the size, same predictions to
    within fp16 rounding). Refuses to replace an existing member unless `overwrite`."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(f"{folder}: already holds files; refusing to overwrite a member "
                              f"(pass overwrite=True)")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    to_save = network
    if half:
        import copy
        to_save = copy.deepcopy(network).half()
    to_save.save_pretrained(str(staging))
    (staging / "README.md").unlink(missing_ok=True)  # hub model card; our spec replaces it
    spec.weights_sha256 = sha256_of(staging / WEIGHTS_FILE)
    spec.weights_dtype = "float16" if half else "float32"
    (staging / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return Member(spec, network, folder)


def read_spec(folder: Path | str) -> MemberSpec:
    folder = Path(folder)
    path = folder / SPEC_FILE
    if not path.is_file():
        raise MemberError(f"{folder}: not a member folder (no {SPEC_FILE})")
    return MemberSpec.from_dict(read_json(path), where=str(path))


def verify_member(folder: Path | str) -> MemberSpec:
    """Check a member folder without loading the network: files present, sha256, config.

    Why before loading: a swapped or truncated weights file must never produce a segmentation.
    """
    folder = Path(folder)
    spec = read_spec(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise MemberError(f"{folder}: missing {name}")
    actual = sha256_of(folder / WEIGHTS_FILE)
    if actual != spec.weights_sha256:
        raise MemberError(f"{folder / WEIGHTS_FILE}: sha256 {actual[:12]}... does not match "
                          f"{SPEC_FILE} ({spec.weights_sha256[:12] or 'empty'}...): the weights "
                          f"are not the ones this spec describes")
    config = read_json(folder / CONFIG_FILE)
    if not isinstance(config, dict):
        raise MemberError(f"{folder / CONFIG_FILE}: not a JSON object ({type(config).__name__}); "
                          f"expected the network's settings")
    expected = {"_model_class": spec.arch, "encoder_name": spec.encoder, "classes": spec.classes,
                "in_channels": spec.in_channels}
    wrong = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: config {a!r} vs spec {b!r}" for k, (a, b) in wrong.items())
        raise MemberError(f"{folder / CONFIG_FILE}: does not match {SPEC_FILE} ({details})")
    return spec


def load_member(folder: Path | str, device: str | torch.device = "cpu") -> Member:
    """Verify, then load a member for inference (eval mode, float32 weights on `device`)."""
    folder = Path(folder)
    return load_verified(folder, verify_member(folder), device)


def load_verified(folder: Path | str, spec: MemberSpec,
                  device: str | torch.device = "cpu") -> Member:
    """Load the network of a member folder that `verify_member` accepted with `spec`; for a
    caller that verifies every member before loading any (`load_ensemble`)."""
    import segmentation_models_pytorch as smp

    folder = Path(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints a banner
            network = smp.from_pretrained(str(folder))
    except RuntimeError as error:  # state-dict keys or shapes disagree with config.json
        raise MemberError(f"{folder / WEIGHTS_FILE}: weights do not fit the network in "
                          f"{CONFIG_FILE}: {' '.join(str(error).split())[:600]}") from error
    network = network.float().eval().to(device)
    return Member(spec, network, folder)
