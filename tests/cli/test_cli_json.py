"""`--json`: every client command leaves exactly one JSON document on stdout."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tests.helpers.cli import Device


def test_json_documents(ready_a: Device, device_b: Device, tmp_path: Path) -> None:
    data = os.urandom(70_001)  # not a multiple of 3: the streamed base64 must pad right
    src = tmp_path / "j.bin"
    src.write_bytes(data)

    put = ready_a.json("put", str(src))
    assert put["uploaded"] == 1 and put["namespace"] == "default"
    (blob,) = put["blobs"]
    assert blob["path"] == str(src)
    blob_id = blob["id"]

    got = ready_a.json("get", blob_id)
    assert base64.b64decode(got["data_base64"]) == data
    assert got["size"] == len(data) and got["id"] == blob_id
    out = tmp_path / "o.bin"
    got = ready_a.json("get", blob_id, "-o", str(out))
    assert got["size"] == len(data) and out.read_bytes() == data

    assert ready_a.json("ls")["ids"] == [blob_id]
    assert ready_a.json("ls", "--remote", "--count")["count"] == 1
    assert ready_a.json("flags", blob_id, "--set", "PENDING")["flags"] == ["PENDING"]
    sync = ready_a.json("sync")
    assert sync["failed"] == [] and sync["uploaded"] == 0
    assert ready_a.json("status")["statuses"]["SYNCED"] == 1
    assert ready_a.json("check") == {"ok": True, "problems": [], "remote": False}
    assert ready_a.json("check", "--remote")["ok"] is True

    proc = device_b.run("--json", "init", "--server", device_b.account.server.url,
                        "--user", device_b.account.user, "--token", device_b.account.token,
                        "--recover")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["recovered"] is True
    assert device_b.json("sync")["downloaded"] == 1
    assert device_b.json("rm", blob_id)["deleted"] is True
    assert ready_a.json("sync")["deleted_local"] == 1
    assert ready_a.json("ls", "--remote", "--deleted")["ids"] == [blob_id]

    # --json after the command works too.
    assert json.loads(ready_a.ok("ls", "--json"))["ids"] == []
