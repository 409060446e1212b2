"""Settings: CLI over environment over TOML over defaults (pure unit tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blobsync.server.config import (
    DEFAULT_MAX_BLOB_SIZE,
    ConfigError,
    ServerConfig,
    load_config,
    parse_size,
)


def test_defaults() -> None:
    c = load_config({}, {})
    assert c == ServerConfig()
    assert (c.data, c.host, c.port, c.local_port, c.quota) == (
        "./blobsync-data", "127.0.0.1", 2424, 2525, 0)
    assert c.max_blob_size == DEFAULT_MAX_BLOB_SIZE


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text('port = 1000\nhost = "10.0.0.1"\nquota = "1K"\nmax-blob-size = 5\n'
                    'data = "/from/file"\n')
    env = {"BLOBSYNC_PORT": "2000", "BLOBSYNC_HOST": "10.0.0.2", "BLOBSYNC_CONFIG": str(toml)}
    c = load_config({"port": "3000"}, env)
    assert c.port == 3000  # CLI beats env and file
    assert c.host == "10.0.0.2"  # env beats file
    assert c.quota == 1024 and c.max_blob_size == 5 and c.data == "/from/file"  # file
    assert c.local_port == 2525  # default
    # --config beats BLOBSYNC_CONFIG
    other = tmp_path / "other.toml"
    other.write_text("local_port = 9\n")
    c = load_config({}, env, str(other))
    assert c.local_port == 9 and c.port == 2000 and c.data == "./blobsync-data"


def test_cli_none_means_not_given() -> None:
    assert load_config({"port": None}, {"BLOBSYNC_PORT": "7"}).port == 7


def test_empty_env_unsets_optional() -> None:
    assert load_config({}, {"BLOBSYNC_METADATA": ""}).metadata is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), ("0", 0), ("123", 123), ("1K", 1024), ("2m", 2 << 20), ("3G", 3 << 30),
     ("1T", 1 << 40), ("4GiB", 4 << 30), ("5 kb", 5 << 10)],
)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5G", "lots", True, -3, None, "1X"])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(value)


@pytest.mark.parametrize(
    ("cli", "env"),
    [
        ({"port": "http"}, {}),
        ({"port": "70000"}, {}),
        ({}, {"BLOBSYNC_LOCAL_PORT": "-1"}),
        ({"quota": "much"}, {}),
        ({"tls_cert": "c.pem"}, {}),  # without the key
        ({"log_level": "loud"}, {}),
    ],
)
def test_bad_values(cli: dict[str, str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(cli, env)


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config({}, {}, str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config({}, {}, str(unknown))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({}, {}, str(tmp_path / "missing.toml"))
    typed = tmp_path / "typed.toml"
    typed.write_text("host = 5\n")
    with pytest.raises(ConfigError, match="host"):
        load_config({}, {}, str(typed))


def test_sweep_settings(tmp_path: Path) -> None:
    c = load_config({}, {})
    assert (c.sweep_interval, c.sweep_grace) == (3600.0, 3600.0)  # on by default
    toml = tmp_path / "server.toml"
    toml.write_text('sweep-interval = "15m"\nsweep_grace = 90\n')
    c = load_config({}, {"BLOBSYNC_CONFIG": str(toml)})
    assert (c.sweep_interval, c.sweep_grace) == (900.0, 90.0)
    c = load_config({"sweep_grace": "0.5"}, {"BLOBSYNC_SWEEP_INTERVAL": "2h",
                                              "BLOBSYNC_CONFIG": str(toml)})
    assert (c.sweep_interval, c.sweep_grace) == (7200.0, 0.5)
    assert load_config({"sweep_interval": "0"}, {}).sweep_interval == 0  # off
    for bad in ("-1", "soon", "1w", "", "nan", "inf"):
        with pytest.raises(ConfigError, match="sweep_interval"):
            load_config({"sweep_interval": bad}, {})
    with pytest.raises(ConfigError, match="sweep_grace"):
        load_config({}, {"BLOBSYNC_SWEEP_GRACE": "true"})
    with pytest.raises(ConfigError, match="sweep_grace"):
        toml.write_text("sweep_grace = true\n")
        load_config({}, {}, str(toml))
