"""The package's errors, and the two rules about outputs: an input is never written, and nothing
existing is overwritten by accident.

Each error's message names the file or value and says what was expected, so the CLI prints it
as one line (exit 2) and the Slicer panel shows it as is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


class CaseError(ValueError):
    """Input that cannot be used as a case; the message names the file and the problem."""


class MemberError(ValueError):
    """A member folder or manifest that cannot be used (missing, corrupt, inconsistent)."""


class OutputExistsError(FileExistsError):
    """An output that exists already, refused because overwriting was not asked for."""


def refuse_existing(paths: Path | str | Iterable[Path | str], overwrite: bool = False, *,
                    hint: str = "pass --overwrite to replace it") -> None:
    """Raise `OutputExistsError` for the first of `paths` that exists, unless `overwrite`.

    Called before any long work starts, so a refused run costs nothing and writes nothing.
    """
    if overwrite:
        return
    for path in _as_list(paths):
        if Path(path).exists():
            raise OutputExistsError(f"{path}: already exists; refusing to overwrite it"
                                    + (f" ({hint})" if hint else ""))


def refuse_inputs(outputs: Path | str | Iterable[Path | str],
                  inputs: Iterable[Path | str]) -> None:
    """Raise `CaseError` for the first of `outputs` that is one of the run's `inputs`.

    With `--overwrite` or without: overwriting an existing result is a choice, replacing the
    MRI or the expert labels a run reads never is. "Is" means the same file (`samefile`, so a
    symlink or hard link to an input counts) where both exist, else the same path with symlinks
    followed.
    """
    inputs = [Path(p) for p in inputs]
    for output in _as_list(outputs):
        for source in inputs:
            if _same_file(Path(output), source):
                also = "" if str(output) == str(source) else f" (the same file as {source})"
                raise CaseError(f"{output}: is an input of this run{also}; inputs are never "
                                f"written, with --overwrite or without: choose another output")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _as_list(paths: Path | str | Iterable[Path | str]) -> list[Path | str]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)
