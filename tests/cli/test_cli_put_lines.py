"""put prints a line per stored blob; those of one batch go to stdout in one write
(issue 13: a write and flush per line cost a syscall each)."""

from __future__ import annotations

import asyncio
import io
import sys

from blobsync.cli.output import Output


class CountingStdout(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_lines_of_one_loop_turn_are_one_write(monkeypatch) -> None:
    fake = CountingStdout()
    monkeypatch.setattr(sys, "stdout", fake)
    out = Output(json_mode=False)

    async def batch_then_another() -> None:
        for i in range(3):
            out.line_soon(f"id{i}\tpath{i}")
        assert fake.getvalue() == ""  # not yet: at the end of this turn of the loop
        await asyncio.sleep(0)
        assert fake.getvalue() == "id0\tpath0\nid1\tpath1\nid2\tpath2\n"
        assert fake.writes == 1
        out.line_soon("id3\tpath3")
        out.line("plain")  # a line at once still comes after those given before it

    asyncio.run(batch_then_another())
    assert fake.getvalue().splitlines()[3:] == ["id3\tpath3", "plain"]


def test_lines_left_when_the_loop_ends_are_written(monkeypatch) -> None:
    fake = CountingStdout()
    monkeypatch.setattr(sys, "stdout", fake)
    out = Output(json_mode=False)

    async def fail_after_lines() -> None:
        out.line_soon("id0\tp")
        raise RuntimeError("stop")

    try:
        asyncio.run(fail_after_lines())
    except RuntimeError:
        pass
    out.flush_lines()  # what the command runner does at the end, error or not
    assert fake.getvalue() == "id0\tp\n"
    json_out = Output(json_mode=True)

    async def json_mode() -> None:
        json_out.line_soon("dropped")

    asyncio.run(json_mode())
    json_out.flush_lines()
    assert fake.getvalue() == "id0\tp\n"
