"""Train one member on ACDC ED/ES slices, resumably.

The split is not ours to choose: members fit on `train`, select their best epoch on
`validation`, and never see `test` (`check_no_test_patients` enforces it at every entry point).

Slices are prepared exactly as inference prepares them (`preprocess.prepare_slices`: same
normalisation and in-plane resampling), so the network never sees a distribution at test time
that it did not see in training. Augmentation (rotation, scale, flips, intensity jitter, noise)
runs batched in torch; labels follow the same geometric transform with nearest sampling, so no
interpolated label values ever leak in.
"""
from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from CardiacEnsembleLib.io.acdc import (PHASES, SplitLeakError, check_no_test_patients, find_patients,  # noqa: F401
                   load_splits)
from CardiacEnsembleLib.core.case import NUM_CLASSES, STRUCTURES, Case
from CardiacEnsembleLib.inference.fusion import class_argmax
from CardiacEnsembleLib.inference.runner import CancelToken, Progress, run_on_volume
from CardiacEnsembleLib.inference.members import (Member, MemberError, MemberSpec, create_network, load_member,
                      save_member)
from CardiacEnsembleLib.evaluation.metrics import dice, mean_dice  # noqa: F401
from CardiacEnsembleLib.inference.preprocess import (PreprocessSpec, crop_or_pad, prepare_slices, resample_slices,
                         restore_probabilities, stack_neighbours)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 16
    patch_size: int = 160  # training crops (px at the member's spacing); inference is whole-slice
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    iterations_per_epoch: int = 0  # 0 = one pass over the training slices
    seed: int = 0
    num_threads: int = 0  # 0 = torch default
    max_train_patients: int = 0  # 0 = all; a quick run uses a few
    max_validation_patients: int = 0
    init_from: str = ""  # a member folder to start from (warm start: a new schedule, old weights)
    init_encoder_only: bool = False  # copy only the encoder (init_from may be another arch)

    def to_dict(self) -> dict:
        return asdict(self)


def load_split_cases(data_root: Path, split: str, limit: int = 0) -> list[Case]:
    """ED and ES frames (with ground truth) of one split ('train' or 'validation' only)."""
    if split not in ("train", "validation"):
        raise SplitLeakError(f"training may read 'train' or 'validation', not {split!r}")
    splits = load_splits(data_root)
    ids = splits[split][:limit] if limit else splits[split]
    check_no_test_patients(ids, splits, f"training ({split})")
    return [patient.load(phase) for patient in find_patients(data_root, ids) for phase in PHASES]


@dataclass
class SliceSet:
    """All training slices at the member's spacing, padded to a common canvas for batching."""

    images: torch.Tensor  # (N, 1 + 2 * context_slices, H, W) normalised
    labels: torch.Tensor  # (N, H, W) int64
    sizes: torch.Tensor  # (N, 2) the real (h, w) of each slice inside its canvas
    centroids: torch.Tensor  # (N, 2) foreground centre (row, col); NaN on slices with none
    # (N,) each slice's minimum inside its real (h, w): the fill of crops that run off its edge,
    # computed once here rather than per crop (on a GPU each would be a device sync)
    backgrounds: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "SliceSet":
        """Images and labels on `device`; the per-slice bookkeeping stays on the CPU, where the
        crop sampler reads it."""
        return SliceSet(self.images.to(device), self.labels.to(device), self.sizes,
                        self.centroids, self.backgrounds)


