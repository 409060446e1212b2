"""Issue 14: passphrases from a file or a command (as restic's), a new passphrase of at
least 8 characters, ``config show`` / ``config set``, and ``init --ca-file`` for a server
whose certificate a private certificate authority signed."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blobsync.client import BlobManager
from tests.helpers.cli import Device, Server, assert_one_line_error, blobsync
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.servers import make_user, start_server


def without_env_passphrase(device: Device) -> dict[str, str]:
    env = device.env()
    del env["BLOBSYNC_PASSPHRASE"]
    return env


def run(device: Device, *args: str, env: dict[str, str] | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The CLI on ``device`` with no BLOBSYNC_PASSPHRASE (unless ``env`` says)."""
    return blobsync("--home", str(device.home), *args,
                    env=env if env is not None else without_env_passphrase(device),
                    input=input)


# --------------------------------------------------------------------------- passphrases


def test_passphrase_file_and_command(device_a: Device, tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE + "\nsecond line is ignored\n")
    proc = run(device_a, "init", "--server", device_a.account.server.url,
               "--user", device_a.account.user, "--token", device_a.account.token,
               "--passphrase-file", str(secret))
    assert proc.returncode == 0, proc.stderr.decode()
    f = tmp_path / "a.txt"
    f.write_text("a\n")
    # No BLOBSYNC_PASSPHRASE and no terminal: the file, then the command, answer.
    proc = run(device_a, "put", "--id", "a1", str(f), "--passphrase-file", str(secret))
    assert proc.returncode == 0, proc.stderr.decode()
    command = f"cat {shlex.quote(str(secret))}"
    proc = run(device_a, "--passphrase-command", command, "get", "a1")
    assert proc.stdout == b"a\n", proc.stderr.decode()
    env = without_env_passphrase(device_a)
    env["BLOBSYNC_PASSPHRASE_FILE"] = str(secret)
    assert run(device_a, "ls", env=env).stdout == b"a1\n"
    env = without_env_passphrase(device_a)
    env["BLOBSYNC_PASSPHRASE_COMMAND"] = f"printf '%s\\n' {shlex.quote(PASSPHRASE)}"
    assert run(device_a, "sync", env=env).returncode == 0
    # The option wins over the environment variable.
    env = device_a.env("a wrong passphrase")
    assert run(device_a, "ls", "--passphrase-file", str(secret),
               env=env).stdout == b"a1\n"


def test_passphrase_sources_that_fail(ready_a: Device, tmp_path: Path) -> None:
    line = assert_one_line_error(run(ready_a, "ls", "--passphrase-command", "exit 3"), 1)
    assert "the passphrase command failed with exit status 3: exit 3" in line
    line = assert_one_line_error(
        run(ready_a, "ls", "--passphrase-file", str(tmp_path / "nope")), 1)
    assert "cannot read the passphrase file" in line and "nope" in line
    empty = tmp_path / "empty"
    empty.write_text("\n")
    line = assert_one_line_error(run(ready_a, "ls", "--passphrase-file", str(empty)), 2)
    assert "empty" in line
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert_one_line_error(run(ready_a, "ls", "--passphrase-file", str(wrong)), 3)
    line = assert_one_line_error(run(ready_a, "ls", "--passphrase-file", str(wrong),
                                     "--passphrase-command", "true"), 2)
    assert "do not go together" in line


def test_a_short_new_passphrase_is_refused_at_init(device_a: Device,
                                                  device_b: Device) -> None:
    proc = device_a.init(passphrase="short")
    line = assert_one_line_error(proc, 2)
    assert "5 characters long" in line and "at least 8" in line
    assert not device_a.home.exists()
    # A profile made before the rule (the library takes any passphrase) keeps working,
    # and another device recovers it with that passphrase.
    server: Server = device_a.account.server

    async def old_profile() -> None:
        m = await BlobManager.init(device_a.home, server=server.url,
                                   user=device_a.account.user, token=device_a.account.token,
                                   passphrase="short")
        await m.close()

    asyncio.run(old_profile())
    assert device_a.run("ls", passphrase="short").returncode == 0
    proc = device_b.init("--recover", passphrase="short")
    assert proc.returncode == 0, proc.stderr.decode()


