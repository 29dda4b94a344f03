"""Slice preprocessing for 2D members, and its exact inverse back to the case's own grid.

Steps, all batched over the slices of a volume in torch (so they run on the GPU when there is
one, and never in a Python loop per slice):

1. intensity: clip to volume percentiles, then z-score (robust to the bright fat and blood-pool
   outliers of cine MRI, and independent of scanner scaling); NaN and infinite voxels take no
   part in the statistics and are filled (`normalize_intensity`);
2. in-plane resampling to the member's spacing (slices stay slices: ACDC's 5-10 mm slice gap
   makes 3D resampling pointless for a 2D network);
3. crop/pad to a size the encoder accepts (a multiple of 32).
4. for 2.5D members only (`stack_neighbours`), each slice gets its neighbours as channels.

Before any of it, `prepare_slices` refuses a voxel size no cardiac MRI has
(`core.case.check_cardiac_spacing`) and a resampled volume whose memory estimate exceeds the
limit (`core.limits`; `estimated_memory_bytes` says how it is estimated).

`SliceGrid` records what 2 and 3 did, so `restore` puts probabilities back on the original grid:
shape exact, geometry untouched (the Case keeps it), values interpolated.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from typing import Optional

import torch
import torch.nn.functional as F

from CardiacEnsembleLib.core.case import check_cardiac_spacing
from CardiacEnsembleLib.core.limits import check_memory
from CardiacEnsembleLib.inference.sanity import check_intensity_range

#: Bytes the pipeline holds per resampled pixel, as channels x float32 x a factor. Measured
#: with the shipped five 2.5D members on the CPU (peak RSS over the ~0.9 GB of torch and
#: weights, patient090's ED frame resampled to 1.4-4.1 M pixels): 480-670 bytes per pixel, i.e.
#: 40-56 times the 3 float32 input channels (network activations of a batch, each member's
#: probabilities before and after restoring the grid, the fused maps). 60 keeps it an upper bound.
PIPELINE_CHANNELS = 3  # a 2.5D member's slice and its two neighbours
PIPELINE_FACTOR = 60


@dataclass(frozen=True)
class PreprocessSpec:
    """What a member was trained with; saved in its spec so inference repeats it exactly."""

    spacing_mm: float | None = 1.5  # in-plane target spacing; None keeps the native spacing
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    size_multiple: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(spacing_mm=data.get("spacing_mm"),
                   clip_percentiles=tuple(data.get("clip_percentiles", (0.5, 99.5))),
                   size_multiple=int(data.get("size_multiple", 32)))


@dataclass(frozen=True)
class SliceGrid:
    """How slices went from the original (H, W) to the network's (H', W')."""

    original_hw: tuple[int, int]
    resampled_hw: tuple[int, int]
    offsets: tuple[int, int]  # where the resampled slice starts inside the network input
    network_hw: tuple[int, int]


def normalize_intensity(volume: torch.Tensor, clip_percentiles=(0.5, 99.5)) -> torch.Tensor:
    """Percentile clip + z-score over the whole volume (all slices share one scale).

    Only finite voxels count in the statistics (one NaN would make them all NaN, and the whole
    map background). NaN and infinite voxels are then filled with the clipped minimum: the
    value the padding around every slice has, so they read as "no signal"; the median would
    paint mid-grey patches a network may take for tissue, and +Inf as the maximum would paint
    bright blood pool. An image with no finite voxel or a single value is refused.
    """
    volume = volume.float()
    finite = torch.isfinite(volume)
    all_finite = bool(finite.all())
    flat = volume.reshape(-1) if all_finite else volume[finite]
    if flat.numel() == 0:
        check_intensity_range("image", 0, 0.0, 0.0)
    check_intensity_range("image", int(flat.numel()), float(flat.min()), float(flat.max()))
    if flat.numel() > 4_000_000:  # torch.quantile's limit is 16M; a subsample is plenty
        flat = flat[:: math.ceil(flat.numel() / 4_000_000)]
    low, high = torch.quantile(flat, torch.tensor(clip_percentiles, device=flat.device) / 100.0)
    clipped = volume.clamp(low, high)
    if not all_finite:
        clipped = torch.where(finite, clipped, low)
    std = clipped.std()
    return (clipped - clipped.mean()) / (std if std > 1e-6 else 1.0)


def resampled_size(hw: tuple[int, int], spacing_yx: tuple[float, float],
                   target_mm: float | None) -> tuple[int, int]:
    if target_mm is None:
        return (int(hw[0]), int(hw[1]))
    return tuple(max(1, int(round(n * s / target_mm))) for n, s in zip(hw, spacing_yx))


