"""Would other members make a better shipped ensemble? Measured on validation only.

The library ("pool") is the shipped members, the members of earlier releases (read back from
git history, so reusing one would add no new blob to the repository) and any candidate run
folders given with --extra (a run's best/, stored in the pool as fp16, as `ship` would).
Greedy forward selection (`forward_selection` below) picks members and weights three ways:
from the shipped members only, from the whole pool within the 40 MB shipping budget, and from
the whole pool with no budget. Each is scored the way the shipped choice is judged: fitted on
half the validation patients and scored, with the largest-component clean-up, on the other half
(2 folds by patient), beside the best shipped member with the same clean-up on the same half.
With --per-class the weights of the members chosen are then searched per class, as the shipped
selection does: that is the comparison that decides a release. With --set (repeatable) fixed
member sets are scored the same way, with no forward selection: the plain mean, and per-class
weights searched from equal weights (the fourth of the shipped selection's searches); a set
fits nothing in its choice of members, so its held-out Dice is not flattered by the pool's
size. Test patients are never read.

    .venv/bin/python research/member_pool.py --data ../shared/acdc --release bb05a5e \
        --per-class --no-unbounded --report research/reports/member_pool.md
    .venv/bin/python research/member_pool.py --data ../shared/acdc --per-class \
        --extra runs/cpu16/unet25d-mnv2-s11-ft/best --report research/reports/member_pool_s11.md
    .venv/bin/python research/member_pool.py --data ../shared/acdc --no-selection \
        --extra runs/cpu17/unetpp25d-mnv2-s14-ft/best \
        --set fpn25d-mnv2 unet25d-mnv2 unetpp25d-mnv2 unetpp-scse25d-mnv2 unetpp25d-mnv2-s14

Member probabilities on the 40 validation frames take about 20 s per member on 2 cores;
--cache keeps them (about 0.1 GB per member) for a rerun with other settings.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, read_manifest  # noqa: E402
from CardiacEnsembleLib.core.progress import CancelToken  # noqa: E402
from CardiacEnsembleLib.inference.ensemble import load_ensemble  # noqa: E402
from CardiacEnsembleDev.release.ship import write_manifest  # noqa: E402
from CardiacEnsembleLib.inference.members import (WEIGHTS_FILE, load_member,  # noqa: E402
                                         save_member)
from CardiacEnsembleDev.release.selection import (SearchResult, ValidationFrame,  # noqa: E402
                                          collect_validation_frames, weighted_mean_dice,
                                          patient_folds, per_class_ascent, score_candidate)
from validation_benchmark import cached_frames, print_and_write  # noqa: E402

MODELS = DEFAULT_MODELS_DIR.relative_to(REPO).as_posix()
MEMBER_FILES = ("config.json", "member.json", WEIGHTS_FILE)


def forward_selection(frames: Sequence[ValidationFrame], sizes_mb: Sequence[float],
                      budget_mb: float = math.inf, allowed: Optional[Sequence[int]] = None,
                      max_steps: int = 25,
                      cancel: Optional[CancelToken] = None) -> SearchResult:
    """Greedy ensemble selection from a library of members (Caruana et al., ICML 2004).

    Start empty; at each step add the one member (repeats allowed: how often a member was added
    becomes its weight) whose addition gives the best weighted-mean Dice, as long as the
    distinct members chosen fit `budget_mb` together; stop when no addition helps. Why this
    and not a weight search over the whole library: it answers which members to ship under a
    size budget, and starting from the best single member it never picks a combination that
    scores below it on the patients it was fitted to. `allowed` (member indices) restricts the
    library, e.g. to the shipped members. Being greedy, a larger library can end below a smaller
    one: an early pick that pairs well with the best member can lock the search out of a better
    set (a half-trained SegFormer did exactly that), so compare libraries side by side, as
    this script does.
    """
    started = time.perf_counter()
    m = frames[0].member_probs.shape[0]
    if len(sizes_mb) != m:
        raise ValueError(f"{len(sizes_mb)} sizes for {m} members")
    allowed = list(range(m)) if allowed is None else list(allowed)
    counts, best, trace = np.zeros(m), -1.0, []
    for _ in range(max_steps):
        step_best, step_member = -1.0, None
        for i in allowed:
            chosen = (counts > 0) | (np.arange(m) == i)
            if sum(np.asarray(sizes_mb)[chosen]) > budget_mb:
                continue
            if cancel is not None:
                cancel.raise_if_cancelled()
            trial = counts.copy()
            trial[i] += 1
            score = weighted_mean_dice(frames, list(map(float, trial / trial.sum())))
            trace.append(max(best, score))
            if score > step_best:
                step_best, step_member = score, i
        if step_member is None or step_best <= best + 1e-9:
            break
        best = step_best
        counts[step_member] += 1
    if not counts.any():
        raise ValueError(f"no allowed member fits the {budget_mb} MB budget")
    return SearchResult("forward selection", list(map(float, counts / counts.sum())), best,
                        len(trace), time.perf_counter() - started, trace)


def release_members(commit: str, pool: Path) -> list[Path]:
    """Write the member folders shipped at `commit` into `pool` (names already there are kept:
    the shipped member of the same name wins)."""
    manifest = json.loads(_git_show(commit, f"{MODELS}/manifest.json"))
    folders = []
    for entry in manifest["members"]:
        folder = pool / entry["name"]
        if folder.exists():
            continue
        folder.mkdir()
        for name in MEMBER_FILES:
            (folder / name).write_bytes(_git_show(commit, f"{MODELS}/{entry['folder']}/{name}",
                                                  binary=True))
        folders.append(folder)
    return folders


def _git_show(commit: str, path: str, binary: bool = False):
    result = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True,
                            check=False)
    if result.returncode:
        raise SystemExit(f"git show {commit}:{path}: {result.stderr.decode().strip()}")
    return result.stdout if binary else result.stdout.decode()


def build_pool(pool: Path, releases: list[str], extras: list[Path]) -> list[str]:
    """The shipped members, then each release's, then the extras; returns the shipped names.
    Extras are stored as fp16, as `ship` would store them, so a run's fp32 best/ is counted at
    its shipping size and scored the way it would ship."""
    shipped = read_manifest(DEFAULT_MODELS_DIR)
    for entry in shipped.members:
        shutil.copytree(DEFAULT_MODELS_DIR / entry.folder, pool / entry.name)
    for commit in releases:
        release_members(commit, pool)
    for extra in extras:
        member = load_member(extra)
        if (pool / member.name).exists():
            raise SystemExit(f"{extra}: a member named {member.name!r} is already in the pool")
        save_member(member.network, member.spec, pool / member.name, half=True)
    folders = sorted(p for p in pool.iterdir() if (p / "member.json").exists())
    write_manifest(pool, folders, name="member-pool", version="0")
    return shipped.names


def lcc_dice(frames, weights) -> float:
    return score_candidate(frames, "pool", "weighted", weights, ("lcc",)).dice["mean"]


def only(frames, members: list[int]) -> list:
    """The frames with just `members`' probabilities, in that order."""
    return [ValidationFrame(f.patient, f.phase, f.member_probs[members], f.reference,
                            f.spacing_zyx) for f in frames]


