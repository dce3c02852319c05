"""SHA-256 manifests of files and directory trees: recorded when an artifact is complete, checked before it is
read back (a training checkpoint before torch's or DeepSpeed's readers open it, a phase's outputs before the
phase is skipped).

    files = build_manifest(path)        # {"relative/path": {"size": int, "sha256": hex}}; a file: {".": {...}}
    problems = verify_manifest(path, files)   # [] when every file is there, unchanged, and nothing was added
    manifest_digest(files)              # one hex digest standing for the whole artifact

A problem names the file and what is wrong with it (missing, a different size, different content, not in the
manifest). Sizes are compared first, so a truncated file is reported without reading it. Large files are hashed
in chunks (bounded memory) by a few threads (hashlib releases the GIL).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 8 << 20
FILE = "."  # the manifest key of an artifact that is a single file


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_files(root: str | os.PathLike) -> list[str]:
    """The files of an artifact as manifest keys (POSIX paths relative to `root`, sorted); [FILE] for a file."""
    root = Path(root)
    if root.is_file():
        return [FILE]
    names = []
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            names.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(names)


def _path(root: Path, name: str) -> Path:
    return root if name == FILE else root / name


def hash_files(root: str | os.PathLike, names: Iterable[str], *, workers: int = 4) -> dict[str, dict]:
    """{name: {"size", "sha256"}} of the given files of `root`."""
    root = Path(root)
    names = list(names)

    def entry(name: str) -> dict:
        p = _path(root, name)
        return {"size": p.stat().st_size, "sha256": sha256_file(p)}

    if len(names) <= 1:
        return {n: entry(n) for n in names}
    with ThreadPoolExecutor(max_workers=min(workers, len(names))) as pool:
        return dict(zip(names, pool.map(entry, names)))


def build_manifest(root: str | os.PathLike) -> dict[str, dict]:
    return hash_files(root, list_files(root))


def manifest_digest(files: Mapping[str, Mapping]) -> str:
    canonical = json.dumps(
        {k: [int(v["size"]), str(v["sha256"])] for k, v in sorted(files.items())}, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def verify_manifest(
    root: str | os.PathLike,
    files: Mapping[str, Mapping],
    *,
    names: Iterable[str] | None = None,
    check_extra: bool = True,
    ignore: Iterable[str] = (),
) -> list[str]:
    """What differs between the artifact at `root` and its manifest, one line per file ([] when nothing does).

    `names` restricts the check to some of the manifest's files (ranks share the work); `check_extra` reports
    files present but neither in the manifest nor in `ignore` (a reader such as DeepSpeed's finds its files by
    pattern, so an added file matters too)."""
    root = Path(root)
    if not root.exists():
        return [f"{root}: missing"]
    wanted = list(files) if names is None else list(names)
    problems, to_hash = [], []
    for name in wanted:
        p, want = _path(root, name), files[name]
        if not p.is_file():
            problems.append(f"{p}: missing")
            continue
        size = p.stat().st_size
        if size != want["size"]:
            problems.append(f"{p}: {size} bytes, {want['size']} when it was written (truncated or replaced)")
        else:
            to_hash.append(name)
    for name, got in hash_files(root, to_hash).items():
        if got["sha256"] != files[name]["sha256"]:
            problems.append(
                f"{_path(root, name)}: its content differs from when it was written (sha256 "
                f"{got['sha256'][:12]}..., recorded {str(files[name]['sha256'])[:12]}...): damaged or "
                "replaced"
            )
    if check_extra:
        extra = sorted(set(list_files(root)) - set(files) - set(ignore))
        problems.extend(f"{_path(root, n)}: not part of the artifact as written (a file added later)" for n in extra)
    return problems
