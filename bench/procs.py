"""Processes the benchmark runs and measures: the blobsync server, the CLI, rclone.

Memory is measured the way the issue asks: the server's peak from ``/proc/<pid>/status``
(VmHWM, reset between measurements through ``/proc/<pid>/clear_refs``), a command's peak
from the rusage that ``wait4`` returns for exactly that child.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

READY = re.compile(r"public API on (\S+), incoming box on (\S+)")
START_TIMEOUT = 60.0
PASSPHRASE = "bench passphrase, not a secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no BLOBSYNC_* or RCLONE_* leaking in from the caller."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BLOBSYNC_", "RCLONE_"))
    }
    env.update(extra)
    return env


@dataclass
class Measured:
    """One finished command: wall seconds, exit code, peak RSS, output lines with times."""

    argv: list[str]
    seconds: float
    returncode: int
    max_rss_kib: int
    cpu_seconds: float
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    stderr: str = ""

    @property
    def stdout(self) -> str:
        return "".join(line for _, line in self.lines)

    def check(self) -> Measured:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.argv[:6])}... exited {self.returncode}:\n{self.stderr[-3000:]}"
            )
        return self


def run_measured(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
    timeout: float = 3600,
) -> Measured:
    """Run ``argv`` to its end; time it, take its CPU from wait4's rusage and its peak RSS
    from its own VmHWM (see watch_rss).

    Stdout lines are timestamped as they arrive (``put`` prints each blob as it is stored,
    which splits its local phase from its upload phase).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    lines: list[tuple[float, str]] = []
    err: list[bytes] = []

    def pump_out() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append((time.perf_counter() - start, raw.decode(errors="replace")))

    def pump_err() -> None:
        assert proc.stderr is not None
        err.append(proc.stderr.read())

    peak = [0]
    ended = threading.Event()

    def watch_rss() -> None:
        # wait4's ru_maxrss is no measure of the child alone: at exec, Linux keeps the
        # high-water mark of the mm the child leaves, which is this (large) process's, so
        # every child "peaked" at least at the bench's own peak. VmHWM of the child's own
        # mm, read until it ends, is; only growth in its last few ms can escape it.
        mine = "\0".join(argv) + "\0"
        while not ended.wait(0.005):
            try:
                # Before the exec the child still runs as a copy of us: not its figure yet.
                if Path(f"/proc/{proc.pid}/cmdline").read_text() != mine:
                    continue
                peak[0] = max(peak[0], _proc_status_kib(proc.pid, "VmHWM"))
            except (OSError, ValueError):
                continue

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_out, pump_err)]
    for t in threads:
        t.start()
    watcher = threading.Thread(target=watch_rss, daemon=True)
    watcher.start()
    timer = threading.Timer(timeout, lambda: _kill_quietly(proc.pid))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        ended.set()
        watcher.join()
    seconds = time.perf_counter() - start
    # Popen must not wait for a pid that wait4 already reaped.
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    return Measured(
        argv=list(argv),
        seconds=seconds,
        returncode=proc.returncode,
        max_rss_kib=peak[0],
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        lines=lines,
        stderr=b"".join(err).decode(errors="replace"),
    )


