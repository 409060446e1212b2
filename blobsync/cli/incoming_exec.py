"""An incoming-box consumer that hands each message to a shell command.

``blobsync incoming process --exec CMD`` runs CMD once per message with the payload on its
stdin and BLOBSYNC_BLOB_ID in its environment; exit status 0 means processed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class ExecFailed(Exception):
    """The command exited non-zero: the library flags the message FAILED."""


@dataclass
class ExecConsumer:
    """Implements ``blobsync.client.IncomingStreamConsumer`` (process_stream, then save),
    and the plain ``IncomingConsumer`` too."""

    command: str
    # In --json mode the command's stdout would break our JSON document, so it goes to
    # stderr; otherwise the command shares our stdout.
    stdout_to_stderr: bool = False
    outcomes: list[tuple[str, str]] = field(default_factory=list)

    async def process(self, blob_id: str, payload: bytes) -> int:
        async def chunks() -> AsyncIterator[bytes]:
            yield payload

        return await self.process_stream(blob_id, chunks(), len(payload))

    async def process_stream(self, blob_id: str, chunks: AsyncIterator[bytes], size: int) -> int:
        """The library calls this one: the message is piped in chunks, never held whole."""
        env = dict(os.environ, BLOBSYNC_BLOB_ID=blob_id)
        proc = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=2 if self.stdout_to_stderr else None,
            env=env,
        )
        assert proc.stdin is not None
        try:
            async for chunk in chunks:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command exited without reading all of its stdin: its status decides
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        code = await proc.wait()
        if code != 0:
            self.outcomes.append((blob_id, f"FAILED (exit status {code})"))
            raise ExecFailed(f"{self.command!r} exited with status {code} for {blob_id}")
        return code

    async def save(self, blob_id: str, result: object) -> None:
        # The command has already done whatever keeping means to it.
        self.outcomes.append((blob_id, "PROCESSED"))

    def take_outcome(self, blob_id: str) -> str | None:
        """The latest outcome of ``blob_id``, forgotten here: a watch takes each as its
        message is told, so the list does not grow for as long as the watch runs."""
        for i in range(len(self.outcomes) - 1, -1, -1):
            if self.outcomes[i][0] == blob_id:
                return self.outcomes.pop(i)[1]
        return None
