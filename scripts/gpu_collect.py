#!/usr/bin/env python
"""Collect what GPU-session calls returned into bench/results/, ready to commit.

    python scripts/gpu_collect.py FILES_AT_1 [FILES_AT_2 ...] [--dest bench/results/kernel] [--docs docs/benchmarks.md]

Each FILES_AT is a directory the device tool returned (results.jsonl, summary.md, logs, ...). Kernel rows of all
of them (results.jsonl) are merged (in the order given) into one run directory
<dest>/<gpu|cpu>/<date>_<device>_<commit>/ with results.jsonl + results.csv (one schema), the PNG and summary.md
regenerated over the merged rows, and the logs (renamed per call). End-to-end rows (e2e.jsonl, from the e2e
stages) go the same way into <e2e-dest>/<gpu|cpu>/<run>/ with e2e.jsonl, e2e.csv, e2e.png and e2e_summary.md
(with issue 3's target verdicts). For a GPU run, the 'latest GPU results' section of docs/benchmarks.md is
rewritten from the measured kernel rows (nothing typed by hand). Prints the git command that commits exactly
those files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

from bench.common import ResultsWriter, atomic_write_text, device_slug, read_jsonl  # noqa: E402
from bench.plot import format_table, format_targets, plot, write_summary  # noqa: E402

BEGIN, END = "<!-- latest-gpu-results:begin -->", "<!-- latest-gpu-results:end -->"
LOGS = ("session.log", "pytest_gpu.log", "check_sm90.json")


def kernel_columns() -> tuple[str, ...]:
    from bench.bench_kernel import COLUMNS

    return COLUMNS


def e2e_columns() -> tuple[str, ...]:
    from bench.bench_e2e import COLUMNS

    return COLUMNS


def _read_rows(sources: list[Path], file: str, columns: tuple[str, ...], what: str) -> list[dict]:
    rows = []
    for src in sources:
        path = src / file
        if not path.is_file():
            continue
        got = read_jsonl(path)
        for i, r in enumerate(got, 1):
            if set(r) != set(columns):
                diff = sorted(set(r) ^ set(columns))
                raise ValueError(f"{path}:{i}: not the {what} benchmark's schema (differs in {diff[:6]})")
        rows += got
    return rows


def _run_dir(rows: list[dict], dest_root: Path, allow_cpu: bool) -> Path:
    kinds = {r["device_type"] for r in rows}
    if kinds != {"cuda"} and not allow_cpu:
        raise ValueError(f"rows from {sorted(kinds)} devices: GPU results only (pass --allow-cpu for a CPU run)")
    first = rows[0]
    commits = {(r.get("git_commit") or "nogit")[:8] for r in rows}
    name = f"{first['date_utc'][:10]}_{device_slug(first)}_{'+'.join(sorted(commits))}"
    run_dir = dest_root / ("gpu" if kinds == {"cuda"} else "cpu") / name
    if run_dir.exists():
        raise ValueError(f"{run_dir} exists already: remove it first or collect into another --dest")
    return run_dir


def _collect(sources: list[Path], dest_root: Path, allow_cpu: bool, results_file: str, columns: tuple[str, ...],
             what: str, finish) -> Path | None:
    """The `results_file` rows of the sources into one new run directory, written under a temporary name and
    renamed when complete; `finish(rows, dir)` adds the plot and summary. None when no source has such rows."""
    rows = _read_rows(sources, results_file, columns, what)
    if not rows:
        return None
    run_dir = _run_dir(rows, dest_root, allow_cpu)
    tmp = run_dir.with_name(f".{run_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ResultsWriter(tmp, columns, stem=results_file.partition(".")[0]).append(rows)
        _copy_logs(sources, results_file, tmp)
        finish(rows, tmp)
        tmp.rename(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def _copy_logs(sources: list[Path], results_file: str, dest: Path) -> None:
    """The logs of the calls that returned `results_file`, renamed per call when there are several."""
    calls = [src for src in sources if (src / results_file).is_file()]
    for i, src in enumerate(calls, 1):
        for log in LOGS:
            if (src / log).is_file():
                stem, dot, ext = log.partition(".")
                shutil.copyfile(src / log, dest / (f"{stem}-{i}{dot}{ext}" if len(calls) > 1 else log))


def collect(sources: list[Path], dest_root: Path, allow_cpu: bool = False) -> Path | None:
    """The kernel rows (results.jsonl): results.csv, kernel_bench.png and summary.md over all of them."""
    def finish(rows, out):
        plot(rows, out / "kernel_bench.png")
        write_summary(rows, out / "summary.md")

    return _collect(sources, dest_root, allow_cpu, "results.jsonl", kernel_columns(), "kernel", finish)


def collect_e2e(sources: list[Path], dest_root: Path, allow_cpu: bool = False) -> Path | None:
    """The end-to-end rows (e2e.jsonl): e2e.csv, e2e.png and e2e_summary.md (with issue 3's target verdicts)."""
    from bench.bench_e2e import report

    def finish(rows, out):
        if report(out / "e2e.jsonl", out) != 0:
            raise ValueError("could not summarise the end-to-end rows")

    return _collect(sources, dest_root, allow_cpu, "e2e.jsonl", e2e_columns(), "end-to-end", finish)


def update_docs(docs: Path, run_dir: Path) -> None:
    """Rewrite the section between the markers with the targets and the target-shape rows of this run."""
    rows = read_jsonl(run_dir / "results.jsonl")
    text = docs.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{docs}: missing the markers {BEGIN} / {END}")
    first = rows[0]
    rel = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    target_rows = [r for r in rows if r.get("n") == 16384 and r.get("hs") == 2560]
    body = "\n".join([
        BEGIN,
        f"Latest GPU run: [`{rel}`]({'../' + str(rel) if not rel.is_absolute() else rel}) — {first['device_name']}, "
        f"commit `{(first.get('git_commit') or 'unknown')[:12]}`{' (dirty)' if first.get('git_dirty') else ''}, "
        f"torch {first['torch_version']}, triton {first['triton_version']}, {first['date_utc']}. "
        "Generated by scripts/gpu_collect.py from the measured rows.",
        "",
        format_targets(rows),
        "",
        format_table(target_rows, markdown=True),
        END,
    ])
    start, end = text.index(BEGIN), text.index(END) + len(END)
    atomic_write_text(docs, text[:start] + body + text[end:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path, help="directories returned by the device tool (files_at)")
    ap.add_argument("--dest", type=Path, default=ROOT / "bench" / "results" / "kernel")
    ap.add_argument("--e2e-dest", type=Path, default=ROOT / "bench" / "results" / "e2e")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md",
                    help="file whose latest-GPU-results section is rewritten (GPU runs only)")
    ap.add_argument("--allow-cpu", action="store_true", help="collect a CPU (smoke) run into <dest>/cpu/")
    args = ap.parse_args(argv)
    try:
        for src in args.sources:
            if not ((src / "results.jsonl").is_file() or (src / "e2e.jsonl").is_file()):
                raise ValueError(f"{src}: no results.jsonl or e2e.jsonl (pass the directory the device tool "
                                 "returned as files_at)")
        # both destinations are checked before either is written: a refusal leaves nothing behind
        for file, columns, what, dest in (("results.jsonl", kernel_columns(), "kernel", args.dest),
                                          ("e2e.jsonl", e2e_columns(), "end-to-end", args.e2e_dest)):
            rows = _read_rows(args.sources, file, columns, what)
            if rows:
                _run_dir(rows, dest, args.allow_cpu)
        run_dir = collect(args.sources, args.dest, allow_cpu=args.allow_cpu)
        e2e_dir = collect_e2e(args.sources, args.e2e_dest, allow_cpu=args.allow_cpu)
        if run_dir is None and e2e_dir is None:
            raise ValueError("no rows to collect")
        paths = [p for p in (run_dir, e2e_dir) if p is not None]
        if run_dir is not None and run_dir.parent.name == "gpu" and args.docs:
            update_docs(args.docs, run_dir)
            paths.append(args.docs)
    except ValueError as e:
        print(f"gpu_collect: {e}", file=sys.stderr)
        return 2
    if run_dir is not None:
        print(format_targets(read_jsonl(run_dir / "results.jsonl")))
    shown = " ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths)
    name = (run_dir or e2e_dir).name
    print(f"\ncollected into {' and '.join(str(p) for p in (run_dir, e2e_dir) if p)}\ncommit with:\n"
          f"  git add {shown} && git commit -m \"bench: results {name}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
