"""Train several members at once on one lent GPU, from a slice pack, inside a fixed time.

Why a separate driver: the lent GPU machine has no ACDC copy (a slice pack travels instead:
`cardiac-ensemble pack`), no SimpleITK or nibabel (training needs neither; they are stubbed
when missing), no internet, 15 minutes of device time per session, and only a few files may
come back. So every member trains in its own process at the same time, each sizes its schedule
to the time left (a short probe run measures seconds per step and per validation pass with all
members already competing for the GPU), and what comes back is each best epoch as an fp16
member folder (`<name>.tar`: best/, history.csv, log) that `cardiac-ensemble ship` accepts.

On the device machine (see research/README.md for the whole round trip):

    python3 research/gpu_train.py --pack .gpu/acdc_slices.npz.xz --out "$OUT" --budget-s 430 \
        --job unet25d-mnv2=CardiacEnsembleLib/models/unet25d-mnv2 --job ...

Each `--job RECIPE=FOLDER` fine-tunes recipe RECIPE warm-started from member FOLDER (a 2D
member inflates into a 2.5D recipe, as `train --init-from` does); `--job RECIPE=` (no folder)
trains it from scratch. `--job RECIPE@SEED=...` uses its own seed instead of --seed and names
the member RECIPE-sSEED, so independent draws of one recipe can train side by side and later
sit in one ensemble. `--steps N` replaces the time budget with a fixed schedule (N steps in
epochs of --iterations, no probe, no deadline): the same run on any machine, at any load.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def stub_missing(names: list[str]) -> list[str]:
    """Empty stand-ins for modules training never calls (imported at the top of io/metrics)."""
    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
    return stubbed


def train_one(args: argparse.Namespace) -> int:
    stubbed = stub_missing(["SimpleITK", "nibabel"])
    sys.path.insert(0, str(REPO))
    import torch

    from CardiacEnsembleLib.core.progress import CancelToken, Cancelled
    from CardiacEnsembleLib.inference.members import load_member, save_member
    from CardiacEnsembleDev.training.recipes import recipe_spec
    from CardiacEnsembleDev.training.slicepack import pack_validation_dice, read_pack
    from CardiacEnsembleDev.training.training import TrainConfig, TrainingSource, fit_member

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train.log", "a")

    def log(line: str) -> None:
        stamp = f"[{time.monotonic() - args.t0:6.1f}s] {line}"
        print(stamp, flush=True)
        log_file.write(stamp + "\n")
        log_file.flush()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pack = read_pack(Path(args.pack))
    spec = recipe_spec(args.recipe, version=args.version, member_name=args.name)
    if spec.preprocess != pack.preprocess:
        raise SystemExit(f"{args.pack}: packed with {pack.preprocess}, {args.recipe} needs "
                         f"{spec.preprocess}")
    data = pack.slice_set(spec.context_slices)
    validation = pack.split("validation")
    source = TrainingSource(pack.patients("train"), pack.patients("validation"),
                            form=f"slice pack ({pack.preprocess.spacing_mm} mm, heart box + "
                                 f"{pack.margin_px} px, 8-bit)")
    log(f"{spec.name}: {len(data)} slices, {len(validation)} validation frames, device "
        f"{device}, stubbed {stubbed or 'nothing'}, "
        f"warm start {args.init_from or 'none (from scratch)'}")

    def validate(network):
        return pack_validation_dice(network, validation, spec.context_slices,
                                    spec.preprocess.size_multiple, device)

    def config(epochs: int, iterations: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=args.batch_size, patch_size=args.patch_size,
                           learning_rate=args.lr, iterations_per_epoch=iterations,
                           seed=args.seed, init_from=args.init_from)

    if args.steps:
        iterations = min(args.iterations, args.steps)
        epochs = max(1, args.steps // iterations)
        log(f"{spec.name}: fixed schedule, {epochs} epochs of {iterations} steps (batch "
            f"{args.batch_size}, {args.patch_size} px, lr {args.lr})")
        hard_stop = math.inf
    else:
        def probe(steps_per_epoch: int, progress: Callable) -> None:
            fit_member(recipe_spec(args.recipe), data, validate, source, out / "probe",
                       config(2, steps_per_epoch), device=device, progress=progress, log=log)

        epochs, iterations = probe_schedule(args, probe, log)
        hard_stop = args.t0 + args.deadline
    token = CancelToken()

    def watch(done, total, message):
        if time.monotonic() > hard_stop:
            token.cancel()

    try:
        fit_member(spec, data, validate, source, out / "run", config(epochs, iterations),
                   device=device, progress=watch, cancel=token, log=log)
    except Cancelled:
        log(f"{spec.name}: stopped at the deadline; the best epoch so far stands")
    if not (out / "run" / "best" / "member.json").is_file():
        log(f"{spec.name}: no epoch finished before the deadline; nothing to bring back")
        return 1
    best = load_member(out / "run" / "best")
    save_member(best.network, best.spec, out / "best", half=True, overwrite=True)
    (out / "best" / "history.csv").write_bytes((out / "run" / "history.csv").read_bytes())
    log(f"{spec.name}: best epoch {best.spec.metrics.get('best_epoch')} pack validation "
        f"{json.dumps(best.spec.metrics.get('validation_dice'))}")
    log_file.close()
    # Written here, not by the parent, so a member that finished comes back even if another
    # member's process is still running when the device command is stopped.
    Path(args.bring_back).mkdir(parents=True, exist_ok=True)
    with tarfile.open(Path(args.bring_back) / f"{spec.name}.tar", "w") as tar:
        tar.add(out / "best", arcname=f"{spec.name}/best")
        tar.add(out / "train.log", arcname=f"{spec.name}/train.log")
    return 0


def probe_schedule(args: argparse.Namespace, probe: Callable[[int, Callable], None],
                   log: Callable[[str], None]) -> tuple[int, int]:
    """(epochs, steps per epoch) that fit the time left, from a probe run: `probe(steps,
    progress)` trains two epochs of `steps` steps.

    A short run with everyone else's probe beside it times a step and a validation. Two epochs,
    timed on the second: the first validation may pay first-call costs for every new slice
    shape. On the H100 it took 33 s, and sizing the schedule by it gave release 1.4's rounds one
    long epoch each, so a single validation and no choice of best epoch."""
    marks: dict[int, float] = {}
    half = 15
    started = time.monotonic()
    probe(half, lambda done, total, message: marks.setdefault(done, time.monotonic()))
    per_step = (marks[2 * half] - marks[half + 5]) / (half - 5)
    per_validation = time.monotonic() - marks[2 * half]
    left = args.deadline - (time.monotonic() - args.t0)
    epochs, iterations = plan_schedule(per_step, per_validation, left, args.iterations)
    log(f"{args.name or args.recipe}: probe {time.monotonic() - started:.0f}s, "
        f"{per_step * 1000:.0f} ms/step, validation {per_validation:.1f}s; {left:.0f}s left -> "
        f"{epochs} epochs of {iterations} steps (batch {args.batch_size}, {args.patch_size} px, "
        f"lr {args.lr})")
    return epochs, iterations


def plan_schedule(per_step: float, per_validation: float, left: float,
                  min_iterations: int) -> tuple[int, int]:
    """(epochs, steps per epoch) filling 85% of `left` seconds, given the probe's seconds per
    step and per validation. Validation should cost about a tenth of the time, so epochs grow
    longer when steps are fast; with too little time for one such epoch, one shorter epoch that
    fits (at least 10 steps)."""
    iterations = max(min_iterations, math.ceil(9 * per_validation / per_step))
    epochs = math.floor(0.85 * left / (iterations * per_step + per_validation))
    if epochs < 1:
        epochs, iterations = 1, max(10, math.floor((0.85 * left - per_validation) / per_step))
    return epochs, iterations


def parse_job(job: str, default_seed: int) -> tuple[str, str, int, str]:
    """`RECIPE=FOLDER` or `RECIPE@SEED=FOLDER` -> (recipe, member name, seed, warm-start folder)."""
    if "=" not in job:
        raise SystemExit(f"--job {job!r}: expected RECIPE=FOLDER or RECIPE@SEED=FOLDER "
                         "(an empty FOLDER trains from scratch)")
    target, folder = job.split("=", 1)
    recipe, _, seed = target.partition("@")
    if not seed:
        return recipe, recipe, default_seed, folder
    if not seed.isdigit():
        raise SystemExit(f"--job {job!r}: the seed after @ must be a whole number")
    return recipe, f"{recipe}-s{seed}", int(seed), folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", required=True)
    parser.add_argument("--out", required=True, help="where <member>.tar files go ($OUT)")
    parser.add_argument("--work", default="/tmp/gpu_train", help="run folders")
    parser.add_argument("--job", action="append", default=[],
                        help="RECIPE=WARM_START_FOLDER or RECIPE@SEED=... (empty: from scratch)")
    parser.add_argument("--budget-s", type=float, default=430,
                        help="seconds from start until every member stops training")
    parser.add_argument("--steps", type=int, default=0,
                        help="train this many steps instead, in whole epochs of --iterations "
                             "(no probe, no time budget)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--iterations", type=int, default=150, help="steps per epoch")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--version", default="1.4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per member")
    # internal: one member's process
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    parser.add_argument("--init-from", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--bring-back", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.recipe:
        return train_one(args)

    t0 = time.monotonic()
    jobs = [parse_job(job, args.seed) for job in args.job]
    names = [name for _, name, _, _ in jobs]
    if len(set(names)) < len(names):
        raise SystemExit(f"--job: member names {names} repeat; give each draw of a recipe its "
                         "own @SEED")
    threads = args.threads or max(1, (os.cpu_count() or 2) // max(1, len(jobs)))
    children = []
    for recipe, name, seed, folder in jobs:
        work = Path(args.work) / name
        command = [sys.executable, __file__, "--pack", args.pack, "--out", str(work),
                   "--recipe", recipe, "--name", name, "--init-from", folder, "--t0", str(t0),
                   "--deadline", str(args.budget_s), "--batch-size", str(args.batch_size),
                   "--patch-size", str(args.patch_size), "--lr", str(args.lr),
                   "--iterations", str(args.iterations), "--steps", str(args.steps),
                   "--seed", str(seed),
                   "--version", args.version, "--device", args.device,
                   "--threads", str(threads), "--bring-back", args.out]
        children.append((name, subprocess.Popen(command, env={
            **os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})))
    failed = [recipe for recipe, child in children if child.wait() != 0]
    print(f"done in {time.monotonic() - t0:.0f}s; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
