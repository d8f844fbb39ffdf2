"""Starting shmkv-server from Python and reading its ready line.

Once it serves, shmkv-server prints one line on stdout:

    shmkv-server ready: segment=<name> pool_size=<bytes> socket=<path> generation=<n>

Supervisors, the tests, the benchmarks and the demo wait for it through :func:`start_server`
(or parse it with :func:`parse_ready_line`); the C++ twin is src/server/ready_line.h.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Sequence

READY_PREFIX = "shmkv-server ready:"


@dataclass(frozen=True)
class ReadyLine:
    segment: str
    pool_size: int
    socket: str
    generation: int

    def __str__(self) -> str:
        return f"{READY_PREFIX} segment={self.segment} pool_size={self.pool_size} socket={self.socket} " \
            f"generation={self.generation}"


def parse_ready_line(line: str) -> ReadyLine:
    """Parses the ready line; ValueError naming what is wrong for anything else."""
    line = line.rstrip("\r\n")
    if not line.startswith(READY_PREFIX):
        raise ValueError(f"not a ready line (it starts with {READY_PREFIX!r}): {line[:80]!r}")

    def value(key: str, until: str | None) -> str:
        needle = f" {key}="
        at = line.find(needle)
        if at < 0:
            raise ValueError(f"ready line lacks '{key}=': {line!r}")
        start = at + len(needle)
        end = len(line) if until is None else line.find(until, start)
        if end < 0:
            raise ValueError(f"ready line lacks {until!r}: {line!r}")
        return line[start:end]

    def number(key: str, until: str | None) -> int:
        text = value(key, until)
        if not text.isdigit():
            raise ValueError(f"ready line: {key}={text!r} is not a number")
        return int(text)

    # The socket path is the only field that may hold spaces: it runs up to " generation=".
    return ReadyLine(segment=value("segment", " pool_size="), pool_size=number("pool_size", " socket="),
                     socket=value("socket", " generation="), generation=number("generation", None))


def start_server(binary: str, args: Sequence[str], **popen_kwargs) -> tuple[subprocess.Popen, ReadyLine]:
    """Starts `binary` with `args`, waits for its ready line and returns the process and the line.

    stdout is a pipe (the ready line comes on it); other Popen arguments pass through. If the server
    exits or prints something else instead, it is killed and RuntimeError says what it printed.
    """
    proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, text=True, **popen_kwargs)
    line = proc.stdout.readline()
    try:
        return proc, parse_ready_line(line)
    except ValueError:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{binary} did not start (exit status {proc.returncode}): it printed {line!r}") from None
