#!/usr/bin/env python
"""Prepare the checkout the device tool sends for the one GPU call (run here, on the CPU machine, right before it).

- writes .gpu/source.json (commit, dirty flag, changed files): the GPU machine gets a copy of the working
  tree without git, and every row records where its code came from (bench/env.py reads the stamp there);
- keeps .gpu/ and .whl/ out of git through .git/info/exclude (they travel with `carry`, never in commits);
- checks .whl/ (from ../shared/gpu/fetch-wheels.sh): one liger-kernel and one cut-cross-entropy wheel;
- checks that what travels stays under the device tool's 64 MiB;
- prints the device-tool call;
- with --done FILES_AT, keeps what a call returned in .gpu/previous/, so that a repeated call runs only the
  stages that did not complete (scripts/gpu_call.py resumes from there); --reset forgets it.

    python scripts/gpu_prepare.py                        # before the call
    python scripts/gpu_prepare.py --done FILES_AT        # after a call cut short, before repeating it
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 << 20
WHEELS = ("liger_kernel", "cut_cross_entropy")  # the only packages the call installs
CARRY = (".whl", ".gpu")
BUDGET_S, TIMEOUT_S = 480, 540
COMMAND = "python3 scripts/gpu_call.py"


def select_wheels(folder: Path) -> tuple[list[Path], list[str]]:
    """The wheels of WHEELS in `folder` (one version each), and the problems found."""
    chosen, problems = [], []
    for name in WHEELS:
        found = sorted(folder.glob(f"{name}-*.whl")) if folder.is_dir() else []
        if len(found) > 1:
            problems.append(f"{len(found)} versions of {name} in {folder} ({', '.join(p.name for p in found)}): "
                            "keep one")
        elif not found:
            problems.append(f"no {name} wheel in {folder}: its baselines will be reported as missing "
                            "(../shared/gpu/fetch-wheels.sh fetches it)")
        else:
            chosen.append(found[0])
    return chosen, problems


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def ensure_excluded(root: Path, pattern: str) -> None:
    exclude = Path(git(root, "rev-parse", "--git-path", "info/exclude").strip())
    exclude = exclude if exclude.is_absolute() else root / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = exclude.read_text() if exclude.exists() else ""
    if pattern not in text.splitlines():
        with exclude.open("a") as f:
            f.write(("\n" if text and not text.endswith("\n") else "") + pattern + "\n")


def write_stamp(root: Path) -> dict:
    changed = [line[3:] for line in git(root, "status", "--porcelain", "--untracked-files=no").splitlines() if line]
    stamp = {"git_commit": git(root, "rev-parse", "HEAD").strip(), "git_dirty": bool(changed),
             "changed_files": changed, "prepared_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    ensure_excluded(root, "/.gpu/")
    path = root / ".gpu" / "source.json"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.replace(path)
    return stamp


def travelling_bytes(root: Path) -> int:
    files = git(root, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    total = sum((root / f).stat().st_size for f in files if f and (root / f).is_file())
    for carried in CARRY:
        d = root / carried
        if d.is_dir():
            total += sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    return total


def keep_previous(root: Path, returned: Path) -> Path:
    """Copy a returned call's results.jsonl and call.json into .gpu/previous/ (replacing what was there)."""
    for name in ("results.jsonl", "call.json"):
        if not (returned / name).is_file():
            raise SystemExit(f"gpu_prepare: {returned} has no {name}: pass the folder the device tool returned "
                             "(files_at)")
    json.loads((returned / "call.json").read_text())  # a damaged file must not poison the next call
    dest = root / ".gpu" / "previous"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("results.jsonl", "call.json"):
        shutil.copyfile(returned / name, dest / name)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--done", type=Path, metavar="FILES_AT", help="what a call returned: its completed stages "
                    "are not run again by the next call")
    ap.add_argument("--reset", action="store_true", help="forget earlier calls (.gpu/previous/)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout the device tool sends (default: this one)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    if args.reset:
        shutil.rmtree(root / ".gpu" / "previous", ignore_errors=True)
        print(".gpu/previous/ removed: the next call runs every stage")
    if args.done:
        dest = keep_previous(root, args.done)
        stages = json.loads((dest / "call.json").read_text()).get("stages", {})
        done = [s for s, v in stages.items() if v.get("status") in ("ok", "done earlier") and s != "setup"]
        print(f"{dest.relative_to(root)}: the next call skips {', '.join(done) or 'nothing'}")
    stamp = write_stamp(root)
    dirty = f" (dirty: {', '.join(stamp['changed_files'])})" if stamp["git_dirty"] else ""
    print(f"source: {stamp['git_commit'][:12]}{dirty} -> .gpu/source.json")
    ensure_excluded(root, "/.whl/")
    _, problems = select_wheels(root / ".whl")
    size = travelling_bytes(root)
    print(f"travelling: {size / (1 << 20):.1f} MiB of {LIMIT >> 20} MiB (working tree + {' + '.join(CARRY)})")
    if size > LIMIT:
        problems.append("over the device tool's 64 MiB: drop wheels or ignore large untracked files")
    for p in problems:
        print("WARNING:", p)
    print(f"\nThe device call (run tool), from this checkout:\n  command: {COMMAND}\n"
          f"  carry: {json.dumps(list(CARRY))}   timeout_s: {TIMEOUT_S}   (the call stops itself at {BUDGET_S} s)\n"
          "Then: python scripts/gpu_collect.py <files_at>")
    return 1 if size > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
