"""Driving a command under a real pseudo-terminal, as a person at a keyboard would."""

from __future__ import annotations

import os
import pty
import select
import signal
import time


def read_until(fd: int, marker: bytes | None, deadline: float) -> bytes:
    """Read the pty until ``marker`` shows (or, with None, until it closes)."""
    got = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return got
        if not chunk:
            return got
        got += chunk
        if marker is not None and marker in got:
            return got
    if marker is not None:
        raise AssertionError(f"{marker!r} never showed: {got!r}")
    return got


def fork_on_pty(argv: list[str], env: dict[str, str], cwd: str | os.PathLike[str],
                ) -> tuple[int, int]:
    """Start ``argv`` with a new pty as its controlling terminal; returns (pid, master)."""
    pid, master = pty.fork()
    if pid == 0:  # the child: replaced by argv, or gone
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid, master


def reap(pid: int, timeout: float) -> int | None:
    """The exit code of ``pid`` once it ended, or None after SIGKILL when it was still
    running after ``timeout`` seconds: a hang fails its test instead of stalling the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None
