"""What ``blobsync put`` does besides storing files: ``put -`` (stdin, spooled to a private
file first, since sealing needs the size up front), ``--dry-run`` (what would be stored,
nothing written) and the words of its skip counts."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client_runtime import open_manager
from .collect import Skip
from .failures import EXIT_OK
from .output import Output, info

if TYPE_CHECKING:
    from blobsync.client.localstore import Source

# stdin is copied to the spool file this much at a time: memory stays bounded.
STDIN_CHUNK = 1 << 20


def skip_counts(already: int, stored: int) -> str:
    """The one wording of put's counts, wherever it says them ('' when none was skipped):
    the notice on success, the end of its error line otherwise."""
    return f"{already} already stored, {stored} stored" if already else ""


async def put_stdin(manager: Any, args: argparse.Namespace, namespace: str) -> str:
    """Store what stdin gives as one blob; its id. The plaintext is spooled to a file of
    the store's own temporary directory (mode 0700, emptied when a store opens after a
    crash), created 0600 and removed once the blob is sealed: never in a shared /tmp,
    never all in memory. ``--name`` gives it a meta, with now as its mtime."""
    spool = manager.store.temp_path()
    fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            await asyncio.to_thread(shutil.copyfileobj, sys.stdin.buffer, f, STDIN_CHUNK)
        return str(await manager.put(
            args.id, spool, namespace=namespace, priority=args.priority,
            local_only=args.local_only, upload=False, name=args.name,
            mtime=time.time() if args.name is not None else None,
        ))
    finally:
        spool.unlink(missing_ok=True)


async def put_dry_run(
    args: argparse.Namespace, out: Output, namespace: str,
    found: list[tuple[Path, Source, str]], not_stored: list[Skip],
) -> int:
    """``put --dry-run``: each path that would be stored on stdout (with --json, a
    document), those already stored counted on stderr as a put would; nothing is read
    from stdin, stored or sent. Deletions made by other devices are not learnt (that
    would change the store): a file whose blob was deleted elsewhere counts as stored."""
    earlier: dict[Path, str] = {}
    if found and not args.force:
        async with open_manager(args, reading=True) as manager:
            earlier = await manager.stored_copies(
                [p for p, _, _ in found], namespace=namespace, local_only=args.local_only,
                sources=[s for _, s, _ in found], names=[n for _, _, n in found],
            )
    would: list[dict[str, Any]] = []
    already: list[dict[str, str]] = []
    if args.paths == ["-"]:
        would.append({"path": "-", "name": args.name, "size": None})
    for path, src, name in found:
        if path in earlier:
            already.append({"path": str(path), "id": earlier[path]})
        else:
            would.append({"path": str(path), "name": name, "size": src.size})
    for item in would:
        out.line(item["path"])
    out.document({"namespace": namespace, "dry_run": True, "would_store": would,
                  "already_stored": already, "local_only": args.local_only,
                  "skipped": [{"path": str(s.path), "reason": s.reason} for s in not_stored]})
    info(f"dry run: {len(would)} would be stored, {len(already)} already stored; "
         "nothing was stored")
    return EXIT_OK
