"""Where ``get(dest=...)`` writes: a file that appears only once complete, or, for a
device or a FIFO, the special file itself (``resolve`` tells which).

Plaintext being downloaded is not verified until the blob's tag is, so it must not be
visible under any name before that, nor survive a crash. On Linux the file is made with
O_TMPFILE in the destination's directory: it has no name at all until ``commit`` links
it (then renames over ``dest``, so an existing file is replaced atomically), and a killed
process leaves nothing. Where O_TMPFILE is not supported, a hidden name of fixed, short
length is used instead (a crash may then leave that file; its name says what it is).

Renaming over a character device, a FIFO or a block device would replace it with a
regular file (``/dev/null`` as a 0600 file breaks the whole machine), so those are
written through, as ``cp`` and ``curl -o`` do: ``ThroughFile``. Nothing may reach them
before the blob verified, which is the caller's part (``BlobManager.get`` verifies the
whole blob first, and only then opens them). A symlink is followed: the file it finally
names is replaced, the symlink stays; a dangling one is refused, as ``cp`` refuses it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from .localstore.files import WRITE_HOPS, DirectWriter

# Writes are gathered into pieces of this size before a thread hop to the disk.
_CHUNK = 1 << 20
_PROC_FD = Path("/proc/self/fd")
# The kernel answers these when a file system (or the kernel itself) lacks O_TMPFILE.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
# How often ThroughFile looks again for a reader of a FIFO: polled so that the wait stays
# cancellable (a blocking open() in a thread would hold Ctrl-C up until a reader came).
_FIFO_POLL = 0.05
# Permission bits a replaced file passes on; set-id bits are not carried over, as a write
# by cp clears them too.
_KEPT_BITS = 0o777
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True, slots=True)
class Target:
    """What ``get(dest=...)`` does with ``dest``, decided by ``resolve``."""

    path: Path  # the file to create or replace, or the special file to write through
    through: bool  # write into ``path`` in place (devices, FIFOs) instead of renaming over it
    mode: int  # permission bits of a file created or replaced
    owner: tuple[int, int] | None = None  # (uid, gid) of a replaced file, kept if allowed


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere it can only be read by setting it: briefly to the strictest useful value,
    # so a file another thread creates meanwhile is never more open than it would be.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def resolve(dest: Path) -> Target:
    """How to write ``dest`` (blocking: call it through asyncio.to_thread).

    A new file gets 0666 less the umask, as ``cp`` makes it; a replaced regular file keeps
    its permission bits (and owner, where the process may set it). A character device, a
    block device or a FIFO is written through. Raises OSError for what cannot be written:
    a directory, a socket, a dangling symlink, a directory that does not exist.
    """
    try:
        st = os.stat(dest)  # follows symlinks, as an open() would
    except FileNotFoundError:
        if os.path.islink(dest):
            # cp's rule: a link to nowhere may have been planted to make us create a file
            # elsewhere (in /tmp, say).
            raise OSError(errno.ENOENT, "not writing through a dangling symlink",
                          str(dest)) from None
        if not dest.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory",
                                    str(dest.parent)) from None
        return Target(dest, False, 0o666 & ~current_umask())
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(dest))
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        return Target(dest, True, stat.S_IMODE(mode))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file, a device or a FIFO", str(dest))
    kept = stat.S_IMODE(mode) & _KEPT_BITS
    owner = (st.st_uid, st.st_gid)
    if not os.path.islink(dest):
        return Target(dest, False, kept, owner)
    real = Path(os.path.realpath(dest))
    try:
        same = os.path.samestat(os.stat(real), st)
    except OSError:
        same = False
    if same:
        return Target(real, False, kept, owner)
    # A link whose name resolves to no path, like /proc/self/fd/1 of a deleted file: the
    # only way to it is through the link itself, so write in place (truncated), as cp.
    return Target(dest, True, kept)


def _hidden_name() -> str:
    # 26 characters whatever dest is called: a valid long dest name stays valid here.
    return f".blobsync-{secrets.token_hex(6)}.tmp"


class DestFile:
    """``mode`` (and ``owner``) are given to the file at commit; until then it is 0600,
    which matters where it has a hidden name. Without ``mode`` it stays 0600."""

    def __init__(self, dest: Path, mode: int | None = None,
                 owner: tuple[int, int] | None = None) -> None:
        self.dest = dest
        self.mode = mode
        self.owner = owner
        self._dir = dest.parent
        self._fd: int | None = None
        self._name: Path | None = None  # the fallback's visible name, if used
        self._buf = bytearray()
        # Past the page cache, one hop at a time behind the caller (LocalFileWriter's
        # reasons: the copy into fresh cache pages was most of a large get's kernel time).
        self._direct: DirectWriter | None = None
        self._writing: concurrent.futures.Future[None] | None = None

    # All methods but ``write`` block: call them through asyncio.to_thread.

    def open(self) -> DestFile:
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile and _PROC_FD.is_dir():
            try:
                self._fd = os.open(self._dir, tmpfile | os.O_WRONLY, 0o600)
                self._direct = DirectWriter(self._fd, 0)
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
            self._direct = DirectWriter(self._fd, 0)
            return self

    async def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            if self._writing is not None:
                # Shielded: a cancelled caller must not cancel a queued hop (a hole).
                await asyncio.shield(asyncio.wrap_future(self._writing))
                self._writing = None
            data, self._buf = self._buf, bytearray()
            assert self._direct is not None
            self._writing = WRITE_HOPS.submit(self._direct.write, [data])

    def _landed(self) -> None:
        """Wait for the hop under way (blocking); its error is raised."""
        fut, self._writing = self._writing, None
        if fut is not None:
            fut.result()

    def _flush(self) -> None:
        self._landed()
        data, self._buf = self._buf, bytearray()
        assert self._direct is not None
        self._direct.write([data])
        self._direct.finish()

    def reset(self) -> None:
        """Forget everything written so far."""
        try:
            self._landed()
        finally:
            self._buf.clear()
            if self._direct is not None:
                self._direct.release()
        os.ftruncate(self._fd, 0)  # type: ignore[arg-type]
        os.lseek(self._fd, 0, os.SEEK_SET)  # type: ignore[arg-type]
        self._direct = DirectWriter(self._fd, 0)  # type: ignore[arg-type]

    def commit(self) -> None:
        """Make the file ``dest``, replacing what was there."""
        assert self._fd is not None
        self._flush()
        if self.owner is not None:
            try:
                os.fchown(self._fd, *self.owner)
            except PermissionError:
                pass  # not ours to give away: the file is then ours, as cp's new files
        if self.mode is not None:
            os.fchmod(self._fd, self.mode)
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
        with contextlib.suppress(Exception):
            self._landed()  # the fd outlives the hop using it
        self._close()
        if self._name is not None:
            self._name.unlink(missing_ok=True)
            self._name = None

    def _close(self) -> None:
        if self._fd is not None:
            if self._writing is not None:
                concurrent.futures.wait([self._writing])
            fd, self._fd = self._fd, None
            os.close(fd)
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.release()


class ThroughFile:
    """A device or FIFO (or a file reachable only through a /proc link) written in place.

    The caller verifies the blob and only then opens this: a blob that fails
    verification leaves it untouched. The descriptor is non-blocking where it
    can be, so a FIFO whose reader stalls never holds up the event loop or Ctrl-C.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._blocking = False  # regular files and block devices: writes go to a thread
        self._regular = False
        self._buf = bytearray()

    async def open(self) -> ThroughFile:
        # No O_TRUNC: a device ignores it, and only fstat tells whether the file opened is
        # regular (a /proc link's target, or a path swapped since resolve()).
        flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
        while True:
            try:
                fd = os.open(self.path, flags)
                break
            except OSError as exc:
                # ENXIO: a FIFO with no reader yet. Wait for one, as cp and a shell would.
                if exc.errno != errno.ENXIO or not stat.S_ISFIFO(os.stat(self.path).st_mode):
                    raise
            await asyncio.sleep(_FIFO_POLL)
        self._fd = fd
        try:
            mode = os.fstat(fd).st_mode
            self._regular = stat.S_ISREG(mode)
            if self._regular or stat.S_ISBLK(mode):
                # Disk writes cannot wait for readiness: make them plain blocking writes.
                self._blocking = True
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            if self._regular:
                await asyncio.to_thread(os.ftruncate, fd, 0)
        except BaseException:
            self.close()
            raise
        return self

    async def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            await self._drain()

    async def finish(self) -> None:
        """Write what is buffered; for a regular file, also to stable storage."""
        await self._drain()
        if self._regular:
            await asyncio.to_thread(os.fsync, self._fd)  # type: ignore[arg-type]

    async def _drain(self) -> None:
        fd = self._fd
        assert fd is not None
        data, self._buf = bytes(self._buf), bytearray()
        if self._blocking:
            await asyncio.to_thread(_write_all, fd, data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await _writable(fd)

    def close(self) -> None:
        self._buf.clear()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def release_reader(path: Path) -> None:
    """If ``path`` is a FIFO with a reader waiting, give that reader EOF: open it for
    writing without waiting and close it. Nothing else happens, and nothing is raised."""
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        pass  # no reader (ENXIO), or gone: nobody to release


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    try:
        loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    except (OSError, ValueError):
        # epoll refuses some character devices; they rarely push back, so just wait a bit.
        await asyncio.sleep(0.01)
        return
    try:
        await ready
    finally:
        loop.remove_writer(fd)
