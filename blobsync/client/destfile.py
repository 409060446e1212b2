"""A file that appears at its destination only once complete: ``get(dest=...)``.

Plaintext being downloaded is not verified until the blob's tag is, so it must not be
visible under any name before that, nor survive a crash. On Linux the file is made with
O_TMPFILE in the destination's directory: it has no name at all until ``commit`` links
it (then renames over ``dest``, so an existing file is replaced atomically), and a killed
process leaves nothing. Where O_TMPFILE is not supported, a hidden name of fixed, short
length is used instead (a crash may then leave that file; its name says what it is).
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from pathlib import Path

# Writes are gathered into pieces of this size before a thread hop to the disk.
_CHUNK = 1 << 20
_PROC_FD = Path("/proc/self/fd")
# The kernel answers these when a file system (or the kernel itself) lacks O_TMPFILE.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}


def _hidden_name() -> str:
    # 26 characters whatever dest is called: a valid long dest name stays valid here.
    return f".blobsync-{secrets.token_hex(6)}.tmp"


class DestFile:
    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._dir = dest.parent
        self._fd: int | None = None
        self._name: Path | None = None  # the fallback's visible name, if used
        self._buf = bytearray()

    # All methods but ``write`` block: call them through asyncio.to_thread.

    def open(self) -> DestFile:
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile and _PROC_FD.is_dir():
            try:
                self._fd = os.open(self._dir, tmpfile | os.O_WRONLY, 0o600)
                return self
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise
        while True:
            name = self._dir / _hidden_name()
            try:
                self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            self._name = name
            return self

    async def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            await asyncio.to_thread(self._flush)

    def _flush(self) -> None:
        data, self._buf = self._buf, bytearray()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget everything written so far."""
        self._buf.clear()
        os.ftruncate(self._fd, 0)  # type: ignore[arg-type]
        os.lseek(self._fd, 0, os.SEEK_SET)  # type: ignore[arg-type]

    def commit(self) -> None:
        """Make the file ``dest``, replacing what was there."""
        assert self._fd is not None
        self._flush()
        os.fsync(self._fd)  # the data before the name: a crash never shows a short file
        if self._name is None:
            # A dst_dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW); plain link() would
            # try to link the /proc symlink itself and fail with EXDEV.
            dirfd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                while True:
                    name = _hidden_name()
                    try:
                        os.link(_PROC_FD / str(self._fd), name, dst_dir_fd=dirfd,
                                follow_symlinks=True)
                        break
                    except FileExistsError:
                        continue
            finally:
                os.close(dirfd)
            self._name = self._dir / name
        try:
            os.replace(self._name, self.dest)
        except BaseException:
            self._name.unlink(missing_ok=True)
            raise
        finally:
            self._name = None
            self._close()

    def abort(self) -> None:
        self._buf.clear()
        self._close()
        if self._name is not None:
            self._name.unlink(missing_ok=True)
            self._name = None

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
