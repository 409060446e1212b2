"""Server settings: command line over environment over TOML file over defaults.

Every key has the same name in each source: ``max_blob_size`` is ``--max-blob-size`` on the
command line, ``BLOBSYNC_MAX_BLOB_SIZE`` in the environment and ``max_blob_size`` (or
``max-blob-size``) in the TOML file. The file is read only when ``--config`` or
``BLOBSYNC_CONFIG`` names it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from blobsync.format.errors import BlobsyncError

from .storage.base import BATCH_BLOB_MAX

ENV_PREFIX = "BLOBSYNC_"

# One blob over 4 GiB cannot travel in a stream frame anyway (8 hex digits of length).
DEFAULT_MAX_BLOB_SIZE = 1 << 32
# A stream is many small blobs; past 1 GiB a client should split it or send blobs alone.
DEFAULT_MAX_STREAM_SIZE = 1 << 30


# An hour between sweeps: orphans come only from crashes, and reclaiming space is cheap.
DEFAULT_SWEEP_INTERVAL = 3600.0
# An orphan younger than this may be an upload another process has committed but not yet
# indexed; an hour covers the slowest S3 multipart upload of a 4 GiB blob at 1.2 MB/s.
DEFAULT_SWEEP_GRACE = 3600.0


# SPEC 8's default: a device away for a month still catches up from its cursor.
DEFAULT_FEED_RETENTION = 30 * 86400.0
# SPEC 8 asks for a comment at least every 15 s on an idle event stream.
DEFAULT_FEED_HEARTBEAT = 15.0


class ConfigError(BlobsyncError):
    pass


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data: str = "./blobsync-data"
    host: str = "127.0.0.1"
    port: int = 2424
    local_host: str = "127.0.0.1"
    local_port: int = 2525
    quota: int = 0  # default per-user quota in bytes; 0 = unlimited
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE  # 0 = unlimited
    max_stream_size: int = DEFAULT_MAX_STREAM_SIZE  # 0 = unlimited
    tls_cert: str | None = None
    tls_key: str | None = None
    metadata: str | None = None  # None: SQLite in the data dir; postgresql://...; memory:
    payload: str | None = None  # None: SQLite and files in the data dir; s3://...; memory:
    # PostgreSQL metadata + S3 payloads only: payloads up to this many bytes are rows of the
    # metadata database, not S3 objects (0: every payload an S3 object). At most
    # BATCH_BLOB_MAX: a payload on its way inline is held whole in memory.
    inline_max: int = BATCH_BLOB_MAX
    log_level: str = "info"
    workers: int = 1  # server processes sharing the ports (SO_REUSEPORT); see workers.py
    # The sweep (orphan payloads, space of deleted ones): at start-up, then every
    # sweep_interval seconds (0: never); spares orphans younger than sweep_grace seconds.
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    sweep_grace: float = DEFAULT_SWEEP_GRACE
    # The change feed (SPEC 8): changes older than feed_retention seconds are dropped by
    # the sweep (0: kept for ever); an idle event stream gets a comment every
    # feed_heartbeat seconds.
    feed_retention: float = DEFAULT_FEED_RETENTION
    feed_heartbeat: float = DEFAULT_FEED_HEARTBEAT
    # SPEC 11's encrypted metas (GET / lists "meta"). false: the server acts as one from
    # before them (Blob-Meta and with_meta ignored, a stream pair with a meta refused, no
    # meta in the feed), to try clients against such a server.
    meta_extension: bool = True

    @property
    def blob_limit(self) -> int | None:
        return self.max_blob_size or None

    @property
    def stream_limit(self) -> int | None:
        return self.max_stream_size or None

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)


KEYS = tuple(f.name for f in fields(ServerConfig))
_PORTS = {"port", "local_port"}
_COUNTS = {"workers"}
_SIZES = {"quota", "max_blob_size", "max_stream_size", "inline_max"}
_DURATIONS = {"sweep_interval", "sweep_grace", "feed_retention", "feed_heartbeat"}
_OPTIONAL = {"tls_cert", "tls_key", "metadata", "payload"}
_BOOLS = {"meta_extension"}
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_LEVELS = {"debug", "info", "warning", "error"}
_SIZE = re.compile(r"(\d+)\s*([kmgt]i?b?)?", re.IGNORECASE)
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, key: str = "duration") -> float:
    """Seconds from a number or a string like ``90``, ``1.5``, ``30s``, ``15m``, ``1h``,
    ``2d``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration in seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _SECONDS[m.group(2).lower()]
    else:
        raise ConfigError(f"{key}: expected a duration in seconds (or 15m, 1h, 2d), got "
                          f"{value!r}")
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"{key}: must be a finite number of seconds, not negative")
    return seconds


