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
