"""A real pseudo-terminal for CLI tests: run blobsync with stderr (and stdout, or a file)
on a new pty, read what the terminal received, and rebuild the screen it ends with."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.helpers.cli import ROOT, TIMEOUT, Device

# Rich draws the bars with these; a line of the bar holds at least one of them.
BAR_CHARS = ("━", "╸", "╺")
# The control sequences rich writes: CSI (cursor moves, erasures, colours) and OSC.
_CONTROL = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07")


def on_terminal(device: Device, *args: str, stdout: Path | None = None,
                ) -> tuple[int, bytes]:
    """Run blobsync with stderr (and stdout, unless ``stdout`` names a file) on a new pty.

    Returns the exit code and everything the terminal received.
    """
    master, slave = os.openpty()
    # A real terminal has a size; a new pty says 0x0, which rich would take as "no width".
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = device.env()
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS",
                 "LINES"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"
    out_file = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blobsync", "--home", str(device.home), *args],
            stdin=subprocess.DEVNULL, stdout=out_file if out_file is not None else slave,
            stderr=slave, env=env, cwd=ROOT, start_new_session=True,
        )
    finally:
        os.close(slave)
        if out_file is not None:
            out_file.close()
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        code = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, seen


def shown_lines(seen: bytes) -> list[str]:
    """The screen the terminal ends with: enough of a terminal to follow rich's redraws
    (carriage return, newline, cursor up, erase line; colours ignored)."""
    text = seen.decode(errors="replace")
    screen: list[str] = [""]
    row = col = 0

    def put(chars: str) -> None:
        nonlocal col
        line = screen[row].ljust(col)
        screen[row] = line[:col] + chars + line[col + len(chars):]
        col += len(chars)

    pos = 0
    for match in [*_CONTROL.finditer(text), None]:
        end = match.start() if match is not None else len(text)
        for piece in re.split(r"([\r\n])", text[pos:end]):
            if piece == "\r":
                col = 0
            elif piece == "\n":
                row += 1
                col = 0  # the pty turns \n into \r\n (onlcr)
                if row == len(screen):
                    screen.append("")
            elif piece:
                put(piece)
        if match is None:
            break
        pos = match.end()
        arg, command = match.group(1), match.group(2)
        if command == "A":
            row = max(0, row - int(arg or 1))
        elif command == "K" and arg == "2":
            screen[row] = ""
    return [line.rstrip() for line in screen]


def bar_percentages(seen: bytes, label: str) -> list[int]:
    """Every percentage the bar labelled ``label`` showed, in the order drawn (each
    redraw of the bars writes the line anew)."""
    text = _CONTROL.sub("", seen.decode(errors="replace"))
    bar = "".join(BAR_CHARS)
    return [int(m) for m in re.findall(rf"{re.escape(label)}\s+[{bar}]+\s+(\d+)%", text)]