def wait_answering(url: str, proc: subprocess.Popen[Any], log: Path, what: str) -> None:
    """Wait (30 s at most) until ``url`` answers HTTP at all, an error status included;
    RuntimeError with ``log`` if ``proc`` ends or the time runs out first."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # 401 or 403 for a request without credentials: it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n" + log.read_text()) from None
            time.sleep(0.05)


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 20 s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def blobsync_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "blobsync", *args]


def client_tree() -> Path | None:
    """Another copy of the package for the client side (BENCH_CLIENT_TREE), if any."""
    tree = os.environ.get("BENCH_CLIENT_TREE")
    return Path(tree) if tree else None


def cli_env(token: str | None = None) -> dict[str, str]:
    env = clean_env(BLOBSYNC_PASSPHRASE=PASSPHRASE)
    if token is not None:
        env["BLOBSYNC_TOKEN"] = token
    if (tree := client_tree()) is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def cli(home: Path, *args: str, token: str | None = None, timeout: float = 3600) -> Measured:
    """``python -m blobsync --home HOME ARGS...``, measured."""
    return run_measured(
        blobsync_argv("--home", str(home), *args), env=cli_env(token), cwd=client_tree(),
        timeout=timeout,
    )


def _proc_status_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(match.group(1)) if match else 0


class ServerProc:
    """``python -m blobsync server`` on free loopback ports, its log in a file."""

    def __init__(self, data: Path, *, log_level: str = "info", extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.data = data
        self.port = free_port()
        self.local_port = free_port()
        self.log_path = data.parent / f"{data.name}-server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        argv = blobsync_argv(
            "server", "--data", str(data), "--port", str(self.port),
            "--local-port", str(self.local_port), "--log-level", log_level, *extra,
        )
        if os.environ.get("BENCH_SERVER_UVLOOP"):
            # An experiment: the same server on uvloop's event loop.
            argv = [sys.executable, "-c",
                    "import sys, uvloop; uvloop.install(); from blobsync.cli.main import main; "
                    "sys.exit(main(sys.argv[1:]))", *argv[3:]]
        env = clean_env(**(env or {}))
        tree = os.environ.get("BENCH_SERVER_TREE")
        if tree:
            # Another copy of the package (the code before a change, for a before/after).
            env["PYTHONPATH"] = tree
        self.proc = subprocess.Popen(
            argv, cwd=tree or None,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, env=env,
        )
        self.url = ""
        self.local_url = ""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.url:
            match = READY.search(self.log_path.read_text())
            if match:
                self.url, self.local_url = match.group(1), match.group(2)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + self.log_path.read_text())
            else:
                time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)
        workers = _workers(extra)
        if workers > 1:
            # The first worker's line came; every worker must serve before the measuring.
            ready = f"all {workers} workers ready"
            while ready not in self.log_path.read_text():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("workers did not start:\n" + self.log_path.read_text())
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        """The server's processes: itself, and its workers with ``--workers``."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.ps]

    def add_user(self, user: str) -> str:
        """A new user through the CLI (works while the server runs); returns the token."""
        done = run_measured(blobsync_argv("user", "add", user, "--data", str(self.data)),
                            env=clean_env()).check()
        return done.stdout.strip()

    def reset_peak(self) -> None:
        """Start a new VmHWM measurement (writing 5 to clear_refs resets the peak RSS)."""
        for p in self.processes():
            with contextlib.suppress(OSError):
                Path(f"/proc/{p.pid}/clear_refs").write_text("5")

    def peak_rss_kib(self) -> int:
        """The highest peak of one process (with ``--workers``, of the worker that grew
        most): the memory bound is per server process."""
        peaks = [0]
        for p in self.processes():
            with contextlib.suppress(OSError):
                peaks.append(_proc_status_kib(p.pid, "VmHWM"))
        return max(peaks)

    def rss_kib(self) -> int:
        return _proc_status_kib(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        """CPU time of the server's processes (its workers' included)."""
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    @contextlib.contextmanager
    def watch(self, out: dict[str, float], profile: Path | None = None) -> Iterator[None]:
        """Measure the server over a block: peak RSS (MB) and CPU seconds into ``out``;
        with ``profile`` also record it with py-spy (raw collapsed stacks)."""
        self.reset_peak()
        cpu0 = self.cpu_seconds()
        spy = None
        if profile is not None:
            spy = start_py_spy(self.pid, profile)
        try:
            yield
        finally:
            if spy is not None:
                stop_py_spy(spy)
            out["server_cpu_s"] = round(self.cpu_seconds() - cpu0, 3)
            out["server_peak_rss_mb"] = round(self.peak_rss_kib() / 1024, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _workers(extra: tuple[str, ...]) -> int:
    """The ``--workers N`` among a server's options (1 without it)."""
    args = list(extra)
    if "--workers" in args:
        return int(args[args.index("--workers") + 1])
    return 1


def py_spy() -> str:
    return str(Path(sys.executable).parent / "py-spy")


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
         "--threads", "--idle", "--nonblocking", "--output", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # let it attach before the measured work starts
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