def parse_size(value: object, key: str = "size") -> int:
    """Bytes from an int or a string like ``1048576``, ``512K``, ``10G`` (powers of 1024)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        unit = (m.group(2) or " ")[0].lower()
        n = int(m.group(1)) * _UNITS.get(unit, 1)
    else:
        raise ConfigError(f"{key}: expected a size in bytes, got {value!r}")
    if n < 0:
        raise ConfigError(f"{key}: must not be negative")
    return n


def _convert(key: str, value: object) -> object:
    if key in _BOOLS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if key in _SIZES:
        return parse_size(value, key)
    if key in _DURATIONS:
        return parse_duration(value, key)
    if key in _PORTS:
        try:
            port = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a port number, got {value!r}") from None
        if isinstance(value, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"{key}: expected a port number, got {value!r}")
        return port
    if key in _COUNTS:
        try:
            count = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}") from None
        if isinstance(value, bool) or count < 1:
            raise ConfigError(f"{key}: expected a whole number of at least 1, got {value!r}")
        return count
    if value == "" and key in _OPTIONAL:
        return None  # an empty variable unsets, as in most shells' conventions
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if key == "log_level" and value.lower() not in _LEVELS:
        raise ConfigError(f"log_level: one of {', '.join(sorted(_LEVELS))}")
    return value.lower() if key == "log_level" else value


def read_toml(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    out: dict[str, object] = {}
    for raw_key, value in doc.items():
        key = raw_key.replace("-", "_")
        if key not in KEYS:
            raise ConfigError(f"config file {path}: unknown key {raw_key!r}")
        out[key] = value
    return out


def from_env(env: Mapping[str, str]) -> dict[str, object]:
    return {key: env[ENV_PREFIX + key.upper()] for key in KEYS if ENV_PREFIX + key.upper() in env}


def load_config(
    cli: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> ServerConfig:
    """Merge the sources; ``cli`` holds only the options given (None means not given)."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None and k in KEYS}
    env = os.environ if env is None else env
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, object] = {}
    for source in (read_toml(path) if path else {}, from_env(env), cli):
        merged.update(source)
    config = ServerConfig(**{k: _convert(k, v) for k, v in merged.items()})  # type: ignore[arg-type]
    if config.feed_heartbeat <= 0:
        raise ConfigError("feed_heartbeat: must be more than 0 seconds")
    if config.inline_max > BATCH_BLOB_MAX:
        raise ConfigError(f"inline_max: at most {_size(BATCH_BLOB_MAX)} "
                          "(a payload on its way inline is held whole in memory)")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together: give both or neither")
    return config


# Query parameters of a store URL that may carry a secret (libpq's password, keys).
_SECRET_PARAMS = re.compile(r"pass|secret|key|token|credential", re.IGNORECASE)
_MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with its password (and any secret-looking query parameter) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        if parts.scheme.startswith("s3"):
            user = _MASK  # an access key id: half of a credential
        netloc = f"{user}{':' + _MASK if sep else ''}@{hostport}"
    query = "&".join(
        f"{k}={_MASK}" if _SECRET_PARAMS.search(k) else (f"{k}={v}" if sep else k)
        for k, sep, v in (p.partition("=") for p in parts.query.split("&") if p)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _size(n: int) -> str:
    if n == 0:
        return "unlimited"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:2424``),
    since ``::1:2424`` reads as another address."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _seconds(x: float) -> str:
    """``2592000 s``, not ``:g``'s ``2.592e+06 s``: the default feed retention (30 days)
    read as an exponent in the start-up line."""
    return f"{x:.15g} s"


def describe(config: ServerConfig) -> str:
    """The settings in effect, on one line for the start-up log; never a secret."""
    data = os.path.abspath(config.data)
    metadata = redact_url(config.metadata) if config.metadata else "SQLite in the data dir"
    payload = (redact_url(config.payload) if config.payload
               else "SQLite and files in the data dir")
    if (config.payload or "").startswith("s3://") and (config.metadata or "").startswith(
        ("postgresql://", "postgres://")
    ):
        payload += (f"; inline up to {_size(config.inline_max)} in PostgreSQL"
                    if config.inline_max else "; inline none")
    tls = "on" if config.tls_cert else "off"
    sweep = (f"every {_seconds(config.sweep_interval)}, grace {_seconds(config.sweep_grace)}"
             if config.sweep_interval > 0 else "off")
    retention = (_seconds(config.feed_retention) if config.feed_retention > 0
                 else "kept for ever")
    return (
        f"settings: data {data}; metadata {metadata}; payload {payload}; "
        f"quota {_size(config.quota)}; max blob size {_size(config.max_blob_size)}; "
        f"max stream size {_size(config.max_stream_size)}; TLS {tls}; "
        f"workers {config.workers}; public {host_port(config.host, config.port)}; "
        f"incoming box {host_port(config.local_host, config.local_port)}; orphan sweep {sweep}; "
        f"feed retention {retention}; feed heartbeat {_seconds(config.feed_heartbeat)}"
    )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # all interfaces (""), or a name that may resolve to any of them


def exposure_warnings(config: ServerConfig) -> list[str]:
    """What the operator should hear about addresses reachable beyond this machine."""
    warnings = []
    if config.tls_cert is None and not _loopback(config.host):
        warnings.append(
            f"the public API listens on {config.host or 'all interfaces'} without TLS: tokens "
            "and blobs cross the network in clear; give --tls-cert and --tls-key, or keep it "
            "on loopback behind a TLS proxy"
        )
    if not _loopback(config.local_host):
        warnings.append(
            f"the incoming box listens on {config.local_host or 'all interfaces'}, in plain "
            "HTTP: keep it on loopback or a private network"
        )
    return warnings
