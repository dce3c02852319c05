"""Files and tables: per-sample JSONL/CSV, the side-by-side Markdown tables, earlier results read back."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from wdl.eval.config import PAPER_ORDER, canonical_name
from wdl.io import atomic_write_jsonl, atomic_write_text

SAMPLE_COLUMNS = ("id", "position", "sample", "prompt", "output", "extracted", "gold", "correct", "method",
                  "grader_error", "finish_reason", "truncated", "output_tokens", "prompt_tokens", "prompt_truncated")


def write_samples(out_dir: Path, name: str, rows: Sequence[dict]) -> None:
    """`<name>.jsonl` (one object per generation) and `<name>.csv` (same columns), each written atomically:
    SAMPLE_COLUMNS, then one correct_<grader> column per extra grader."""
    extra = sorted({k for r in rows for k in r if k.startswith("correct_")})
    columns = [*SAMPLE_COLUMNS, *extra]
    atomic_write_jsonl(out_dir / f"{name}.jsonl", [{k: r.get(k) for k in columns} for r in rows])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    atomic_write_text(out_dir / f"{name}.csv", buf.getvalue())


def _bench_order(names) -> list[str]:
    def key(b: str):
        c = canonical_name(b)
        return (PAPER_ORDER.index(c), b) if c in PAPER_ORDER else (len(PAPER_ORDER), b)

    return sorted(names, key=key)


def comparison_table(results: Mapping[str, Mapping[str, Mapping]], *, metric: str = "accuracy",
                     digits: int = 1) -> str:
    """Markdown table, one column per model (in the given order), one row per benchmark (paper order first),
    accuracy in percent with the best of each row in bold, n per set, and the mean over the benchmarks that
    every model has. `results` is {model: evaluate_model(...) result}."""
    models = list(results)
    if not models:
        raise ValueError("comparison_table: no models given")
    benches = _bench_order({b for r in results.values() for b in r})

    def cell(model: str, bench: str) -> float | None:
        r = results[model].get(bench)
        v = None if r is None else r.get(metric)
        return None if v is None else 100.0 * float(v)

    def fmt_row(label: str, values: list[float | None], n: str) -> str:
        present = [v for v in values if v is not None]
        best = max(present) if len(present) > 1 else None
        cells = []
        for v in values:
            if v is None:
                cells.append("–")
            else:
                s = f"{v:.{digits}f}"
                cells.append(f"**{s}**" if best is not None and round(v, digits) == round(best, digits) else s)
        return f"| {label} | {n} | " + " | ".join(cells) + " |"

    lines = [f"| benchmark | n | {' | '.join(models)} |", "|---|---:|" + "---:|" * len(models)]
    for b in benches:
        ns = {results[m][b].get("n") for m in models if b in results[m]}
        n = str(ns.pop()) if len(ns) == 1 else "/".join(str(results[m][b].get("n", "–")) for m in models)
        lines.append(fmt_row(b, [cell(m, b) for m in models], n))
    common = [b for b in benches if all(b in results[m] and results[m][b].get(metric) is not None for m in models)]
    if len(common) > 1:
        means = [sum(cell(m, b) for b in common) / len(common) for m in models]
        lines.append(fmt_row(f"**mean ({len(common)} sets)**", means, ""))
    return "\n".join(lines) + "\n"


def graded_by(results: Mapping[str, Mapping[str, Mapping]]) -> str:
    """One line saying which grader and protocol produced the accuracies of {model: {bench: result}}: one
    setting for all of them, or, when they differ, the setting of each model (of each set where a model's sets
    differ)."""

    def setting(r: Mapping) -> str:
        return f"grader {r.get('grader', '?')}, protocol {r.get('protocol', '?')}, mode {r.get('mode', '?')}"

    per_model = {m: {b: setting(r) for b, r in res.items()} for m, res in results.items() if res}
    distinct = {s for by_bench in per_model.values() for s in by_bench.values()}
    if not distinct:
        return ""
    if len(distinct) == 1:
        return f"Accuracy: {distinct.pop()}."
    parts = []
    for model, by_bench in per_model.items():
        if len(set(by_bench.values())) == 1:
            parts.append(f"{model}: {next(iter(by_bench.values()))}")
        else:
            parts += [f"{model} {bench}: {s}" for bench, s in by_bench.items()]
    return "Accuracies come from several settings: " + "; ".join(parts) + "."


def grader_columns(results: Mapping[str, Mapping[str, Mapping]]) -> list[str]:
    """The graders whose accuracies the results carry (accuracy_<grader>), in a stable order."""
    found = {k[len("accuracy_"):] for res in results.values() for r in res.values() for k in r
             if k.startswith("accuracy_")}
    return [g for g in ("reference", "lenient", "external") if g in found] + sorted(found - {"reference", "lenient",
                                                                                             "external"})


def side_by_side_table(results: Mapping[str, Mapping[str, Mapping]], *, digits: int = 1) -> str:
    """Markdown table of every grader's accuracy: one column per (model, grader), benchmarks as rows, the
    mean over the benchmarks every model has. Empty when the results carry one grader only."""
    graders = grader_columns(results)
    if len(graders) < 2:
        return ""
    columns = {f"{m} ({g})": {b: {"accuracy": r.get(f"accuracy_{g}"), "n": r.get("n")} for b, r in res.items()}
               for m, res in results.items() for g in graders}
    return comparison_table(columns, digits=digits)


def load_results(path: str | Path) -> dict[str, dict]:
    """The per-benchmark results of an evaluation folder (its summary.json) or of a summary.json file."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read evaluation results ({e})") from None
    return data["results"] if "results" in data else data
