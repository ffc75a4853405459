"""tokenwise's user cache: where fetched GGUF files and their converted weights live.

Everything in the cache is written beside its final place under a temporary name and renamed
into place only when complete, so a crash, a full disk or Ctrl-C leaves nothing that a later
call would take for a finished entry. Temporary leftovers of dead processes are swept away by
the next write in the same folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenwise.errors import TokenwiseError

#: the environment variable that moves the cache (checked before ``XDG_CACHE_HOME``).
CACHE_ENV = "TOKENWISE_CACHE"
_TMP_PREFIX = ".tmp-"


def cache_dir() -> Path:
    """The cache's root folder (not created here).

    ``$TOKENWISE_CACHE`` when set, else ``$XDG_CACHE_HOME/tokenwise``, else
    ``~/.cache/tokenwise``.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"TOKENWISE_CACHE": "/tmp/tw-cache"}):
        ...     print(cache_dir())
        /tmp/tw-cache
    """
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tokenwise"


def write_error(exc: OSError, where: Path, what: str) -> TokenwiseError:
    """A one-line error for an OSError met while writing ``what`` into the cache at ``where``.

    Args:
        exc: the error (a full disk, no permission, ...).
        where: the folder being written.
        what: what was being written, for the message (e.g. ``"the converted weights"``).

    Example:
        >>> import errno
        >>> error = write_error(OSError(errno.ENOSPC, "No space left"), Path("/c"), "x")
        >>> str(error).split(";")[0]
        'no space left on device while writing x into /c'
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TokenwiseError(
            f"no space left on device while writing {what} into {where}; nothing was kept. "
            f"Free some space, or point {CACHE_ENV} at a disk with room, and try again"
        )
    reason = exc.strerror or str(exc) or type(exc).__name__
    return TokenwiseError(
        f"cannot write {what} into {where}: {reason}; nothing was kept. Check the folder's "
        f"permissions, or point {CACHE_ENV} at a writable folder"
    )


def _tmp_name(final: Path) -> str:
    return (f"{_TMP_PREFIX}{final.name}.{socket.gethostname()}.{os.getpid()}."
            f"{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def sweep_leftovers(folder: Path) -> None:
    """Delete temporary entries in ``folder`` left by dead processes of this machine.

    Entries of live processes (a conversion running in another terminal) and of other
    machines (a cache on a shared disk) are left alone.

    Args:
        folder: a cache folder whose entries are written through :func:`atomic_dir` or
            :func:`atomic_file`.

    Example:
        >>> sweep_leftovers(Path("/nonexistent"))
    """
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        if not entry.name.startswith(_TMP_PREFIX):
            continue
        parts = entry.name.rsplit(".", 3)
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        if _pid_alive(int(parts[2])):
            continue
        _remove(entry)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_dir(final: Path, what: str) -> Iterator[Path]:
    """Fill a temporary folder, then rename it to ``final`` in one step.

    On any error inside the block the temporary folder is deleted and ``final`` is not
    created; an OSError (full disk, no permission) becomes a one-line
    :class:`~tokenwise.errors.TokenwiseError`. If another process finished ``final`` first,
    its copy is kept and ours dropped.

    Args:
        final: the folder to create; its parent is created when missing.
        what: what is written, for error messages.

    Yields:
        The temporary folder to write into (same file system as ``final``).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with atomic_dir(root / "entry", "a test entry") as tmp:
        ...     _ = (tmp / "a.txt").write_text("done")
        >>> (root / "entry" / "a.txt").read_text()
        'done'
    """
    parent, tmp = _temporary_beside(final, what)
    with _removed_on_failure(tmp, parent, what):
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            _remove(tmp)  # another process got there first; its copy is as good as ours


@contextmanager
def atomic_file(final: Path, what: str) -> Iterator[Path]:
    """Write a temporary file, then rename it to ``final`` (replacing any old one) in one step.

    Errors are handled as in :func:`atomic_dir`: nothing half-written is left.

    Args:
        final: the file to create; its parent is created when missing.
        what: what is written, for error messages.

    Yields:
        The temporary path to write (same folder as ``final``).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with atomic_file(root / "x.bin", "a test file") as tmp:
        ...     _ = tmp.write_bytes(b"ok")
        >>> (root / "x.bin").read_bytes()
        b'ok'
    """
    parent, tmp = _temporary_beside(final, what)
    with _removed_on_failure(tmp, parent, what):
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)


def _temporary_beside(final: Path, what: str) -> tuple[Path, Path]:
    """``(parent, temporary path)`` for writing ``final``: the parent is created (an OS error
    is one line naming ``what``) and dead writers' leftovers there are swept first."""
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, parent, what) from exc
    sweep_leftovers(parent)
    return parent, parent / _tmp_name(final)


@contextmanager
def _removed_on_failure(tmp: Path, parent: Path, what: str) -> Iterator[None]:
    """Remove ``tmp`` if the block fails; an OS error becomes one line naming ``what``."""
    try:
        yield
    except TokenwiseError:  # already one line (ModelNotFoundError is an OSError too)
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        raise write_error(exc, parent, what) from exc
    except BaseException:
        _remove(tmp)
        raise


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk, so the rename never publishes lost writes."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
