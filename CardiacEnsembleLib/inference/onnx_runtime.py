"""Members run by ONNX Runtime on the CPU: exported once from the shipped weights into a cache
keyed by the member's hashes, checked against its recorded hash on every load.

Why ONNX Runtime: measured side by side with eager torch and OpenVINO on the five shipped
members (research/runtime_backends/report.md, patient101 ED, 2 CPU threads), ONNX Runtime and
OpenVINO both take 0.4-0.6x of torch's time per member with labels equal to torch's on every
pixel; ONNX Runtime loads five members in 0.33 s (import + sessions) against OpenVINO's 0.95 s,
its wheel is 28 MB (+ 9 MB for `onnx`, the exporter's) against 59 MB, and it computes in fp32 on
every CPU by default (OpenVINO picks bf16 on recent x86 and f16 on Apple silicon unless told
not to). Its CPU wheels exist for Linux, Windows and macOS arm64, the platforms Slicer ships for.

What stays torch: preprocessing and fusion (cheap, shared with the CUDA path), the CUDA path
itself, training, and the export (torch's TorchScript-based exporter needs `onnx`), which runs
once per member and weights: `segmentation_models_pytorch` is imported only then. Every later
load reads the cached `.onnx` and never imports smp or timm.

The cache (`cache_dir()`: `$CARDIAC_ENSEMBLE_CACHE_DIR`, else the platform's user cache folder)
holds `<member>-<key>.onnx` beside `<member>-<key>.json`, the record of what it was derived
from (the weights' and config's sha256, torch's version, the opset) and of the export's own
sha256. The key hashes the same things, so other weights never meet an old export; an export
whose bytes no longer match its record (truncated, edited, swapped) is refused and derived
again from the verified weights, never run.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from CardiacEnsembleLib.core.errors import MemberError
from CardiacEnsembleLib.core.manifest import CONFIG_FILE, sha256_of
from CardiacEnsembleLib.inference.members import MemberSpec, load_verified

log = logging.getLogger(__name__)

#: Bumped when the export itself changes (inputs, axes, exporter options): old entries are
#: then simply not found.
EXPORT_VERSION = 1
OPSET = 17
CACHE_ENVIRONMENT_VARIABLE = "CARDIAC_ENSEMBLE_CACHE_DIR"
#: The shape the export traces with; height, width and batch stay dynamic.
_TRACE_SHAPE = (2, 128, 128)


class BackendUnavailable(MemberError):
    """ONNX Runtime (or, for a first export, the `onnx` package) is not installed."""


def cache_dir() -> Path:
    """Where exports live: `$CARDIAC_ENSEMBLE_CACHE_DIR`, else the user cache folder
    (`%LOCALAPPDATA%`, `~/Library/Caches`, `$XDG_CACHE_HOME` or `~/.cache`)."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cardiac-ensemble"


