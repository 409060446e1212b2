"""Progress on stderr: bars for a person at a terminal, JSON lines for ``--json``.

Without ``--json``, a stderr that is not a terminal gets no progress at all, so that a
script's stderr carries nothing but the one-line error when something fails. With
``--json`` (results on stdout as JSON), progress goes to stderr as JSON lines, at most one
per second, whether or not stderr is a terminal. ``-q`` turns both off.

The bars never take stdout over (rich would by default, swallowing ``put``'s ids into the
terminal while ``> ids.txt`` got nothing): stdout carries results only, straight to fd 1,
unless it is the bars' own terminal, where result lines print above the bars.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from types import TracebackType
from typing import Any

_PHASE_LABELS = {"download": "downloading", "upload": "uploading", "delete": "deleting"}
# --json's progress lines: at most one per this many seconds.
JSON_INTERVAL = 1.0

BARS = "bars"
JSON_LINES = "json"


def bars_wanted(json_mode: bool, *, raw_stdout: bool = False) -> str | None:
    """How to show progress: BARS for a person at a terminal, JSON_LINES with --json, None
    (no progress) otherwise and with -q. ``raw_stdout``: the command writes content (not
    lines) to stdout, which a bar on the same terminal would run into; then no bars."""
    from .output import verbosity

    if verbosity() < 0:
        return None
    if json_mode:
        return JSON_LINES
    try:
        if not sys.stderr.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return None if raw_stdout and stdout_on_bars_terminal() else BARS


def stdout_on_bars_terminal() -> bool:
    """Whether stdout is the terminal stderr is (where the bars are drawn)."""
    try:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
        if not (os.isatty(out) and os.isatty(err)):
            return False
        return os.fstat(out).st_rdev == os.fstat(err).st_rdev
    except (AttributeError, ValueError, OSError):
        return False


class Bars:
    """A context manager whose ``callback`` fits the library's ProgressCallback.

    ``mode`` is what ``bars_wanted`` says. None costs nothing and ``callback`` is None, so
    the library skips reporting.
    """

    def __init__(self, mode: str | None) -> None:
        self.enabled = mode is not None
        self._json = JSON_LINES if mode == JSON_LINES else None
        # The first line comes a second in: a command done sooner has only its result
        # and, if it fails, its one error line.
        self._last_line = self._started = time.monotonic()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._lines_above = contextlib.ExitStack()

    def __enter__(self) -> Bars:
        if self.enabled and self._json is None:
            # rich is imported only when a bar is drawn: scripts never pay for it.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
                # stdout is for results only: see the module's docstring.
                redirect_stdout=False,
            )
            self._progress.start()
            from .output import lines_above

            self._lines_above.enter_context(lines_above(
                self._progress.console, stdout_too=stdout_on_bars_terminal()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lines_above.close()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def callback(self) -> Any:
        return self._on_progress if self.enabled else None

    def json_line(self, phase: str, **fields: int | None) -> None:
        """One progress line on stderr for --json, unless one went out less than
        JSON_INTERVAL ago (a script reading them is not flooded)."""
        now = time.monotonic()
        if now - self._last_line < JSON_INTERVAL:
            return
        self._last_line = now
        line = {"progress": phase, "elapsed": round(now - self._started, 3), **fields}
        try:
            sys.stderr.write(json.dumps(line, sort_keys=True) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # progress is no result: a closed stderr does not fail the command

    def _on_progress(self, progress: Any) -> None:
        """Take a ``blobsync.client.Progress``: phase, done, total, bytes_done, bytes_total."""
        phase = str(getattr(progress, "phase", "transfer"))
        if self._json is not None:
            self.json_line(
                phase, done=int(progress.done or 0), total=int(progress.total or 0),
                bytes_done=int(progress.bytes_done or 0),
                bytes_total=int(progress.bytes_total or 0),
            )
            return
        if self._progress is None:
            return
        task = self._tasks.get(phase)
        if task is None:
            label = _PHASE_LABELS.get(phase, phase)
            task = self._progress.add_task(label, total=None, counts="")
            self._tasks[phase] = task
        done = int(getattr(progress, "done", 0) or 0)
        total = int(getattr(progress, "total", 0) or 0)
        bytes_done = int(getattr(progress, "bytes_done", 0) or 0)
        bytes_total = int(getattr(progress, "bytes_total", 0) or 0)
        counts = f"{done}/{total} blobs, {_size(bytes_done)}/{_size(bytes_total)}"
        # The bar follows bytes when they are known: one large blob then moves it too.
        if bytes_total:
            self._progress.update(task, total=bytes_total, completed=bytes_done, counts=counts)
        else:
            self._progress.update(task, total=total or None, completed=done, counts=counts)

    def bytes_task(self, label: str, total: int | None = None) -> ByteTask:
        return ByteTask(self, label, total)


class ByteTask:
    """One bar counting bytes, for ``get`` that streams a single blob."""

    def __init__(self, bars: Bars, label: str, total: int | None) -> None:
        self._bars = bars
        self._task: Any = None
        self._done = 0
        self._total = total
        if bars._progress is not None:
            self._task = bars._progress.add_task(label, total=total, counts="")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self._bars._json is not None:
            self._bars.json_line("download", bytes_done=self._done, bytes_total=self._total)
        if self._task is not None:
            self._bars._progress.update(
                self._task, completed=self._done, counts=_size(self._done)
            )


def _size(nbytes: int) -> str:
    from rich.filesize import decimal

    return decimal(nbytes)
