"""Guard rails for the operator: service names the server does not use are refused, the
settings in effect are logged at start-up (secrets masked), and a public port beyond
loopback without TLS is warned about. Real processes, as an operator runs them."""

from __future__ import annotations

from pathlib import Path

from tests.harness.s3 import S3Endpoint
from tests.helpers.server_cli import call, ok_token, one_line_error, self_signed
from tests.helpers.subproc import ServerProcess, blobsync, cli_env, new_data_dir


def settings_lines(server: ServerProcess) -> list[str]:
    server.wait_for_log("settings: ")
    return [line for line in server.log_lines if "settings: " in line]


def warnings(server: ServerProcess) -> list[str]:
    return [line for line in server.log_lines if " WARNING " in line]


def test_service_add_refuses_names_the_server_does_not_use(tmp_path: Path) -> None:
    data = new_data_dir(tmp_path / "d")
    proc = blobsync("service", "add", "smtp", "--data", data)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""  # no token was made
    line = one_line_error(proc)
    assert "smtp" in line and "incoming" in line
    assert blobsync("service", "list", "--data", data).stdout == ""
    # The one it uses still works, and one added before this check can still be removed.
    ok_token(blobsync("service", "add", "incoming", "--data", data))
    assert blobsync("service", "list", "--data", data).stdout.split() == ["incoming"]


def test_startup_logs_the_settings_once(tmp_path: Path) -> None:
    data = tmp_path / "d"
    server = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0",
                           "--quota", "10G", "--max-blob-size", "512M")
    try:
        [line] = settings_lines(server)
    finally:
        assert server.terminate() == 0
    assert f"data {data};" in line
    assert "metadata SQLite in the data dir;" in line
    assert "payload SQLite and files in the data dir;" in line
    assert "quota 10G;" in line and "max blob size 512M;" in line
    assert "max stream size 1G;" in line
    assert "TLS off;" in line and "workers 1;" in line
    assert warnings(server) == []  # loopback: nothing to warn about


def test_startup_settings_mask_secrets(tmp_path: Path, postgres_db: str,
                                       s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    # The test server trusts local connections, so a password in the URL is accepted as is.
    password = "hunter2-not-for-logs"
    user, _, rest = postgres_db.removeprefix("postgresql://").partition("@")
    metadata = f"postgresql://{user}:{password}@{rest}?sslmode=disable&password={password}"
    env = cli_env(**s3_endpoint.env())
    server = ServerProcess("--data", str(tmp_path / "d"), "--port", "0", "--local-port", "0",
                           "--metadata", metadata, "--payload", f"s3://{s3_bucket}/p",
                           env=env)
    try:
        [line] = settings_lines(server)
        assert call("GET", server.url + "/")[0] == 200
    finally:
        assert server.terminate() == 0
    assert f"metadata postgresql://{user}:***@{rest}?sslmode=disable&password=***;" in line
    assert f"payload s3://{s3_bucket}/p;" in line
    for secret in (password, s3_endpoint.secret_key, s3_endpoint.access_key):
        assert secret not in server.log


def test_public_port_beyond_loopback_without_tls_warns(tmp_path: Path) -> None:
    server = ServerProcess("--data", str(tmp_path / "d"), "--host", "0.0.0.0", "--port", "0",
                           "--local-port", "0")
    try:
        settings_lines(server)
    finally:
        assert server.terminate() == 0
    [warning] = warnings(server)
    assert "0.0.0.0 without TLS" in warning


def test_public_port_beyond_loopback_with_tls_is_quiet(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = ServerProcess("--data", str(tmp_path / "d"), "--host", "0.0.0.0", "--port", "0",
                           "--local-port", "0", "--tls-cert", cert, "--tls-key", key)
    try:
        [line] = settings_lines(server)
    finally:
        assert server.terminate() == 0
    assert "TLS on;" in line
    assert warnings(server) == []


def test_incoming_box_beyond_loopback_warns(tmp_path: Path) -> None:
    server = ServerProcess("--data", str(tmp_path / "d"), "--port", "0",
                           "--local-host", "0.0.0.0", "--local-port", "0")
    try:
        settings_lines(server)
    finally:
        assert server.terminate() == 0
    [warning] = warnings(server)
    assert "incoming box" in warning and "0.0.0.0" in warning
