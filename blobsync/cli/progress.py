"""Progress on stderr: bars for a person at a terminal, JSON lines for ``--json``.

Without ``--json``, a stderr that is not a terminal gets no progress at all, so that a
script's stderr carries nothing but the one-line error when something fails. With
``--json`` (results on stdout as JSON), progress goes to stderr as JSON lines, at most one
per second, whether or not stderr is a terminal. ``-q`` turns both off.

A bar follows bytes: the library reports those of a blob under way as they move (a few
times a second), so one large blob moves its bar too. Each shows a rate and an ETA from
those bytes over the last seconds, never from blob counts (one 1 GB blob among 1,000 small
ones would make those lie). The total is known before the first byte: the command states
it (``expect``, put from its files' sizes) or the library reports its whole plan first.

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

_PHASE_LABELS = {
    "seal": "sealing", "download": "downloading", "upload": "uploading",
    "delete": "deleting", "read": "reading",
}
# --json's progress lines: at most one per this many seconds.
JSON_INTERVAL = 1.0
# The rate is the bytes moved over about this many seconds: recent enough to follow a
# network that slows down, long enough not to jump with every piece.
RATE_WINDOW = 5.0

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


@dataclass
class _Phase:
    """One bar: a phase's figures, added up over the library calls that report it (put
    uploads in ``put_many`` and then in ``send_missing``: one bar)."""

    label: str
    parts: dict[int, tuple[int, int, int, int, int]] = field(default_factory=dict)
    expected: tuple[int, int] | None = None  # (blobs, bytes) the command stated up front
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    first: tuple[float, int] | None = None
    task: Any = None

    def figures(self) -> tuple[int, int, int, int, int]:
        """done, total, bytes_done, bytes_total, sized: summed over the parts, with the
        expected totals as a floor."""
        done = total = bytes_done = bytes_total = sized = 0
        for d, t, bd, bt, sz in self.parts.values():
            done, total, bytes_done = done + d, total + t, bytes_done + bd
            bytes_total, sized = bytes_total + bt, sized + sz
        if self.expected is not None:
            count, nbytes = self.expected
            if count >= total and nbytes >= bytes_total:
                total, bytes_total, sized = count, nbytes, count
        return done, total, bytes_done, bytes_total, sized

    def rate(self, now: float, bytes_done: int, finished: bool) -> float | None:
        """Bytes per second over the last RATE_WINDOW seconds (over the whole phase once
        it finished); None before there is a fair measure (a first half second)."""
        samples = self.samples
        if self.first is None:
            self.first = (now, bytes_done)
        if not samples or samples[-1][1] != bytes_done:
            samples.append((now, bytes_done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        t0, b0 = self.first if finished else samples[0]
        if now - t0 < 0.5:
            return None
        return max(0, bytes_done - b0) / (now - t0)


def eta(done: int, total: int, bytes_done: int, bytes_total: int, sized: int,
        rate: float | None) -> float | None:
    """Seconds left at ``rate``: from the bytes still to move, those of blobs of unknown
    size (downloads not begun) taken at the average size of the others."""
    if done >= total > 0:
        return 0.0
    if not rate or not sized:
        return None
    estimate = bytes_total if sized >= total else bytes_total * total / sized
    return max(0.0, estimate - bytes_done) / rate


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
        self._phases: dict[str, _Phase] = {}
        self._aliases: dict[str, str] = {}  # phase -> the bar it is drawn on
        self._sources = 0
        self._lines_above = contextlib.ExitStack()

    def __enter__(self) -> Bars:
        if self.enabled and self._json is None:
            # rich is imported only when a bar is drawn: scripts never pay for it.
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[counts]}"),
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
        """A ProgressCallback for one library call (None when no progress is shown).
        Each one is a part of its phases' bars: what two calls report adds up."""
        if not self.enabled:
            return None
        self._sources += 1
        source = self._sources

        def on_progress(progress: Any) -> None:
            self._on_progress(source, progress)

        return on_progress

    def one_bar(self, label: str, *phases: str) -> None:
        """Draw ``phases`` on one bar named ``label``, on screen at once (get -o: the
        download, or the read of a blob already here)."""
        if not self.enabled:
            return
        for phase in phases:
            self._aliases[phase] = label
        bar = self._phase(label, label)
        if self._progress is not None:
            bar.task = self._progress.add_task(label, total=None, counts="")

    def expect(self, phase: str, blobs: int, nbytes: int) -> None:
        """The totals of ``phase``, known before it starts (put: its files' sizes)."""
        if self.enabled:
            self._phase(phase).expected = (blobs, nbytes)

    def _phase(self, key: str, label: str | None = None) -> _Phase:
        phase = self._phases.get(key)
        if phase is None:
            phase = self._phases[key] = _Phase(label or _PHASE_LABELS.get(key, key))
        return phase

    def json_line(self, phase: str, **fields: int | float | None) -> None:
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

    def _on_progress(self, source: int, progress: Any) -> None:
        """Take a ``blobsync.client.Progress``: phase, done, total, bytes_done,
        bytes_total, sized."""
        phase = str(getattr(progress, "phase", "transfer"))
        key = self._aliases.get(phase, phase)
        total = int(progress.total or 0)
        sized = getattr(progress, "sized", None)
        self._phase(key).parts[source] = (
            int(progress.done or 0), total, int(progress.bytes_done or 0),
            int(progress.bytes_total or 0), total if sized is None else int(sized),
        )
        self._show(key, phase)

    def _show(self, key: str, name: str | None = None) -> None:
        """Redraw bar ``key`` (a JSON line names phase ``name``)."""
        phase = self._phases[key]
        done, total, bytes_done, bytes_total, sized = phase.figures()
        now = time.monotonic()
        rate = phase.rate(now, bytes_done, done >= total > 0)
        left = eta(done, total, bytes_done, bytes_total, sized, rate)
        if self._json is not None:
            self.json_line(
                name or key, done=done, total=total, bytes_done=bytes_done, bytes_total=bytes_total,
                rate=None if rate is None else int(rate),
                eta=None if left is None else round(left, 1),
            )
            return
        if self._progress is None:
            return
        if phase.task is None:
            phase.task = self._progress.add_task(phase.label, total=None, counts="")
        unit = "files" if name == "seal" else "blobs"
        counts = (f"{done}/{total} {unit}, {_size(bytes_done)}/{_size(bytes_total)}"
                  if total else _size(bytes_done))
        counts += f", {_size(int(rate))}/s" if rate is not None else ""
        counts += f", ETA {_clock(left)}" if left else ""
        # The bar follows bytes when every size is known: one large blob moves it too.
        if bytes_total and sized >= total:
            self._progress.update(phase.task, total=bytes_total, completed=bytes_done,
                                  counts=counts)
        else:
            self._progress.update(phase.task, total=total or None, completed=done,
                                  counts=counts)

    def bytes_task(self, label: str, total: int | None = None) -> ByteTask:
        return ByteTask(self, label, total)


class ByteTask:
    """One bar counting bytes, for ``get`` that streams a single blob to stdout."""

    def __init__(self, bars: Bars, label: str, total: int | None) -> None:
        self._bars = bars
        self._key = label
        self._done = 0
        self._total = total
        self._advance: Callable[[int], None] | None = None
        if bars.enabled:
            bars._phase(label, label)
            self._advance = self._advanced

    def advance(self, nbytes: int) -> None:
        if self._advance is not None:
            self._advance(nbytes)

    def _advanced(self, nbytes: int) -> None:
        self._done += nbytes
        total = self._total or 0
        self._bars._phases[self._key].parts[0] = (
            0, 0, self._done, total, 1 if total else 0)
        if self._bars._json is not None:
            self._bars.json_line("download", bytes_done=self._done, bytes_total=self._total)
            return
        self._bars._show(self._key)


def _size(nbytes: int) -> str:
    from rich.filesize import decimal

    return decimal(nbytes)


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
