"""One `wdl` command per run directory: an exclusive lock held for the whole command.

    with RunLock(run_dir) as lock:   # RunDirectoryInUse when another process holds it
        ...                          # lock.took_over: the record of a holder that ended without releasing

`DIR/.wdl.lock` is locked with filelock (flock on POSIX): the kernel drops the lock when its holder dies, even by
`kill -9`, so the lock of a dead process is free and is simply taken over. `DIR/.wdl.lock.json` records the
holder (pid, host, start time, command) for the refusal message; it is removed on release, so a record found
on acquiring is that of a holder that ended without releasing (killed): `took_over` returns it.

A forked child shares its parent's lock (same open file): a child process that outlives a killed parent keeps
the directory locked until it ends too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

import filelock

from wdl.io import atomic_write_json, read_json

LOCK_NAME = ".wdl.lock"
HOLDER_NAME = ".wdl.lock.json"


class RunDirectoryInUse(ValueError):
    """Another process holds the run directory's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(record: dict | None) -> str:
    if not isinstance(record, dict):
        return "a process that has not recorded itself yet"
    pid, host = record.get("pid"), record.get("host")
    text = f"pid {pid} on {host}, started {record.get('started', '?')}"
    if record.get("command"):
        text += f" ({record['command']})"
    if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        text += "; that process has ended, but a process it started still holds the lock"
    return text


def _program() -> str:
    """The command's name: `wdl` for the console script and for `python -m wdl` alike."""
    path = Path(sys.argv[0] if sys.argv and sys.argv[0] else "wdl")
    return path.parent.name if path.name == "__main__.py" else path.name


class RunLock:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.lock_path = self.directory / LOCK_NAME
        self.holder_path = self.directory / HOLDER_NAME
        self._lock = filelock.FileLock(str(self.lock_path), thread_local=False)
        self.took_over: dict | None = None

    def _record(self) -> dict | None:
        with contextlib.suppress(OSError, ValueError):
            return read_json(self.holder_path)
        return None

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            time.sleep(0.2)  # a holder that just took the lock writes its record right after
            raise RunDirectoryInUse(
                f"{self.directory} is in use by another wdl command: {describe_holder(self._record())}. Wait for it "
                "to finish or stop it: two runs in one directory overwrite each other's files"
            ) from None
        previous = self._record()
        if previous is not None and previous.get("pid") != os.getpid():
            self.took_over = previous
        atomic_write_json(
            self.holder_path,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join([_program(), *sys.argv[1:]])[:300],
            },
        )
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
            self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