def prepare_frame(image: np.ndarray, labels: np.ndarray, spacing_zyx, preprocess: PreprocessSpec
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame as training sees it: (Z, 1, h, w) normalised slices at the member's spacing
    (the inference preprocessing, without the padding) and (Z, h, w) nearest-resampled labels."""
    slices, grid = prepare_slices(torch.from_numpy(image), spacing_zyx, preprocess)
    slices = crop_or_pad(slices, grid.resampled_hw,
                         offsets=(-grid.offsets[0], -grid.offsets[1]))[0]
    resampled = resample_slices(torch.from_numpy(labels)[:, None].float(), grid.resampled_hw,
                                "nearest")
    return slices, resampled[:, 0].long()


def build_slice_set(cases: Sequence[Case], spec: MemberSpec) -> SliceSet:
    return assemble_slice_set([prepare_frame(case.image, case.labels, case.spacing_zyx,
                                             spec.preprocess) for case in cases],
                              spec.context_slices)


def assemble_slice_set(frames: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       context_slices: int) -> SliceSet:
    """Per-frame prepared slices ((Z, 1, h, w) normalised image at the member's spacing, (Z, h, w)
    labels) -> one SliceSet on a common canvas, neighbours stacked within each frame."""
    canvas = [max(image.shape[-2] for image, _ in frames),
              max(image.shape[-1] for image, _ in frames)]
    images, labels, sizes, backgrounds = [], [], [], []
    for image, label in frames:
        image = stack_neighbours(image, image.shape[0], context_slices)
        backgrounds.append(image.amin(dim=(1, 2, 3)))
        padded_image, _ = crop_or_pad(image, tuple(canvas), fill=float(image.min()),
                                      offsets=(0, 0))
        padded_label, _ = crop_or_pad(label[:, None].float(), tuple(canvas), fill=0.0,
                                      offsets=(0, 0))
        images.append(padded_image)
        labels.append(padded_label[:, 0].long())
        sizes.append(torch.tensor([[image.shape[-2], image.shape[-1]]] * image.shape[0]))
    labels_all = torch.cat(labels)
    return SliceSet(torch.cat(images), labels_all, torch.cat(sizes),
                    foreground_centroids(labels_all), torch.cat(backgrounds))


def foreground_centroids(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels -> (N, 2) mean (row, col) of the non-background pixels, NaN if none.

    Computed once per slice set: batch sampling needs it for every crop of every step.
    """
    mask = (labels > 0).float()
    count = mask.sum(dim=(1, 2))
    rows = torch.arange(labels.shape[1], dtype=torch.float32)[None, :, None]
    cols = torch.arange(labels.shape[2], dtype=torch.float32)[None, None, :]
    centre = torch.stack([(mask * rows).sum(dim=(1, 2)), (mask * cols).sum(dim=(1, 2))], 1)
    return torch.where(count[:, None] > 0, centre / count.clamp_min(1)[:, None],
                       torch.full_like(centre, float("nan")))


def sample_batch(data: SliceSet, indices: torch.Tensor, patch: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops of `patch` px: two thirds centred near the heart, one third anywhere."""
    images, labels = [], []
    for i in indices.tolist():
        h, w = data.sizes[i].tolist()
        has_foreground = not bool(torch.isnan(data.centroids[i, 0]))
        if has_foreground and torch.rand(1, generator=generator).item() < 2 / 3:
            centre = data.centroids[i] + (torch.rand(2, generator=generator) - .5) * 64
        else:
            centre = torch.rand(2, generator=generator) * torch.tensor([h, w])
        oy, ox = (patch // 2 - int(centre[0])), (patch // 2 - int(centre[1]))
        image = data.images[i:i + 1, :, :h, :w]
        label = data.labels[i:i + 1, None, :h, :w].float()
        images.append(crop_or_pad(image, (patch, patch), float(data.backgrounds[i]),
                                  (oy, ox))[0])
        labels.append(crop_or_pad(label, (patch, patch), 0.0, (oy, ox))[0])
    return torch.cat(images), torch.cat(labels)[:, 0].long()


def augment(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation +-30 deg, scale 0.85-1.2, random flips, gamma/contrast jitter, noise.

    2.5D input (neighbour slices as channels) is also flipped through-plane half the time, so
    a member does not come to depend on which way a file orders its slices (base to apex or
    apex to base differs between scanners and exports)."""
    n = images.shape[0]
    if images.shape[1] > 1:
        through_plane = torch.rand(n, generator=generator) < 0.5
        images = torch.where(through_plane[:, None, None, None].to(images.device),
                             images.flip(1), images)
    angle = (torch.rand(n, generator=generator) - 0.5) * math.radians(60)
    scale = 0.85 + torch.rand(n, generator=generator) * 0.35
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip_x, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos * flip_y, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) + background
    moved_labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest",
                                 padding_mode="zeros", align_corners=False)[:, 0].long()
    contrast = 0.8 + torch.rand(n, 1, 1, 1, generator=generator) * 0.4
    shift = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4
    noise = torch.randn(moved.shape, generator=generator) * 0.05
    # Drawn on the CPU generator wherever the images are, so a GPU run draws the same numbers.
    device = moved.device
    return moved * contrast.to(device) + shift.to(device) + noise.to(device), moved_labels


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice over the foreground classes (batch-level Dice: stable on
    slices where a structure is absent)."""
    ce = F.cross_entropy(logits, labels)
    probabilities = torch.softmax(logits.float(), dim=1)[:, 1:]
    one_hot = F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    denominator = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    soft_dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
    return ce + (1 - soft_dice.mean())


def validation_dice(network: torch.nn.Module, cases: Sequence[Case], spec: MemberSpec,
                    device: torch.device) -> dict[str, float]:
    """Mean 3D Dice per structure over validation frames, through the inference path."""
    network.eval()

    def predicted(case: Case) -> np.ndarray:
        slices, grid = prepare_slices(torch.from_numpy(case.image).to(device), case.spacing_zyx,
                                      spec.preprocess)
        probabilities = run_on_volume(network, slices, grid, case.image.shape[0],
                                      spec.context_slices)
        return class_argmax(probabilities, dim=1).cpu().numpy()

    return mean_dice((predicted(case), case.labels) for case in cases)


@dataclass
class TrainState:
    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def train_member(spec: MemberSpec, data_root: Path, out_dir: Path, config: TrainConfig, *,
                 device: str | torch.device = "cpu", progress: Optional[Progress] = None,
                 cancel: Optional[CancelToken] = None,
                 log: Callable[[str], None] = print) -> Member:
    """Train (or resume training) one member; returns the best member by validation Dice.

    `out_dir` holds `last.pt` (everything needed to resume: weights, optimiser, scheduler, RNG,
    history), `history.csv`, and `best/` (a member folder, written whenever validation improves).
    """
    device = torch.device(device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    train_cases = load_split_cases(data_root, "train", config.max_train_patients)
    val_cases = load_split_cases(data_root, "validation", config.max_validation_patients)
    data = build_slice_set(train_cases, spec)
    log(f"{spec.name}: {len(data)} training slices from {len(train_cases)} frames, "
        f"{len(val_cases)} validation frames, device {device}")
    return fit_member(spec, data, lambda network: validation_dice(network, val_cases, spec,
                                                                  device),
                      TrainingSource(sorted({c.patient_id for c in train_cases}),
                                     sorted({c.patient_id for c in val_cases})),
                      out_dir, config, device=device, progress=progress, cancel=cancel, log=log)


@dataclass(frozen=True)
class TrainingSource:
    """Which patients a member saw, recorded in its spec (and checked by the split-leak tests)."""

    train_patients: list[str]
    validation_patients: list[str]
    data: str = "ACDC (Bernard et al., IEEE TMI 2018)"
    form: str = "NIfTI frames"


def fit_member(spec: MemberSpec, data: SliceSet, validate: Callable[[torch.nn.Module], dict],
               source: TrainingSource, out_dir: Path, config: TrainConfig, *,
               device: str | torch.device = "cpu", progress: Optional[Progress] = None,
               cancel: Optional[CancelToken] = None,
               log: Callable[[str], None] = print) -> Member:
    """The training loop proper, apart from where the slices come from (ACDC folders here, a
    slice pack on a machine without the data set: `slicepack`). `validate(network)` returns
    validation Dice per structure and 'mean'; the best epoch by 'mean' is kept."""
    device = torch.device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if device.type != "cpu":  # crops and augmentation then run where the network does
        data = data.to(device)
    network = create_network(spec).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    steps = config.iterations_per_epoch or math.ceil(len(data) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps,
        pct_start=0.05, anneal_strategy="cos")
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState()
    checkpoint = out_dir / "last.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        theirs = (saved["spec"]["arch"], saved["spec"]["encoder"],
                  saved["spec"].get("context_slices", 0))
        if theirs != (spec.arch, spec.encoder, spec.context_slices):
            raise ValueError(f"{checkpoint}: belongs to {theirs[0]}/{theirs[1]} with "
                             f"{theirs[2]} context slice(s), not {spec.arch}/{spec.encoder} "
                             f"with {spec.context_slices}")
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state = TrainState(**saved["state"])
        log(f"{spec.name}: resumed from {checkpoint} after epoch {state.epoch}")
    elif config.init_from:
        _warm_start(network, spec, Path(config.init_from), log,
                    encoder_only=config.init_encoder_only)
    use_amp = device.type == "cuda"
    spec.training = {"data": source.data, "split": "splits.json", "form": source.form,
                     "train_patients": list(source.train_patients),
                     "validation_patients": list(source.validation_patients),
                     "config": config.to_dict()}
    while state.epoch < config.epochs:
        started = time.perf_counter()
        network.train()
        order = torch.randperm(len(data), generator=generator)
        order = order.repeat(math.ceil(steps * config.batch_size / len(data)))
        losses = []
        for step in range(steps):
            if cancel is not None:
                cancel.raise_if_cancelled()
            indices = order[step * config.batch_size:(step + 1) * config.batch_size]
            images, labels = sample_batch(data, indices, config.patch_size, generator)
            images, labels = augment(images, labels, generator)
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = dice_ce_loss(network(images).float(), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if progress is not None:
                progress(state.epoch * steps + step + 1, config.epochs * steps,
                         f"{spec.name} epoch {state.epoch + 1} loss {np.mean(losses):.3f}")
        scores = validate(network)
        state.epoch += 1
        row = {"epoch": state.epoch, "train_loss": float(np.mean(losses)),
               "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started,
               **{f"val_dice_{k}": v for k, v in scores.items()}}
        state.history.append(row)
        if scores["mean"] > state.best_dice:
            state.best_dice, state.best_epoch = scores["mean"], state.epoch
            spec.metrics = {"validation_dice": scores, "best_epoch": state.epoch}
            save_member(network, spec, out_dir / "best", overwrite=True)
        _write_history(out_dir / "history.csv", state.history)
        torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "state": asdict(state),
                    "spec": spec.to_dict()}, out_dir / "last.pt.partial")
        (out_dir / "last.pt.partial").replace(checkpoint)
        log(f"{spec.name}: epoch {state.epoch}/{config.epochs} loss {row['train_loss']:.4f} "
            f"val Dice RV {scores['RV']:.3f} Myo {scores['Myo']:.3f} LV {scores['LV']:.3f} "
            f"mean {scores['mean']:.4f} (best {state.best_dice:.4f} @ {state.best_epoch}) "
            f"{row['seconds']:.0f}s")
    return load_member(out_dir / "best", device)


def _warm_start(network: torch.nn.Module, spec: MemberSpec, folder: Path,
                log: Callable[[str], None], encoder_only: bool = False) -> None:
    """Copy a finished member's weights into `network` before the first step.

    Why: CPU time is the scarce resource here, and a member trained under a short schedule is a
    better start than random weights for a longer one. The source must be the same network
    (arch, encoder, decoder options), or the copy is refused rather than half-applied.
    With `encoder_only`, only the encoder is copied, so a new architecture starts from an encoder
    already trained on ACDC (our stand-in for the ImageNet weights we cannot download); then only
    the encoder must match.
    """
    source = load_member(folder)
    mine = (spec.arch, spec.encoder, spec.model_kwargs)
    theirs = (source.spec.arch, source.spec.encoder, source.spec.model_kwargs)
    inflate = source.spec.context_slices != spec.context_slices
    dice = source.spec.metrics.get("validation_dice", {}).get("mean", float("nan"))
    if encoder_only:
        if source.spec.encoder != spec.encoder:
            raise MemberError(f"{folder}: cannot copy its encoder into {spec.name}: it is "
                              f"{source.spec.encoder}, this member needs {spec.encoder}")
        network.encoder.load_state_dict(_inflated(source.network.encoder.state_dict(),
                                                  network.encoder.state_dict(), spec, source.spec))
        log(f"{spec.name}: encoder warm start from {folder} ({source.spec.arch}, validation "
            f"Dice {dice:.4f}); the decoder starts from random weights")
        return
    if mine != theirs:
        raise MemberError(f"{folder}: cannot warm-start {spec.name} from it: it is {theirs}, "
                          f"this member is {mine}")
    network.load_state_dict(_inflated(source.network.state_dict(), network.state_dict(), spec,
                                      source.spec))
    log(f"{spec.name}: warm start from {folder} (validation Dice {dice:.4f})"
        + (f"; its input conv inflated from {source.spec.in_channels} to {spec.in_channels} "
           f"channels" if inflate else ""))


def _inflated(source: dict, target: dict, spec: MemberSpec, source_spec: MemberSpec) -> dict:
    """`source` weights fitted to `target`'s input channels: a 2D member's first convolution
    goes to the centre slice's channel and the neighbours' channels start at zero.

    Why zeros: the inflated 2.5D network then computes exactly what the 2D member did, so
    fine-tuning starts from the 2D member's accuracy and only learns what the neighbours add.
    """
    if source_spec.context_slices == spec.context_slices:
        return source
    if source_spec.context_slices != 0:
        raise MemberError(f"{source_spec.name}: a {source_spec.in_channels}-channel member can "
                          f"warm-start {spec.name} only if it is plain 2D (1 channel)")
    weights = dict(source)
    for key, value in source.items():
        wanted = target.get(key)
        if wanted is not None and value.ndim == 4 and value.shape[1] == 1 \
                and wanted.shape[1] == spec.in_channels and wanted.shape[1] != 1:
            inflated = torch.zeros_like(wanted)
            inflated[:, spec.context_slices] = value[:, 0]
            weights[key] = inflated
    return weights


def _write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
