"""Which files put collects from its arguments: directories walked in order, what is
left out recorded, a missing path refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from blobsync.cli import collect


def test_collect_files_walks_directories_in_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "z").mkdir(parents=True)
    for rel in ("d/b", "d/a", "d/z/c", "top"):
        (tmp_path / rel).write_text(rel)
    found = collect.collect_files([str(tmp_path / "top"), str(tmp_path / "d")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["top", "d/a", "d/b", "d/z/c"]


def test_collect_files_records_what_it_leaves_out(tmp_path: Path) -> None:
    """Nothing is dropped silently: every entry not collected is in ``skipped``, why
    included, and a link to a directory inside is not followed (no loop)."""
    import os

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    os.mkfifo(tmp_path / "d" / "p")
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "gone").symlink_to(tmp_path / "missing")
    skipped: list[collect.Skip] = []
    found = collect.collect_files([str(tmp_path / "d")], skipped)
    assert found == [tmp_path / "d" / "f"]
    assert [(s.path.name, s.reason) for s in skipped] == [
        ("gone", "dangling symlink"), ("loop", "symlink to a directory, not followed"),
        ("p", "FIFO")]


def test_collect_files_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        collect.collect_files([str(tmp_path / "missing")])


def test_collect_sources_gives_each_file_its_source(tmp_path: Path, monkeypatch) -> None:
    """The walk's open of each file gives put its source (what ``file_source`` takes:
    absolute path with links not resolved, size, mtime), so that put stats nothing again;
    a relative argument gives absolute paths, a link names itself."""
    import os

    from blobsync.client.putting import file_source

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"aa")
    (tmp_path / "d" / "sub" / "b").write_bytes(b"bbb")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "d" / "a")
    (tmp_path / "top").write_bytes(b"t")
    monkeypatch.chdir(tmp_path)
    found = collect.collect_sources(["d", "top"])
    assert [str(p) for p, _ in found] == ["d/a", "d/link", "d/sub/b", "top"]
    for path, src in found:
        assert src == file_source(path)
        assert src.path == os.path.join(str(tmp_path), str(path))
    monkeypatch.chdir(tmp_path / "d")
    assert [(str(p), s.path) for p, s in collect.collect_sources(["."])][0] == (
        "a", str(tmp_path / "d" / "a"))
