"""Segment every frame of a 4D cine in one call, and read the cardiac cycle off the result.

Frames stream through the ensemble in chunks whose size is set by memory, not by a Python loop
per slice: all slices of a chunk go through each member as batches, and fusion runs once per
chunk on the device. The LV/RV volume-time curve then gives end-diastole (largest LV volume) and
end-systole (smallest), which can be checked against `Info.cfg`.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from CardiacEnsembleLib.core.case import Geometry
from CardiacEnsembleLib.core.labels import STRUCTURES
from CardiacEnsembleLib.core.progress import CancelToken, Progress
from CardiacEnsembleLib.evaluation.metrics import volume_ml
from CardiacEnsembleLib.io.atomic import atomic_output

if TYPE_CHECKING:  # torch only where frames are segmented: the worker's client reads results
    from CardiacEnsembleLib.inference.ensemble import Ensemble

#: Upper bound for one chunk's member probabilities (M x C x slices x Y x X float32). With the
#: networks' activations and the fusion's temporaries a chunk's peak is roughly twice this above
#: the loaded ensemble: patient090's 12 frames (232 MB of them, one chunk) peak at 1.3 GiB.
CHUNK_BYTES = 256 * 2**20


@dataclass
class CineSegmentation:
    labels: np.ndarray  # uint8 (T, Z, Y, X)
    geometry: Geometry
    volumes_ml: dict[str, np.ndarray]  # "LV", "RV", "Myo" -> (T,) ml per frame
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    # the QC case score of each frame (`inference.quality`: the worst structure's), (T,)
    quality: Optional[np.ndarray] = None
    quality_score: str = ""  # which score: "disagreement" or "entropy"

    @property
    def ed_frame(self) -> int:
        """1-based frame with the largest LV cavity volume."""
        return int(np.argmax(self.volumes_ml["LV"])) + 1

    @property
    def es_frame(self) -> int:
        """1-based frame with the smallest LV cavity volume."""
        return int(np.argmin(self.volumes_ml["LV"])) + 1

    @property
    def lv_ef_pct(self) -> float:
        lv = self.volumes_ml["LV"]
        return float(100.0 * (lv.max() - lv.min()) / lv.max()) if lv.max() > 0 else float("nan")


def frames_per_chunk(ensemble: Ensemble, frame_shape: tuple[int, int, int]) -> int:
    per_frame = len(ensemble.members) * 4 * int(np.prod(frame_shape)) * 4
    return max(1, CHUNK_BYTES // per_frame)


def segment_cine(ensemble: Ensemble, cine: np.ndarray, geometry: Geometry, *,
                 chunk: Optional[int] = None, progress: Optional[Progress] = None,
                 cancel: Optional[CancelToken] = None) -> CineSegmentation:
    """(T, Z, Y, X) cine -> labels per frame with the ensemble's fusion rule and
    post-processing."""
    import torch

    from CardiacEnsembleLib.inference.ensemble import fuse_and_clean
    from CardiacEnsembleLib.inference.quality import volume_scores

    if cine.ndim != 4:
        raise ValueError(f"expected a (T, Z, Y, X) cine, got shape {cine.shape}")
    started = time.perf_counter()
    ensemble = ensemble.active()  # zero-weight members cannot change the labels: skip them
    frames = cine.shape[0]
    chunk = chunk or frames_per_chunk(ensemble, cine.shape[1:])
    spacing = geometry.spacing_zyx
    labels = np.empty(cine.shape, dtype=np.uint8)
    quality, score = np.zeros(frames), ""
    timings: dict[str, float] = {}
    for start in range(0, frames, chunk):
        stop = min(start + chunk, frames)
        stack = torch.from_numpy(np.ascontiguousarray(cine[start:stop], dtype=np.float32))

        def report(done, total, message, first=start):
            if progress is not None:
                share = (stop - first) / frames
                progress(int((first / frames + share * done / total) * 1000), 1000,
                         f"frames {first + 1}-{stop}: {message}")

        member_probs, _ = ensemble.volume_probabilities(stack, spacing, report, cancel, timings)
        fused = fuse_and_clean(ensemble.fusion, member_probs, ensemble.weights,
                               ensemble.postprocess, volumes=stop - start, timings=timings)
        labels[start:stop] = fused.labels.reshape(stop - start, *cine.shape[1:])
        qc_started = time.perf_counter()
        voters = fused.member_labels.cpu().numpy().reshape(len(member_probs), stop - start,
                                                           *cine.shape[1:])
        probabilities = None if len(voters) >= 2 else fused.probabilities.float().cpu().numpy(
            ).reshape(-1, stop - start, *cine.shape[1:])  # a lone network: its entropy
        for t in range(stop - start):
            maps, score = volume_scores(voters[:, t], labels[start + t], None
                                        if probabilities is None else probabilities[:, t])
            quality[start + t] = maps.case
        timings["quality"] = timings.get("quality", 0.0) + time.perf_counter() - qc_started
    return CineSegmentation(labels, geometry, cine_volumes(labels, spacing),
                            time.perf_counter() - started, timings, quality, score.value
                            if score else "")


def cine_volumes(labels: np.ndarray, spacing_zyx) -> dict[str, np.ndarray]:
    """"LV", "RV", "Myo" -> (T,) volumes in ml of a (T, Z, Y, X) label cine."""
    return {name: np.array([volume_ml(frame, value, spacing_zyx) for frame in labels])
            for name, value in STRUCTURES.items()}


def write_volume_curve(result: CineSegmentation, csv_path: Path,
                       png_path: Optional[Path] = None,
                       info_frames: Optional[tuple[int, int]] = None, title: str = "", *,
                       overwrite: bool = False, protected: Iterable[Path | str] = ()) -> None:
    """CSV (frame, LV, RV, Myo ml) and, if asked, a PNG of the LV/RV volume-time curve with the
    ED/ES found from the curve (and those of Info.cfg, when given, for comparison).

    Both go through `io.atomic.atomic_output`: whole or not at all, existing files refused
    unless `overwrite`, the run's inputs (`protected`) never written."""
    with atomic_output(csv_path, overwrite=overwrite, protected=protected) as temporary, \
            open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        quality = result.quality is not None
        writer.writerow(["frame", "lv_ml", "rv_ml", "myo_ml"] + (["qc_score"] if quality else []))
        for index in range(len(result.volumes_ml["LV"])):
            writer.writerow([index + 1] + [f"{result.volumes_ml[k][index]:.3f}"
                                           for k in ("LV", "RV", "Myo")]
                            + ([f"{result.quality[index]:.4f}"] if quality else []))
    if png_path is None:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.arange(1, len(result.volumes_ml["LV"]) + 1)
    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    axis.plot(frames, result.volumes_ml["LV"], "o-", color="#d62728", label="LV cavity")
    axis.plot(frames, result.volumes_ml["RV"], "s-", color="#1f77b4", label="RV cavity")
    axis.axvline(result.ed_frame, color="0.3", ls="--", lw=1)
    axis.axvline(result.es_frame, color="0.3", ls=":", lw=1)
    axis.text(result.ed_frame, axis.get_ylim()[1], " ED", va="top", fontsize=8)
    axis.text(result.es_frame, axis.get_ylim()[1], " ES", va="top", fontsize=8)
    if info_frames:
        axis.set_title(f"{title}  curve ED/ES = {result.ed_frame}/{result.es_frame}, "
                       f"Info.cfg {info_frames[0]}/{info_frames[1]}", fontsize=9)
    elif title:
        axis.set_title(title, fontsize=9)
    axis.set_xlabel("frame")
    axis.set_ylabel("volume (ml)")
    handles, names = axis.get_legend_handles_labels()
    if result.quality is not None:  # where the members disagree, on the same frames
        doubt = axis.twinx()
        bars = doubt.bar(frames, result.quality, width=0.5, color="0.6", alpha=0.35, zorder=0,
                         label=f"QC score ({result.quality_score})")
        doubt.set_ylabel(f"QC score ({result.quality_score}), worst structure", fontsize=8)
        doubt.set_ylim(0, max(0.2, float(np.max(result.quality)) * 1.25))
        axis.set_zorder(doubt.get_zorder() + 1)
        axis.patch.set_visible(False)
        handles, names = handles + [bars], names + [bars.get_label()]
    axis.legend(handles, names, fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    try:
        with atomic_output(png_path, overwrite=overwrite, protected=protected) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)
