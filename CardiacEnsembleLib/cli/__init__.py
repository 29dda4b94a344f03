"""`cardiac-ensemble` (also `python -m CardiacEnsembleLib`): the runtime's commands (segment,
evaluate, info, models, batch) and those of any installed command group.

Each command group is a module with `register(commands)`, which adds its sub-commands with
`set_defaults(run=...)`. The runtime's groups are listed here; others (the workbench's train,
select, ship, report, ...) are found through the entry-point group `cardiac_ensemble.commands`,
so the runtime never imports the workbench by name and runs where it is not installed.

Errors the user can act on (a wrong file, an existing output, a bad member) print one line and
exit with status 2; nothing the user made is overwritten without `--overwrite`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Optional, Sequence

from CardiacEnsembleLib.cli import batch, evaluate, inspect, segment
from CardiacEnsembleLib.cli.common import EXIT_USAGE, PROG
from CardiacEnsembleLib.core.version import MODELS_RELEASE, __version__

#: The runtime's command groups, in the order `--help` lists them.
RUNTIME_GROUPS = (segment, evaluate, inspect, batch)
#: Where other packages declare their command groups (pyproject `[project.entry-points...]`).
ENTRY_POINT_GROUP = "cardiac_ensemble.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment ACDC cardiac cine-MRI (RV cavity, LV myocardium, LV cavity) with an "
                    "ensemble of 2D networks, and measure it against ground truth.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="results and errors only: no progress bars, no notes")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {__version__} (models release {MODELS_RELEASE})")
    # the same flags after the sub-command; SUPPRESS keeps them from resetting the ones before
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser = commands.add_parser
    commands.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)
    for group in RUNTIME_GROUPS:
        group.register(commands)
    for register in installed_groups():
        register(commands)
    return parser


def installed_groups() -> list:
    """The `register` functions of the command groups other packages declare.

    A declared group whose package cannot be imported is named on stderr and left out, so a
    broken or partial workbench install never takes the runtime's commands with it.
    """
    found = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.append(point.load())
        except ImportError as error:
            print(f"warning: command group {point.name!r} ({point.value}) is not available: "
                  f"{error}", file=sys.stderr)
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from CardiacEnsembleLib.core.errors import CaseError, MemberError
    from CardiacEnsembleLib.core.progress import Cancelled
    from CardiacEnsembleLib.cli import exits

    try:
        with exits.sigterm_raises():
            status = args.run(args)
            sys.stdout.flush()  # inside: a reader that closed the pipe is told here, quietly
        return status
    except BrokenPipeError:
        return exits.quiet_broken_pipe()
    except (CaseError, MemberError, ValueError, OSError) as error:
        # OSError: a disk full or a folder that turned read-only at write time, one line too
        if args.verbose:
            raise
        print(f"error: {exits.error_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except exits.Terminated:
        print("terminated: nothing further was written", file=sys.stderr)
        return exits.EXIT_TERMINATED
    except (Cancelled, KeyboardInterrupt):
        print("cancelled: nothing further was written", file=sys.stderr)
        return 130
