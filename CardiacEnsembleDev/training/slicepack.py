"""A slice pack: the train and validation slices exactly as members see them, in one small file.

Why: a machine lent for training (a GPU machine) may hold no copy of ACDC, and what travels to
it is capped (64 MiB here, the shipped members included). The NIfTI frames of the 100 train and
validation patients take 110 MB; a pack of the same slices takes 22 MB, because it keeps
only what training reads:

- each frame prepared by `training.prepare_frame`, as training prepares it (percentile clip and
  z-score over the whole volume, in-plane resampling to the members' spacing; labels by nearest
  neighbour);
- cropped to the bounding box of the heart over all slices, plus `margin_px` on every side (the
  training crops are centred near the heart two times in three; the rest now fall inside this
  box rather than anywhere in the field of view);
- quantised to 8 bits over the frame's own range: a step of about 0.02 standard deviations, below
  the 0.05 SD noise that augmentation adds anyway;
- LZMA-compressed.

Validation on a pack scores on the pack's grid (1.5 mm, cropped input), close to but not the
exact validation Dice of `training.validation_dice` on the original grid: good enough to pick a
best epoch; `ship --data` replaces it by the exact number on the real frames.

The test split never enters a pack: `training.load_split_cases` refuses it.
"""
from __future__ import annotations

import io
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from CardiacEnsembleLib.inference.fusion import class_argmax
from CardiacEnsembleLib.inference.runner import run_on_volume
from CardiacEnsembleLib.inference.preprocess import (PreprocessSpec, SliceGrid, crop_or_pad,
                                                     padded_size)
from CardiacEnsembleDev.training.training import (SliceSet, assemble_slice_set, load_split_cases, mean_dice,
                       prepare_frame)

PACK_VERSION = 1


@dataclass
class PackedFrame:
    """One ED or ES frame of one patient, prepared, cropped and quantised."""

    patient_id: str
    phase: str
    split: str  # "train" or "validation"
    image: np.ndarray  # (Z, h, w) uint8
    labels: np.ndarray  # (Z, h, w) uint8, 0..3
    low: float  # image value of code 0
    high: float  # image value of code 255

    def slices(self) -> torch.Tensor:
        """(Z, 1, h, w) float32 normalised slices, as `prepare_slices` made them (to 8 bits)."""
        codes = torch.from_numpy(self.image).float()[:, None]
        return self.low + codes * ((self.high - self.low) / 255.0)

    def label_tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.labels.astype(np.int64))


@dataclass
class SlicePack:
    preprocess: PreprocessSpec
    margin_px: int
    frames: list[PackedFrame]

    def split(self, name: str) -> list[PackedFrame]:
        return [frame for frame in self.frames if frame.split == name]

    def patients(self, name: str) -> list[str]:
        return sorted({frame.patient_id for frame in self.split(name)})

    def slice_set(self, context_slices: int) -> SliceSet:
        """The train frames as one SliceSet, ready for `training.fit_member`."""
        return assemble_slice_set([(f.slices(), f.label_tensor()) for f in self.split("train")],
                                  context_slices)


def pack_frame(image: np.ndarray, labels: np.ndarray, spacing_zyx, preprocess: PreprocessSpec,
               margin_px: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One frame -> (uint8 image, uint8 labels, low, high) on the pack's cropped grid."""
    slices, resampled = prepare_frame(image, labels, spacing_zyx, preprocess)
    slices = slices[:, 0]
    rows, cols = np.nonzero((resampled > 0).any(dim=0).numpy())
    height, width = slices.shape[-2:]
    if rows.size:
        y0, y1 = max(0, rows.min() - margin_px), min(height, rows.max() + 1 + margin_px)
        x0, x1 = max(0, cols.min() - margin_px), min(width, cols.max() + 1 + margin_px)
    else:  # no heart labelled in this frame: keep it whole
        y0, y1, x0, x1 = 0, height, 0, width
    cropped = slices[:, y0:y1, x0:x1]
    low, high = float(cropped.min()), float(cropped.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    codes = ((cropped - low) * scale).round().clamp(0, 255).to(torch.uint8).numpy()
    return codes, resampled[:, y0:y1, x0:x1].to(torch.uint8).numpy(), low, high


def write_pack(data_root: Path, path: Path, preprocess: PreprocessSpec, *, margin_px: int = 32,
               max_patients: int = 0, overwrite: bool = False) -> Path:
    """Pack the ED/ES frames of the `train` and `validation` splits (never `test`)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite (pass --overwrite)")
    arrays: dict[str, np.ndarray] = {}
    index = []
    for split in ("train", "validation"):
        for case in load_split_cases(Path(data_root), split, max_patients):
            codes, labels, low, high = pack_frame(case.image, case.labels, case.spacing_zyx,
                                                  preprocess, margin_px)
            key = f"{case.patient_id}_{case.phase}"
            arrays[f"{key}_image"], arrays[f"{key}_labels"] = codes, labels
            index.append({"key": key, "patient_id": case.patient_id, "phase": case.phase,
                          "split": split, "low": low, "high": high})
    header = {"pack_version": PACK_VERSION, "preprocess": preprocess.to_dict(),
              "margin_px": margin_px, "frames": index}
    buffer = io.BytesIO()
    np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(lzma.compress(buffer.getvalue(), preset=9))
    partial.replace(path)
    return path


def read_pack(path: Path) -> SlicePack:
    path = Path(path)
    try:
        data = np.load(io.BytesIO(lzma.decompress(path.read_bytes())))
        header = json.loads(bytes(data["header"]).decode())
    except (OSError, lzma.LZMAError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a slice pack ({error})") from error
    if header.get("pack_version") != PACK_VERSION:
        raise ValueError(f"{path}: slice pack version {header.get('pack_version')!r}, this "
                         f"code reads version {PACK_VERSION}")
    frames = [PackedFrame(item["patient_id"], item["phase"], item["split"],
                          data[f"{item['key']}_image"], data[f"{item['key']}_labels"],
                          item["low"], item["high"]) for item in header["frames"]]
    return SlicePack(PreprocessSpec.from_dict(header["preprocess"]), header["margin_px"], frames)


def pack_validation_dice(network: torch.nn.Module, frames: Sequence[PackedFrame],
                         context_slices: int, size_multiple: int,
                         device: torch.device) -> dict[str, float]:
    """Mean 3D Dice per structure over packed validation frames, on the pack's grid."""
    network.eval()

    def predicted(frame: PackedFrame) -> np.ndarray:
        slices = frame.slices().to(device)  # already at the member's spacing: pad only
        hw = tuple(slices.shape[-2:])
        network_hw = padded_size(hw, size_multiple)
        padded, offsets = crop_or_pad(slices, network_hw, fill=float(slices.min()))
        probabilities = run_on_volume(network, padded, SliceGrid(hw, hw, offsets, network_hw),
                                      frame.image.shape[0], context_slices)
        return class_argmax(probabilities, dim=1).cpu().numpy()

    return mean_dice((predicted(frame), frame.labels) for frame in frames)
