"""``BlobManager.watch()`` (SPEC 8): remote changes applied as they arrive, local puts of
any process on the profile uploaded as they are made, incoming messages processed as they
are delivered, and a server that goes away and comes back. Real servers on loopback, real
child processes; waits are bounded generously (5 s), the fast figures belong to bench."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobsync.client import BlobManager, WatchEvent
from blobsync.client import watch as watch_module
from tests.helpers.client import ROOT, Account, Recorder, cli_env, deliver, device
from tests.helpers.fixed_port import alice_on_restartable
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.relay import relay_to

WAIT = 5.0


class Events:
    """The events of a running watch, collected by a task of their own."""

    def __init__(self, source: AsyncIterator[WatchEvent]) -> None:
        self.seen: list[WatchEvent] = []
        self._new = asyncio.Condition()
        self._task = asyncio.create_task(self._collect(source))

    async def _collect(self, source: AsyncIterator[WatchEvent]) -> None:
        async for ev in source:
            async with self._new:
                self.seen.append(ev)
                self._new.notify_all()

    async def expect(self, kind: str, blob_id: str | None = None, *, within: float = WAIT
                     ) -> WatchEvent:
        def found() -> WatchEvent | None:
            for ev in self.seen:
                if ev.kind == kind and (blob_id is None or ev.blob_id == blob_id):
                    return ev
            return None

        async def wait() -> WatchEvent:
            async with self._new:
                while (ev := found()) is None:
                    if self._task.done():
                        self._task.result()  # the watch failed: say how
                        raise AssertionError(f"the watch ended before {kind} {blob_id}")
                    await self._new.wait()
                return ev

        try:
            return await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(f"no {kind} {blob_id} within {within} s: {self.seen}"
                                 ) from None

    def kinds(self, kind: str) -> list[WatchEvent]:
        return [ev for ev in self.seen if ev.kind == kind]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(m: BlobManager, **kw: object) -> AsyncIterator[Events]:
    events = Events(m.watch(**kw))  # type: ignore[arg-type]
    try:
        yield events
    finally:
        await events.stop()


async def test_remote_puts_and_deletes_arrive_while_watching(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    async with watching(b) as events:
        await events.expect("resync")  # the first time: a full listing
        x = await a.put(None, b"live from a")
        await events.expect("downloaded", x)
        assert await b.get(x) == b"live from a"
        await a.delete(x)
        await events.expect("deleted_here", x)
        assert await b.status(x) is None
        # A local put of the watching manager itself goes up as well.
        y = await b.put(None, b"from b", upload=False)
        await events.expect("uploaded", y)
        # And a local delete.
        await b.delete(y)
        assert await a.remote_list() == []
    assert events.kinds("offline") == []


PUT_IN_ANOTHER_PROCESS = textwrap.dedent("""
    import asyncio, sys
    from blobsync.client import BlobManager

    async def main() -> None:
        m = await BlobManager.open(sys.argv[1], passphrase=sys.argv[2])
        try:
            print(await m.put(None, b"put in another shell", upload=False))
        finally:
            await m.close()

    asyncio.run(main())
""")


async def test_a_put_by_another_process_is_uploaded_by_the_watcher(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    async with watching(b) as events:
        await events.expect("resync")
        # The other process gets the profile's lock while the watcher waits: it stores
        # and leaves the upload to the watcher.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUT_IN_ANOTHER_PROCESS, str(b.profile.home), PASSPHRASE,
            stdout=asyncio.subprocess.PIPE, cwd=str(ROOT), env=cli_env(),
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        blob_id = out.decode().strip()
        await events.expect("uploaded", blob_id)
        assert await a.get(blob_id) == b"put in another shell"


async def test_a_delivered_message_reaches_the_watching_consumer(account: Account,
                                                                 devices) -> None:
    b = await devices("b")
    consumer = Recorder()
    b.register_consumer(consumer)
    async with watching(b) as events:
        await events.expect("resync")
        await asyncio.sleep(0.3)  # the incoming box's long poll is waiting
        await deliver(account.server, "alice", {"mail-1": b"hello from outside"})
        ev = await events.expect("incoming", "mail-1")
        assert ev.detail == "PROCESSED" and ev.namespace == "MX"
        assert consumer.saved == {"mail-1": b"HELLO FROM OUTSIDE"}


async def test_a_watch_survives_a_server_restart(tmp_path: Path) -> None:
    srv, acct = await alice_on_restartable(tmp_path)
    a = await acct.device("a")
    b = await acct.device("b")
    try:
        async with watching(b) as events:
            await events.expect("resync")
            x = await a.put(None, b"before the restart")
            await events.expect("downloaded", x)
            await srv.stop()
            await events.expect("offline")
            await asyncio.sleep(2.0)  # several failed reconnects: still said once
            await srv.start()
            await events.expect("online", within=40)
            y = await a.put(None, b"after the restart")
            await events.expect("downloaded", y)
            assert await b.get(y) == b"after the restart"
            assert len(events.kinds("offline")) == 1 and len(events.kinds("online")) == 1
            # Same database, same feed: no full listing after the first one.
            assert len(events.kinds("resync")) == 1
    finally:
        await a.close()
        await b.close()
        await srv.stop()


async def test_a_retry_that_reaches_the_server_brings_the_followers_back_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The followers back off up to 30 s between reconnects. A local retry falling due in
    that pause reached the restarted server and said "uploaded" while the watch still
    said offline; "online" and remote changes waited for the followers' next try."""
    caplog.set_level(logging.INFO, logger="blobsync.client.watch")
    monkeypatch.setattr(watch_module, "BACKOFF_FIRST", 120.0)  # the longest pause, at once
    srv, acct = await alice_on_restartable(tmp_path)
    a = await acct.device("a")
    b = await acct.device("b")
    try:
        async with watching(b) as events:
            await events.expect("resync")
            await srv.stop()
            await events.expect("offline")
            # Stored while the server is away: the upload fails and is retried (the test
            # devices' retry schedule is short).
            mine = await b.put(None, b"put while offline", upload=False)
            await asyncio.sleep(0.5)
            await srv.start()
            await events.expect("uploaded", mine)
            kinds = [ev.kind for ev in events.seen]
            assert kinds.index("online") < kinds.index("uploaded"), events.seen
            # The follower was woken too: a remote put arrives now, not in 120 s.
            theirs = await a.put(None, b"from a")
            await events.expect("downloaded", theirs)
            assert len(events.kinds("offline")) == 1 and len(events.kinds("online")) == 1
        # One WARNING, whose words say it once: it read "the server cannot be reached:
        # cannot reach the server (...)".
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1, warned
        assert warned[0].startswith("offline: cannot reach the server ("), warned
        assert warned[0].endswith("; retrying"), warned
    finally:
        await a.close()
        await b.close()
        await srv.stop()


