"""Branching runs: `wdl run CONFIG --from DIR --out NEW` takes every phase of run DIR whose work this run would
redo identically, and runs the rest in NEW (an ablation: a `joint.lam` sweep reuses the scoring and SFT).

A phase of DIR is reused when the same test that lets a run skip its own phase passes against DIR's marker
(`wdl.run_dir.check_marker`): DIR's marker records the fingerprint NEW computes for the phase (the config values
it reads, the content digests of its inputs, which for later phases are the outputs of the phases reused before
it) and every output of the phase in DIR still matches the marker's record (every file hashed). The outputs are
then hard-linked into NEW (copied across filesystems, or always with `copy=True`), with the phase's step log,
and NEW gets DIR's marker with `"reused_from": DIR`; the phase counts as complete in NEW from then on. Training
checkpoints (`work/`) are not taken: a reused phase is finished. Eval results are reused per model the same
way (`eval.<model>` markers: same eval settings, same model content).

Hard links are safe here because no artifact is ever modified in place (every write is a new file renamed over
the old one), so a later change in either run never shows in the other.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from wdl.io import atomic_write_json
from wdl.run_dir import Fingerprint, PipelineError, RunPaths, check_marker


def check_source(source: Path, target: Path) -> RunPaths:
    """The run directory `--from` names, checked: a run directory with phase markers, not the target itself."""
    source = Path(source).expanduser().resolve()
    if source == Path(target).resolve():
        raise PipelineError(f"--from {source}: that is the run directory itself (--out); give the run to branch from")
    paths = RunPaths(source)
    if not source.is_dir() or not any(paths.markers.glob("*.json")):
        raise PipelineError(
            f"--from {source}: not a run directory with finished phases (no {paths.markers}/*.json); "
            "give the --out of an earlier `wdl run`"
        )
    return paths


def _link_file(src: Path, dst: Path, copy: bool) -> str:
    if not copy:
        try:
            os.link(src, dst)
            return "link"
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copy2(src, dst)
    return "copy"


def place(src: Path, dst: Path, *, copy: bool = False) -> str:
    """`src` (a file or a directory tree) at `dst` by hard links (or copies); returns "link" or "copy" (the last
    file's way). An existing `dst` is replaced."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        return _link_file(src, dst, copy)
    how = "link" if not copy else "copy"
    tmp = dst.with_name(f".{dst.name}.reuse.tmp")  # renamed into place once complete
    shutil.rmtree(tmp, ignore_errors=True)
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (tmp / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            how = _link_file(Path(root) / name, tmp / rel / name, copy)
    os.replace(tmp, dst)
    return how


def reuse_phase(
    source: RunPaths,
    target: RunPaths,
    name: str,
    fingerprint: Fingerprint,
    outputs: Mapping[str, str],
    *,
    extra_files: tuple[str, ...] = (),
    copy: bool = False,
    marker_updates: Mapping | None = None,
) -> tuple[dict[str, str], str] | None:
    """Take phase `name` from run `source` into run `target` when its marker there matches `fingerprint` and its
    outputs (name -> path relative to a run directory) verify; returns (the outputs' content digests, "link" or
    "copy"), or None (nothing is touched) when the phase cannot be reused. `extra_files` (relative paths) are
    taken along when present (a training phase's step log)."""
    check = check_marker(source, name, fingerprint, {k: source.root / v for k, v in outputs.items()})
    if not check.ok:
        return None
    how = "link"
    for rel in [*outputs.values(), *extra_files]:
        src = source.root / rel
        if src.exists():
            how = place(src, target.root / rel, copy=copy)
    marker = {**check.marker, **(marker_updates or {}), "reused_from": str(source.root), "reused_by": how}
    atomic_write_json(target.marker(name), marker)
    return check.output_digests, how
