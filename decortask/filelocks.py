"""Liveness by `flock` on files in a directory: one exclusive lock per live holder.

The kernel releases a process's `flock` the moment the process dies, whatever killed it, so another
process's non-blocking `flock` on the same file succeeds exactly when the holder is gone. A file that
exists but can be locked is a dead holder's; a file that does not exist was never held (or was released
cleanly). A lock file is created under a temporary name, locked, then renamed into place, so no one ever
sees a holder's file before it is locked. Single host by nature: `flock` does not cross machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, so no file liveness (heartbeats decide)
    fcntl = None  # type: ignore[assignment]

AVAILABLE = fcntl is not None


def lock_dir(database: str) -> Path:
    """The lock directory beside the SQLite database at `database`."""
    return Path(f"{database}-liveness")


def file_name(kind: str, name: str) -> str:
    """A safe file name for holder `name` (any text): hashed, so ids with `/` or `:` are fine."""
    return f"{kind}-{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"


def hold(path: Path, name: str) -> int:
    """Create `path` locked by this process; returns the descriptor, which holds the lock until closed."""
    path.parent.mkdir(exist_ok=True)  # never the database's own directory: that is the user's to make
    temp = path.with_name(f".{uuid.uuid4().hex}.tmp")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert fcntl is not None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{name}\n{os.getpid()}\n".encode())
        os.replace(temp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return fd


def release(path: Path, fd: int) -> None:
    """Remove a held file (a clean stop), then let go of its lock."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def holder_dead(path: Path) -> bool | None:
    """True if `path` exists and no process holds its lock; False if one does; None if there is no file."""
    return _while_unheld(path, _same_file)


def remove_if_dead(path: Path) -> bool:
    """Remove `path` if its holder is dead (while holding its lock, so no one else takes it meanwhile)."""
    return _while_unheld(path, _unlink_same_file) is True


def _while_unheld(path: Path, then: Callable[[int, Path], bool | None]) -> bool | None:
    """`then(fd, path)` while holding the lock of `path`; False if a live process holds it, None if there
    is no file."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        assert fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return then(fd, path)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool | None:
    """Whether `path` still names the file open at `fd`; None once it is gone."""
    # Renamed away or removed since it was opened: a clean release, not a death.
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return None


def _unlink_same_file(fd: int, path: Path) -> bool:
    """Remove `path` if it still names the file open at `fd`."""
    if _same_file(fd, path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            return True
    return False


def prune(directory: Path, older_than: float) -> None:
    """Remove dead holders' files older than `older_than` seconds (their records were settled long ago)."""
    cutoff = time.time() - older_than
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            with contextlib.suppress(OSError):
                if entry.name.endswith(".lock") and entry.stat().st_mtime < cutoff:
                    remove_if_dead(Path(entry.path))