def available() -> bool:
    """ONNX Runtime can be imported (the exporter's `onnx` is checked when an export is due)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


@dataclass(frozen=True)
class ExportRecord:
    """What a cached export was derived from, and its own hash (the `.json` beside it)."""

    member: str
    weights_sha256: str
    config_sha256: str
    torch_version: str
    opset: int
    export_version: int
    onnx_sha256: str = ""

    @property
    def key(self) -> str:
        origin = [self.member, self.weights_sha256, self.config_sha256, self.torch_version,
                  str(self.opset), str(self.export_version)]
        return hashlib.sha256("\n".join(origin).encode()).hexdigest()[:16]


class OnnxNetwork:
    """A member's network as an ONNX Runtime session, called like the torch module it replaces:
    (N, C_in, H, W) float32 tensor -> (N, classes, H, W) float32 logits tensor."""

    def __init__(self, session, path: Path):
        import onnxruntime

        self.session = session
        self.path = path
        self._input = session.get_inputs()[0].name
        # Give the arena's memory back after every run: each session otherwise keeps the
        # largest activations it ever saw, and five members (more in a worker that keeps
        # presets) held 3.1 GiB where torch needs 1.2; shrinking costs ~5% of the time
        # (research/runtime_backends/report.md).
        self._run_options = onnxruntime.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(None, {self._input: array}, self._run_options)
        return torch.from_numpy(outputs[0])


def origin_of(folder: Path, spec: MemberSpec) -> ExportRecord:
    return ExportRecord(spec.name, spec.weights_sha256, sha256_of(folder / CONFIG_FILE),
                        torch.__version__, OPSET, EXPORT_VERSION)


def load_onnx_member(folder: Path | str, spec: MemberSpec, *,
                     threads: Optional[int] = None,
                     cache: Optional[Path] = None) -> OnnxNetwork:
    """The session for a verified member folder (`members.verify_member`), exporting it into the
    cache first when no valid export of exactly these weights is there."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailable("the onnxruntime backend needs the onnxruntime package "
                                 "(pip install onnxruntime), or use --backend torch") from error
    folder = Path(folder)
    origin = origin_of(folder, spec)
    path = cached_export(folder, spec, origin, cache or cache_dir())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # no busy-waiting between runs: torch (preprocessing, fusion) needs those cores next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's
    try:
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes for a file it cannot use
        raise MemberError(f"{path}: ONNX Runtime cannot load this export of {spec.name!r}: "
                          f"{' '.join(str(error).split())[:300]}; delete it to derive it "
                          f"again") from error
    return OnnxNetwork(session, path)


def cached_export(folder: Path, spec: MemberSpec, origin: ExportRecord, cache: Path) -> Path:
    """The path of a valid export of `origin`, deriving it first if needed."""
    onnx_path = cache / f"{spec.name}-{origin.key}.onnx"
    record_path = onnx_path.with_suffix(".json")
    problem = _export_problem(onnx_path, record_path, origin)
    if problem is None:
        return onnx_path
    if onnx_path.exists() or record_path.exists():
        log.warning("%s: %s; deriving it again from %s", onnx_path, problem, folder)
    export_member(folder, spec, origin, onnx_path)
    return onnx_path


def _export_problem(onnx_path: Path, record_path: Path, origin: ExportRecord) -> Optional[str]:
    """Why the cached export cannot be used (None: it can)."""
    if not onnx_path.is_file() or not record_path.is_file():
        return "no cached export"
    try:
        recorded = ExportRecord(**json.loads(record_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, OSError) as error:
        return f"its record {record_path.name} is unreadable ({error})"
    if {**recorded.__dict__, "onnx_sha256": ""} != origin.__dict__:
        return "its record names other weights, config or exporter"
    if sha256_of(onnx_path) != recorded.onnx_sha256:
        return "its sha256 does not match its record (truncated or changed)"
    return None


def export_member(folder: Path, spec: MemberSpec, origin: ExportRecord, onnx_path: Path) -> None:
    """Export the member's verified weights to `onnx_path` and write its record; both
    atomically, the record last, so a reader sees either no entry or a whole one."""
    from CardiacEnsembleLib.io.atomic import atomic_output, write_text_atomic

    try:
        import onnx  # noqa: F401  (torch's exporter needs it; say so before building anything)
    except ImportError as error:
        raise BackendUnavailable(f"exporting member {spec.name!r} for ONNX Runtime needs the "
                                 f"onnx package (pip install onnx), or use --backend torch") \
            from error
    network = load_verified(folder, spec, "cpu").network
    example = torch.zeros(_TRACE_SHAPE[0], spec.in_channels, *_TRACE_SHAPE[1:])
    log.info("exporting member %s to ONNX (once for these weights): %s", spec.name, onnx_path)
    with atomic_output(onnx_path, overwrite=True) as temporary:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # tracer warnings about smp's shape checks
            torch.onnx.export(network, (example,), str(temporary), input_names=["slices"],
                              output_names=["logits"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"slices": {0: "batch", 2: "height", 3: "width"},
                                            "logits": {0: "batch", 2: "height", 3: "width"}})
        digest = sha256_of(temporary)
    record = {**origin.__dict__, "onnx_sha256": digest}
    write_text_atomic(onnx_path.with_suffix(".json"), json.dumps(record, indent=1) + "\n",
                      overwrite=True)
