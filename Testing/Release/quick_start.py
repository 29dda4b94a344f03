"""The first hour of a new user, for real: a fresh clone, the README's first command only, then
every command of the README's *Commands* block as written.

Why a script and not a test: it installs the package into a new venv (about 6 GB of CUDA torch
wheels, minutes), which the test command must not do on every run. Run it before a release:

    python3 Testing/Release/quick_start.py [--keep]

It reads the commands from README.md itself, so the README cannot drift from what was checked:
the first ```bash block (install + segment the sample), then the ```bash blocks under
`## Commands`, each line run from the clone's root with `.venv/bin/` before `cardiac-ensemble`.
The command that needs an extra (`batch`, Dask) must refuse politely instead: exit 2 and one
line naming the extra, before any work; and the first command, run a second time, must refuse
to replace what the first run wrote (exit 2, one line naming `--overwrite`). It prints one row
per command and exits 1 if any failed. The ACDC paths in the README (`../shared/acdc`) are relative to the repository root, so
the clone is made beside this checkout.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Commands of the README that need an optional extra: (word in the command, extra it names).
NEEDS_EXTRA = {"batch": "scale"}


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def readme_commands(readme: str) -> tuple[str, list[str]]:
    """(the first command, the lines of every ```bash block under `## Commands`)."""
    first = bash_blocks(readme)[0].strip()
    section = readme.split("\n## Commands", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #", 1)[0].strip()
             for block in bash_blocks(section) for line in block.splitlines()]
    return first, [line for line in lines if line]


def run(command: str, cwd: Path) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True)
    # the result line of a success (stdout: stderr ends with progress bars), the error of a failure
    said = done.stdout if done.returncode == 0 and done.stdout.strip() else done.stderr
    lines = said.strip().splitlines()
    return done.returncode, time.perf_counter() - started, lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone (and its .venv)")
    args = parser.parse_args()
    clone = REPO.parent / f"{REPO.name}-quick-start"
    if clone.exists():
        raise SystemExit(f"{clone}: exists; remove it first (it would not be a fresh clone)")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    first, commands = readme_commands((clone / "README.md").read_text())
    rows, failed = [], False
    try:
        for again, command in [(False, first), (True, first)] + [
                (False, c.replace("cardiac-ensemble", ".venv/bin/cardiac-ensemble", 1))
                for c in commands]:
            code, seconds, last = run(command, clone)
            extra = next((e for word, e in NEEDS_EXTRA.items() if f" {word} " in command), None)
            if again:  # the README says: a rerun refuses to replace out/'s files, in one line
                ok = code == 2 and "--overwrite" in last
            else:
                ok = (code == 2 and f"[{extra}]" in last) if extra else code == 0
            failed |= not ok
            rows.append((("ok" if ok else "FAILED"), code, seconds, command, last))
            print(f"{rows[-1][0]:6s} exit {code} {seconds:7.1f} s  {command}\n"
                  f"{'':24s}{last[:150]}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)
    print(f"{sum(r[0] == 'ok' for r in rows)}/{len(rows)} README commands behaved as documented "
          f"on a fresh clone")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
