"""The second peer: restic 0.14 (Debian's) backing up to ``rclone serve restic`` on
loopback, the small-file tool a user would pick instead of blobsync (issue 13).

The repository lives in a directory ``rclone serve restic`` serves over HTTP with a user
and password; restic's own password encrypts it. The user's own restic and rclone
configuration is never read: every setting is on the command line or in the environment
given here.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from peer import rclone_bin
from procs import Measured, clean_env, free_port, run_measured, terminate, wait_answering


def restic_bin() -> str | None:
    """restic's path, or None when this machine has none (scripts/ensure-restic.sh)."""
    return shutil.which("restic")


def restic_version() -> str:
    exe = restic_bin()
    if exe is None:
        return "none"
    out = subprocess.run([exe, "version"], capture_output=True, text=True).stdout
    return out.split(" compiled")[0].strip()


class ResticPeer:
    """A running ``rclone serve restic`` and a restic repository in it."""

    def __init__(self, root: Path) -> None:
        exe = restic_bin()
        if exe is None:
            raise RuntimeError("restic is not installed (scripts/ensure-restic.sh)")
        self.exe = exe
        self.root = root
        self.port = free_port()
        user, password = "bench", secrets.token_urlsafe(16)
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "empty.conf").touch()
        self._log = open(root / "serve-restic.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [rclone_bin(), "serve", "restic", "--config", str(root / "empty.conf"),
             "--addr", f"127.0.0.1:{self.port}", "--user", user, "--pass", password,
             str(root / "served")],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        wait_answering(self.url + "/", self.proc, root / "serve-restic.log", "rclone serve restic")
        self.env = clean_env(
            RESTIC_REPOSITORY=f"rest:http://{user}:{password}@127.0.0.1:{self.port}/repo",
            RESTIC_PASSWORD=secrets.token_urlsafe(24),
            RESTIC_CACHE_DIR=str(root / "cache"),
            XDG_CACHE_HOME=str(root / "xdg-cache"),
        )
        run_measured([self.exe, "init"], env=self.env).check()


    def backup(self, src: Path) -> Measured:
        """``restic backup SRC`` (from inside it, so that paths are relative), measured."""
        return run_measured([self.exe, "backup", "--quiet", "."], env=self.env,
                            cwd=src).check()

    def restore(self, dst: Path) -> Measured:
        """``restic restore latest --target DST``, measured."""
        return run_measured([self.exe, "restore", "latest", "--target", str(dst)],
                            env=self.env).check()

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()
