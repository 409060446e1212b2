"""The Python examples of README.md and docs/client.md run as written against a real
server (issue 14), so that they stay true.

The whole programs run in a process of their own, HOME a temporary directory (their
profile is "~/.blobsync"); only the placeholders of docs/client.md's (server, user, token)
are replaced by the test server's. The fragments that continue them (a watch, the
incoming box) use an ``m`` of the program: they are compiled, and every ``m.NAME`` they
call must be a method of BlobManager.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from blobsync.client import BlobManager
from tests.helpers.cli import ROOT, TIMEOUT, Account, Device, base_env

BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(doc: str) -> list[str]:
    return BLOCK.findall((ROOT / doc).read_text())


def run_env(home: Path, passphrase: str) -> dict[str, str]:
    env = base_env()
    env.update(HOME=str(home), BLOBSYNC_PASSPHRASE=passphrase)
    return env


def test_the_readme_example_runs(account: Account, tmp_path: Path) -> None:
    [example] = python_blocks("README.md")
    home = tmp_path / "home"
    device = Device(home / ".blobsync", account)
    assert device.init().returncode == 0
    other = Device(tmp_path / "other", account)
    assert other.init("--recover").returncode == 0
    script = tmp_path / "example.py"
    script.write_text(example)
    proc = subprocess.Popen([sys.executable, str(script)], env=run_env(home, device.passphrase),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        # put, get and sync done, the watch follows: a blob another device puts shows.
        src = tmp_path / "from-b.txt"
        src.write_text("from device B\n")
        deadline = time.monotonic() + TIMEOUT
        while not device.ok("ls", "--remote").strip():  # the example's "hello" went up
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        other.ok("put", "--id", "from-b", str(src))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "downloaded from-b\n", (line, proc.poll())
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err, err
    hello = set(device.ok("ls", "--remote").split()) - {"from-b"}
    assert len(hello) == 1
    assert device.ok("get", hello.pop()) == "hello"


def test_the_client_doc_program_runs(account: Account, tmp_path: Path) -> None:
    program = python_blocks("docs/client.md")[0]
    for placeholder, value in (('"https://blobs.example:2424"', repr(account.server.url)),
                               ('user="alice"', f"user={account.user!r}"),
                               ('token="..."', f"token={account.token!r}")):
        assert placeholder in program
        program = program.replace(placeholder, value)
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    movie = os.urandom(3 * 1024 * 1024)
    (work / "movie.mkv").write_bytes(movie)
    for name in ("a.jpg", "b.jpg"):
        (work / "photos" / name).write_bytes(os.urandom(20_000))
    script = tmp_path / "program.py"
    script.write_text(program)
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([sys.executable, str(script)], env=run_env(home, "unused"),
                          cwd=work, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert (work / "copy.mkv").read_bytes() == movie
    assert (home / ".blobsync" / "config.json").is_file()  # "~" is the user's home
    assert not (work / "~").exists()
    assert "['movie']" in proc.stdout  # remote_list(filter_flag="PENDING", ...)
    device = Device(home / ".blobsync", account, passphrase="long passphrase")
    remote = device.ok("ls", "--remote").split()
    # movie and two photos at least (hello was deleted; what the example puts besides
    # may grow with the docs).
    assert "movie" in remote and len(remote) >= 3


def test_the_fragments_call_what_blobmanager_has() -> None:
    fragments = python_blocks("docs/client.md")[1:]
    assert fragments, "docs/client.md has no fragments any more: drop this test"
    called: set[str] = set()
    for text in fragments:
        tree = compile(text, "<docs/client.md>", "exec",
                       flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "m"):
                called.add(node.attr)
    assert {"watch", "register_consumer", "process_incoming"} <= called
    missing = sorted(name for name in called if not hasattr(BlobManager, name))
    assert missing == []
