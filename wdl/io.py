"""Run-directory files: atomic writes (a temporary name beside the target, fsync, rename), the JSON and JSONL
readers, and the clean-up of what interrupted writes leave behind.

A reader (or a resumed run) sees either the previous complete artifact or the new complete one, never a
half-written one, even after `kill -9`. The one file that is appended to instead, a training phase's step log,
can end in a line cut short by a kill: `read_jsonl` drops such a last line.

A write that fails because the disk is full raises `DiskFullError` ("no space left on device while writing
PATH"); its temporary is removed, and the target keeps its previous complete content.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """The disk filled up while writing an artifact (nothing half-written is left where a reader looks)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = str(path)

    def __str__(self) -> str:
        return f"no space left on device while writing {self.path}"


def _chain(exc: BaseException):
    """`exc`, its causes and contexts, and the per-rank failures a torch.distributed.checkpoint error wraps."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]


def was_interrupted(exc: BaseException) -> bool:
    """Whether `exc` is, or wraps, a KeyboardInterrupt (torch.distributed.checkpoint re-raises a Ctrl-C that
    lands inside a load or save as its own CheckpointException)."""
    return any(isinstance(e, KeyboardInterrupt) for e in _chain(exc))


def is_disk_full(exc: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether `exc` comes from a full disk: ENOSPC anywhere in its chain, or (for writers that lose the errno,
    such as torch.save's C++ stream) a failure while the filesystem of `path` has (almost) no space left."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
    io_like = any(type(e) in (OSError, RuntimeError) for e in _chain(exc))  # torch's writers raise RuntimeError
    if path is not None and io_like:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        with contextlib.suppress(OSError):
            return shutil.disk_usage(probe).free < (16 << 20)
    return False


@contextlib.contextmanager
def writing(path: str | os.PathLike, *, probe_space: bool = True) -> Iterator[None]:
    """Turn a full-disk failure inside the block into DiskFullError naming `path` (a DiskFullError from a
    nested block, naming the file itself, passes unchanged). `probe_space=False` trusts the errno alone (for a
    block that does more than write)."""
    try:
        yield
    except DiskFullError:
        raise
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)) or not is_disk_full(e, path if probe_space else None):
            raise
        raise DiskFullError(path) from e


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: str | os.PathLike, *, fix: str = "") -> Any:
    """The JSON value in `path`; a file that is not valid JSON (or not UTF-8) is a ValueError naming it, its
    line, and `fix` (what to do about it)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        where, why = f"{path}", f"not valid UTF-8 (byte {e.start})"
    except json.JSONDecodeError as e:
        where, why = f"{path}:{e.lineno}", f"not valid JSON ({e.msg})"
    raise ValueError(f"{where}: {why}{': ' + fix if fix else ''}")


STEP_LOG_FIX = "delete that line (a step log is a record: training resumes from its checkpoints, not from the log)"


def read_jsonl(path: str | os.PathLike, *, fix: str = "repair or delete that line") -> list[dict]:
    """The rows of a JSONL file, [] when it does not exist; blank lines are skipped.

    A last line that is not valid JSON is a write cut short by a kill and is dropped; an invalid line anywhere
    else means the file is damaged: a ValueError naming file:line and `fix`.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON (the file is damaged): {fix}") from None
    return rows


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it is renamed to `path`.

    On an exception the temporary directory is removed and `path` is untouched. With `overwrite=True` an
    existing `path` is replaced (moved aside first, then deleted), otherwise it is an error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; remove it or pass overwrite=True")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        with writing(path):
            yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(
    directory: str | os.PathLike, *, recursive: bool = False, skip: tuple[str, ...] = (), prefix: str | None = None
) -> list[Path]:
    """Delete what interrupted atomic writes left in `directory` (and below it with `recursive`, except in the
    subdirectories named in `skip`): temporaries `.NAME.*.tmp`, and `.NAME.PID.old` copies moved aside for a
    replacement; with `prefix`, only those of target NAME == prefix. An `.old` copy whose target is missing (the
    replacement was cut short between its two renames) is renamed back instead. Returns what was removed or
    restored. Only call this while no other process writes there (the run directory's lock)."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for p in sorted(directory.iterdir()):
        name = p.name
        if prefix is not None and not name.startswith(f".{prefix}."):
            continue
        if name.startswith(".") and name.endswith(".tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        elif name.startswith(".") and name.endswith(".old") and name.count(".") >= 3:
            target = p.with_name(name[1:].rsplit(".", 2)[0])
            if target.exists():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            else:
                os.replace(p, target)
            removed.append(p)
        elif recursive and p.is_dir() and not p.is_symlink() and name not in skip:
            removed += remove_stale_temporaries(p, recursive=True, skip=skip)
    return removed
