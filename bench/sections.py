"""The measurements of the benchmark. Each takes a Context and returns a dict of
figures; nothing here decides PASS or FAIL (report.py does, from the figures of one run).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peer import RclonePeer
from populate import populate
from procs import (
    Measured,
    ServerProc,
    blobsync_argv,
    clean_env,
    cli,
    cli_env,
    client_tree,
    run_measured,
)

from blobsync.format import seal

BENCH_DIR = Path(__file__).resolve().parent
MB = 1e6


@dataclass(frozen=True)
class Scale:
    name: str
    small_count: int
    small_size: int
    large_size: int
    noop_count: int
    load_seconds: float
    load_clients: int
    noop_repeats: int = 3


FULL = Scale("full", 10_000, 10_000, 1 << 30, 100_000, 30.0, 32)
QUICK = Scale("quick", 500, 10_000, 64 << 20, 10_000, 5.0, 32)


@dataclass
class Context:
    work: Path
    scale: Scale
    profile_dir: Path | None = None
    log: Any = print

    # What the running section measured so far: kept if it fails halfway.
    out: dict[str, Any] = field(default_factory=dict)

    def start(self, first: dict[str, Any]) -> dict[str, Any]:
        self.out = dict(first)
        return self.out

    def profile(self, name: str) -> Path | None:
        return None if self.profile_dir is None else self.profile_dir / f"{name}.txt"

    # the data set, shared by blobsync and rclone --------------------------------------
    def small_files(self) -> Path:
        d = self.work / "small-files"
        if not d.exists():
            tmp = self.work / "small-files.tmp"
            tmp.mkdir()
            for i in range(self.scale.small_count):
                (tmp / f"f{i:06d}.bin").write_bytes(os.urandom(self.scale.small_size))
            tmp.rename(d)
        return d

    def large_file(self) -> Path:
        f = self.work / "large-file" / "large.bin"
        if not f.exists():
            f.parent.mkdir(exist_ok=True)
            tmp = f.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                left = self.scale.large_size
                while left:
                    n = min(left, 16 << 20)
                    out.write(os.urandom(n))
                    left -= n
            tmp.rename(f)
        return f


def quiesce() -> None:
    """Start a measured step with no dirty pages left by the one before (or by writing the
    data set): the kernel writing them back meanwhile would steal CPU and disk from the
    step, more or less depending on what came before it. Every step of either tool gets
    it."""
    os.sync()
    time.sleep(0.5)


def _device(ctx: Context, server: ServerProc, token: str, name: str, *, user: str = "bench",
            recover: bool = False, secret_file: Path | None = None) -> Path:
    home = ctx.work / name
    args = ["init", "--server", server.url, "--user", user]
    if recover:
        args.append("--recover")
    if secret_file is not None:
        args += ["--secret-file", str(secret_file)]
    cli(home, *args, token=token).check()
    return home


def _mb(kib: int) -> float:
    return round(kib / 1024, 1)


def _put(ctx: Context, server: ServerProc, home: Path, src: Path, ns: str, flags: list[str],
         expected: int, profile: str) -> dict[str, Any]:
    """``blobsync put SRC -n NS``: the whole command, and how long it ran after its last
    ``id<TAB>path`` line (printed as each blob is stored locally; small blobs upload while
    later ones are stored, so this is the upload's tail, not the whole upload)."""
    stats: dict[str, Any] = {}
    quiesce()
    with server.watch(stats, ctx.profile(profile)):
        m = cli(home, "put", str(src), "-n", ns, *flags).check()
    stored = [t for t, line in m.lines if "\t" in line]
    if len(stored) != expected:
        raise RuntimeError(f"put stored {len(stored)} blobs, expected {expected}")
    local_s = stored[-1]
    stats.update(
        seconds=round(m.seconds, 3),
        local_s=round(local_s, 3),
        upload_s=round(m.seconds - local_s, 3),
        client_peak_rss_mb=_mb(m.max_rss_kib),
        client_cpu_s=round(m.cpu_seconds, 3),
    )
    return stats


def _sync(ctx: Context, server: ServerProc, home: Path, ns: str, flags: list[str],
          expected: int | None, profile: str | None) -> tuple[dict[str, Any], Measured]:
    stats: dict[str, Any] = {}
    quiesce()
    with server.watch(stats, ctx.profile(profile) if profile else None):
        m = cli(home, "--json", "sync", "-n", ns, *flags).check()
    doc = json.loads(m.stdout)
    if expected is not None and doc["downloaded"] != expected:
        raise RuntimeError(f"sync downloaded {doc['downloaded']}, expected {expected}")
    stats.update(
        seconds=round(m.seconds, 3),
        client_peak_rss_mb=_mb(m.max_rss_kib),
        client_cpu_s=round(m.cpu_seconds, 3),
    )
    return stats, m


# 1. small blobs ------------------------------------------------------------------------
def small(ctx: Context) -> dict[str, Any]:
    n = ctx.scale.small_count
    files = ctx.small_files()
    out = ctx.start({"count": n, "size": ctx.scale.small_size})
    with ServerProc(ctx.work / "small-server") as server:
        for mode, flags in (("stream", []), ("nostream", ["--no-stream"])):
            # A user per mode: each starts from an empty account and a new secret.
            user = f"bench-{mode}"
            token = server.add_user(user)
            a = _device(ctx, server, token, f"small-{mode}-A", user=user)
            b = _device(ctx, server, token, f"small-{mode}-B", user=user, recover=True)
            ns = f"small_{mode}"
            ctx.log(f"  small/{mode}: put {n} files on device A")
            up = _put(ctx, server, a, files, ns, flags, n, f"small-{mode}-up")
            up["files_per_s"] = round(n / up["seconds"], 1)
            out[mode] = {"up": up}
            ctx.log(f"    {up['seconds']:.1f} s ({up['files_per_s']:.0f} files/s; "
                    f"{up['upload_s']:.1f} s after the last was stored); CPU client "
                    f"{up['client_cpu_s']} s, server {up['server_cpu_s']} s")
            ctx.log(f"  small/{mode}: sync {n} blobs to device B")
            down, _ = _sync(ctx, server, b, ns, flags, n, f"small-{mode}-down")
            down["files_per_s"] = round(n / down["seconds"], 1)
            ctx.log(f"    {down['seconds']:.1f} s ({down['files_per_s']:.0f} files/s); CPU "
                    f"client {down['client_cpu_s']} s, server {down['server_cpu_s']} s")
            out[mode]["down"] = down
    return out


# 2. one large blob ---------------------------------------------------------------------
def large(ctx: Context) -> dict[str, Any]:
    src = ctx.large_file()
    size = src.stat().st_size
    out = ctx.start({"size": size})
    with ServerProc(ctx.work / "large-server") as server:
        token = server.add_user("bench")
        a = _device(ctx, server, token, "large-A")
        b = _device(ctx, server, token, "large-B", recover=True)
        ctx.log(f"  large: put {size >> 20} MiB on device A")
        up = _put(ctx, server, a, src.parent, "large", [], 1, "large-up")
        up["mb_per_s"] = round(size / MB / up["seconds"], 1)
        up["upload_mb_per_s"] = round(size / MB / up["upload_s"], 1) if up["upload_s"] else None
        out["up"] = up
        ctx.log(f"    {up['seconds']:.1f} s ({up['mb_per_s']:.0f} MB/s), client "
                f"{up['client_peak_rss_mb']} MB, server {up['server_peak_rss_mb']} MB")
        ctx.log("  large: sync it to device B")
        down, _ = _sync(ctx, server, b, "large", [], 1, "large-down")
        down["mb_per_s"] = round(size / MB / down["seconds"], 1)
        ctx.log(f"    {down['seconds']:.1f} s ({down['mb_per_s']:.0f} MB/s), client "
                f"{down['client_peak_rss_mb']} MB, server {down['server_peak_rss_mb']} MB")
        out["down"] = down
    return out


# 3. the peer: rclone crypt -> rclone serve s3 --------------------------------------------
def _count_files(root: Path) -> tuple[int, int]:
    n = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            n += 1
            total += os.path.getsize(os.path.join(dirpath, name))
    return n, total


def peer(ctx: Context) -> dict[str, Any]:
    from peer import TRANSFERS, rclone_version

    n = ctx.scale.small_count
    files = ctx.small_files()
    big = ctx.large_file()
    size = big.stat().st_size
    out = ctx.start({"rclone": rclone_version(), "transfers": TRANSFERS})
    root = ctx.work / "rclone"
    root.mkdir()
    (root / "empty.conf").touch()
    rc = RclonePeer(root)
    try:
        def step(what: str, src: str, dst: str) -> dict[str, Any]:
            quiesce()
            rc.reset_peak()
            m = rc.copy(src, dst)
            return {"seconds": round(m.seconds, 3), "client_peak_rss_mb": _mb(m.max_rss_kib),
                    "client_cpu_s": round(m.cpu_seconds, 3),
                    "server_peak_rss_mb": _mb(rc.peak_rss_kib())}

        ctx.log(f"  rclone: copy {n} small files up")
        up = step("small up", str(files), "bcrypt:small")
        up["files_per_s"] = round(n / up["seconds"], 1)
        out["small"] = {"count": n, "up": up}
        ctx.log(f"    {up['seconds']:.1f} s ({up['files_per_s']:.0f} files/s)")
        ctx.log("  rclone: copy them down")
        down_dir = root / "down-small"
        down = step("small down", "bcrypt:small", str(down_dir))
        got, _ = _count_files(down_dir)
        if got != n:
            raise RuntimeError(f"rclone brought {got} small files down, expected {n}")
        down["files_per_s"] = round(n / down["seconds"], 1)
        ctx.log(f"    {down['seconds']:.1f} s ({down['files_per_s']:.0f} files/s)")
        out["small"]["down"] = down

        ctx.log(f"  rclone: copy the {size >> 20} MiB file up")
        lup = step("large up", str(big.parent), "bcrypt:large")
        lup["mb_per_s"] = round(size / MB / lup["seconds"], 1)
        ctx.log(f"    {lup['seconds']:.1f} s ({lup['mb_per_s']:.0f} MB/s)")
        ctx.log("  rclone: copy it down")
        ldir = root / "down-large"
        ldown = step("large down", "bcrypt:large", str(ldir))
        if _count_files(ldir) != (1, size):
            raise RuntimeError("rclone did not bring the large file down whole")
        ldown["mb_per_s"] = round(size / MB / ldown["seconds"], 1)
        ctx.log(f"    {ldown['seconds']:.1f} s ({ldown['mb_per_s']:.0f} MB/s)")
        out["large"] = {"size": size, "up": lup, "down": ldown}
    finally:
        rc.stop()
    shutil.rmtree(root / "down-large", ignore_errors=True)
    out["restic"] = _restic(ctx, files, n)
    return out


def _restic(ctx: Context, files: Path, n: int) -> dict[str, Any] | None:
    """The second peer (issue 13): restic backup and restore of the small files, through
    ``rclone serve restic``. None when restic is not installed."""
    from restic_peer import ResticPeer, restic_bin, restic_version

    if restic_bin() is None:
        ctx.log("  restic: not installed (scripts/ensure-restic.sh): left out")
        return None
    root = ctx.work / "restic"
    root.mkdir()
    peer = ResticPeer(root)
    try:
        out: dict[str, Any] = {"restic": restic_version(), "count": n}
        ctx.log(f"  restic: backup of {n} small files")
        quiesce()
        m = peer.backup(files)
        out["up"] = {"seconds": round(m.seconds, 3), "files_per_s": round(n / m.seconds, 1),
                     "client_peak_rss_mb": _mb(m.max_rss_kib)}
        ctx.log(f"    {m.seconds:.1f} s ({n / m.seconds:.0f} files/s)")
        ctx.log("  restic: restore of them")
        quiesce()
        dst = root / "restored"
        m = peer.restore(dst)
        got, _ = _count_files(dst)
        if got != n:
            raise RuntimeError(f"restic restored {got} small files, expected {n}")
        out["down"] = {"seconds": round(m.seconds, 3), "files_per_s": round(n / m.seconds, 1),
                       "client_peak_rss_mb": _mb(m.max_rss_kib)}
        ctx.log(f"    {m.seconds:.1f} s ({n / m.seconds:.0f} files/s)")
        return out
    finally:
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)


