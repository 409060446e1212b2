"""Names through the CLI (SPEC 11, issue 14): put records each file's path relative to
the parent of its argument, with its size, mtime and mode; ls -l and ls PREFIX show them;
get takes several ids, --name and -r PREFIX; rm the same; put - reads stdin; a file whose
name, size and mtime a blob holds is skipped. Everything through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.helpers.cli import Device, assert_one_line_error

MTIME = 1_600_000_000.0


def tree(root: Path) -> Path:
    """photos/a.jpg (mode 0600, a fixed mtime), photos/sub/b.txt, and photos2/c.txt: a
    name that starts like photos but is not under it."""
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"aaa")
    os.chmod(photos / "a.jpg", 0o600)
    (photos / "sub" / "b.txt").write_bytes(b"bbbb")
    for f in (photos / "a.jpg", photos / "sub" / "b.txt"):
        os.utime(f, (MTIME, MTIME))
    (root / "photos2").mkdir()
    (root / "photos2" / "c.txt").write_bytes(b"c")
    return photos


def listing(device: Device, *args: str) -> list[dict[str, object]]:
    doc = device.json("ls", "-l", *args)
    assert isinstance(doc, dict)
    return doc["blobs"]


def names(device: Device, *args: str) -> dict[str, str]:
    return {str(b["name"]): str(b["blob_id"]) for b in listing(device, *args)}


def test_put_names_files_relative_to_the_parent_of_the_argument(
    ready_a: Device, tmp_path: Path
) -> None:
    photos = tree(tmp_path)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "z.txt").write_bytes(b"z")
    (tmp_path / "x").mkdir()
    (tmp_path / "a.txt").write_bytes(b"top")
    ready_a.ok("put", "photos/", cwd=tmp_path)
    ready_a.ok("put", "a.txt", "./x/../y", cwd=tmp_path / "photos" / "..")
    assert sorted(names(ready_a)) == ["a.txt", "photos/a.jpg", "photos/sub/b.txt", "y/z.txt"]
    blobs = {b["name"]: b for b in listing(ready_a)}
    assert blobs["photos/a.jpg"]["size"] == 3
    assert blobs["photos/a.jpg"]["mtime"] == MTIME
    assert blobs["photos/a.jpg"]["status"] == "SYNCED"
    # The absolute spelling names them the same: all already stored.
    again = ready_a.run("put", str(photos))
    assert again.returncode == 0, again.stderr.decode()
    assert again.stderr.decode() == "blobsync: 2 already stored, 0 stored\n"


def test_a_file_with_a_stored_name_size_and_mtime_is_skipped(
    ready_a: Device, tmp_path: Path
) -> None:
    """Not only the same path: the same tree elsewhere (another checkout, another
    device's copy) has the names, sizes and mtimes a blob holds."""
    photos = tree(tmp_path / "one")
    first = ready_a.ok("put", str(photos))
    copy = tmp_path / "two" / "photos"
    shutil.copytree(photos, copy)  # copy2: mtimes kept
    (copy / "new.txt").write_bytes(b"only here")
    again = ready_a.run("put", str(copy))
    assert again.returncode == 0, again.stderr.decode()
    assert again.stderr.decode() == "blobsync: 2 already stored, 1 stored\n"
    ids = dict(line.split("\t")[::-1] for line in again.stdout.decode().splitlines())
    assert ids[str(copy / "a.jpg")] in first
    # A changed mtime is another file; --force stores even the same one again.
    os.utime(copy / "a.jpg", (MTIME + 1, MTIME + 1))
    changed = ready_a.run("put", str(copy))
    assert changed.stderr.decode() == "blobsync: 2 already stored, 1 stored\n"
    forced = ready_a.run("put", "--force", str(copy))
    assert forced.returncode == 0 and forced.stderr == b""
    assert ready_a.ok("ls", "--remote", "--count").strip() == "7"


def test_a_file_another_device_stored_is_skipped(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    photos = tree(tmp_path)
    ready_a.ok("put", str(photos / "a.jpg"))
    ids = names(ready_a)
    ready_b.ok("sync")  # the meta travels with the listing (SPEC 11)
    assert names(ready_b) == {"a.jpg": ids["a.jpg"]}
    again = ready_b.run("put", str(photos / "a.jpg"))
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout.decode() == f"{ids['a.jpg']}\t{photos / 'a.jpg'}\n"
    assert again.stderr.decode() == "blobsync: 1 already stored, 0 stored\n"
    assert ready_b.ok("ls", "--remote", "--count").strip() == "1"


def test_ls_long_is_aligned_and_prefix_takes_whole_parts(
    ready_a: Device, tmp_path: Path
) -> None:
    tree(tmp_path)
    ready_a.ok("put", "photos", "photos2", cwd=tmp_path)
    ready_a.ok("put", "-", input=b"no name: no meta")
    lines = ready_a.ok("ls", "-l").splitlines()
    assert len(lines) == 4
    # The unnamed blob first, with no date and an empty name; columns line up.
    assert lines[0].split()[1:] == ["16", "-"]
    named = lines[1:]
    assert [ln.split()[-1] for ln in named] == ["photos/a.jpg", "photos/sub/b.txt",
                                                "photos2/c.txt"]
    assert len({ln.index("photos") for ln in named}) == 1
    assert len({ln.index("  20") for ln in named[:2]}) == 1
    assert lines[1].split()[1] == "3"
    doc = ready_a.json("ls", "-l")
    unnamed = [b for b in doc["blobs"] if b["name"] == ""]
    assert len(unnamed) == 1 and unnamed[0]["mtime"] is None and unnamed[0]["size"] == 16
    assert set(doc["blobs"][1]) == {"blob_id", "name", "size", "mtime", "status"}
    # photos takes photos/..., never photos2/...; with a trailing slash the same.
    assert sorted(names(ready_a, "photos")) == ["photos/a.jpg", "photos/sub/b.txt"]
    assert sorted(names(ready_a, "photos/")) == ["photos/a.jpg", "photos/sub/b.txt"]
    assert list(names(ready_a, "photos/sub/b.txt")) == ["photos/sub/b.txt"]
    assert "no blob named 'phot'" in assert_one_line_error(ready_a.run("ls", "phot"), 6)
    assert len(ready_a.ok("ls", "photos").split()) == 2
    assert ready_a.ok("ls", "--count", "photos").strip() == "2"
    # --remote keeps listing the server's ids; names are read here only.
    assert len(ready_a.ok("ls", "--remote").split()) == 4
    assert_one_line_error(ready_a.run("ls", "--remote", "-l"), 2)


def test_get_by_name_several_ids_and_stdout(ready_a: Device, tmp_path: Path) -> None:
    photos = tree(tmp_path)
    ready_a.ok("put", str(photos))
    ids = names(ready_a)
    a, b = ids["photos/a.jpg"], ids["photos/sub/b.txt"]
    assert ready_a.run("get", a).stdout == b"aaa"
    assert ready_a.run("get", a, "-o", "-").stdout == b"aaa"
    assert ready_a.run("get", "--name", "photos/sub/b.txt").stdout == b"bbbb"
    out = tmp_path / "one.txt"
    ready_a.ok("get", "--name", "photos/a.jpg", "-o", str(out))
    assert out.read_bytes() == b"aaa"
    assert "no blob named" in assert_one_line_error(
        ready_a.run("get", "--name", "photos/none"), 6)
    # Several ids: each to DIR/<its name>, a blob without a name to DIR/<its id>.
    plain = ready_a.ok("put", "-", input=b"plain").split("\t")[0]
    assert "need -o DIR" in assert_one_line_error(ready_a.run("get", a, b), 2)
    dest = tmp_path / "several"
    shown = ready_a.ok("get", a, b, plain, "-o", str(dest))
    assert shown.splitlines() == [f"{a}\t{dest}/photos/a.jpg", f"{b}\t{dest}/photos/sub/b.txt",
                                  f"{plain}\t{dest}/{plain}"]
    assert (dest / "photos" / "sub" / "b.txt").read_bytes() == b"bbbb"
    assert (dest / plain).read_bytes() == b"plain"
    # Two blobs of one name: get --name lists them and exits 2, choosing none.
    os.utime(photos / "a.jpg", (MTIME + 60, MTIME + 60))
    ready_a.ok("put", str(photos))
    line = assert_one_line_error(ready_a.run("get", "--name", "photos/a.jpg"), 2)
    assert "2 blobs are named 'photos/a.jpg'" in line and a in line
    assert_one_line_error(ready_a.run("get", a, "--name", "photos/a.jpg"), 2)


def test_get_r_restores_a_tree_with_mtimes_and_modes(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    photos = tree(tmp_path)
    ready_a.ok("put", str(photos), str(tmp_path / "photos2"))
    ready_b.ok("sync")
    # The device that put them, and another one that learnt the names from the server.
    for device in (ready_a, ready_b):
        dest = tmp_path / f"restored-{device.home.name}"
        out = device.ok("get", "-r", "photos", "-o", str(dest))
        assert len(out.splitlines()) == 2
        got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
        assert got == ["photos/a.jpg", "photos/sub/b.txt"]
        st = os.stat(dest / "photos" / "a.jpg")
        assert st.st_mtime == MTIME
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (dest / "photos" / "sub" / "b.txt").read_bytes() == b"bbbb"
    assert listing(ready_b, "photos") == listing(ready_a, "photos")
    # Of two blobs of one name, the newest is written.
    (photos / "a.jpg").write_bytes(b"newer")
    os.utime(photos / "a.jpg", (MTIME + 5, MTIME + 5))
    ready_a.ok("put", str(photos))
    again = tmp_path / "again"
    ready_a.ok("get", "-r", "photos/", "-o", str(again))
    assert (again / "photos" / "a.jpg").read_bytes() == b"newer"
    assert "no blob named" in assert_one_line_error(
        ready_a.run("get", "-r", "nothing", "-o", str(again)), 6)
    assert "need -o DIR" in assert_one_line_error(ready_a.run("get", "-r", "photos"), 2)


async def _rename(home: Path, blob_id: str, name: str) -> None:
    """What a hostile or broken device's meta would leave in the store, bypassing the
    checks a meta passes on its way in: the refusal on the way out must hold anyway."""
    from blobsync.client import BlobManager

    m = await BlobManager.open(home, passphrase=Device.passphrase)
    try:
        await m.store._run(lambda: m.store._conn.execute(
            "UPDATE blobs SET name = ? WHERE blob_id = ?", (name, blob_id)))
    finally:
        await m.close()


def test_get_r_refuses_names_outside_the_directory(ready_a: Device, tmp_path: Path) -> None:
    photos = tree(tmp_path)
    ready_a.ok("put", str(photos))
    ids = names(ready_a)
    asyncio.run(_rename(ready_a.home, ids["photos/a.jpg"], "photos/../../escaped"))
    dest = tmp_path / "d" / "restored"
    proc = ready_a.run("get", "-r", "photos", "-o", str(dest))
    assert proc.returncode == 7, proc.stderr.decode()
    err = proc.stderr.decode().splitlines()
    assert err[0] == (f"blobsync: refused 'photos/../../escaped' (blob {ids['photos/a.jpg']}): "
                      f"the name would land outside {dest}")
    assert err[1].startswith("blobsync: error: incomplete: 1 of 2 blobs not written")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "d" / "escaped").exists()
    assert (dest / "photos" / "sub" / "b.txt").read_bytes() == b"bbbb"
    # A link already in DIR that leads out of it is not followed either.
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "outside").mkdir()
    (linked / "photos").symlink_to(tmp_path / "outside")
    proc = ready_a.run("get", "-r", "photos/sub", "-o", str(linked))
    assert proc.returncode == 7, proc.stderr.decode()
    assert "leads outside" in proc.stderr.decode()
    assert list((tmp_path / "outside").iterdir()) == []


def test_put_stdin_is_spooled_privately_and_named(ready_a: Device, tmp_path: Path) -> None:
    big = os.urandom(3 << 20)  # past the inline size: sealed from the spool file
    blob_id = ready_a.ok("put", "-", "--name", "dumps/big.bin", input=big).split("\t")
    assert blob_id[1] == "-\n"
    assert ready_a.run("get", "--name", "dumps/big.bin").stdout == big
    assert names(ready_a) == {"dumps/big.bin": blob_id[0]}
    assert list((ready_a.home).rglob("*.tmp")) == []
    small = ready_a.ok("put", "-", input=b"tiny").split("\t")[0]
    assert ready_a.run("get", small).stdout == b"tiny"
    assert names(ready_a)[""] == small  # no --name: no name
    assert_one_line_error(ready_a.run("put", "-", str(tmp_path)), 2)
    assert_one_line_error(ready_a.run("put", "-", "--name", "../x", input=b"x"), 2)
    assert_one_line_error(ready_a.run("put", "--name", "x", str(tmp_path)), 2)


def test_rm_several_ids_by_name_and_by_prefix(ready_a: Device, tmp_path: Path) -> None:
    tree(tmp_path)
    ready_a.ok("put", "photos", "photos2", cwd=tmp_path)
    extra = [ready_a.ok("put", "-", input=str(i).encode()).split("\t")[0] for i in range(3)]
    ready_a.ok("rm", extra[0], extra[1])
    ready_a.ok("rm", "--name", "photos2/c.txt")
    assert sorted(names(ready_a)) == ["", "photos/a.jpg", "photos/sub/b.txt"]
    ready_a.ok("rm", "-r", "photos")
    assert list(names(ready_a)) == [""]
    assert ready_a.ok("ls", "--remote").split() == [extra[2]]
    # One id missing: the others are deleted all the same, and the exit code says so.
    proc = ready_a.run("rm", "nosuchblob", extra[2])
    assert proc.returncode == 6, proc.stderr.decode()
    assert ready_a.ok("ls", "--remote") == ""
    assert_one_line_error(ready_a.run("rm", "-r", "photos"), 6)
    assert_one_line_error(ready_a.run("rm"), 2)


def test_dry_run_changes_nothing(ready_a: Device, ready_b: Device, tmp_path: Path) -> None:
    photos = tree(tmp_path)

    def state() -> tuple[str, str, str]:
        return (ready_a.ok("ls", "-l"), ready_a.ok("ls", "--remote"), ready_b.ok("ls", "-l"))

    before = state()
    dry = ready_a.run("put", "--dry-run", str(photos))
    assert dry.returncode == 0, dry.stderr.decode()
    assert dry.stdout.decode().splitlines() == [str(photos / "a.jpg"),
                                                str(photos / "sub" / "b.txt")]
    assert dry.stderr.decode() == ("blobsync: dry run: 2 would be stored, 0 already "
                                   "stored; nothing was stored\n")
    doc = ready_a.json("put", "--dry-run", str(photos))
    assert [w["name"] for w in doc["would_store"]] == ["photos/a.jpg", "photos/sub/b.txt"]
    assert state() == before

    ready_a.ok("put", str(photos))
    before = state()
    assert ready_a.json("put", "--dry-run", str(photos))["would_store"] == []
    ids = names(ready_a)
    shown = ready_a.ok("rm", "--dry-run", "-r", "photos")
    assert shown.splitlines() == [f"{ids['photos/a.jpg']}\tphotos/a.jpg",
                                  f"{ids['photos/sub/b.txt']}\tphotos/sub/b.txt"]
    ready_a.ok("rm", "--dry-run", ids["photos/a.jpg"])
    plan = ready_b.json("sync", "--dry-run")
    assert sorted(plan["download"]) == sorted(ids.values())
    assert ready_b.ok("sync", "--dry-run").splitlines()[-1] == (
        "would download 2, upload 0, delete here 0, delete on the server 0")
    assert state() == before
    ready_b.ok("sync")
    ready_a.ok("rm", ids["photos/a.jpg"])
    plan = ready_b.json("sync", "--dry-run")
    assert plan["delete_here"] == [ids["photos/a.jpg"]] and plan["download"] == []
    assert ready_b.ok("ls").split().count(ids["photos/a.jpg"]) == 1


def test_incomplete_put_says_its_counts_in_the_same_words(
    ready_a: Device, tmp_path: Path
) -> None:
    photos = tree(tmp_path)
    ready_a.ok("put", str(photos))
    os.mkfifo(photos / "fifo")
    (photos / "new.txt").write_bytes(b"new")
    line = assert_one_line_error_after_skips(ready_a.run("put", str(photos)), 7)
    assert line.endswith("2 already stored, 1 stored"), line


def assert_one_line_error_after_skips(proc: object, code: int) -> str:
    err = proc.stderr.decode().splitlines()  # type: ignore[attr-defined]
    assert proc.returncode == code, err  # type: ignore[attr-defined]
    assert err[0].startswith("blobsync: skipped ")
    assert len(err) == 2 and err[1].startswith("blobsync: error: incomplete:"), err
    return err[1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_json_ls_long_keys(ready_a: Device, tmp_path: Path, fmt: str) -> None:
    tree(tmp_path)
    ready_a.ok("put", "photos", cwd=tmp_path)
    if fmt == "json":
        doc = json.loads(ready_a.ok("--json", "ls", "-l", "photos/sub"))
        assert doc["blobs"][0]["name"] == "photos/sub/b.txt"
        assert doc["blobs"][0]["size"] == 4
    else:
        assert ready_a.ok("ls", "-l", "photos/sub").rstrip().endswith("photos/sub/b.txt")


def test_put_stdin_never_reads_the_passphrase_from_the_data(ready_a: Device) -> None:
    """With no terminal and no passphrase given, other commands read the passphrase from
    stdin; for `put -` stdin is the data, and its first line is no passphrase."""
    from tests.helpers.cli import blobsync

    env = ready_a.env()
    del env["BLOBSYNC_PASSPHRASE"]
    proc = blobsync("--home", str(ready_a.home), "put", "-", env=env,
                    input=ready_a.passphrase.encode() + b"\nthe data\n")
    message = assert_one_line_error(proc, 2)
    assert "stdin is the data" in message
    assert ready_a.ok("ls").strip() == ""


def test_ls_prefix_without_a_blob_says_so(ready_a: Device, tmp_path: Path) -> None:
    tree(tmp_path)
    ready_a.ok("put", "photos", cwd=tmp_path)
    assert "no blob named 'photo'" in assert_one_line_error(ready_a.run("ls", "photo"), 6)
    assert ready_a.ok("ls", "photo", "--count").strip() == "0"
    assert len(ready_a.ok("ls", "photos").split()) == 2


def test_put_skips_by_name_before_the_blob_last_put_from_the_path(
    ready_a: Device, tmp_path: Path
) -> None:
    """`put w/sub` after `put w` names the same file `sub/x.txt`, another name; a later
    `put w` must find the blob named `w/sub/x.txt`, not the one last put from that path."""
    sub = tmp_path / "w" / "sub"
    sub.mkdir(parents=True)
    (sub / "x.txt").write_bytes(b"x")
    first = ready_a.ok("put", "w", cwd=tmp_path).split("\t")[0]
    second = ready_a.ok("put", "--force", "w/sub", cwd=tmp_path).split("\t")[0]
    assert names(ready_a) == {"w/sub/x.txt": first, "sub/x.txt": second}
    again = ready_a.run("put", "w", cwd=tmp_path)
    assert again.stdout.decode().split("\t")[0] == first
    assert again.stderr.decode() == "blobsync: 1 already stored, 0 stored\n"
    ready_a.ok("rm", "-r", "sub")
    third = ready_a.run("put", "w", cwd=tmp_path)
    assert third.stdout.decode().split("\t")[0] == first
    assert names(ready_a) == {"w/sub/x.txt": first}