def resample_slices(slices: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size). 'bilinear' for images/probabilities, 'nearest' for labels."""
    if tuple(slices.shape[-2:]) == tuple(size):
        return slices
    if mode == "nearest":
        return F.interpolate(slices, size=size, mode="nearest-exact")
    return F.interpolate(slices, size=size, mode=mode, align_corners=False)


def crop_or_pad(slices: torch.Tensor, target_hw: tuple[int, int], fill: float = 0.0,
                offsets: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Place (N, C, h, w) slices centred (or at `offsets`) in a (target_h, target_w) canvas.

    Offsets may be negative (the slice is larger than the canvas and gets cropped). Returns the
    canvas and the offsets, which `uncrop` needs to undo this exactly.
    """
    h, w = slices.shape[-2:]
    th, tw = target_hw
    oy, ox = offsets if offsets is not None else ((th - h) // 2, (tw - w) // 2)
    canvas = slices.new_full((*slices.shape[:-2], th, tw), fill)
    src_y0, dst_y0 = max(0, -oy), max(0, oy)
    src_x0, dst_x0 = max(0, -ox), max(0, ox)
    ny, nx = min(h - src_y0, th - dst_y0), min(w - src_x0, tw - dst_x0)
    if ny > 0 and nx > 0:
        canvas[..., dst_y0:dst_y0 + ny, dst_x0:dst_x0 + nx] = \
            slices[..., src_y0:src_y0 + ny, src_x0:src_x0 + nx]
    return canvas, (oy, ox)


def uncrop(canvas: torch.Tensor, original_hw: tuple[int, int], offsets: tuple[int, int],
           fill: float = 0.0) -> torch.Tensor:
    """Inverse of `crop_or_pad`: cut the slice back out; parts that were cropped get `fill`."""
    restored, _ = crop_or_pad(canvas, original_hw, fill, offsets=(-offsets[0], -offsets[1]))
    return restored


def padded_size(hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    return tuple(int(math.ceil(n / multiple) * multiple) for n in hw)


def estimated_memory_bytes(shape: tuple[int, ...], spacing_zyx, spec: PreprocessSpec) -> float:
    """What segmenting a (Z, Y, X) frame or (T, Z, Y, X) stack will hold at its peak, roughly:
    slices x resampled H x W x channels x float32 x `PIPELINE_FACTOR` (measured, see there)."""
    height, width = resampled_size((int(shape[-2]), int(shape[-1])),
                                   (spacing_zyx[1], spacing_zyx[2]), spec.spacing_mm)
    slices = math.prod(int(n) for n in shape[:-2])
    return float(slices) * height * width * PIPELINE_CHANNELS * 4 * PIPELINE_FACTOR


def check_volume(shape: tuple[int, ...], spacing_zyx, spec: PreprocessSpec, where: str,
                 max_memory_gb: Optional[float] = None) -> None:
    """Refuse, before any work, a voxel size no cardiac MRI has and a volume whose resampled
    memory estimate exceeds the limit (`max_memory_gb`, else `core.limits`' default)."""
    check_cardiac_spacing(spacing_zyx, where)
    check_memory(estimated_memory_bytes(shape, spacing_zyx, spec), where,
                 f"segmenting {' x '.join(map(str, shape))} voxels resampled to "
                 f"{spec.spacing_mm} mm", max_memory_gb)


def prepare_slices(volume: torch.Tensor, spacing_zyx, spec: PreprocessSpec, *,
                   max_memory_gb: Optional[float] = None) -> tuple[torch.Tensor, SliceGrid]:
    """(Z, Y, X) volume -> (Z, 1, H', W') normalised network input and the grid to undo it.

    A (T, Z, Y, X) stack of cine frames gives (T*Z, 1, H', W'), each frame normalised on its
    own exactly as a single frame would be (so a cine frame and its ED/ES file agree).
    Refused before any work: an implausible voxel size, or a memory estimate over the limit
    (`max_memory_gb`, else `core.limits`' default or environment variable).
    """
    check_volume(tuple(volume.shape), spacing_zyx, spec, "image", max_memory_gb)
    if volume.ndim == 4:
        prepared = [_prepare_frame(frame, spacing_zyx, spec) for frame in volume]
        return torch.cat([slices for slices, _ in prepared]), prepared[0][1]
    return _prepare_frame(volume, spacing_zyx, spec)


def _prepare_frame(volume: torch.Tensor, spacing_zyx, spec: PreprocessSpec
                   ) -> tuple[torch.Tensor, SliceGrid]:
    original_hw = (int(volume.shape[-2]), int(volume.shape[-1]))
    normalised = normalize_intensity(volume, spec.clip_percentiles)[:, None]
    size = resampled_size(original_hw, (spacing_zyx[1], spacing_zyx[2]), spec.spacing_mm)
    resampled = resample_slices(normalised, size, "bilinear")
    network_hw = padded_size(size, spec.size_multiple)
    padded, offsets = crop_or_pad(resampled, network_hw, fill=float(resampled.min()))
    return padded, SliceGrid(original_hw, size, offsets, network_hw)


def stack_neighbours(slices: torch.Tensor, slices_per_volume: int, context: int) -> torch.Tensor:
    """(N, 1, H, W) slices -> (N, 1 + 2 * context, H, W): each slice with its `context`
    neighbours below and above as channels, in slice order, for 2.5D members.

    N is a whole number of volumes of `slices_per_volume` slices each (a frame, or a cine
    stack), and neighbours never cross from one volume into the next: at the first and last
    slice of a volume the edge slice stands in for the missing neighbour.
    """
    if context == 0:
        return slices
    count, channels, height, width = slices.shape
    if channels != 1 or slices_per_volume < 1 or count % slices_per_volume:
        raise ValueError(f"stack_neighbours: {tuple(slices.shape)} slices are not whole volumes "
                         f"of {slices_per_volume} single-channel slices")
    volumes = slices.reshape(count // slices_per_volume, slices_per_volume, height, width)
    position = torch.arange(slices_per_volume, device=slices.device)
    offsets = torch.arange(-context, context + 1, device=slices.device)
    neighbours = (position[:, None] + offsets[None, :]).clamp(0, slices_per_volume - 1)
    return volumes[:, neighbours].reshape(count, 2 * context + 1, height, width)


def restore_probabilities(probabilities: torch.Tensor, grid: SliceGrid) -> torch.Tensor:
    """(Z, C, H', W') network probabilities -> (Z, C, H, W) on the case's original slice grid."""
    cropped = uncrop(probabilities, grid.resampled_hw, grid.offsets)
    return resample_slices(cropped, grid.original_hw, "bilinear")
