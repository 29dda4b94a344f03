"""Output files: created atomically and exclusively, and checked before any long work starts.

One writer for every file the package produces (label maps, CSV tables, Markdown reports, PNG
charts), because a result must appear whole or not at all, and a refusal to overwrite must hold
even when two runs race for one name:

- the file is written to a temporary file in the target's own folder (same file system, so
  publishing it is one directory operation), then flushed to disk (fsync);
- without overwrite it is published with `os.link(temporary, target)`, which fails if the
  target appeared in the meantime, so of two racing writers exactly one wins; where a file
  system has no hard links, the name is reserved with `O_CREAT | O_EXCL` and the temporary
  renamed over the reservation; with overwrite it is `os.replace`d;
- it is created with mode 0o666 and the kernel applies the umask, as for any `open()`, so
  other users and services can read results wherever the user's umask lets them;
- a temporary is named `.partial-<pid>.<host>-<random><suffix>` and removed on every exit path
  a process can catch. One left by a killed process (its pid no longer runs on this host) is
  removed by the next write in that folder; a live writer's, or another machine's, is kept.

`check_outputs` is the part that runs before the work: outputs that are inputs, outputs that
exist, folders that cannot be written, names the file system cannot hold.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Iterable, Iterator, Optional

from CardiacEnsembleLib.core.errors import (CaseError, OutputExistsError, refuse_existing,
                                            refuse_inputs)

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
OVERWRITE_HINT = "pass --overwrite / overwrite=True to replace it"
_PARTIAL_NAME = re.compile(r"^\.partial-(?P<pid>\d+)\.(?P<host>\w+)-")
#: Errors of a directory fsync that only mean "this file system does not do that".
_NO_DIRECTORY_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES)
_DEFAULT_NAME_MAX = 255


@contextlib.contextmanager
def atomic_output(target: Path | str, *, overwrite: bool = False,
                  protected: Iterable[Path | str] = (), hint: str = OVERWRITE_HINT,
                  suffix: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path to write `target`'s content to; publish it when the block ends.

    `protected`: the run's inputs; `target` may not be one of them, even with `overwrite`.
    `suffix`: the temporary's suffix (default the target's, `.nii.gz` kept whole), so writers
    that choose the format by the file name (nibabel, SimpleITK, matplotlib) choose the right one.
    Raises `OutputExistsError` if the target exists (or appears while writing) and `overwrite`
    is false; an `OSError` while writing names the target, not the temporary.
    """
    target = Path(target)
    refuse_inputs([target], protected)
    refuse_existing(target, overwrite, hint=hint)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    temporary = _create_temporary(folder, _suffix(target) if suffix is None else suffix)
    try:
        try:
            yield temporary
            _sync_file(temporary)
            _publish(temporary, target, overwrite, hint)
            _sync_folder(folder)
        except OutputExistsError:
            raise
        except OSError as error:
            renamed = _naming_target(error, target, temporary)
            if renamed is error:
                raise
            raise renamed from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def write_text_atomic(target: Path | str, text: str, *, overwrite: bool = False,
                      protected: Iterable[Path | str] = (), hint: str = OVERWRITE_HINT) -> Path:
    """`Path.write_text`, through `atomic_output`: for Markdown reports and small texts."""
    with atomic_output(target, overwrite=overwrite, protected=protected, hint=hint) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(target)


def check_outputs(paths: Iterable[Path | str], *, overwrite: bool = False,
                  inputs: Iterable[Path | str] = (), hint: str = "pass --overwrite to replace it"
                  ) -> None:
    """Refuse, before any work, outputs that cannot or must not be written.

    In this order: an output that is one of `inputs` (never written, `overwrite` or not); one
    whose folder is a file, whose name (or a folder still to be made) is longer than its file
    system allows, whose folder cannot be written, or that is a folder; one that exists (unless
    `overwrite`). Each is a one-line `CaseError` / `OutputExistsError` naming the file. (The
    name length comes before anything that stats the path: that fails on a name too long.)
    """
    paths = [Path(p) for p in paths]
    refuse_inputs(paths, inputs)
    for path in paths:
        ancestor = _nearest_existing(path.parent)
        if not ancestor.is_dir():
            raise CaseError(f"{path}: cannot be created: {ancestor} is a file, not a folder")
        _check_name_lengths(path, ancestor)
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise CaseError(f"{path}: cannot be written: the folder {ancestor} is not writable "
                            f"by this user; choose another output folder")
        if path.is_dir():
            raise CaseError(f"{path}: is a folder; expected the name of a file to write")
    refuse_existing(paths, overwrite, hint=hint)


def remove_stale_partials(folder: Path | str) -> list[Path]:
    """Remove the temporaries in `folder` that a killed writer on this host left; returns them.

    Only names this module makes are considered, and only those whose pid no longer runs here:
    a live writer's temporary, or one from another machine sharing the folder, is kept.
    """
    host, removed = _host_tag(), []
    for path in Path(folder).glob(PARTIAL_PREFIX + "*"):
        match = _PARTIAL_NAME.match(path.name)
        if match is None or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another writer in this folder removed it first
            continue
        log.warning("removed %s, left by process %s that is no longer running",
                    path, match["pid"])
        removed.append(path)
    return removed


def partial_name_prefix(pid: Optional[int] = None) -> str:
    """The start of the temporaries' names of process `pid` (default this one) on this host."""
    return f"{PARTIAL_PREFIX}{os.getpid() if pid is None else pid}.{_host_tag()}-"


def _create_temporary(folder: Path, suffix: str) -> Path:
    """A new empty file in `folder`, mode 0o666 less the umask (mkstemp would make it 0600)."""
    while True:
        path = folder / f"{partial_name_prefix()}{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _publish(temporary: Path, target: Path, overwrite: bool, hint: str) -> None:
    if overwrite:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)
        return
    except FileExistsError as error:
        raise _exists(target, hint) from error
    except OSError:  # no hard links on this file system (FAT, some network shares)
        pass
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError as error:
        raise _exists(target, hint) from error
    os.replace(temporary, target)


def _exists(target: Path, hint: str) -> OutputExistsError:
    return OutputExistsError(f"{target}: already exists; refusing to overwrite it"
                             + (f" ({hint})" if hint else ""))


def _sync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _sync_folder(folder: Path) -> None:
    """Make the new directory entry durable; a file system that cannot sync folders is fine."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in _NO_DIRECTORY_SYNC:
            raise
    finally:
        os.close(handle)


def _naming_target(error: OSError, target: Path, temporary: Path) -> OSError:
    """The same error about `target`: the user never heard of the temporary's name."""
    if error.errno is None or error.filename not in (None, str(temporary), temporary):
        return error
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(target))


def _suffix(target: Path) -> str:
    suffix = target.suffix
    if suffix.lower() == ".gz" and len(target.suffixes) > 1:
        suffix = target.suffixes[-2] + suffix
    return suffix


def _host_tag() -> str:
    return re.sub(r"\W", "_", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid this module writes: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _nearest_existing(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not os.path.exists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_name_lengths(path: Path, ancestor: Path) -> None:
    """The file name, and each folder still to be created, against the file system's limit."""
    try:
        limit = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = _DEFAULT_NAME_MAX
    missing = Path(os.path.abspath(path)).relative_to(ancestor).parts
    for name in missing:
        length = len(os.fsencode(name))
        if length > limit:
            what = "file name" if name == path.name else f"folder name {name[:40]}..."
            raise CaseError(f"{path}: the {what} is {length} bytes long; the file system of "
                            f"{ancestor} allows at most {limit}")
