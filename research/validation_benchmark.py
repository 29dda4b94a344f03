"""What the validation-only benchmarks (member_pool.py, fusion_ceiling.py) share: the members'
validation probabilities kept in a cache file between runs, and the markdown table they print
and may write."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch


def cached_frames(cache: Optional[Path], key: dict, collect: Callable[[], list]) -> list:
    """The validation frames from `cache` when it holds them for `key` (e.g. the member names),
    else from `collect()`, saved to `cache` if one is given. Why: running every member on the
    40 validation frames takes minutes, and a rerun with other settings needs the same ones.
    A cache made for another `key` is refused, never silently reused."""
    if cache is not None and cache.exists():
        cached = torch.load(cache, weights_only=False)
        found = {name: cached.get(name) for name in key}
        if found != key:
            raise SystemExit(f"{cache}: cached for {found}, not {key}")
        return cached["frames"]
    frames = collect()
    if cache is not None:
        torch.save({**key, "frames": frames}, cache)
    return frames


def print_and_write(lines: list[str], report: Optional[Path]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text)