# 4. a no-op sync over many blobs ----------------------------------------------------------
def _library_syncs(home: Path, namespace: str, repeats: int, full: bool = False) -> list[float]:
    """BlobManager.sync timed in a process of its own (bench/lib_sync.py)."""
    m = run_measured([sys.executable, str(BENCH_DIR / "lib_sync.py"), str(home), namespace,
                      str(repeats), *(["full"] if full else [])],
                     env=cli_env(), cwd=client_tree()).check()
    return [float(t) for t in json.loads(m.stdout)]


async def _new_store(data: Path) -> None:
    """The empty store a server's first start makes in ``data``."""
    from blobsync.server.storage.factory import make_store

    store = make_store(str(data), None, None)
    await store.open()
    await store.close()


def noop(ctx: Context) -> dict[str, Any]:
    n = ctx.scale.noop_count
    data = ctx.work / "noop-server"
    asyncio.run(_new_store(data))  # `user add` refuses a data dir no server has made
    token = run_measured(blobsync_argv("user", "add", "bench", "--data", str(data)),
                         env=clean_env()).check().stdout.strip()
    secret = os.urandom(128)
    secret_file = ctx.work / "noop-secret.bin"
    secret_file.write_bytes(secret)
    ctx.log(f"  no-op: storing {n} blobs on the server (storage APIs)")
    t0 = time.perf_counter()
    asyncio.run(populate(data, "bench", "default", secret, n))
    out = ctx.start({"count": n, "populate_s": round(time.perf_counter() - t0, 1)})
    with ServerProc(data) as server:
        home = _device(ctx, server, token, "noop-C", secret_file=secret_file)
        ctx.log(f"  no-op: first sync of device C downloads all {n}")
        first, _ = _sync(ctx, server, home, "default", [], n, None)
        out["initial_sync"] = {**first, "files_per_s": round(n / first["seconds"], 1)}
        ctx.log(f"    {first['seconds']:.1f} s ({n / first['seconds']:.0f} blobs/s)")
        cmd_times = []
        for i in range(ctx.scale.noop_repeats):
            stats, _ = _sync(ctx, server, home, "default", [], 0,
                             "noop-sync" if i == 0 else None)
            cmd_times.append(stats["seconds"])
            out.setdefault("cli_runs", []).append(stats)
        lib_times = _library_syncs(home, "default", ctx.scale.noop_repeats)
        # The baseline of issue 12: the same no-op sync listing everything and diffing.
        full_cmd = [_sync(ctx, server, home, "default", ["--full"], 0, None)[0]["seconds"]
                    for _ in range(ctx.scale.noop_repeats)]
        full_lib = _library_syncs(home, "default", ctx.scale.noop_repeats, full=True)
        out["full_cli_seconds"] = round(statistics.median(full_cmd), 3)
        out["full_library_seconds"] = round(statistics.median(full_lib), 3)
        out["cli_seconds"] = round(statistics.median(cmd_times), 3)
        out["library_seconds"] = round(statistics.median(lib_times), 3)
        out["library_runs"] = [round(t, 3) for t in lib_times]
        startup = run_measured([sys.executable, "-c", "import blobsync.cli.main"],
                               env=clean_env()).seconds
        out["python_startup_s"] = round(startup, 3)
        ctx.log(f"    blobsync sync: {out['cli_seconds']:.2f} s (median of "
                f"{len(cmd_times)}); BlobManager.sync: {out['library_seconds']:.4f} s; "
                f"with --full (listing diff): {out['full_cli_seconds']:.2f} s and "
                f"{out['full_library_seconds']:.3f} s")
    return out


