"""LISTEN for other processes' commits, on a PostgreSQL connection of this process's own.

``PostgresIndex.follow_commits`` runs ``listen``. Every transaction that appends to a user's
change feed also does ``pg_notify(channel, user)``, which PostgreSQL delivers to every
listening connection of the database when it commits (and drops when it rolls back), so
each server process learns of every other's commits at once, and pays nothing while none
happen. A notification is only a hint: the waiters it wakes re-read the feed.

The connection is not the pool's: LISTEN belongs to one session, which a pool (or a
transaction-mode pooler such as PgBouncer's default) would hand to others. The DSN must
reach PostgreSQL directly or through a session-mode pooler.

Connections get lost (a restart of the database, a network cut). The listener then logs one
warning, tries again after 0.5 s, doubling up to 30 s, and logs one line when it is back.
Commits made while it was away sent notifications to nobody, so after every connect, the
first included, it calls ``wake(None)``: every waiter re-reads its feed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger("blobsync.server.storage.postgres")

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# A network fault that drops packets without a reset leaves an idle connection looking
# fine; one tiny query this often finds it. It costs nothing worth measuring.
PROBE_INTERVAL = 30.0
PROBE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
APPLICATION_NAME = "blobsync-listen"


async def listen(
    dsn: str,
    channel: str,
    wake: Callable[[set[str] | None], None],
    where: str,
    *,
    retry_first: float = RETRY_FIRST,
    retry_max: float = RETRY_MAX,
    probe_interval: float = PROBE_INTERVAL,
) -> None:
    """Until cancelled: ``wake({user})`` per notification on ``channel``, ``wake(None)``
    after each (re)connect. ``where`` names the database in logs (no password)."""
    loop = asyncio.get_running_loop()
    delay = retry_first
    down = False
    while True:
        conn: asyncpg.Connection | None = None
        up_since: float | None = None
        try:
            conn = await asyncpg.connect(
                dsn,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": APPLICATION_NAME},
            )
            lost: asyncio.Future[None] = loop.create_future()
            conn.add_termination_listener(functools.partial(_settle, lost))
            await conn.add_listener(channel, lambda _c, _pid, _ch, user: wake({user}))
            up_since = loop.time()
            if down:
                log.info("listening for other processes' changes at %s again", where)
                down = False
            wake(None)  # what committed while nobody listened sent its notices to nobody
            await _until_lost(conn, lost, probe_interval)
            raise ConnectionError("the connection closed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a listener outlives whatever its connection does
            _stop_if_cancelled()  # asyncpg may answer a cancellation with an error of its own
            if not down:
                log.warning(
                    "not listening for other processes' changes at %s (%s: %s); "
                    "reconnecting with back-off, and waiters wake by their timeouts meanwhile",
                    where, type(exc).__name__, exc,
                )
                down = True
        finally:
            if conn is not None:
                await _close(conn)
        # A connection that stayed up a while starts the back-off afresh; one that keeps
        # dropping at once backs off as if it never came up.
        if up_since is not None and loop.time() - up_since >= retry_max:
            delay = retry_first
        _stop_if_cancelled()
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry_max)


def _stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop: a cancellation that an await
    swallowed (asyncpg turns some into errors of its own) must still end the loop, or
    whoever cancelled it (server shutdown) waits for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _settle(lost: asyncio.Future[None], _conn: object) -> None:
    if not lost.done():
        lost.set_result(None)


async def _until_lost(
    conn: asyncpg.Connection, lost: asyncio.Future[None], probe_interval: float
) -> None:
    while True:
        done, _ = await asyncio.wait({lost}, timeout=probe_interval)
        if done:
            return
        await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT)


async def _close(conn: asyncpg.Connection) -> None:
    # asyncpg's own timeout, not asyncio.wait_for: on Python 3.11, wait_for loses a
    # cancellation that lands as the close finishes (a lost connection closes at once).
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception:  # unreachable or already gone: drop the socket
        conn.terminate()
