"""The client reads a Content-Range answer's start and size; a malformed one is the
server's fault (502), never a crash."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("value", [None, "", "bytes", "items 0-9/10", "bytes x-9/10",
                                   "bytes 0-9/ten", "octets 0-9/10"])
def test_a_malformed_content_range_is_the_servers_fault(value: str | None) -> None:
    from blobsync.client.errors import ServerError
    from blobsync.client.transport import _content_range

    with pytest.raises(ServerError) as exc:
        _content_range(value, "GET b")
    assert exc.value.status == 502


def test_content_range_parses_start_and_size() -> None:
    from blobsync.client.transport import _content_range

    assert _content_range("bytes 5-9/10", "GET b") == (5, 10)
    assert _content_range("bytes 5-9/*", "GET b") == (5, None)
