"""``blobsync sync --watch`` and ``blobsync incoming process --watch``: follow the server
until Ctrl-C, one line per event on stdout (a JSON object per line with --json), and the
server going away or coming back as notices on stderr. No progress bars."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

from .output import Output, info, writing_stdout

# Said on stderr, not stdout: they are about the link, not about blobs.
NOTICES = ("offline", "online")


def notice(event: Any) -> None:
    if event.kind == "offline":
        info(f"offline: {event.detail}; retrying")
    else:
        info("online again")


def event_line(event: Any) -> str:
    """``KIND NAMESPACE [ID] [(DETAIL)]``: stable words, split on blanks by scripts."""
    parts = [event.kind, event.namespace]
    if event.blob_id:
        parts.append(event.blob_id)
    if event.detail:
        parts.append(f"({event.detail})")
    return " ".join(parts)


def write_event(out: Output, event: Any) -> None:
    if event.kind in NOTICES:
        notice(event)
    elif out.json_mode:
        import json

        doc = {"event": event.kind, "namespace": event.namespace, "blob_id": event.blob_id,
               "detail": event.detail}
        with writing_stdout():
            sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
            sys.stdout.flush()
        out.mark_written()  # lines were the answer: no error document after them
    else:
        out.line(event_line(event))


async def with_outcomes(events: AsyncIterator[Any], consumer: Any) -> AsyncIterator[Any]:
    """``events`` with each message's outcome as the --exec consumer gave it: ``FAILED
    (exit status 3)`` says why, where the library's bare ``FAILED`` left a person to
    guess (the same words as ``incoming process`` without --watch)."""
    import dataclasses

    async for event in events:
        if event.kind == "incoming" and event.blob_id:
            outcome = consumer.take_outcome(event.blob_id)
            if outcome:
                event = dataclasses.replace(event, detail=outcome)
        yield event


def server_of(manager: Any) -> str:
    return str(manager.transport.base).rstrip("/")


def started(watching: str) -> None:
    """At a terminal, one stderr line saying the watch runs: a device already in sync
    prints nothing until something changes, and a silent terminal looked hung. Not for
    scripts (stderr a pipe or a file): theirs stays the one error line."""
    if watching and sys.stderr.isatty():
        info(f"watching {watching}; Ctrl-C to stop")


async def follow(events: AsyncIterator[Any], out: Output, watching: str = "") -> int:
    """Print ``events`` until interrupted (Ctrl-C ends the command with 130).
    ``watching`` names what is watched, for the start line at a terminal."""
    started(watching)
    async for event in events:
        write_event(out, event)
    return 0