async def test_leaving_the_iteration_stops_the_watch(devices) -> None:
    b = await devices("b")
    got: list[WatchEvent] = []
    async for ev in b.watch():
        got.append(ev)
        break  # leaving the loop closes the generator: its tasks stop
    assert got[0].kind == "resync"
    await asyncio.sleep(0.1)
    # No task of the watch is left running against the store.
    names = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
    assert not any("Watcher" in n for n in names), names


HOLD_THE_LOCK = textwrap.dedent("""
    import fcntl, sys, time
    with open(sys.argv[1], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


async def test_a_profile_held_long_by_another_process_only_delays_the_watch(devices) -> None:
    """Another process keeps the profile's writer lock past lock_wait (a big put, say):
    the watcher waits for it instead of ending with ProfileBusy."""
    a = await devices("a")
    b = await devices("b", lock_wait=0.2)
    async with watching(b) as events:
        await events.expect("resync")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_THE_LOCK, str(b.profile.home / "lock"), "2.0",
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"held\n"
        x = await a.put(None, b"while the profile was busy")
        await events.expect("downloaded", x, within=WAIT + 2)
        await proc.wait()
    assert await b.get(x) == b"while the profile was busy"


async def test_the_cli_watch_says_offline_once_and_online_on_stderr(tmp_path: Path) -> None:
    """`blobsync sync --watch` as a real process: the server stops and starts again on the
    same port; stderr says offline once and online once, stdout carries events only."""
    srv, acct = await alice_on_restartable(tmp_path)
    a = await acct.device("a")
    b = await acct.device("b")
    home = b.profile.home
    await b.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blobsync", "--home", str(home), "sync", "--watch",
        env=cli_env(), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"resync default")
        await srv.stop()
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.startswith(b"blobsync: offline: cannot reach the server"), line
        await asyncio.sleep(2.0)
        await srv.start()
        line = await asyncio.wait_for(proc.stderr.readline(), 40)
        assert line == b"blobsync: online again\n"
        x = await a.put(None, b"after")
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert line == f"downloaded default {x}\n".encode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        await a.close()
        await srv.stop()
    assert proc.returncode == 130
    assert rest == b"blobsync: error: interrupted\n"


NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
             b"Content-Length: 24\r\nConnection: close\r\n\r\n{\"error\": \"not found\"}\r\n")


async def test_a_watch_against_a_server_without_the_feed_lists_now_and_then(
    account: Account, devices
) -> None:
    """`/changes` answers 404 (a relay in front of the real server): the watch falls back
    to listing every few seconds, for the namespace and the incoming box, without
    hammering the server."""
    a = await devices("a")

    def no_feed(head: bytes) -> bytes | None:
        return NOT_FOUND if head.startswith(b"GET /changes/") else None

    async with relay_to(account.server.url, answer=no_feed) as relay:
        b = await device(account, "b", relay.url)
        consumer = Recorder()
        b.register_consumer(consumer)
        try:
            async with watching(b) as events:
                await events.expect("resync")
                x = await a.put(None, b"found by a listing")
                await deliver(account.server, "alice", {"mail-2": b"by a listing too"})
                await events.expect("downloaded", x, within=15)
                await events.expect("incoming", "mail-2", within=15)
                started = len(relay.requests)
                await asyncio.sleep(3.0)
                # A few listings in 3 s (one namespace, the incoming box), not a loop.
                assert len(relay.requests) - started <= 12, relay.lines()[started:]
                assert len([ln for ln in relay.lines() if ln.startswith("GET /changes/")]) <= 3
            assert consumer.saved == {"mail-2": b"BY A LISTING TOO"}
        finally:
            await b.close()
