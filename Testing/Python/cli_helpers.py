"""Helpers of the bad-input tests: running the CLI in-process and matching its one-line errors."""
from __future__ import annotations

import re
from pathlib import Path

from CardiacEnsembleLib.cli import main


def starts(text: str) -> str:
    """A `pytest.raises(match=...)` pattern: the message begins with `text`, literally."""
    return "^" + re.escape(text)


def exactly(text: str) -> str:
    """A `pytest.raises(match=...)` pattern: the message is `text`, literally."""
    return "^" + re.escape(text) + "$"


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `cardiac-ensemble -q ARGV`."""
    code = main(["-q", *[str(a) for a in argv]])
    return code, capsys.readouterr().err


def models_args(models: Path, *members: str) -> list[str]:
    """The model options for `models` (a models folder) on the CPU, optionally a member subset."""
    chosen = ["--members", *members] if members else []
    return ["--models", str(models), "--device", "cpu", *chosen]
