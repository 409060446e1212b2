"""Progress bars on stderr, only for a person at a terminal.

Scripts (stderr not a terminal, or ``--json``) get no bars at all, so that their stderr
carries nothing but the one-line error when something fails.

The bars never take stdout over (rich would by default, swallowing ``put``'s ids into the
terminal while ``> ids.txt`` got nothing): stdout carries results only, straight to fd 1,
unless it is the bars' own terminal, where result lines print above the bars.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import TracebackType
from typing import Any

_PHASE_LABELS = {"download": "downloading", "upload": "uploading", "delete": "deleting"}


def bars_wanted(json_mode: bool, *, raw_stdout: bool = False) -> bool:
    """Bars for a person at a terminal. ``raw_stdout``: the command writes content (not
    lines) to stdout, which a bar on the same terminal would run into; then no bars."""
    try:
        if json_mode or not sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    return not (raw_stdout and stdout_on_bars_terminal())


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

    Disabled, it costs nothing and ``callback`` is None, so the library skips reporting.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._lines_above = contextlib.ExitStack()

    def __enter__(self) -> Bars:
        if self.enabled:
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
            if stdout_on_bars_terminal():
                from .output import lines_above

                self._lines_above.enter_context(lines_above(self._progress.console))
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

    def _on_progress(self, progress: Any) -> None:
        """Take a ``blobsync.client.Progress``: phase, done, total, bytes_done, bytes_total."""
        if self._progress is None:
            return
        phase = str(getattr(progress, "phase", "transfer"))
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
        if bars._progress is not None:
            self._task = bars._progress.add_task(label, total=total, counts="")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self._task is not None:
            self._bars._progress.update(
                self._task, completed=self._done, counts=_size(self._done)
            )


def _size(nbytes: int) -> str:
    from rich.filesize import decimal

    return decimal(nbytes)
