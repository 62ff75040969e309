"""Writing files without losing any: a file appears complete under its name or not at all; and
the folder nextpose keeps its downloads and caches in (:func:`cache_dir`).

Every output nextpose writes goes through :class:`AtomicFile`: the data is written to a hidden
temporary file beside the target, flushed to disk, given the permissions a plain ``open`` would
give (the process umask, not ``mkstemp``'s 0600) and renamed over the target only when complete.
"""

import errno
import json
import logging
import os
import re
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from .errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: the lock file is created exclusively instead
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("nextpose")


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$NEXTPOSE_CACHE`` or ``<torch hub dir>/checkpoints``
    (``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``)."""
    env = os.environ.get("NEXTPOSE_CACHE")
    if env:
        return Path(env)
    torch = sys.modules.get("torch")  # in use: its hub folder may have been set
    if torch is not None:
        return Path(torch.hub.get_dir()) / "checkpoints"
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def cannot_write(path: str | Path, error: OSError) -> OutputError:
    """The error for an output the system refused (full, read-only, no permission)."""
    if isinstance(error, OutputError):
        return error
    refused = OutputError(f"{path}: cannot write ({error.strerror or error})")
    refused.reason = error.strerror or str(error)  # for messages that name the file themselves
    return refused


def check_writable(path: str | Path, option: str) -> Path:
    """Refuse, naming ``option``, an output file that is a folder or whose folder is a file
    (before any work; the folders that do not exist yet are made when it is written)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder, not a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


def umask() -> int:
    """The process's umask, read without changing it where Linux (>= 4.7) reports it: setting
    it to read it would give files other threads create meanwhile the wrong mode."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_STREAM = re.compile(r"/dev/(stdout|stderr)|/dev/fd/[0-9]+|/proc/(self|[0-9]+)/fd/[0-9]+")


def is_special(path: str | Path) -> bool:
    """Whether ``path`` (followed through links) is something other than a file or folder: a
    device (``/dev/null``), a pipe (``/dev/stdout`` under ``|``), a socket; or names a
    process's stream (``/dev/stdout`` under ``>`` or ``>>``: writing a file there and renaming
    it over the one the shell opened would lose what the stream carries)."""
    if _STREAM.fullmatch(str(path)):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class AtomicFile:
    """A file written under a temporary name and renamed to ``path`` by :meth:`commit`.

    :meth:`discard` (or leaving a ``with`` block by an exception) removes the temporary file and
    leaves any earlier file at ``path`` as it was. A ``path`` that is a link is written through
    (the file it names is replaced, the link kept); one that is a device or a pipe
    (:func:`is_special`) is written to directly: renaming over it would replace ``/dev/null``
    itself.
    """

    def __init__(self, path: str | Path, mode: str = "w", suffix: str = ".tmp"):
        self.path = Path(path)
        encoding = None if "b" in mode else "utf-8"
        self.direct = is_special(self.path)
        if self.direct:
            self.tmp = self._target = self.path
            # appending: a stream the shell opened with >> keeps what it had
            direct = mode.replace("w", "a")
            self.file: IO[Any] = open(self.path, direct, encoding=encoding)  # noqa: SIM115
            return
        self._target = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
        # the folders made for it, deepest first: a discarded file leaves none of them empty
        self._made = [p for p in self._target.parents if not p.exists()]
        try:
            self._target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self._target.name}.", suffix=suffix, dir=self._target.parent
            )
        except OSError as e:
            self._remove_made()
            raise cannot_write(self.path, e) from None
        self.tmp = Path(tmp)
        try:
            os.chmod(tmp, 0o666 & ~umask())
        except OSError as e:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            self._remove_made()
            raise cannot_write(self.path, e) from None
        self.file = os.fdopen(fd, mode, encoding=encoding)

    def commit(self, target: str | Path | None = None) -> Path:
        """Flush, sync and rename to ``target`` (default: ``path``); returns where it went."""
        if self.direct:
            self.file.close()
            return self.path
        target = Path(target) if target is not None else self._target
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, target)
        except OSError as e:
            self.discard()
            raise cannot_write(self.path if target == self._target else target, e) from None
        except BaseException:
            self.discard()
            raise
        return target

    def discard(self) -> None:
        try:
            if not self.file.closed:
                self.file.close()  # flushes what is buffered: fails again on a full disk
        except OSError:
            pass
        finally:
            if not self.direct:  # written straight to a device or pipe: nothing to take back
                self.tmp.unlink(missing_ok=True)
                self._remove_made()

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()  # only if empty: another file may have landed there
            except OSError:
                break

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(self, kind: type | None, error: BaseException | None, *rest: object) -> None:
        if kind is None:
            self.commit()
            return
        self.discard()
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            # a write in the block failed (a full disk): say which file, as commit does
            raise cannot_write(self.path, error) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :class:`AtomicFile`)."""
    with AtomicFile(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :class:`AtomicFile`)."""
    with AtomicFile(path, "w") as f:
        f.write(text)
    return Path(path)


class LockHeld(Exception):
    """:meth:`FileLock.acquire` found the lock held by a live process (``holder``)."""

    def __init__(self, holder: dict[str, Any]):
        super().__init__(describe_holder(holder))
        self.holder = holder


class FileLock:
    """A lock one process holds while it works in a folder: the kernel's lock on the file at
    ``path`` (released when the process dies, however it dies), the holder's pid, host and start
    time written in it (for the message to a second process)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any]:
        """Take the lock; returns what an earlier holder that died without releasing it wrote
        (``{}`` if none). Raises :class:`LockHeld`, or OSError when the file cannot be made."""
        for _ in range(10):
            try:
                flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL)
                fd = os.open(self.path, flags, 0o666)
            except FileExistsError:  # no fcntl: an existing file is a held lock
                raise LockHeld(self.holder()) from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    os.close(fd)
                    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise LockHeld(self.holder()) from None
                    raise
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # its holder removed it between our open and lock: take a new one
                    os.close(fd)
                    continue
            previous = _read_holder(fd)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(holder) + "\n").encode())
            except OSError:  # a full disk: let go of the lock as release does, leave no file
                self.path.unlink(missing_ok=True)
                os.close(fd)
                raise
            self._fd = fd
            return previous
        raise LockHeld({"pid": "?"})  # it keeps changing hands

    def holder(self) -> dict[str, Any]:
        """What the lock's holder wrote in it (``{}``: nothing readable)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Let go of the lock and remove its file; a file that cannot be removed (a folder
        made read-only meanwhile) is logged, not raised: the error being handled is the one
        to say, and a lock file left behind is taken over (its holder is gone)."""
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # before closing: nobody can take it between
            except OSError as e:
                log.warning("%s: could not remove the lock file (%s)", self.path, e.strerror or e)
            finally:
                os.close(self._fd)
                self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?"}
    return holder if isinstance(holder, dict) else {"pid": "?"}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host, since 2026-12-04 10:00:00`` (host only when it is another)."""
    if not holder:
        return "pid unknown"
    text = f"pid {holder.get('pid', '?')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        text += f" on {holder['host']}"
    if isinstance(holder.get("since"), int | float):
        text += f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since']))}"
    return text
