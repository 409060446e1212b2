"""What the server says at start-up: the temp files a dead process left (a crash mid-upload
can leave gigabytes) are counted in one INFO line, and IPv6 addresses are written in
brackets wherever an address is printed. Real server processes."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.server_cli import add_user, start_upload, wait_until
from tests.helpers.subproc import ServerProcess, blobsync, new_data_dir

from .conftest import sealed

TEMP_LINE = re.compile(
    r" INFO blobsync\.server\.storage\.files: removed (\d+) temp files \((\d+) bytes\) that "
    r"dead processes left in (\S+)\n"
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def temp_lines(server: ServerProcess) -> list[tuple[int, int, str]]:
    return [(int(m[1]), int(m[2]), m[3]) for m in TEMP_LINE.finditer(server.log)]


def leave_temps(data: Path, sizes: list[int]) -> Path:
    """Temp files as a process killed mid-write leaves them, under its pid's dir."""
    tmp = data / "blobs" / ".tmp" / str(dead_pid())
    tmp.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (tmp / f"{i:024x}").write_bytes(b"\0" * size)
    return tmp


def test_temp_files_of_a_dead_process_are_one_info_line(tmp_path: Path) -> None:
    data = Path(new_data_dir(tmp_path / "data"))
    tmp = leave_temps(data, [300_000, 12_345, 0])
    args = ("--data", str(data), "--port", "0", "--local-port", "0")
    server = ServerProcess(*args)
    try:
        assert not tmp.exists()
        assert temp_lines(server) == [(3, 312_345, str(data / "blobs" / ".tmp"))]
    finally:
        assert server.terminate() == 0
    # Nothing left: nothing said.
    server = ServerProcess(*args)
    assert server.terminate() == 0
    assert temp_lines(server) == []
    assert "Traceback" not in server.log


def test_temp_files_of_a_sigkilled_upload_are_reported(tmp_path: Path) -> None:
    """The case a user met: SIGKILL during a large upload, then a restart."""
    data = tmp_path / "data"
    add_user(data, "alice", "tok")
    args = ("--data", str(data), "--port", "0", "--local-port", "0")
    server = ServerProcess(*args)
    sock = None
    try:
        big = sealed("big", 8 << 20)
        sock = start_upload(server.url, "/blobs/alice/big", "tok", big[: 3 << 20], len(big))
        tmp = data / "blobs" / ".tmp" / str(server.pid)

        def on_disk() -> int:
            return sum(f.stat().st_size for f in tmp.iterdir()) if tmp.exists() else 0

        wait_until(lambda: on_disk() >= 2 << 20)
        server.kill()
        left = on_disk()
    finally:
        server.kill()
        if sock is not None:
            sock.close()
    server = ServerProcess(*args)
    try:
        assert not tmp.exists()
        assert temp_lines(server) == [(1, left, str(data / "blobs" / ".tmp"))]
    finally:
        assert server.terminate() == 0


def test_workers_report_the_temp_files_once(tmp_path: Path) -> None:
    # The master opens the store before any worker: it removes and reports; they find none.
    data = Path(new_data_dir(tmp_path / "data"))
    leave_temps(data, [70_000])
    server = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0",
                           "--workers", "2")
    try:
        server.wait_for_log("(worker 1,")
        server.wait_for_log("(worker 0,")
    finally:
        assert server.terminate() == 0
    assert temp_lines(server) == [(1, 70_000, str(data / "blobs" / ".tmp"))]


# --- IPv6 ---------------------------------------------------------------------------------


def free_port6() -> int:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def test_ipv6_addresses_are_bracketed_at_start_up(tmp_path: Path) -> None:
    port, local_port = free_port6(), free_port6()
    server = ServerProcess("--data", str(tmp_path / "d"), "--host", "::1", "--port",
                           str(port), "--local-host", "::1", "--local-port", str(local_port))
    try:
        server.wait_for_log("settings: ")
        with urllib.request.urlopen(server.url + "/", timeout=10) as r:
            assert r.status == 200
    finally:
        assert server.terminate() == 0
    [settings] = [line for line in server.log_lines if "settings: " in line]
    assert f"; public [::1]:{port}; incoming box [::1]:{local_port};" in settings
    assert (f"public API on http://[::1]:{port}, incoming box on http://[::1]:{local_port}"
            in server.log)
    assert "::1:" not in server.log.replace("[::1]:", "")


def test_ipv6_port_in_use_names_a_bracketed_address(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as busy:
        try:
            busy.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        busy.listen()
        port = busy.getsockname()[1]
        proc = blobsync("server", "--data", str(tmp_path / "d"), "--host", "::1", "--port",
                        str(port), "--local-port", "0", "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"blobsync: error: cannot listen on [::1]:{port}: "), \
        proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_host_port_brackets_ipv6_only() -> None:
    from blobsync.server.config import host_port

    assert host_port("::1", 2424) == "[::1]:2424"
    assert host_port("[::1]", 2424) == "[::1]:2424"
    assert host_port("fe80::1%eth0", 1) == "[fe80::1%eth0]:1"
    assert host_port("127.0.0.1", 2424) == "127.0.0.1:2424"
    assert host_port("localhost", 0) == "localhost:0"
