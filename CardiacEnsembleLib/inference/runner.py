"""Run one network over all slices of a volume: batched, on the GPU when there is one.

`run_on_volume` is the one place a network meets a volume (inference, the ensemble, cine,
training's validation): prepared slices in, probabilities on the volume's own grid out.

The slices of a volume go through the network as batches (never a Python loop per slice), under
`torch.inference_mode`, with bf16 autocast on CUDA. Long work reports `progress(done, total,
message)` and checks a `CancelToken` between batches, so a Cancel stops within one batch.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from CardiacEnsembleLib.core.progress import CancelToken, Cancelled, Progress  # noqa: F401  (also importable from here)
from CardiacEnsembleLib.inference.heart_region import HeartBox
from CardiacEnsembleLib.inference.preprocess import (SliceGrid, restore_probabilities,
                                                     stack_neighbours)

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """A device the user asked for that this machine cannot provide."""


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU (said once in the log, not silently)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("no CUDA GPU found: running on the CPU (%d threads)", torch.get_num_threads())
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") \
            from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} requested but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {requested!r} is not supported; use auto, cpu or cuda")
    return device


def default_batch_size(device: torch.device) -> int:
    return 64 if device.type == "cuda" else 16


def predict_slices(network: torch.nn.Module, slices: torch.Tensor, *, tta: bool = False,
                   batch_size: Optional[int] = None, progress: Optional[Progress] = None,
                   cancel: Optional[CancelToken] = None, label: str = "") -> torch.Tensor:
    """(N, 1, H, W) normalised slices -> (N, C, H, W) float32 softmax probabilities.

    `tta` averages the softmax of the slice and its left-right and up-down flips: a cheap,
    well-known gain in boundary accuracy, at three times the network cost.
    """
    device = slices.device
    batch_size = batch_size or default_batch_size(device)
    use_autocast = device.type == "cuda"
    outputs = []
    total = slices.shape[0]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                 enabled=use_autocast):
        for start in range(0, total, batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = slices[start:start + batch_size]
            if isinstance(network, torch.nn.Module):  # an ONNX session takes plain NCHW
                batch = batch.contiguous(memory_format=torch.channels_last)
            probabilities = torch.softmax(network(batch).float(), dim=1)
            if tta:
                for dims in ((-1,), (-2,)):
                    flipped = network(torch.flip(batch, dims)).float()
                    probabilities += torch.flip(torch.softmax(flipped, dim=1), dims)
                probabilities /= 3.0
            outputs.append(probabilities)
            if progress is not None:
                progress(min(start + batch_size, total), total, label)
    return torch.cat(outputs, dim=0)


def run_on_volume(network: torch.nn.Module, slices: torch.Tensor, grid: SliceGrid,
                  slices_per_volume: int, context_slices: int, *, tta: bool = False,
                  progress: Optional[Progress] = None, cancel: Optional[CancelToken] = None,
                  label: str = "", timings: Optional[dict] = None,
                  box: Optional[HeartBox] = None) -> torch.Tensor:
    """Prepared (N, 1, H', W') slices of whole volumes (`preprocess.prepare_slices`) ->
    (N, C, H, W) float32 probabilities back on the volumes' own slice grid.

    N is a frame's Z slices or a cine stack's T*Z; a 2.5D member's neighbours are stacked
    within each volume of `slices_per_volume` slices. `box`: run on that part of the grid only
    (`heart_region`). `timings` accumulates the seconds spent in the network and in restoring
    the grid ("network", "restore").
    """
    probabilities = network_probabilities(network, slices, slices_per_volume, context_slices,
                                          tta=tta, progress=progress, cancel=cancel,
                                          label=label, timings=timings, box=box)
    return restore_timed(probabilities, grid, timings)


def network_probabilities(network: torch.nn.Module, slices: torch.Tensor,
                          slices_per_volume: int, context_slices: int, *, tta: bool = False,
                          progress: Optional[Progress] = None,
                          cancel: Optional[CancelToken] = None, label: str = "",
                          timings: Optional[dict] = None,
                          box: Optional[HeartBox] = None) -> torch.Tensor:
    """`run_on_volume` before restoring: (N, C, H', W') probabilities on the network grid; with
    a `box`, computed on the box and background elsewhere."""
    started = time.perf_counter()
    seen = slices if box is None else box.crop(slices)
    stacked = stack_neighbours(seen, slices_per_volume, context_slices)
    probabilities = predict_slices(network, stacked, tta=tta, progress=progress, cancel=cancel,
                                   label=label)
    if box is not None:
        probabilities = box.paste(probabilities)
    add_stage(timings, "network", started, slices.device)
    return probabilities


def restore_timed(probabilities: torch.Tensor, grid: SliceGrid,
                  timings: Optional[dict] = None) -> torch.Tensor:
    """`preprocess.restore_probabilities`, its seconds added to `timings["restore"]`."""
    started = time.perf_counter()
    restored = restore_probabilities(probabilities, grid)
    add_stage(timings, "restore", started, probabilities.device)
    return restored


def add_stage(timings: Optional[dict], stage: str, started: float,
              device: torch.device) -> float:
    """Add the time since `started` to `timings[stage]` (after the GPU caught up); return now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + now - started
    return now


def optimize_for_inference(network: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm that directly follows a Conv2d (inside a Sequential) into the conv,
    and store weights channels-last, in place.

    Why: in eval mode BatchNorm is a fixed affine map, so it can live in the conv's weights;
    that removes ~10% of a member's CPU time, with outputs equal to ~1e-5. Only use for
    inference (folding is undone by nothing; training needs the separate BatchNorm).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    network.eval()
    for module in list(network.modules()):
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d) \
                    and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = torch.nn.Identity()
    return network.to(memory_format=torch.channels_last)
