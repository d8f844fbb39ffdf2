"""Starting shmkv-server from Python and reading its ready line.

Once it serves, shmkv-server prints one line on stdout:

    shmkv-server ready: segment=<name> pool_size=<bytes> socket=<path> generation=<n> huge_pages=<2MiB|no>

huge_pages= says whether the pool got huge pages (checked in /proc/self/smaps at start; "unknown"
where that could not be read). Servers before it ended the line at generation=; their lines still
parse (huge_page_size None). Space-separated key=value fields after generation= that this version
does not know are skipped.

Supervisors, the tests, the benchmarks and the demo wait for it through :func:`start_server`
(or parse it with :func:`parse_ready_line`); the C++ twin is src/server/ready_line.h.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Sequence

READY_PREFIX = "shmkv-server ready:"


_UNITS = {"KiB": 10, "MiB": 20, "GiB": 30}


def _parse_huge_pages(text: str) -> int | None:
    if text == "no":
        return 0
    if text == "unknown":
        return None
    for unit, shift in _UNITS.items():
        if text.endswith(unit) and text[:-len(unit)].isdigit() and int(text[:-len(unit)]) > 0:
            return int(text[:-len(unit)]) << shift
    raise ValueError(f"ready line: huge_pages={text!r} is not no, unknown or a size such as 2MiB")


def _format_huge_pages(size: int | None) -> str:
    if size is None:
        return "unknown"
    if size == 0:
        return "no"
    for unit, shift in reversed(list(_UNITS.items())):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


@dataclass(frozen=True)
class ReadyLine:
    segment: str
    pool_size: int
    socket: str
    generation: int
    # The huge page size backing the pool (bytes, e.g. 2 MiB); 0: 4 KiB pages; None: unknown, or a
    # line of a server from before this field.
    huge_page_size: int | None = None

    def __str__(self) -> str:
        return f"{READY_PREFIX} segment={self.segment} pool_size={self.pool_size} socket={self.socket} " \
            f"generation={self.generation} huge_pages={_format_huge_pages(self.huge_page_size)}"

    @property
    def huge_pages(self) -> bool:
        """True when the server found huge pages backing its pool."""
        return bool(self.huge_page_size)


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

    # The socket path is the only field that may hold spaces: it runs up to " generation=". After
    # generation= come space-separated key=value fields (none from older servers).
    gen_text, _, rest = value("generation", None).partition(" ")
    if not gen_text.isdigit():
        raise ValueError(f"ready line: generation={gen_text!r} is not a number")
    huge: int | None = None
    for field in rest.split():
        key, _, text = field.partition("=")
        if key == "huge_pages":
            huge = _parse_huge_pages(text)
    return ReadyLine(segment=value("segment", " pool_size="), pool_size=number("pool_size", " socket="),
                     socket=value("socket", " generation="), generation=int(gen_text), huge_page_size=huge)


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
