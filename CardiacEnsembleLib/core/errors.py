"""The package's errors, and the one rule that nothing existing is overwritten by accident.

Each error's message names the file or value and says what was expected, so the CLI prints it
as one line (exit 2) and the Slicer panel shows it as is.
"""
from __future__ import annotations

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
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths:
        if Path(path).exists():
            raise OutputExistsError(f"{path}: already exists; refusing to overwrite it"
                                    + (f" ({hint})" if hint else ""))