# --------------------------------------------------------------------------- config


def config_doc(device: Device) -> dict[str, object]:
    proc = run(device, "--json", "config", "show")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_config_show_never_prints_the_token(ready_a: Device) -> None:
    token = ready_a.account.token
    proc = run(ready_a, "config", "show")  # no passphrase needed
    text = proc.stdout.decode()
    assert proc.returncode == 0
    assert token not in text and token not in proc.stderr.decode()
    assert f"server:   {ready_a.account.server.url}" in text
    assert f"user:     {ready_a.account.user}" in text
    assert "ca-file:  (none" in text and "settings:" in text
    doc = config_doc(ready_a)
    assert token not in json.dumps(doc)
    assert doc["server"] == ready_a.account.server.url and doc["ca_file"] is None
    assert "token" not in doc


def test_config_set_token_and_server(ready_a: Device) -> None:
    config = ready_a.home / "config.json"
    server = ready_a.account.server
    from blobsync.server.auth import hash_token
    from blobsync.server.auth import new_token as make_token

    new_token = make_token()  # the token rotated on the server
    server._call(server._running.store.index.set_user_token(
        ready_a.account.user, hash_token(new_token)))
    assert_one_line_error(ready_a.run("ls", "--remote"), 3)
    proc = run(ready_a, "config", "set", "token", "-", input=new_token.encode() + b"\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert new_token not in proc.stderr.decode()
    assert ready_a.run("ls", "--remote").returncode == 0
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["token"] == new_token
    assert not [p for p in ready_a.home.iterdir() if p.name.startswith(".config.json")]
    # A moved server: unreachable until config set server points at it again.
    run(ready_a, "config", "set", "server", "http://127.0.0.1:9/")
    assert_one_line_error(ready_a.run("ls", "--remote"), 4)
    assert config_doc(ready_a)["server"] == "http://127.0.0.1:9"
    assert run(ready_a, "config", "set", "server", server.url).returncode == 0
    assert ready_a.run("ls", "--remote").returncode == 0
    line = assert_one_line_error(run(ready_a, "config", "set", "server", "ftp://x"), 2)
    assert "http:// or https://" in line
    assert_one_line_error(run(ready_a, "config", "set", "user", "x"), 2)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- --ca-file


def make_ca_and_server_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blobsync test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_init_ca_file_trusts_a_private_authority(server: Server, device_a: Device,
                                                 tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    tls = server._call(start_server(tmp_path / "tls", settings={
        "tls_cert": str(cert), "tls_key": str(key)}))
    try:
        assert tls.url.startswith("https://127.0.0.1:")
        token = server._call(make_user(tls.store, device_a.account.user))
        device_a.extra_env.pop("SSL_CERT_FILE", None)
        os.environ.pop("SSL_CERT_FILE", None)
        # Without it the certificate is refused, as the system trusts no such CA.
        proc = device_a.init(server=tls.url, token=token)
        assert_one_line_error(proc, 4)
        assert not device_a.home.exists()
        line = assert_one_line_error(
            device_a.init("--ca-file", str(tmp_path / "nope.pem"), server=tls.url,
                          token=token), 1)
        assert "no such CA file" in line
        proc = device_a.init("--ca-file", str(ca), server=tls.url, token=token)
        assert proc.returncode == 0, proc.stderr.decode()
        f = tmp_path / "a.txt"
        f.write_text("over TLS\n")
        device_a.ok("put", "--id", "a1", str(f))
        assert device_a.ok("ls", "--remote") == "a1\n"
        assert config_doc(device_a)["ca_file"] == str(ca)
        # Moved back to the system's authorities, the server is refused again; and
        # set again, trusted again.
        device_a.ok("config", "set", "ca-file", "")
        assert_one_line_error(device_a.run("ls", "--remote"), 4)
        device_a.ok("config", "set", "ca-file", str(ca))
        assert device_a.ok("ls", "--remote") == "a1\n"
        line = assert_one_line_error(device_a.run("config", "set", "ca-file", str(f)), 1)
        assert "not a PEM certificate" in line
    finally:
        server._call(tls.stop())
