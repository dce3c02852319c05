"""A real-vocabulary smoke run: a Qwen3-shaped random model with V = 151936 and tied embeddings (hidden 64, two
layers), a tokenizer with Qwen3's id layout, special tokens and chat template (built offline), through the
whole pipeline on the CPU with a Qwen3 preset; then the fused joint step's peak memory against the
materialized reference's at the same shape."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_helpers import REPO, run_command

from wdl import synthetic
from wdl.tiny import QWEN3_VOCAB_SIZE, build_qwen3_vocab_tokenizer, qwen3_vocab_config

pytestmark = pytest.mark.slow

TOKENS = 256  # data.tokens_per_micro_batch of the run below: the joint step's micro-batch shape


@pytest.fixture(scope="module")
def qwen3_vocab_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_vocab")
    splits = synthetic.make_splits(8, 1, 0, seed=3)
    tokenizer = build_qwen3_vocab_tokenizer(synthetic.corpus(splits.train))
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(qwen3_vocab_config()).to(torch.bfloat16)  # stored like Qwen3's
    base = root / "qwen3-vocab-base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    synthetic.write_chat_jsonl(root / "train.jsonl", splits.train)
    synthetic.write_eval_json(root / "held_out" / "test.json", splits.eval)
    out = root / "run"
    cmd = [
        sys.executable,
        "-m",
        "wdl",
        "run",
        "qwen3-0.6b",
        "--out",
        str(out),
        f"model.base={base}",
        f"data.sources=[{root / 'train.jsonl'}]",
        "data.max_length=192",
        f"data.tokens_per_micro_batch={TOKENS}",
        "data.global_batch_size=4",
        "train.dtype=fp32",
        "train.activation_checkpointing=false",
        "train.checkpoint_every=2",
        "train.keep_last=1",
        "train.tensorboard=false",
        "scoring.dtype=fp32",
        f"scoring.tokens_per_micro_batch={TOKENS}",
        f"eval.benchmarks=[{{name: held_out, path: {root / 'held_out'}, format: gsm8k}}]",
        "eval.backend=transformers",
        "eval.dtype=float32",
        "eval.max_new_tokens=2",
        "eval.limit=1",
        "run.eval_base=false",
    ]
    proc = run_command(cmd, timeout=400, env={"HF_HUB_OFFLINE": "1", "WDL_PROGRESS_INTERVAL": "0"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return base, out, proc


def test_real_vocabulary_pipeline(qwen3_vocab_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    base, out, proc = qwen3_vocab_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["eval"]) == {"sft", "wmss"}
    assert all(r["held_out"]["n"] == 1 for r in report["eval"].values())
    for phase in ("sft", "joint"):
        rows = [json.loads(x) for x in (out / "logs" / f"{phase}.jsonl").read_text().splitlines()]
        assert rows and all(math.isfinite(r["loss"]) for r in rows)
        assert rows[0]["loss"] > 0.8 * math.log(QWEN3_VOCAB_SIZE)  # a random model over the full vocabulary
    wmss = AutoModelForCausalLM.from_pretrained(out / "wmss")
    assert type(wmss).__name__ == "Qwen3ForCausalLM" and wmss.config.vocab_size == QWEN3_VOCAB_SIZE
    assert wmss.config.tie_word_embeddings and wmss.lm_head.weight is wmss.model.embed_tokens.weight
    assert wmss.dtype == torch.bfloat16  # the export keeps the source checkpoint's dtype
    tok = AutoTokenizer.from_pretrained(out / "wmss")
    assert len(tok) == 151669 and tok.convert_tokens_to_ids(["<|im_end|>", "</think>"]) == [151645, 151668]
    eos = GenerationConfig.from_pretrained(out / "wmss").eos_token_id
    assert {151643, 151645} <= set(eos if isinstance(eos, list) else [eos])
    # the preflight ran, progress lines are in the log, no per-save warning
    assert "preflight ok model.base:" in proc.stdout and "preflight ok disk:" in proc.stdout
    assert "scoring base: 8 samples in" in proc.stdout and "tokenizing train data: 8 records in" in proc.stdout
    assert "generating held_out: 1 prompts in" in proc.stdout
    # in a log (not a terminal) the progress is lines with the rate and the ETA: scoring, and every training step
    assert re.search(
        r"^scoring base: \d+/8 samples \(\d+%\), [\d.e+]+ samples/s, elapsed [\d:]+, ETA [\d:]+$", proc.stdout, re.M
    )
    for phase in ("sft", "joint"):
        assert re.search(rf"^{phase} step 1/\d+ loss [\d.]+ .*elapsed [\d:]+ ETA [\d:]+$", proc.stdout, re.M), phase
    assert "torch.distributed is disabled" not in proc.stderr
    assert report["environment"]["world_size"] == 1 and report["environment"]["backend"] == "single"


def test_fused_joint_step_peak_memory_below_reference(qwen3_vocab_run):
    """At the run's joint micro-batch shape ([1, 256] tokens, V = 151936, both models trained) the materialized
    reference holds several [N, V] fp32 tensors (both models' logits, their stacked copy, the mix, the
    log-softmax, their gradients); the fused path holds none."""
    base, out, _ = qwen3_vocab_run
    script = Path(__file__).with_name("peak_memory_script.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out / "sft"), str(base), str(TOKENS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["loss_impl"]: r for r in map(json.loads, proc.stdout.strip().splitlines())}
    fused, reference = rows["fused"], rows["reference"]
    logits = TOKENS * QWEN3_VOCAB_SIZE * 4  # one [N, V] fp32 tensor: 156 MB
    assert reference["peak_bytes"] > 3 * logits, reference
    assert fused["peak_bytes"] < reference["peak_bytes"] / 4, (fused, reference)
    assert fused["loss"] == pytest.approx(reference["loss"], rel=1e-5)
