"""The profile's writer lock: one process at a time changes a profile, as restic locks a
repository.

It is ``fcntl.flock`` on ``home/lock``. The kernel drops a flock when its process dies,
however it dies, so a lock left by a killed process is never in the way: there is nothing
stale to detect or break. Beside it, ``home/lock.info`` names the holder (pid, host,
command, since when) so that a process that cannot get in can say who is in; a killed
holder's info stays behind and is simply overwritten by the next holder.

Writers take the lock only around what changes the store (a put's batches and their
uploads, a delete, a sync round), never for a whole process, and a process waiting for
a retry holds nothing: another shell's ``put`` gets in between a long sync's rounds. Readers
(``ls``, ``status``, ``get`` of a blob held here) never take it, so they never wait.

Within one process the lock counts its holders: nested and concurrent holds of one
profile (a put's upload tasks, two managers on one home) share one flock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from blobsync.lockinfo import LockHolder

from .errors import ClientError, ProfileBusy

LOCK_NAME = "lock"
INFO_NAME = "lock.info"
# Writers waiting for the lock hold a shared flock on this file, so that a holder letting
# go can tell that someone waits (flock itself queues nobody: the holder could take it
# straight back, round after round, and a put from another shell would never get in).
WAIT_NAME = "lock.wait"
# Seconds a writer waits for another process to let go of the profile by default.
DEFAULT_LOCK_WAIT = 5.0
# How often a waiting writer tries again; flock has no timeout of its own.
POLL = 0.05
# After letting go while another process waited, this process stays out this long: several
# of the waiter's polls, so that the waiter gets in between this process's rounds.
HAND_OVER = 0.5

# What the info file says this process is; the CLI sets "blobsync <command>". Never the
# command line itself: put's arguments are file paths, which stay in the encrypted store.
_process_name: str | None = None


def describe_process(name: str) -> None:
    """Name this process in the lock info of every profile it locks from now on."""
    global _process_name
    _process_name = name


class Holder(LockHolder):
    """Who holds a profile, as its info file says (fields may be missing or garbled)."""

    def describe(self) -> str:
        return f"{self.who} on {self.where} ({self.command or '?'}), since {self.when}"

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        try:
            text = path.read_bytes()
        except OSError:
            return None
        return cls.parse(text)


class _Shared:
    """The flock of one lock file in this process, and how many hold it."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.fd: int | None = None
        self.holders = 0
        # Until when this process leaves the lock to a writer that waited when it let go.
        self.yield_until = 0.0


_SHARED: dict[str, _Shared] = {}
_SHARED_GUARD = threading.Lock()


def _shared(path: Path) -> _Shared:
    key = os.path.realpath(path)
    with _SHARED_GUARD:
        return _SHARED.setdefault(key, _Shared())


class ProfileLock:
    """The writer lock of the profile at ``home``; ``wait`` seconds before ProfileBusy."""

    def __init__(self, home: Path, *, wait: float = DEFAULT_LOCK_WAIT) -> None:
        self.home = Path(home)
        self.path = self.home / LOCK_NAME
        self.info_path = self.home / INFO_NAME
        self.wait_path = self.home / WAIT_NAME
        self.wait = max(0.0, wait)
        self._shared = _shared(self.path)

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self._shared.holders > 0

    def holder(self) -> Holder | None:
        return Holder.read(self.info_path)

    @contextlib.asynccontextmanager
    async def hold(self, activity: str = "") -> AsyncIterator[None]:
        """Hold the lock for the block: at once if this process holds it already, else
        after waiting up to ``wait`` seconds for another process; ProfileBusy after that."""
        await self._acquire(activity)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, activity: str) -> None:
        if self._try(activity):
            return
        deadline = time.monotonic() + self.wait
        waiting = self._announce_waiting()
        try:
            while not self._try(activity):
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    who = holder.describe() if holder else "another process"
                    raise ProfileBusy(f"the profile at {self.home} is in use by {who}; "
                                      "try again when it is done")
                await asyncio.sleep(POLL)
        finally:
            if waiting is not None:
                os.close(waiting)

    def _announce_waiting(self) -> int | None:
        """A shared flock on the wait file for as long as this process waits (None where
        flock is missing: waiting still works, only the hand-over does not)."""
        try:
            fd = os.open(self.wait_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _others_waiting(self) -> bool:
        try:
            fd = os.open(self.wait_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False  # nobody ever waited here
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # drops the probe's flock too
        return False

    def _try(self, activity: str) -> bool:
        s = self._shared
        with s.guard:
            if s.holders:
                s.holders += 1
                return True
            if time.monotonic() < s.yield_until:
                return False
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                # No flock on this file system (some network ones): refusing every writer
                # would make the profile useless, so it goes on unlocked, as before.
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    os.close(fd)
                    raise ClientError(f"cannot lock {self.path}: {exc.strerror}") from None
            s.fd = fd
            s.holders = 1
        self._write_info(activity)
        return True

    def _release(self) -> None:
        s = self._shared
        with s.guard:
            s.holders -= 1
            if s.holders > 0 or s.fd is None:
                return
            fd, s.fd = s.fd, None
            # The info file stays: it is only read while the lock is held by someone, and
            # the next holder overwrites it. Closing the fd drops the flock.
            os.close(fd)
            if self._others_waiting():
                s.yield_until = time.monotonic() + HAND_OVER

    def _write_info(self, activity: str) -> None:
        # Unnamed (the library in someone's program): the program, and what it does here.
        program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        command = _process_name or " ".join(filter(None, (program, activity)))
        note = Holder.note(command, activity=activity)
        tmp = self.info_path.with_name(f".{INFO_NAME}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(note)
            os.replace(tmp, self.info_path)
        except OSError:
            # Only the message of a waiting process would miss it; the lock itself holds.
            with contextlib.suppress(OSError):
                tmp.unlink()


class NoLock:
    """A lock that is always free: for a SyncEngine used without a profile."""

    held = True

    @contextlib.asynccontextmanager
    async def hold(self, activity: str = "") -> AsyncIterator[None]:
        del activity
        yield