# 5. the server under load ------------------------------------------------------------------
def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def load(ctx: Context) -> dict[str, Any]:
    with ServerProc(ctx.work / "load-server") as server:
        return _load(ctx, server, server.add_user("bench"), "load")


def _load(ctx: Context, server: ServerProc, token: str, profile: str) -> dict[str, Any]:
    """bench/loadgen.py's clients against ``server`` as user ``bench``; its figures, the
    server's CPU and peak RSS, and the errors the server itself saw."""
    stats: dict[str, Any] = {}
    ctx.log(f"  {profile}: {ctx.scale.load_clients} clients for {ctx.scale.load_seconds:g} s")
    with server.watch(stats, ctx.profile(profile)):
        m = run_measured(
            [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", server.url,
             "--user", "bench", "--clients", str(ctx.scale.load_clients),
             "--seconds", str(ctx.scale.load_seconds)],
            env=clean_env(LOADGEN_TOKEN=token),
            timeout=ctx.scale.load_seconds + 300,
        ).check()
    doc = json.loads(m.stdout)
    doc.update(stats)
    doc["loadgen_cpu_s"] = round(m.cpu_seconds, 1)
    with urllib.request.urlopen(server.local_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    doc["server_5xx"] = int(_metric_sum(text, "blobsync_http_errors_total", kind="server"))
    doc["server_dropped"] = int(_metric_sum(text, "blobsync_http_errors_total",
                                            kind="dropped"))
    log = server.log_path.read_text()
    doc["server_tracebacks"] = len(re.findall(r"Traceback", log))
    ctx.log(f"    {doc['blobs_per_s']:.0f} blobs/s, p50 {doc['p50_ms']} ms, "
            f"p99 {doc['p99_ms']} ms, {doc['errors']} errors")
    return doc


# 6. the server alone on streams ---------------------------------------------------------------
def server(ctx: Context) -> dict[str, Any]:
    """Stream upload and download of the small-blob set, sealed ahead in this process and
    sent over one connection: the server's own figures, without the client's costs."""
    import stream_micro

    n = ctx.scale.small_count
    out = ctx.start({"count": n, "size": ctx.scale.small_size, "per_stream": 1000})
    secret = os.urandom(128)
    plain = os.urandom(ctx.scale.small_size)
    with ServerProc(ctx.work / "micro-server") as srv:
        token = srv.add_user("bench")
        ids = [os.urandom(16).hex() for _ in range(n)]
        sealed = [seal(secret, i, plain) for i in ids]
        ctx.log(f"  server: {n} blobs up then down in streams of 1000")
        res = asyncio.run(stream_micro.run(srv.url, token, ids, sealed, 1000, srv,
                                           ctx.profile_dir, "server"))
    out.update(res)
    ctx.log(f"    up {res['upload_blobs_per_s']:.0f} blobs/s "
            f"({res['upload_server_cpu_ms_per_blob']} ms CPU each), down "
            f"{res['download_blobs_per_s']:.0f} blobs/s "
            f"({res['download_server_cpu_ms_per_blob']} ms CPU each)")
    return out


# 7. the change feed ----------------------------------------------------------------------------
def feed(ctx: Context) -> dict[str, Any]:
    """Propagation through two servers on PostgreSQL + S3 (bench/propagation.py), and the
    cost of idle event-stream watchers (bench/idle_watchers.py)."""
    import idle_watchers
    import propagation

    quick = ctx.scale.name == "quick"
    out = ctx.start({})
    out.update(propagation.measure(ctx.work / "feed", 50 if quick else 300,
                                   20 if quick else 100, log=ctx.log))
    count, seconds = (200, 5.0) if quick else (1000, 30.0)
    ctx.log(f"  feed: {count} idle SSE watchers for {seconds:g} s")
    idle = idle_watchers.measure(count, seconds)
    out["idle"] = idle
    ctx.log(f"    {idle['cpu_percent_of_one_core']}% of a core, "
            f"{idle['kb_per_waiter']} KB per waiter")
    return out


# 8. scale-out: PostgreSQL metadata + S3 payloads ----------------------------------------------
def scaleout(ctx: Context) -> dict[str, Any]:
    """The ``small`` section's streams on one server on PostgreSQL + ``rclone serve s3``:
    put on device A, sync on device B, and the S3 requests each step sent (the server's
    ``blobsync_s3_requests_total``, read before and after). The ratio to the default store
    is report.py's, from the ``small`` section of the same run."""
    from pg_s3 import pg_s3, requests_between, s3_requests

    n = ctx.scale.small_count
    files = ctx.small_files()
    out = ctx.start({"count": n, "size": ctx.scale.small_size,
                     "deployment": "PostgreSQL + rclone serve s3, one server"})
    with pg_s3() as dep:
        data = ctx.work / "scaleout-server"
        with dep.server(data, "bench") as server:
            token = dep.add_user(data, "bench")
            a = _device(ctx, server, token, "scaleout-A")
            b = _device(ctx, server, token, "scaleout-B", recover=True)
            ctx.log(f"  scaleout: put {n} files on device A")
            before = s3_requests(server.local_url)
            up = _put(ctx, server, a, files, "scaleout", [], n, "scaleout-up")
            after = s3_requests(server.local_url)
            _s3_figures(up, n, requests_between(before, after))
            out["up"] = up
            ctx.log(f"    {up['seconds']:.1f} s ({up['files_per_s']:.0f} files/s), "
                    f"{up['s3_requests_per_blob']} S3 requests per blob; CPU client "
                    f"{up['client_cpu_s']} s, server {up['server_cpu_s']} s")
            ctx.log(f"  scaleout: sync {n} blobs to device B")
            before = s3_requests(server.local_url)
            down, _ = _sync(ctx, server, b, "scaleout", [], n, "scaleout-down")
            after = s3_requests(server.local_url)
            _s3_figures(down, n, requests_between(before, after))
            out["down"] = down
            ctx.log(f"    {down['seconds']:.1f} s ({down['files_per_s']:.0f} files/s), "
                    f"{down['s3_requests_per_blob']} S3 requests per blob; CPU client "
                    f"{down['client_cpu_s']} s, server {down['server_cpu_s']} s")
    return out


def _s3_figures(step: dict[str, Any], n: int, requests: dict[str, int]) -> None:
    step["files_per_s"] = round(n / step["seconds"], 1)
    step["s3_requests"] = requests
    step["s3_requests_per_blob"] = round(sum(requests.values()) / n, 4)


def load_scaleout(ctx: Context) -> dict[str, Any]:
    """The ``load`` section again, on PostgreSQL + ``rclone serve s3`` with ``--workers 2``
    (CPU summed over the server's processes, peak RSS of the one that grew most)."""
    from pg_s3 import pg_s3, requests_between, s3_requests

    with pg_s3() as dep:
        data = ctx.work / "load-scaleout-server"
        with dep.server(data, "load", ("--workers", "2")) as server:
            token = dep.add_user(data, "bench")
            before = s3_requests(server.local_url)
            doc = _load(ctx, server, token, "load_scaleout")
            after = s3_requests(server.local_url)
    doc["workers"] = 2
    doc["deployment"] = "PostgreSQL + rclone serve s3, --workers 2"
    doc["s3_requests"] = requests_between(before, after)
    return doc


SECTIONS = {"small": small, "large": large, "peer": peer, "noop": noop, "server": server,
            "load": load, "feed": feed, "scaleout": scaleout, "load_scaleout": load_scaleout}
