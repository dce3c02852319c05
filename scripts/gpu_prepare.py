#!/usr/bin/env python
"""Prepare this checkout for a GPU session (run here, on the CPU machine, right before the device calls).

- writes .gpu/source.json (commit, dirty flag, changed files): the GPU machine gets a copy of the working
  tree without git, and every benchmark row records where its code came from;
- makes sure .gpu/ and .whl/ are ignored through .git/info/exclude (they travel with `carry`, never in git);
- checks .whl/ (from ../shared/gpu/fetch-wheels.sh): the benchmark's baselines, one version per package;
- checks that what travels stays under the device tool's 64 MiB;
- prints the device-tool calls that fit one session;
- with --done, remembers results already returned, so a call that ran out of time can be resumed.

    python scripts/gpu_prepare.py --reset                  # start of a session
    python scripts/gpu_prepare.py --done FILES_AT/results.jsonl   # after a call, before the next one
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 << 20
NEEDED_WHEELS = ("liger_kernel", "cut_cross_entropy")  # the kernel benchmark's baselines

# One device call runs at most 600 s; the machine stays warm only ~30 s after a call, so issue them back to back.
CALLS = (  # in order of priority: a session has 30 minutes of device time, the first three judge every target
    ("sm90,tests,target", 570, "Hopper resource check, GPU kernel tests (compiled Triton), issue 2's target shapes "
     "with every baseline"),
    ("e2e,e2e-offload", 570, "issue 3: 2x1.7B joint fused vs reference (tokens/s, MFU), 2x4B frozen weak + "
     "FSDP2 CPU offload at 8192 tokens"),
    ("e2e-maxseq", 570, "issue 3: the longest sequence each path fits"),
    ("sweep-fwdbwd", 420, "the H x N grid, forward+backward, time-guarded"),
    ("sweep-score", 180, "the forward-only scoring grid, time-guarded"),
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def ensure_excluded(pattern: str) -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = exclude.read_text() if exclude.exists() else ""
    if pattern not in text.splitlines():
        with exclude.open("a") as f:
            f.write(("\n" if text and not text.endswith("\n") else "") + pattern + "\n")


def write_stamp() -> dict:
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    stamp = {"git_commit": git("rev-parse", "HEAD").strip(), "git_dirty": bool(changed), "changed_files": changed,
             "prepared_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    ensure_excluded("/.gpu/")
    path = ROOT / ".gpu" / "source.json"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.replace(path)
    return stamp


def check_wheels() -> list[str]:
    problems = []
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    by_name = defaultdict(list)
    for w in wheels:
        by_name[re.split(r"-\d", w.name, maxsplit=1)[0].lower().replace("-", "_")].append(w.name)
    for name, files in by_name.items():
        if len(files) > 1:
            problems.append(f".whl has {len(files)} versions of {name} ({', '.join(files)}): keep one, "
                            "or the install stops")
    for name in NEEDED_WHEELS:
        if name not in by_name:
            problems.append(f".whl lacks {name}: run ../shared/gpu/fetch-wheels.sh (its baseline will be 'missing')")
    return problems


def travelling_bytes() -> int:
    files = git("ls-files", "-co", "--exclude-standard", "-z").split("\0")
    total = sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())
    for carried in (".whl", ".gpu"):
        d = ROOT / carried
        if d.is_dir():
            total += sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    return total


def record_done(paths: list[Path], reset: bool) -> int:
    """Append returned results to .gpu/done.jsonl, which the next call's benchmark skips (--skip-done)."""
    done = ROOT / ".gpu" / "done.jsonl"
    if reset and done.exists():
        done.unlink()
    text = done.read_text() if done.exists() else ""
    for p in paths:
        new = p.read_text()
        for i, line in enumerate(new.splitlines(), 1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError:  # a broken file must not poison the next call
                raise SystemExit(f"{p}:{i}: not a JSON row; pass the results.jsonl the device tool returned") from None
        text += new if new.endswith("\n") or not new else new + "\n"
    done.parent.mkdir(exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(done)
    return sum(1 for line in text.splitlines() if line.strip())


def main(argv=None) -> int:
    global ROOT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--done", nargs="+", type=Path, metavar="RESULTS_JSONL",
                    help="results.jsonl of calls already returned: the next call does not measure them again")
    ap.add_argument("--reset", action="store_true", help="forget earlier calls' results (a new session)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this script's)")
    args = ap.parse_args(argv)
    ROOT = args.root.resolve()
    if args.done or args.reset:
        n = record_done(args.done or [], args.reset)
        print(f".gpu/done.jsonl: {n} rows the next call skips")
    stamp = write_stamp()
    dirty = f" (dirty: {', '.join(stamp['changed_files'])})" if stamp["git_dirty"] else ""
    print(f"source: {stamp['git_commit'][:12]}{dirty} -> .gpu/source.json")
    ensure_excluded("/.whl/")
    problems = check_wheels()
    size = travelling_bytes()
    print(f"travelling: {size / (1 << 20):.1f} MiB of {LIMIT >> 20} MiB (working tree + .whl + .gpu)")
    if size > LIMIT:
        problems.append("over the device tool's 64 MiB: drop wheels or ignore large untracked files")
    for p in problems:
        print("WARNING:", p)
    print("\nDevice calls (run tool), issued back to back; each returns files under its files_at:")
    for i, (stages, budget, what) in enumerate(CALLS, 1):
        print(f"  {i}. command: bash scripts/gpu_session.sh --stages {stages} --budget {budget}\n"
              f"     carry: [\".whl\", \".gpu\"]   timeout_s: 600   ({what})")
    print("\nAfter a call whose benchmark stopped early: python scripts/gpu_prepare.py --done <files_at>/results.jsonl,"
          "\nthen repeat that call: it measures only what is missing.")
    print("Then: python scripts/gpu_collect.py <files_at of each call, in order>")
    return 1 if any("over the device" in p for p in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
