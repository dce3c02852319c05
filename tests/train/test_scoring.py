"""Per-sample scores (entropy, NLL, margin over label tokens) against a materialized per-sample reference."""

from __future__ import annotations

import json

import pytest
import torch

from fake_data import pack
from wdl.io import atomic_write_jsonl
from wdl.models import FusedMixedCrossEntropy, JointModel, load_causal_lm
from wdl.scoring import merge_sums, score_batches, score_dataset

TORCH_LOSS = FusedMixedCrossEntropy(impl="torch")


def _reference(model, sample) -> dict:
    ids = sample["input_ids"][None]
    with torch.no_grad():
        z = model(input_ids=ids, position_ids=torch.arange(ids.shape[1])[None]).logits[0].double()
    labels = sample["labels"]
    valid = labels != -100
    logp = z.log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)
    y = labels.clamp(min=0)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    zy = z.gather(1, y[:, None]).squeeze(1)
    margin = zy - (z.sum(-1) - zy) / (z.shape[1] - 1)
    return {"entropy": ent[valid].mean().item(), "nll": nll[valid].mean().item(),
            "margin": margin[valid].mean().item(), "n_tokens": int(valid.sum())}


def test_scores_match_a_per_sample_reference_across_packing_and_shards(model_pair, samples):
    model = load_causal_lm(model_pair[0], attn_implementation="sdpa")
    model.eval()
    joint = JointModel(model, loss=TORCH_LOSS)
    chunk = samples[:9]
    # three packed micro-batches, scored as two "ranks" and merged
    mbs = [pack(chunk[0:3], 64), pack(chunk[3:6], 64), pack(chunk[6:9], 80)]
    parts = [score_batches(joint, mbs[:2], torch.device("cpu")), score_batches(joint, mbs[2:], torch.device("cpu"))]
    scores = merge_sums(parts)
    assert sorted(scores) == sorted(s["idx"] for s in chunk)
    for s in chunk:
        ref = _reference(model, s)
        got = scores[s["idx"]]
        assert got["n_tokens"] == ref["n_tokens"]
        for k in ("entropy", "nll", "margin"):
            assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-4), (s["idx"], k)


def test_a_complete_scores_file_is_reused(tmp_path):
    rows = [{"idx": 3, "entropy": 1.0, "nll": 2.0, "margin": 0.5, "n_tokens": 4}]
    atomic_write_jsonl(tmp_path / "s.jsonl", rows)
    got = score_dataset("/nonexistent/model", None, out_path=tmp_path / "s.jsonl", tokens_per_micro_batch=64)
    assert got == {3: rows[0]}


def test_score_dataset_end_to_end(tmp_path, model_pair, tiny_tokenizer):
    data = pytest.importorskip("wdl.data")
    if not hasattr(data, "iter_scoring_batches"):
        pytest.skip("wdl.data has no iter_scoring_batches yet")
    records = [{"idx": i, "messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                       {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(6)]
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = data.DataConfig(sources=[str(src)], cache_dir=str(tmp_path / "cache"))
    ds, _ = data.tokenize_records(data.load_records(cfg), tiny_tokenizer, cfg)
    out = score_dataset(model_pair[0], ds, out_path=tmp_path / "scores.jsonl", tokens_per_micro_batch=128,
                        dtype="fp32")
    assert sorted(out) == list(range(6))
    lines = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in lines] == list(range(6))
    assert all(r["n_tokens"] > 0 and r["entropy"] > 0 for r in lines)


@pytest.mark.distributed
def test_two_ranks_score_each_sample_once_and_rank0_writes_the_merge(tmp_path, model_pair):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    vocab = json.loads((Path(model_pair[0]) / "config.json").read_text())["vocab_size"]
    script = Path(__file__).with_name("score_script.py")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"scores{nproc}.jsonl"
        launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                        f"--nproc-per-node={nproc}", f"--master-port={port}"]
        res = subprocess.run([*launcher, str(script), str(model_pair[0]), str(out), "10", str(vocab)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        outs[nproc] = [json.loads(x) for x in out.read_text().splitlines()]
    one, two = outs[1], outs[2]
    assert [r["idx"] for r in one] == [r["idx"] for r in two] == sorted(r["idx"] for r in one)
    assert len(one) == 10
    for a, b in zip(one, two):
        assert a["n_tokens"] == b["n_tokens"] > 0
        for k in ("entropy", "nll", "margin"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5)
