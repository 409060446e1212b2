"""Special files for tests of get -o: our own device nodes and FIFOs, never the real ones.

A regression that replaced a destination by a regular file then only breaks a copy in tmp.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest


def char_device(path: Path, major: int, minor: int) -> Path:
    """A character device node at ``path`` (1, 3 is /dev/null's; 1, 7 /dev/full's)."""
    if os.geteuid() != 0:
        pytest.skip("making a character device with mknod needs root")
    path.parent.mkdir(exist_ok=True)
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return path


def assert_same_device(path: Path, major: int, minor: int) -> None:
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode), oct(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)


class FifoReader:
    """A FIFO at ``path`` and a thread reading it to the end.

    A hard link in another directory keeps a way in to the FIFO: should get() rename a
    file over ``path`` (the bug), ``stop`` can still unblock the reader through it.
    """

    def __init__(self, path: Path, keep_dir: Path) -> None:
        self.path = path
        path.parent.mkdir(exist_ok=True)
        os.mkfifo(path)
        keep_dir.mkdir(exist_ok=True)
        self._keep = keep_dir / path.name
        os.link(path, self._keep)
        self.data = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with open(self._keep, "rb") as f:
                self.data = f.read()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self, timeout: float = 60) -> bytes:
        self._thread.join(timeout)
        if self._thread.is_alive():
            # No writer ever came: open one ourselves so the thread ends, then fail.
            os.close(os.open(self._keep, os.O_WRONLY | os.O_NONBLOCK))
            self._thread.join(timeout)
            raise AssertionError("get() never wrote into the FIFO")
        if self.error is not None:
            raise self.error
        return self.data
