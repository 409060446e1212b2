"""init, put, get, ls, rm, flags, sync and status through the real CLI, two devices."""

from __future__ import annotations

import os
from pathlib import Path

from blobsync.format import seal
from tests.helpers.cli import Device, assert_one_line_error, http
from tests.helpers.cli_output import put_ids


def test_put_get_and_recover_on_a_second_device(
    ready_a: Device, device_b: Device, tmp_path: Path
) -> None:
    payload = os.urandom(200_000) + b"\x00\n\r\xff"  # binary-safe, spans several chunks
    src = tmp_path / "photo.bin"
    src.write_bytes(payload)
    (blob_id,) = put_ids(ready_a.ok("put", str(src))).values()

    assert ready_a.run("get", blob_id).stdout == payload
    out = tmp_path / "copy.bin"
    ready_a.ok("get", blob_id, "-o", str(out))
    assert out.read_bytes() == payload

    # Device B: a wrong passphrase cannot recover the secret; the right one can.
    wrong = device_b.init("--recover", passphrase="not the passphrase")
    assert "passphrase" in assert_one_line_error(wrong, 3)
    right = device_b.init("--recover")
    assert right.returncode == 0, right.stderr.decode()

    # Before sync, B fetches on demand; after sync it holds the blob.
    assert device_b.run("get", blob_id).stdout == payload
    device_b.ok("sync")
    assert blob_id in device_b.ok("ls").split()
    out_b = tmp_path / "copy-b.bin"
    device_b.ok("get", blob_id, "-o", str(out_b))
    assert out_b.read_bytes() == payload


def test_init_with_secret_file_uses_that_secret(device_a: Device, tmp_path: Path) -> None:
    secret = os.urandom(128)
    secret_file = tmp_path / "secret.bin"
    secret_file.write_bytes(secret)
    proc = device_a.init("--secret-file", str(secret_file))
    assert proc.returncode == 0, proc.stderr.decode()

    # A blob sealed elsewhere with the same secret opens on this device: the file was used.
    account = device_a.account
    blob_id = "sealed-elsewhere"
    status, _ = http(
        "PUT", f"{account.server.url}/blobs/{account.user}/{blob_id}",
        body=seal(secret, blob_id, b"made with the secret file"),
        headers={"Authorization": account.auth()},
    )
    assert status == 200
    assert device_a.run("get", blob_id).stdout == b"made with the secret file"


