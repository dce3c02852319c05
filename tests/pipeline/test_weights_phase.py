"""The weights phase on its own: score files merged by idx, every scheme, resampling counts, input errors, and the
standalone `wdl weights --scores-dir` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wdl.cli import main
from wdl.config import BrownBoostConfig, SamplingConfig
from wdl.io import atomic_write_jsonl
from wdl.run_dir import PipelineError
from wdl.weights_phase import compute_weights
from wdl.sampling import brownboost_weights, sampling_weights

IDS = [7, 3, 11, 5, 9, 1]  # unsorted, not contiguous: merging is by idx, not by position
H = {
    "base": [2.0, 1.0, 3.0, 0.5, 1.5, 2.5],
    "sft": [1.0, 1.5, 1.0, 0.5, 0.2, 3.0],
    "third": [0.5, 1.0, 0.8, 0.4, 0.1, 2.0],
}


def _write_scores(d, names=("base", "sft", "third"), order=None):
    for n in names:
        ids = order or IDS
        rows = [{"idx": i, "entropy": H[n][IDS.index(i)], "nll": 1.0, "margin": 2.0, "n_tokens": 4} for i in ids]
        atomic_write_jsonl(d / f"{n}.jsonl", rows)


def _read(d):
    rows = [json.loads(line) for line in (d / "weights.jsonl").read_text().splitlines()]
    return rows, json.loads((d / "resampled.json").read_text())


@pytest.mark.parametrize("scheme", ["v1", "v2"])
def test_weights_match_library_function(tmp_path, scheme):
    _write_scores(tmp_path, ("base", "sft"), order=list(reversed(IDS)))
    cfg = SamplingConfig(scheme=scheme, dedup=False, seed=3)
    summary = compute_weights(cfg, tmp_path, tmp_path / "out")
    rows, sel = _read(tmp_path / "out")
    ids = sorted(IDS)
    assert [r["idx"] for r in rows] == ids
    base = [H["base"][IDS.index(i)] for i in ids]
    sft = [H["sft"][IDS.index(i)] for i in ids]
    np.testing.assert_array_equal([r["p"] for r in rows], sampling_weights(base, sft, scheme, 0.1, 0.8, 0.1))
    assert [r["entropy_base"] for r in rows] == base and [r["entropy_sft"] for r in rows] == sft
    assert sel["n_drawn"] == 6 and sel["n_selected"] == 6 and not sel["dedup"]
    assert sel["n_unique"] == len(set(sel["ids"])) and set(sel["ids"]) <= set(IDS)
    assert f"{sel['n_unique']} unique" in summary
    # deterministic
    compute_weights(cfg, tmp_path, tmp_path / "again")
    assert _read(tmp_path / "again") == (rows, sel)


def test_brownboost_and_dedup(tmp_path):
    _write_scores(tmp_path)
    cfg = SamplingConfig(scheme="brownboost", multiplier=2.0, dedup=True,
                         brownboost=BrownBoostConfig(third_model="a later model"))
    compute_weights(cfg, tmp_path, tmp_path / "out", brownboost=True)
    rows, sel = _read(tmp_path / "out")
    ids = sorted(IDS)
    col = {n: [H[n][IDS.index(i)] for i in ids] for n in H}
    np.testing.assert_array_equal([r["p"] for r in rows],
                                  brownboost_weights(col["base"], col["sft"], col["third"], alpha=0.1, beta=0.8,
                                                     gamma=0.1))
    assert sel["n_drawn"] == 12 and sel["n_selected"] == sel["n_unique"] == len(set(sel["ids"]))
    assert len(sel["ids"]) == len(set(sel["ids"]))
    cfg.size = 3  # an absolute number of draws wins over the multiplier
    compute_weights(cfg, tmp_path, tmp_path / "sized", brownboost=True)
    assert _read(tmp_path / "sized")[1]["n_drawn"] == 3


def test_missing_or_mismatched_scores(tmp_path):
    with pytest.raises(PipelineError, match="base.jsonl is missing"):
        compute_weights(SamplingConfig(), tmp_path, tmp_path / "out")
    _write_scores(tmp_path, ("base",))
    atomic_write_jsonl(tmp_path / "sft.jsonl", [{"idx": i, "entropy": 1.0} for i in IDS[:-1]])
    with pytest.raises(PipelineError, match="cover different samples"):
        compute_weights(SamplingConfig(), tmp_path, tmp_path / "out")


def test_standalone_weights_command(tmp_path, capsys):
    _write_scores(tmp_path, ("base", "sft"))
    assert main(["weights", "--scores-dir", str(tmp_path), "--out-dir", str(tmp_path / "w"),
                 "sampling.scheme=v2", "sampling.dedup=false"]) == 0
    assert "sampling weights (v2) over 6 samples" in capsys.readouterr().out
    assert _read(tmp_path / "w")[1]["n_drawn"] == 6
    assert main(["weights", "--scores-dir", str(tmp_path)]) == 2
    assert "--scores-dir and --out-dir go together" in capsys.readouterr().err
