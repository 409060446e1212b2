"""What a person at a terminal sees, under a real pseudo-terminal: stdout carries the
results (ids, a blob's bytes) whatever stderr is, and the progress bars never swallow them
nor mix with them.

The child gets the pty's slave side on stderr (so bars are drawn, as at a terminal) and on
stdout too, or a file; the test reads the master side to the end, as the terminal would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.helpers.cli import Device
from tests.helpers.ptyscreen import BAR_CHARS, on_terminal, shown_lines


def make_files(tmp_path: Path) -> list[Path]:
    t1 = tmp_path / "t1.txt"
    t1.write_bytes(b"a small text\n")
    big = tmp_path / "5m.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    return [t1, big]


def id_lines(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in text.splitlines()]  # type: ignore[misc]


def test_put_ids_go_to_stdout_when_stderr_is_a_terminal(ready_a: Device,
                                                        tmp_path: Path) -> None:
    """`blobsync put t1.txt 5m.bin > ids.txt` at a terminal: the ids are in the file (they
    used to be drawn on the terminal by the progress bars, the file left empty)."""
    files = make_files(tmp_path)
    ids = tmp_path / "ids.txt"
    code, seen = on_terminal(ready_a, "put", *map(str, files), stdout=ids)
    assert code == 0, seen.decode(errors="replace")
    lines = id_lines(ids.read_text())
    assert [path for _, path in lines] == [str(f) for f in files]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,254}", blob_id) for blob_id, _ in lines)
    # Nothing but the bars on the terminal: no id there.
    for blob_id, _ in lines:
        assert blob_id.encode() not in seen
    assert ready_a.ok("get", lines[0][0]).encode() == files[0].read_bytes()


def test_put_ids_show_above_the_bars_on_a_shared_terminal(ready_a: Device,
                                                          tmp_path: Path) -> None:
    """stdout and stderr the same terminal: every id line shows, each on a line of its
    own, never run into a bar."""
    files = make_files(tmp_path)
    code, seen = on_terminal(ready_a, "put", *map(str, files))
    assert code == 0, seen.decode(errors="replace")
    shown = shown_lines(seen)
    assert any(c in line for line in shown for c in BAR_CHARS), shown  # bars were drawn
    ids = ready_a.ok("ls").split()
    assert len(ids) == 2
    for blob_id in ids:
        mine = [line for line in shown if line.startswith(blob_id)]
        assert len(mine) == 1, shown
        # The path follows the id on that line (rich writes the TAB as spaces).
        assert mine[0].split() in ([blob_id, str(files[0])], [blob_id, str(files[1])]), mine
        assert not any(c in mine[0] for c in BAR_CHARS)


def test_get_to_a_file_holds_exactly_the_blob_with_stderr_a_terminal(
    ready_a: Device, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024) + b"hello world\n"
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    blob_id = ready_a.ok("put", str(src)).split("\t")[0]
    out = tmp_path / "out.bin"
    code, seen = on_terminal(ready_a, "get", blob_id, stdout=out)
    assert code == 0, seen.decode(errors="replace")
    assert out.read_bytes() == data
    assert b"hello world" not in seen


def test_get_at_a_terminal_shows_the_content_alone(ready_a: Device, tmp_path: Path) -> None:
    """`blobsync get a1` at a terminal printed `get a1 ━━━… hello world`: the content ran
    into the bar. The content must stand on its own lines."""
    src = tmp_path / "a1.txt"
    src.write_bytes(b"hello world\nsecond line\n")
    ready_a.ok("put", "--id", "a1", str(src))
    code, seen = on_terminal(ready_a, "get", "a1")
    assert code == 0, seen.decode(errors="replace")
    shown = shown_lines(seen)
    assert "hello world" in shown and "second line" in shown, shown
    assert not any(c in line for line in shown for c in BAR_CHARS), shown
