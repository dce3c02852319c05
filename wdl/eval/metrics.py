"""Per-benchmark metrics from sample rows (one row per generation), as the reference evaluator defines them.

- `accuracy` = mean@K: correct generations / generations (K samples per prompt);
- `first_sample_accuracy`: sample 0 of each prompt; it is `pass@1` only when K = 1 (`pass@1` is None for
  K > 1: sample 0 of a K-sample request is a diagnostic, a pass@1 comes from its own n = 1 run);
- `pass@K` (K > 1): the *observed* share of prompts with at least one correct generation;
- `pass@k_unbiased` for the configured ks: the unbiased estimator 1 - C(n-c, k)/C(n, k) (Chen et al. 2021),
  an extra column (it equals mean@K at k = 1 and the observed pass@K at k = K);
- `truncation_rate`: generations that hit the token limit (finish "length", or as many tokens as allowed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(rows: Sequence[dict], n_samples: int, pass_k: Sequence[int] = (),
              graders: Sequence[str] = ()) -> dict:
    """The metrics above from rows with position, sample, correct, extracted, truncated, output_tokens,
    prompt_truncated, grader_error (and correct_<grader> for each of `graders`)."""
    by_prompt: dict[int, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(int(r["position"]), []).append(r)
    if not by_prompt:
        raise ValueError("no evaluation rows to summarize")
    for position, prompt_rows in by_prompt.items():
        prompt_rows.sort(key=lambda r: r["sample"])
        if [r["sample"] for r in prompt_rows] != list(range(n_samples)):
            raise RuntimeError(f"prompt {position}: samples {[r['sample'] for r in prompt_rows]}, expected "
                               f"0..{n_samples - 1}")
    n, n_gen = len(by_prompt), len(rows)
    correct = [bool(r["correct"]) for r in rows]
    first = _mean([bool(p[0]["correct"]) for p in by_prompt.values()])
    out = {
        "accuracy": _mean(correct),
        "n": n,
        "n_samples": n_samples,
        "n_generations": n_gen,
        "n_correct": sum(correct),
        f"mean@{n_samples}": _mean(correct),
        "first_sample_accuracy": first,
        "pass@1": first if n_samples == 1 else None,
    }
    if n_samples > 1:
        out[f"pass@{n_samples}"] = _mean([any(r["correct"] for r in p) for p in by_prompt.values()])
        for k in pass_k:
            out[f"pass@{k}_unbiased"] = sum(pass_at_k(len(p), sum(bool(r["correct"]) for r in p), k)
                                            for p in by_prompt.values()) / n
    out.update({
        "n_truncated": sum(bool(r["truncated"]) for r in rows),
        "truncation_rate": _mean([bool(r["truncated"]) for r in rows]),
        "n_no_answer": sum(r["extracted"] is None and not r["correct"] for r in rows),
        "n_prompts_truncated": sum(bool(p[0]["prompt_truncated"]) for p in by_prompt.values()),
        "grader_errors": sum(r.get("grader_error") is not None for r in rows),
        "mean_output_tokens": sum(r["output_tokens"] for r in rows) / n_gen,
    })
    for g in graders:
        out[f"accuracy_{g}"] = _mean([bool(r[f"correct_{g}"]) for r in rows])
    return out
