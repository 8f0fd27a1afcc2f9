"""Atomic file writes: a crash never leaves a half-written file that looks complete.

A file is written under a temporary name beside its target, ``.<name>.<host>-<pid>.<random>.tmp``,
flushed, then renamed onto the target in one step (``os.replace``): readers see either no file or
the whole file, and two writers (two runs sharing a cache) never write into the same temporary.
A writer killed before its rename leaves only its temporary behind; no reader ever takes it for a
real file (every reader globs for the final suffix), and :func:`sweep_temporaries` deletes it once
its writer is known to be dead.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

#: Temporaries whose writer cannot be checked (another host) are deleted after this long.
STALE_TEMP_SECONDS = 24 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs should get the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it becomes ``path`` in one rename.

    For multi-file results (a converted model, a fine-tuned adapter): readers see no folder or a
    complete one. When ``path`` already exists it is kept and the new folder discarded (another
    writer finished the same result first), unless ``replace`` says to delete it first.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FileGroup:
    """Files that replace their targets together or not at all (a run's outputs: rows, selection, manifest).

    :meth:`path` reserves a temporary beside each target (named as :func:`atomic_path` names
    them, so :func:`sweep_temporaries` knows them); nothing is renamed until every file of the
    group is written, so an error while writing any of them leaves every old file as it was.
    The renames then run in the order the paths were asked for: ask for the file readers trust
    first (the manifest) last. Only a crash between two renames, a few microseconds, can mix.
    """

    def __init__(self):
        self._temps: list[tuple[Path, Path]] = []
        self._removals: list[Path] = []

    def path(self, target: str | Path) -> Path:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_host()}-{os.getpid()}.", suffix=".tmp",
                                   dir=target.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        self._temps.append((Path(tmp), target))
        return Path(tmp)

    def remove(self, target: str | Path) -> None:
        """Delete ``target`` (a stale file of an earlier run) when the group commits."""
        self._removals.append(Path(target))

    def _commit(self) -> None:
        for tmp, _ in self._temps:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        for tmp, target in self._temps:
            os.replace(tmp, target)
        for target in self._removals:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)

    def _abort(self) -> None:
        for tmp, _ in self._temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_files() -> Iterator[FileGroup]:
    """A :class:`FileGroup`: its files replace their targets when the block ends without an error."""
    group = FileGroup()
    try:
        yield group
        group._commit()
    except BaseException:
        group._abort()
        raise


def write_parquet(frame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a process of another user holds the pid
        return True
    return True


def sweep_temporaries(directory: str | Path, max_age: float = STALE_TEMP_SECONDS) -> int:
    """Delete temporaries :func:`atomic_path` left in ``directory`` when their writer died; returns how many.

    A temporary is deleted when it names this host and a process id that no longer exists, or
    when it is older than ``max_age`` seconds (a writer on another host sharing the folder).
    Temporaries of live writers are left alone, so this is safe while other runs are writing.
    """
    removed = 0
    host = _host()
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None:
            continue
        try:
            dead = (m["host"] == host and not _alive(int(m["pid"]))) or now - entry.stat().st_mtime > max_age
            if dead:
                os.unlink(entry.path)
                removed += 1
        except OSError:  # renamed or swept by another run meanwhile
            continue
    return removed