def test_put_directory_ls_and_id_rules(ready_a: Device, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    files = {
        tree / "a.txt": b"alpha",
        tree / "sub" / "b.txt": b"beta",
        tree / "sub" / "deeper" / "c.bin": os.urandom(5000),
        tree / "empty": b"",
    }
    for path, data in files.items():
        path.write_bytes(data)
    ids = put_ids(ready_a.ok("put", str(tree)))
    assert set(ids) == {str(p) for p in files}
    assert len(set(ids.values())) == len(files)
    for path in (tree / "sub" / "deeper" / "c.bin", tree / "empty"):
        assert ready_a.run("get", ids[str(path)]).stdout == files[path]

    assert set(ready_a.ok("ls").split()) == set(ids.values())
    assert set(ready_a.ok("ls", "--remote").split()) == set(ids.values())
    assert ready_a.ok("ls", "--remote", "--count").strip() == str(len(files))
    # Order by date: the server's storing order, so both directions are reverses.
    oldest = ready_a.ok("ls", "--remote", "--order-by", "date").split()
    newest = ready_a.ok("ls", "--remote", "--order-by", "-date").split()
    assert oldest == newest[::-1] and set(oldest) == set(ids.values())

    # --id: exactly one file, and then that id.
    one = tmp_path / "one.txt"
    one.write_bytes(b"named")
    assert put_ids(ready_a.ok("put", "--id", "my-note", str(one))) == {str(one): "my-note"}
    assert ready_a.run("get", "my-note").stdout == b"named"
    assert_one_line_error(ready_a.run("put", "--id", "x", str(one), str(one)), 2)
    assert_one_line_error(ready_a.run("put", "--id", "x", str(tree)), 2)
    assert_one_line_error(ready_a.run("put", "--id", "bad/id", str(one)), 2)
    # A missing path fails before anything is stored.
    assert_one_line_error(ready_a.run("put", str(one), str(tmp_path / "nope")), 1)
    assert ready_a.ok("ls", "--count").strip() == str(len(files) + 1)


def test_namespaces_local_only_and_status(ready_a: Device, tmp_path: Path) -> None:
    src = tmp_path / "n.txt"
    src.write_bytes(b"in notes")
    (note,) = put_ids(ready_a.ok("put", "-n", "notes", str(src))).values()
    (private,) = put_ids(ready_a.ok("put", "--local-only", str(src))).values()
    assert ready_a.ok("ls", "-n", "notes", "--remote").split() == [note]
    assert note not in ready_a.ok("ls", "--remote").split()
    assert private in ready_a.ok("ls").split()
    assert private not in ready_a.ok("ls", "--remote").split()
    assert ready_a.run("get", note, "-n", "notes").stdout == b"in notes"
    assert_one_line_error(ready_a.run("get", note), 6)  # wrong namespace: no such blob

    # status: a table over every namespace.
    lines = ready_a.ok("status").splitlines()
    assert lines[0].split() == ["STATUS", "BLOBS"]
    rows = dict(line.split() for line in lines[1:])
    assert rows["SYNCED"] == "1"
    assert rows["LOCAL_ONLY"] == "1"
    assert rows["PENDING_UPLOAD"] == "0"
    assert rows["TOTAL"] == "2"
    assert ready_a.json("status", "-n", "notes")["statuses"]["LOCAL_ONLY"] == 0


def test_rm_both_ways_after_sync(ready_a: Device, ready_b: Device, tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    ids = put_ids(ready_a.ok("put", str(tmp_path / "x"), str(tmp_path / "y")))
    x, y = ids[str(tmp_path / "x")], ids[str(tmp_path / "y")]
    ready_b.ok("sync")
    assert set(ready_b.ok("ls").split()) == {x, y}

    ready_a.ok("rm", x)  # deleted on A, then B follows at its sync
    ready_b.ok("sync")
    assert ready_b.ok("ls").split() == [y]
    ready_b.ok("rm", y)  # and the other way round
    ready_a.ok("sync")
    assert ready_a.ok("ls").split() == []
    assert ready_a.ok("ls", "--remote").split() == []
    assert set(ready_a.ok("ls", "--remote", "--deleted").split()) == {x, y}
    assert ready_a.ok("ls", "--remote", "--deleted", "--count").strip() == "2"
    assert_one_line_error(ready_a.run("get", x), 6)
    assert_one_line_error(ready_b.run("rm", y), 6)


def test_flags(ready_a: Device, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"flag me")
    (blob_id,) = put_ids(ready_a.ok("put", str(src))).values()
    assert ready_a.ok("flags", blob_id) == ""
    shown = ready_a.ok("flags", blob_id, "--set", "processed", "FAILED").split()
    assert sorted(shown) == ["FAILED", "PROCESSED"]
    assert ready_a.ok("ls", "--remote", "--flag", "PROCESSED").split() == [blob_id]
    assert ready_a.ok("ls", "--remote", "--flag", "PENDING").split() == []
    assert ready_a.ok("flags", blob_id, "--set") == ""  # an empty --set clears
    assert ready_a.ok("flags", blob_id) == ""
    bad = ready_a.run("flags", blob_id, "--set", "DONE")
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    assert_one_line_error(ready_a.run("ls", "--flag", "PENDING"), 2)  # needs --remote


def test_sync_with_and_without_streams_ends_in_the_same_state(
    ready_a: Device, tmp_path: Path
) -> None:
    streamed, single = tmp_path / "streamed", tmp_path / "single"
    contents: dict[str, bytes] = {}
    for folder, flag in ((streamed, ()), (single, ("--no-stream",))):
        folder.mkdir()
        for i in range(3):
            (folder / f"{i}").write_bytes(os.urandom(100 + 900 * i))
        contents.update(
            {b: Path(p).read_bytes()
             for p, b in put_ids(ready_a.ok("put", *flag, str(folder))).items()}
        )
    assert set(ready_a.ok("ls", "--remote").split()) == set(contents)
    first, last = sorted(contents)[0], sorted(contents)[-1]

    states = []
    for name, flag in (("dev-stream", ()), ("dev-single", ("--no-stream",))):
        dev = Device(tmp_path / name, ready_a.account)
        assert dev.init("--recover").returncode == 0
        assert dev.json("sync", *flag)["downloaded"] == len(contents)
        assert dev.json("sync", *flag)["downloaded"] == 0  # nothing left to do
        # check verifies the tag of every local copy: all arrived intact.
        assert dev.ok("check").strip() == "no problems found"
        for blob_id in (first, last):
            assert dev.run("get", blob_id).stdout == contents[blob_id]
        status = dev.json("status")
        states.append((sorted(dev.ok("ls").split()), status))
        assert status["statuses"]["SYNCED"] == len(contents), status
        assert status["total"] == len(contents)
    assert states[0] == states[1]
    assert states[0][0] == sorted(contents)
