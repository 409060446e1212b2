"""Wording of usage errors a new user meets."""

from __future__ import annotations

from tests.helpers.cli import Device, assert_one_line_error


def test_server_only_ls_options_say_they_need_remote(ready_a: Device) -> None:
    """One option "needs --remote" (it read "--flag need --remote"); several "need" it."""
    line = assert_one_line_error(ready_a.run("ls", "--flag", "PENDING"), 2)
    assert line == ("blobsync: error: --flag needs --remote: flags, dates and deletions "
                    "are known to the server")
    line = assert_one_line_error(
        ready_a.run("ls", "--flag", "PENDING", "--order-by", "date", "--deleted"), 2)
    assert line == ("blobsync: error: --flag, --order-by and --deleted need --remote: flags, "
                    "dates and deletions are known to the server")


def test_max_wait_takes_no_negative_seconds(ready_a: Device) -> None:
    for bad in ("-5", "soon", "inf"):
        line = assert_one_line_error(ready_a.run("sync", f"--max-wait={bad}"), 2)
        assert "--max-wait" in line and bad in line, line
    ready_a.ok("sync", "--max-wait", "0")