def gain_points(scores, rivals) -> float:
    """Mean gain over the rival on each held-out half, in Dice points."""
    return 100 * float(np.mean(np.subtract(scores, rivals)))


def choose(frames, sizes, budget, allowed, per_class: bool) -> list:
    """Forward selection; with `per_class`, then the shipped procedure's per-class coordinate
    ascent on the members it chose (unchosen members keep weight 0 in every class)."""
    weights = forward_selection(frames, sizes, budget, allowed).weights
    if not per_class:
        return weights
    chosen = [i for i, w in enumerate(weights) if w > 0]
    table = dict(zip(chosen, per_class_ascent(only(frames, chosen),
                                              [weights[i] for i in chosen]).weights))
    classes = frames[0].member_probs.shape[1]
    return [table.get(i, [0.0] * classes) for i in range(len(weights))]


def best_shipped_per_fold(frames, shipped: list[int], members: int) -> list[float]:
    """The rival on each held-out half: the best shipped member alone + lcc (the same for
    every library, so scored once)."""
    return [max(lcc_dice(scored, one_hot(i, members)) for i in shipped)
            for _, scored in patient_folds(frames)]


def held_out(frames, sizes, budget, allowed, rivals, per_class: bool) -> dict:
    """Chosen on one half, scored (+lcc) on the other; and chosen on all frames."""
    scores = [lcc_dice(scored, choose(fitting, sizes, budget, allowed, per_class))
              for fitting, scored in patient_folds(frames)]
    full = choose(frames, sizes, budget, allowed, per_class)
    return {"held_out": float(np.mean(scores)),
            "gain": gain_points(scores, rivals),
            "weights": full, "in_sample": lcc_dice(frames, full)}


def fixed_set(frames, members: list[int], rivals) -> dict:
    """One member set, no selection: the mean, and per-class weights searched from equal
    weights on one half and scored (+lcc) on the other."""
    equal = [1.0 / len(members)] * len(members)
    mean, searched = [], []
    for fitting, scored in patient_folds(frames):
        scored = only(scored, members)
        mean.append(lcc_dice(scored, equal))
        searched.append(lcc_dice(scored, per_class_ascent(only(fitting, members), equal).weights))
    return {"mean": float(np.mean(mean)), "mean gain": gain_points(mean, rivals),
            "per-class": float(np.mean(searched)), "per-class gain": gain_points(searched, rivals)}


def weight_of(weight) -> float:
    """One number for the table: a member's weight, or its mean weight over the classes."""
    return float(np.mean(weight)) if isinstance(weight, list) else weight


