"""Metrics and files: unbiased pass@k, per-sample JSONL/CSV, the summary, the side-by-side Markdown table."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from wdl.eval.config import PAPER_ORDER, canonical_name
from wdl.io import atomic_write_jsonl, atomic_write_text

SAMPLE_COLUMNS = ("id", "sample", "prompt", "output", "extracted", "gold", "correct", "method", "finish_reason",
                  "output_tokens", "prompt_tokens", "prompt_truncated")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(rows: Sequence[dict], n_samples: int, pass_k: Sequence[int]) -> dict:
    """Per-benchmark numbers from its sample rows (one row per generation)."""
    problems: dict[str, list[bool]] = {}
    for r in rows:
        problems.setdefault(r["id"], []).append(bool(r["correct"]))
    n = len(problems)
    n_gen = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    out = {
        "accuracy": correct / n_gen if n_gen else 0.0,  # mean over generations (= pass@1 estimate)
        "n": n,
        "n_generations": n_gen,
        "n_correct": correct,
        "n_no_answer": sum(r["extracted"] is None and not r["correct"] for r in rows),
        "n_truncated": sum(r["finish_reason"] == "length" for r in rows),  # hit max_new_tokens
        "n_prompts_truncated": sum(bool(r["prompt_truncated"]) for r in rows if r["sample"] == 0),
        "mean_output_tokens": (sum(r["output_tokens"] for r in rows) / n_gen) if n_gen else 0.0,
    }
    if n_samples > 1:
        for k in pass_k:
            out[f"pass@{k}"] = (sum(pass_at_k(len(v), sum(v), k) for v in problems.values()) / n) if n else 0.0
    return out


def write_samples(out_dir: Path, name: str, rows: Sequence[dict]) -> None:
    """`<name>.jsonl` (one object per generation) and `<name>.csv` (same columns), each written atomically."""
    atomic_write_jsonl(out_dir / f"{name}.jsonl", [{k: r[k] for k in SAMPLE_COLUMNS} for r in rows])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SAMPLE_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in SAMPLE_COLUMNS})
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
