"""The weights phase as one function: the score files in, `weights.jsonl` and `resampled.json` out.

Used by the pipeline's phase `weights` and by `wdl weights`; the weights themselves are `wdl.sampling`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wdl.io import atomic_write_json, atomic_write_jsonl
from wdl.run_dir import PipelineError
from wdl.sampling import brownboost_weights, resample, sampling_weights
from wdl.scoring import read_scores


def compute_weights(sampling, scores_dir: Path, out_dir: Path, *, brownboost: bool = False) -> str:
    """Merge the score files by idx, compute the sampling weights, resample; write weights.jsonl and
    resampled.json under `out_dir`; return the human-readable summary."""
    names = ["base", "sft", *(["third"] if brownboost else [])]
    tables = {}
    for n in names:
        path = scores_dir / f"{n}.jsonl"
        if not path.is_file():
            raise PipelineError(f"{path} is missing: it is produced by phase 'score_{n}'")
        tables[n] = read_scores(path)
    ids = sorted(tables["base"])
    for n in names[1:]:
        if set(tables[n]) != set(ids):
            only = sorted(set(tables[n]) ^ set(ids))[:5]
            raise PipelineError(f"scores/{n}.jsonl and scores/base.jsonl cover different samples (e.g. idx {only})")
    h = {n: np.array([tables[n][i]["entropy"] for i in ids], dtype=np.float64) for n in names}
    if brownboost:
        b = sampling.brownboost
        p = brownboost_weights(
            h["base"], h["sft"], h["third"], alpha=sampling.alpha, beta=sampling.beta, gamma=sampling.gamma,
            easy_quantile=b.easy_quantile, hard_quantile=b.hard_quantile, patience=b.patience,
            easy_patience=b.easy_patience, lambda_time=b.lambda_time, lambda_easy=b.lambda_easy,
        )
    else:
        p = sampling_weights(h["base"], h["sft"], sampling.scheme, sampling.alpha, sampling.beta, sampling.gamma)
    rows = []
    for k, i in enumerate(ids):
        row = {"idx": i}
        for n in names:
            for field in ("entropy", "nll", "margin", "n_tokens"):
                if field in tables[n][i]:
                    row[f"{field}_{n}"] = tables[n][i][field]
        row["p"] = float(p[k])
        rows.append(row)
    atomic_write_jsonl(out_dir / "weights.jsonl", rows)
    size = sampling.size if sampling.size is not None else max(1, round(sampling.multiplier * len(ids)))
    r = resample(np.array(ids), p, size, seed=sampling.seed, dedup=sampling.dedup)
    atomic_write_json(
        out_dir / "resampled.json",
        {"scheme": sampling.scheme, "n_source": len(ids), "n_drawn": r.n_drawn, "n_unique": r.n_unique,
         "n_duplicates": r.n_duplicates, "dedup": r.dedup, "n_selected": int(r.ids.size),
         "ids": [int(i) for i in r.ids]},
        indent=None,
    )
    return f"sampling weights ({sampling.scheme}) over {len(ids)} samples; {r.summary()}"