def one_hot(index: int, size: int) -> list[float]:
    return [1.0 if i == index else 0.0 for i in range(size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ACDC root with splits.json")
    parser.add_argument("--release", nargs="*", default=[],
                        help="commits whose shipped members join the pool")
    parser.add_argument("--extra", nargs="*", type=Path, default=[],
                        help="candidate member folders (e.g. a run's best/)")
    parser.add_argument("--budget-mb", type=float, default=40.0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="file for the members' validation probabilities (reused if there)")
    parser.add_argument("--per-class", action="store_true",
                        help="after forward selection, per-class coordinate ascent on the chosen "
                             "members, as the shipped selection does (about 6 min per fit)")
    parser.add_argument("--no-unbounded", action="store_true",
                        help="skip the pool without a size budget")
    parser.add_argument("--no-selection", action="store_true",
                        help="skip forward selection (only the --set rows)")
    parser.add_argument("--set", dest="sets", nargs="+", action="append", default=[],
                        metavar="MEMBER", help="a fixed member set to score (repeatable)")
    parser.add_argument("--report", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp)
        shipped_names = build_pool(pool, args.release, args.extra)
        entries = read_manifest(pool).members  # the ensemble's member order
        names = [entry.name for entry in entries]
        frames = cached_frames(  # with a cache, no network is loaded
            args.cache, {"names": names},
            lambda: collect_validation_frames(load_ensemble(pool, device="cpu"), args.data))
    sizes = [entry.size_bytes / 1e6 for entry in entries]
    shipped = [names.index(n) for n in shipped_names]
    rivals = best_shipped_per_fold(frames, shipped, len(names))
    unknown = sorted({n for s in args.sets for n in s} - set(names))
    if unknown:
        raise SystemExit(f"--set names members not in the pool: {', '.join(unknown)} "
                         f"(the pool: {', '.join(names)})")
    rows = [("shipped members", shipped, float("inf")),
            (f"pool within {args.budget_mb:g} MB", None, args.budget_mb),
            ("pool, no budget", None, float("inf"))][:2 if args.no_unbounded else 3]
    rows = [] if args.no_selection else rows
    lines = [f"# Member pool on the validation split ({len(frames) // 2} patients, ED and ES)", "",
             "Produced by `python research/member_pool.py " + " ".join(sys.argv[1:]) + "`.", "",
             f"Pool: {', '.join(f'{n} ({s:.1f} MB)' for n, s in zip(names, sizes))}.", "",
             "Members: each one alone, with the largest-component clean-up (lcc), all "
             "validation frames.", "",
             "| member | Dice + lcc |", "|---|---|"]
    lines += [f"| {n}{' (shipped)' if i in shipped else ''} | "
              f"{lcc_dice(frames, one_hot(i, len(names))):.4f} |" for i, n in enumerate(names)]
    method = ("forward selection (Caruana et al. 2004), then per-class coordinate ascent on "
              "the members it chose (the shipped selection's weights)" if args.per_class else
              "forward selection (Caruana et al. 2004; one weight per member)")
    if rows:
        lines += ["", f"Weights: {method}, fitted on one half of the patients and scored + lcc on "
                  "the other half (2 folds); gain: over the best shipped member + lcc on the same "
                  "half, in Dice points. Chosen: the selection on all validation patients "
                  "(per-class weights shown as their mean).", "",
                  "| library | held-out Dice | gain (points) | chosen (weight) | MB | "
                  "in-sample Dice |", "|---|---|---|---|---|---|"]
    for label, allowed, budget in rows:
        result = held_out(frames, sizes, budget, allowed, rivals, args.per_class)
        chosen = [(n, weight_of(w), s) for n, w, s in zip(names, result["weights"], sizes)
                  if weight_of(w) > 0]
        lines.append(f"| {label} | {result['held_out']:.4f} | {result['gain']:+.2f} | "
                     + ", ".join(f"{n} ({w:.2f})" for n, w, _ in chosen)
                     + f" | {sum(s for *_, s in chosen):.1f} | {result['in_sample']:.4f} |")
        print(lines[-1], flush=True)
    if args.sets:
        lines += ["", "Fixed sets: the plain mean, and per-class weights searched from equal "
                  "weights on one half of the patients, each scored + lcc on the other half "
                  "(2 folds); gain: over the best shipped member + lcc on the same half, in "
                  "Dice points.", "",
                  "| set | MB | mean: held-out Dice | gain | per-class: held-out Dice | gain |",
                  "|---|---|---|---|---|---|"]
    for members in args.sets:
        indices = [names.index(n) for n in members]
        scores = fixed_set(frames, indices, rivals)
        lines.append(f"| {', '.join(members)} | {sum(sizes[i] for i in indices):.1f} | "
                     f"{scores['mean']:.4f} | {scores['mean gain']:+.2f} | "
                     f"{scores['per-class']:.4f} | {scores['per-class gain']:+.2f} |")
        print(lines[-1], flush=True)
    print_and_write(lines, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
