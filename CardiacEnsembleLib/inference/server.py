"""The inference worker process, and the file protocol it speaks with its client.

Run as `python -m CardiacEnsembleLib.inference.server` (in Slicer: `PythonSlicer -m ...`) by
`CardiacEnsembleLib.slicer.worker`. Why a process: inside Slicer, PythonQt keeps the GIL on
the main thread, so a Python thread there is starved; a process runs at full speed, can be
killed (Cancel), can crash without the user's scene, and frees GPU memory when it ends.

The protocol, all of it here (no Qt, no MRML; torch only inside the worker):
- a request is a folder: `image.npy` (float32 (Z, Y, X)) and `request.json` (the affine, the
  case's name, and which ensemble: models folder, members, fusion, tta, device); the client
  names the folder on one stdin line `{"request": folder}`. A *cine* request (`"kind":
  "cine"` in `request.json`) holds `cine.npy` (float32 (T, Z, Y, X)) instead, and every frame
  is segmented in one go (`inference.cine.segment_cine`);
- the worker answers with JSON lines on its stdout: `ready`, `loading`, `progress` (done,
  total, message), then `done` (the result folder) or `error` (kind, message);
- a result is `result.npz` (labels, uncertainty, disagreement, probabilities, member labels)
  beside `result.json` (fusion, device, timings, members' names and seconds, and what the
  worker reused); a cine's result is `cine_result.npz` (labels (T, Z, Y, X) and the LV, RV, Myo
  volumes per frame) beside `result.json` (seconds, timings, what the worker reused). Only
  these lines go to stdout; everything else the process prints goes to
  stderr (the client's log file), so a library's print cannot break the protocol.
The worker keeps the last loaded ensemble, so a second request does not pay the load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

import numpy as np

from CardiacEnsembleLib.core.case import Case, Geometry, MemberOutput, Prediction

MODULE = "CardiacEnsembleLib.inference.server"
IMAGE_FILE, REQUEST_FILE = "image.npy", "request.json"
RESULT_ARRAYS, RESULT_FILE = "result.npz", "result.json"
CINE_FILE, CINE_RESULT_ARRAYS = "cine.npy", "cine_result.npz"
#: Request kinds: one 3D frame (a `Case` -> a `Prediction`), or every frame of a cine.
FRAME, CINE = "frame", "cine"
#: Error kinds: "input" is the user's to fix (a ValueError or OSError: unknown member,
#: missing models folder, bad device); "internal" is a failure of the worker.
INPUT, INTERNAL = "input", "internal"


@dataclass(frozen=True)
class EnsembleRequest:
    """Which ensemble runs: what a client asks for, and the key of the worker's loaded one
    (models folder, tta and device; members and fusion are chosen from it without a load)."""

    models_dir: str
    members: Optional[tuple[str, ...]] = None  # None: all of the manifest's members
    fusion: Optional[str] = None  # None: the manifest's rule
    tta: bool = False
    device: str = "auto"
    heart_margin: Optional[int] = None  # None: the preset's (`heart_region`)
    heart_locator: Optional[str] = None  # None: the preset's, else the best-validated member
    preset: Optional[str] = None  # None: the manifest's default preset (`core.options.Preset`)

    @property
    def load_key(self) -> tuple:
        return (str(Path(self.models_dir).resolve()), bool(self.tta), self.device)

    def to_json(self) -> dict:
        return {"models_dir": self.models_dir, "tta": self.tta, "device": self.device,
                "members": None if self.members is None else list(self.members),
                "fusion": self.fusion, "heart_margin": self.heart_margin,
                "heart_locator": self.heart_locator, "preset": self.preset}

    @classmethod
    def from_json(cls, data: dict) -> "EnsembleRequest":
        members = data.get("members")
        margin = data.get("heart_margin")
        return cls(str(data["models_dir"]), None if members is None else tuple(members),
                   data.get("fusion"), bool(data.get("tta", False)), str(data["device"]),
                   None if margin is None else int(margin), data.get("heart_locator"),
                   data.get("preset"))


# --- the files: written and read by both sides --------------------------------------------

def write_request(folder: Path, case: Case, ensemble: EnsembleRequest) -> Path:
    """A request folder for `case` (the client's side)."""
    folder.mkdir(parents=True, exist_ok=False)
    np.save(folder / IMAGE_FILE, case.image)
    meta = {"case": {"patient_id": str(case.patient_id), "phase": str(case.phase),
                     "frame": None if case.frame is None else int(case.frame),
                     "source": str(case.source), "affine": case.geometry.affine.tolist()},
            "ensemble": ensemble.to_json()}
    (folder / REQUEST_FILE).write_text(json.dumps(meta))
    return folder


def read_request(folder: Path) -> tuple[Case, EnsembleRequest]:
    meta = json.loads((folder / REQUEST_FILE).read_text())
    info = meta["case"]
    case = Case(np.load(folder / IMAGE_FILE), Geometry(np.asarray(info["affine"])),
                patient_id=info["patient_id"], phase=info["phase"], frame=info["frame"],
                source=info["source"])
    return case, EnsembleRequest.from_json(meta["ensemble"])


def request_kind(folder: Path) -> str:
    return json.loads((folder / REQUEST_FILE).read_text()).get("kind", FRAME)


def write_cine_request(folder: Path, cine: np.ndarray, geometry: Geometry, name: str,
                       ensemble: EnsembleRequest) -> Path:
    """A request folder for every frame of a (T, Z, Y, X) cine on `geometry` (one frame's)."""
    if cine.ndim != 4:
        raise ValueError(f"{name}: expected a (T, Z, Y, X) cine, got shape {cine.shape}")
    folder.mkdir(parents=True, exist_ok=False)
    np.save(folder / CINE_FILE, np.ascontiguousarray(cine, dtype=np.float32))
    meta = {"kind": CINE, "cine": {"name": str(name), "affine": geometry.affine.tolist()},
            "ensemble": ensemble.to_json()}
    (folder / REQUEST_FILE).write_text(json.dumps(meta))
    return folder


def read_cine_request(folder: Path) -> tuple[np.ndarray, Geometry, str, EnsembleRequest]:
    meta = json.loads((folder / REQUEST_FILE).read_text())
    info = meta["cine"]
    return (np.load(folder / CINE_FILE), Geometry(np.asarray(info["affine"])), info["name"],
            EnsembleRequest.from_json(meta["ensemble"]))


def write_cine_result(folder: Path, result, worker: dict) -> Path:
    """A `CineSegmentation` beside its request (the worker's side)."""
    quality = {} if result.quality is None else {"quality": result.quality}
    np.savez(folder / CINE_RESULT_ARRAYS, labels=result.labels, **quality,
             **{f"volume_{name}": values for name, values in result.volumes_ml.items()})
    meta = {"kind": CINE, "seconds": result.seconds, "timings": result.timings,
            "quality_score": result.quality_score, "worker": worker}
    (folder / RESULT_FILE).write_text(json.dumps(meta))
    return folder


def read_cine_result(folder: Path, geometry: Geometry):
    """The `CineSegmentation` a worker wrote (on `geometry`, the request's), and its info."""
    from CardiacEnsembleLib.inference.cine import CineSegmentation  # no torch on this path

    meta = json.loads((folder / RESULT_FILE).read_text())
    with np.load(folder / CINE_RESULT_ARRAYS) as arrays:
        labels = arrays["labels"]
        quality = arrays["quality"] if "quality" in arrays.files else None
        volumes = {key[len("volume_"):]: arrays[key] for key in arrays.files
                   if key.startswith("volume_")}
    result = CineSegmentation(labels, geometry, volumes, float(meta["seconds"]),
                              {k: float(v) for k, v in meta["timings"].items()}, quality,
                              meta.get("quality_score", ""))
    return result, meta["worker"]


def write_result(folder: Path, prediction: Prediction, worker: dict) -> Path:
    """The prediction beside its request (the worker's side); `worker` says what it reused."""
    arrays = {"labels": prediction.labels, "uncertainty": prediction.uncertainty,
              "disagreement": prediction.disagreement,
              "member_labels": np.stack([m.labels for m in prediction.members])}
    if prediction.probabilities is not None:
        arrays["probabilities"] = prediction.probabilities
    np.savez(folder / RESULT_ARRAYS, **arrays)
    meta = {"fusion": prediction.fusion, "device": prediction.device,
            "timings": prediction.timings, "case_name": prediction.case_name,
            "members": [{"name": m.name, "seconds": m.seconds} for m in prediction.members],
            "warnings": list(prediction.warnings), "heart_region": prediction.heart_region,
            "worker": worker}
    (folder / RESULT_FILE).write_text(json.dumps(meta))
    return folder


def read_result(folder: Path, geometry: Geometry) -> tuple[Prediction, dict]:
    """The `Prediction` a worker wrote (on `geometry`, the request's), and its `worker` info."""
    meta = json.loads((folder / RESULT_FILE).read_text())
    with np.load(folder / RESULT_ARRAYS) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    members = [MemberOutput(m["name"], data["member_labels"][i], float(m["seconds"]))
               for i, m in enumerate(meta["members"])]
    prediction = Prediction(labels=data["labels"], probabilities=data.get("probabilities"),
                            members=members, uncertainty=data["uncertainty"],
                            disagreement=data["disagreement"], geometry=geometry,
                            fusion=meta["fusion"], device=meta["device"],
                            timings={k: float(v) for k, v in meta["timings"].items()},
                            case_name=meta["case_name"],
                            warnings=tuple(meta.get("warnings", ())),
                            heart_region=meta.get("heart_region", ""))
    return prediction, meta["worker"]


# --- the worker process -------------------------------------------------------------------

class Server:
    """Answers requests one at a time, keeping the last loaded ensemble."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._key: Optional[tuple] = None
        self._ensemble = None
        self.loads = 0
        self.load_seconds = 0.0
        self.requests = 0

    def emit(self, event: str, **fields) -> None:
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()

    def _ensemble_for(self, request: EnsembleRequest):
        """The requested members and rule, from the loaded ensemble (loaded when its key
        changed). Members go through `Ensemble.subset`, so a lone member is its own argmax."""
        from dataclasses import replace

        from CardiacEnsembleLib.core.manifest import read_manifest
        from CardiacEnsembleLib.inference.ensemble import (best_validated, load_ensemble,
                                                           resolve_settings)

        manifest = read_manifest(request.models_dir)
        settings = resolve_settings(manifest, request.preset, members=request.members,
                                    fusion=request.fusion, heart_margin=request.heart_margin,
                                    heart_locator=request.heart_locator)
        reused = self._key == request.load_key
        if not reused:
            self._ensemble = self._key = None  # free the old one before loading the next
            self.emit("loading", message="loading the ensemble")
            started = time.perf_counter()
            self._ensemble = load_ensemble(request.models_dir, device=request.device,
                                           tta=request.tta, members=manifest.names)
            self.load_seconds = time.perf_counter() - started
            self._key = request.load_key
            self.loads += 1
        # every member is loaded; each request takes the preset's (or its own) choice of them
        ensemble = replace(self._ensemble, fusion=settings.fusion or manifest.fusion.value,
                           postprocess=manifest.postprocess if settings.postprocess is None
                           else settings.postprocess)
        if settings.members is not None:
            ensemble = ensemble.subset(list(settings.members))
        locator = settings.heart_locator or best_validated(
            [manifest.member(name) for name in ensemble.names])
        outside = None  # a locator that does not vote (the fast preset's)
        if settings.heart_margin is not None and locator not in ensemble.names:
            outside = self._ensemble.members[self._ensemble.names.index(locator)]
        ensemble = replace(ensemble, heart_margin=settings.heart_margin, heart_locator=locator,
                           locator=outside, preset=settings.preset)
        return ensemble, reused

    def _progress(self, done, total, message) -> None:
        self.emit("progress", done=int(done), total=int(total), message=str(message))

    def _info(self, reused: bool) -> dict:
        self.requests += 1
        return {"ensemble_reused": reused, "loads": self.loads, "requests": self.requests,
                "load_seconds": self.load_seconds, "pid": os.getpid()}

    def handle(self, folder: Path) -> None:
        if request_kind(folder) == CINE:
            self.handle_cine(folder)
            return
        case, request = read_request(folder)
        ensemble, reused = self._ensemble_for(request)
        prediction = ensemble.predict(case, progress=self._progress)
        write_result(folder, prediction, self._info(reused))
        self.emit("done", result=str(folder))

    def handle_cine(self, folder: Path) -> None:
        """Every frame of a cine, in one call of `segment_cine` (chunks of frames at once)."""
        from CardiacEnsembleLib.inference.cine import segment_cine

        cine, geometry, _, request = read_cine_request(folder)
        ensemble, reused = self._ensemble_for(request)
        result = segment_cine(ensemble, cine, geometry, progress=self._progress)
        write_cine_result(folder, result, self._info(reused))
        self.emit("done", result=str(folder))

    def serve(self, requests: IO[str]) -> None:
        """One request folder per line until stdin closes (the client stopped or died)."""
        for line in requests:
            if not line.strip():
                continue
            try:
                self.handle(Path(json.loads(line)["request"]))
            except (ValueError, OSError) as error:  # the request's to fix: said as is
                traceback.print_exc()
                self.emit("error", kind=INPUT, message=str(error), type=type(error).__name__)
            except Exception as error:  # handed to the client with its type; logged in full
                traceback.print_exc()
                self.emit("error", kind=INTERNAL, message=f"{type(error).__name__}: {error}",
                          type=type(error).__name__)


def _protocol_stream() -> IO[str]:
    """The process's stdout for protocol lines only; fd 1 (print, C libraries) goes to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="CardiacEnsemble's inference worker process "
                                                 "(started by the Slicer module; not for use "
                                                 "by hand)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's "
                                                               "default)")
    args = parser.parse_args(argv)
    server = Server(_protocol_stream())
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    server.emit("ready", pid=os.getpid())
    server.serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
