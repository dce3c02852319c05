"""The protocols' settings as the backends receive them (vLLM through a stand-in module, transformers for
real), the checks that fail a run before generation (row counts, over-long prompts, the opd contract, the
external grader's pin), truncation, and the provenance hashes in the outputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from wdl.eval import BenchmarkSpec, Completion, EvalConfig, evaluate_model
from wdl.eval.backends import Request, Sampling, completion_from_ids, make_generator
from wdl.eval.grading.external import ExternalGrader
from wdl.eval.protocol import OPD_GRADER_SHA256, OPD_RUNTIME_ENV, check_opd, lock_runtime_environment
from wdl.eval.runner import dataset_provenance

from .conftest import GSM, write_json
from .fakes import FakeGenerator, fake_vllm_module


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _gsm_cfg(bench_dir, **kw):
    return EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k")], data_dir=str(bench_dir), progress=False,
                      allow_row_count_mismatch=True, **kw)


# ------------------------------------------------------------------------------------------- backends
def test_vllm_backend_gets_the_paper_settings(monkeypatch, tiny_tokenizer):
    rec: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module(rec, token_ids=(3, 70, 71, 4, 72, 2, 73)))
    gen = make_generator("vllm", "/models/m", tiny_tokenizer, [0, 2], EvalConfig(), max_model_len=8192)
    requests = [Request([1, 5, 6], 100 + i % 3) for i in range(300)]
    out = gen.generate(requests, Sampling(0.0, 1.0, -1, 1, 42))
    assert rec["batches"] == [128, 128, 44]  # the reference's 128 prompts per call
    llm = rec["llm"]
    assert (llm["dtype"], llm["seed"], llm["enable_prefix_caching"], llm["trust_remote_code"]) == (
        "bfloat16", 42, False, False)
    assert (llm["max_model_len"], llm["tensor_parallel_size"], llm["model"]) == (8192, 1, "/models/m")
    sp = rec["sampling"]
    assert len(sp) == 300 and {p["seed"] for p in sp} == {42}  # the same seed for every prompt
    assert [p["max_tokens"] for p in sp[:3]] == [100, 101, 102]
    first = sp[0]
    assert (first["temperature"], first["top_p"], first["top_k"], first["n"], first["repetition_penalty"]) == (
        0.0, 1.0, -1, 1, 1.0)
    assert first["skip_special_tokens"] is True and first["stop_token_ids"] == [0, 2]
    assert "spaces_between_special_tokens" not in first  # vLLM's default, as the reference leaves it
    # our own decoding of the ids: cut at the first stop (2), special tokens (<think> = 3, </think> = 4) dropped
    c = out[0][0]
    assert c.num_tokens == 6 and c.finish_reason == "stop"
    assert c.text == tiny_tokenizer.decode([70, 71, 72]) and "think" not in c.text


def test_vllm_backend_under_opd(monkeypatch, tiny_tokenizer):
    rec: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module(rec, token_ids=(3, 70, 2)))
    cfg = EvalConfig(protocol="opd", allow_public_grader=True, mode="passk")
    gen = make_generator("vllm", "m", tiny_tokenizer, [151643, 151645], cfg, max_model_len=10240)
    out = gen.generate([Request([1], 8192)], Sampling(0.5, 1.0, -1, 8, 42))
    assert rec["llm"]["trust_remote_code"] is True and rec["llm"]["dtype"] == "bfloat16"
    sp = rec["sampling"][0]
    assert (sp["n"], sp["temperature"], sp["seed"], sp["max_tokens"]) == (8, 0.5, 42, 8192)
    assert sp["skip_special_tokens"] is False and sp["stop_token_ids"] == [151643, 151645]
    assert len(out[0]) == 8 and out[0][0].text.startswith("<think>")  # special tokens kept


def _answering(tok, canned: dict[str, str], stop: int):
    """A fake engine's answer: the canned text whose key the decoded prompt contains, as ids, then `stop`."""

    def respond(prompt_ids):
        prompt = tok.decode(prompt_ids)
        hits = [text for key, text in canned.items() if key in prompt]
        assert len(hits) == 1, prompt
        return tok(hits[0], add_special_tokens=False)["input_ids"] + [stop]

    return respond


def test_paper_settings_reach_vllm_through_the_runner(monkeypatch, caplog, qwen_vocab_dir, bench_dir, tmp_path):
    """evaluate_model with backend vllm: the engine and every request get the paper protocol's values, per set
    (GSM8K 4096 new tokens, AIME 2025 8192 in a 12288 context), the model's own eos as the stop, the seed, and
    the token ids of the prompt the row records."""
    import torch
    from transformers import AutoTokenizer

    from wdl.eval import REFERENCE_SYSTEM_PROMPT

    tok = AutoTokenizer.from_pretrained(qwen_vocab_dir)
    canned = {"Tom has": "<think>3 + 4</think> So \\boxed{7}.", "A shirt": "\\boxed{60}", "dropped 8": "It is -3.",
              "1200 hens": "\\boxed{1500}", "2x = 14": "\\boxed{7}", "frac{1}{3}": "\\boxed{\\frac{5}{6}}"}
    rec: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module(rec, _answering(tok, canned, 151643), tok))
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k"), BenchmarkSpec(name="aime2025")], data_dir=str(bench_dir),
                     backend="vllm", progress=False, allow_row_count_mismatch=True)
    with caplog.at_level("WARNING", logger="wdl.eval"):
        res = evaluate_model(qwen_vocab_dir, cfg, tmp_path)
    assert rec["llm"] == {"model": str(qwen_vocab_dir), "tokenizer": str(qwen_vocab_dir), "dtype": "bfloat16",
                          "tensor_parallel_size": 1, "gpu_memory_utilization": 0.85 if torch.cuda.is_available()
                          else 0.2, "max_model_len": 12288, "seed": 42, "enforce_eager": False,
                          "trust_remote_code": False, "enable_prefix_caching": False}
    assert rec["batches"] == [4, 2]  # one call per set (fewer than 128 prompts each)
    sp = rec["sampling"]
    assert [p["max_tokens"] for p in sp] == [4096] * 4 + [8192] * 2
    assert all({k: p[k] for k in ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed",
                                   "stop_token_ids", "skip_special_tokens")} ==
               {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                "seed": 42, "stop_token_ids": [151643], "skip_special_tokens": True} for p in sp)
    rows = [json.loads(line) for line in (tmp_path / "gsm8k.jsonl").read_text().splitlines()]
    assert rec["prompts"][0] == {"prompt_token_ids": tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"]}
    assert rows[0]["prompt"].startswith(f"<|im_start|>system\n{REFERENCE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")  # thinking mode: the model opens <think> itself
    assert rows[0]["output"] == "3 + 4 So \\boxed{7}."  # <think> and </think> are special: dropped
    assert rows[0]["output_tokens"] == len(tok(canned["Tom has"], add_special_tokens=False)["input_ids"]) + 1
    assert {r["finish_reason"] for r in rows} == {"stop"}
    g, a = res["gsm8k"], res["aime2025"]
    assert (g["accuracy"], g["accuracy_lenient"], a["accuracy"]) == (0.75, 1.0, 1.0)  # "It is -3." has no LaTeX
    assert (g["max_input_tokens"], g["max_new_tokens"], g["max_model_len"]) == (4096, 4096, 8192)
    assert (a["max_input_tokens"], a["max_new_tokens"], a["max_model_len"]) == (4096, 8192, 12288)
    assert "detokenized text differs" not in caplog.text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["backend"], summary["runtime"]["dtype"], summary["runtime"]["batch_size"]) == ("vllm",
                                                                                                   "bfloat16", 128)


def test_opd_settings_reach_vllm_through_the_runner(monkeypatch, qwen_vocab_dir, clean_opd_env, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_vocab_dir)
    data = write_json(tmp_path / "math500.json", [
        {"prompt": [{"role": "user", "content": "What is 2+2?"}], "reward_model": {"ground_truth": "4"}},
        {"prompt": json.dumps([{"role": "user", "content": "What is 3+3?"}]), "reward_model": {"ground_truth": "6"}}])
    rec: dict = {}
    respond = _answering(tok, {"2+2": "<think>2+2</think>\n\n\\boxed{4}", "3+3": "<think>hm</think> \\boxed{5}"},
                         151645)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module(rec, respond, tok))
    cfg = EvalConfig(protocol="opd", benchmarks=[BenchmarkSpec(name="math500", path=str(data))], backend="vllm",
                     allow_public_grader=True, allow_row_count_mismatch=True, progress=False)
    res = evaluate_model(qwen_vocab_dir, cfg, tmp_path / "out")["math500"]
    llm = rec["llm"]
    assert (llm["max_model_len"], llm["trust_remote_code"], llm["dtype"], llm["seed"]) == (5120, True, "bfloat16", 42)
    assert {k: rec["llm_env"].get(k) for k in OPD_RUNTIME_ENV} == OPD_RUNTIME_ENV  # set before the engine starts
    assert all((p["stop_token_ids"], p["skip_special_tokens"], p["max_tokens"], p["seed"], p["n"]) ==
               ([151643, 151645], False, 4096, 42, 1) for p in rec["sampling"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "math500.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert rows[0]["output"] == "<think>2+2</think>\n\n\\boxed{4}"  # special tokens kept
    assert (res["accuracy"], res["protocol"], res["grader"], res["max_input_tokens"]) == (0.5, "opd", "reference",
                                                                                         1024)


def test_vllm_backend_warns_when_its_text_differs(monkeypatch, caplog, tiny_tokenizer):
    class Shouting:  # vLLM's detokenizer stand-in, reading the ids differently from the model's tokenizer
        def decode(self, ids, skip_special_tokens=False):
            return tiny_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).upper() + "!"

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module({}, (70, 71, 0), Shouting()))
    gen = make_generator("vllm", "m", tiny_tokenizer, [0], EvalConfig(), max_model_len=64)
    with caplog.at_level("WARNING", logger="wdl.eval"):
        out = gen.generate([Request([1], 8)], Sampling(), desc="gsm8k")
    assert out[0][0].text == tiny_tokenizer.decode([70, 71])  # the decoded ids are graded
    assert "gsm8k: vLLM's detokenized text differs from the decoded token ids in 1 of 1 generations" in caplog.text


def test_paper_settings_reach_transformers_through_the_runner(monkeypatch, tiny_model_dir, tiny_tokenizer,
                                                             bench_dir, tmp_path):
    """evaluate_model with backend transformers: the generator is built with the run's stops, special-token
    handling and batch size, every generate call gets the run's Sampling and per-request budgets, and the
    GenerationConfig it hands model.generate is greedy with the stops as eos."""
    from wdl.eval import runner

    made, configs = [], []
    real = runner.make_generator

    def spy(*args, **kwargs):
        gen = real(*args, **kwargs)
        gen.calls = []
        generate, generation_config = gen.generate, gen._generation_config

        def recording_generate(requests, sampling, *, desc=""):
            gen.calls.append((desc, list(requests), sampling))
            return generate(requests, sampling, desc=desc)

        def recording_config(sampling, max_new_tokens):
            configs.append(generation_config(sampling, max_new_tokens))
            return configs[-1]

        gen.generate, gen._generation_config = recording_generate, recording_config
        made.append(gen)
        return gen

    monkeypatch.setattr(runner, "make_generator", spy)
    for mode, kw in (("greedy", {}), ("pass1", {"mode": "pass1", "seed": 7})):
        evaluate_model(tiny_model_dir, _gsm_cfg(bench_dir, backend="transformers", max_new_tokens=3, batch_size=3,
                                                **kw), tmp_path / mode)
    greedy, sampled = made
    stops = json.loads((tmp_path / "greedy" / "summary.json").read_text())["stop_token_ids"]
    assert stops == [tiny_tokenizer.eos_token_id]  # the tokenizer's eos, also the checkpoint's
    assert (greedy.stop_ids, greedy.skip_special_tokens, greedy.batch_size) == (stops, True, 3)
    desc, requests, sampling = greedy.calls[0]
    assert desc == "gsm8k" and len(requests) == 4 and {r.max_new_tokens for r in requests} == {3}
    assert sampling == Sampling(temperature=0.0, top_p=1.0, top_k=-1, n=1, seed=42, repetition_penalty=1.0)
    assert [(c.do_sample, c.eos_token_id, c.max_new_tokens, c.num_return_sequences) for c in configs[:2]] == [
        (False, stops, 3, 1)] * 2  # two batches of at most 3 prompts
    assert sampled.calls[0][2] == Sampling(temperature=0.5, top_p=1.0, top_k=-1, n=1, seed=7, repetition_penalty=1.0)
    c = configs[2]
    assert (c.do_sample, c.temperature, c.top_p, c.top_k, c.min_p) == (True, 0.5, 1.0, 0, 0.0)
    rows = [json.loads(line) for line in (tmp_path / "greedy" / "gsm8k.jsonl").read_text().splitlines()]
    assert [r["prompt_tokens"] for r in rows] == [len(r.prompt_ids) for r in requests]


def test_transformers_backend_settings(tiny_model_dir, tiny_tokenizer):
    gen = make_generator("transformers", tiny_model_dir, tiny_tokenizer, [0, 2], EvalConfig(repetition_penalty=1.1),
                         max_model_len=2048)
    assert (gen.batch_size, gen.skip_special_tokens, str(next(gen.model.parameters()).dtype)) == (
        32, True, "torch.float32")  # the checkpoint's dtype
    greedy = gen._generation_config(Sampling(0.0, 1.0, -1, 1, 42, 1.1), 16)
    assert (greedy.do_sample, greedy.repetition_penalty, greedy.eos_token_id, greedy.max_new_tokens) == (
        False, 1.1, [0, 2], 16)
    sampled = gen._generation_config(Sampling(0.5, 0.9, -1, 4, 42), 16)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.top_k, sampled.num_return_sequences) == (
        True, 0.5, 0.9, 0, 4)
    gen.close()
    opd = make_generator("transformers", tiny_model_dir, tiny_tokenizer, [0], EvalConfig(
        protocol="opd", allow_public_grader=True, batch_size=4), max_model_len=2048)
    assert (opd.batch_size, opd.skip_special_tokens) == (4, False)
    opd.close()


def test_decoding_keeps_or_drops_special_tokens(tiny_tokenizer):
    ids = [3, 70, 4, 71, 0, 72]
    kept = completion_from_ids(tiny_tokenizer, ids, [0], 10)
    dropped = completion_from_ids(tiny_tokenizer, ids, [0], 10, skip_special_tokens=True)
    assert kept.text == tiny_tokenizer.decode([3, 70, 4, 71]) and "</think>" in kept.text
    assert dropped.text == tiny_tokenizer.decode([70, 71]) and kept.num_tokens == dropped.num_tokens == 5
    assert completion_from_ids(tiny_tokenizer, [70, 71, 72], [0], 3).finish_reason == "length"
    # cut inside a multi-byte character: its bytes are held back, as vLLM's detokenizer does
    ids = tiny_tokenizer("ab\u00e9", add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids[:-1]).endswith("\ufffd")
    assert completion_from_ids(tiny_tokenizer, ids[:-1], [0], 10).text == "ab"


# ------------------------------------------------------------------------------------------- paper runs
def test_paper_stops_are_the_models_own(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    canned = {q[:12]: "\\boxed{1}" for q, _ in GSM}
    evaluate_model(model, _gsm_cfg(bench_dir), tmp_path / "a", generator=FakeGenerator(tiny_tokenizer, canned))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["stop_token_ids"] == [0, 2] and summary["skip_special_tokens"] is True
    evaluate_model(model, _gsm_cfg(bench_dir, stop_tokens=["<think>"], stop_token_ids=[9]), tmp_path / "b",
                   generator=FakeGenerator(tiny_tokenizer, canned))
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["stop_token_ids"] == [0, 2, 9, 3]


def test_row_count_and_long_prompts_fail_before_generation(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k")], data_dir=str(bench_dir))
    with pytest.raises(ValueError, match=r"4 rows, the gsm8k set has 1319"):
        evaluate_model(tmp_path / "no-model-here", cfg, tmp_path / "out")
    fake = FakeGenerator(tiny_tokenizer, {q[-12:]: "\\boxed{1}" for q, _ in GSM})  # the ends survive a left cut
    with pytest.raises(ValueError, match=r"benchmark gsm8k: 4 prompt\(s\) exceed max_input_tokens=20 \(first "
                                         r"\(index, tokens\): \[\(0, \d+\), .*truncation: left"):
        evaluate_model(tiny_model_dir, _gsm_cfg(bench_dir, max_input_tokens=20), tmp_path / "long", generator=fake)
    assert fake.calls == []  # nothing was generated
    res = evaluate_model(tiny_model_dir, _gsm_cfg(bench_dir, max_input_tokens=30, truncation="left",
                                                  system_prompt="none"), tmp_path / "cut", generator=fake)
    assert res["gsm8k"]["n_prompts_truncated"] == 4
    assert all(len(r.prompt_ids) <= 30 for r in fake.requests)


def test_truncated_generations(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    canned = {"Tom has": Completion("\\boxed{7}", 24, "stop"),  # stopped on its last allowed token
              "A shirt": Completion("60 60 60", 24, "length"),
              "dropped 8": Completion("\\boxed{-3}", 3, "stop"),
              "1200 hens": Completion("\\boxed{1500}", 23, "stop")}
    res = evaluate_model(tiny_model_dir, _gsm_cfg(bench_dir, max_new_tokens=24), tmp_path,
                         generator=FakeGenerator(tiny_tokenizer, canned))["gsm8k"]
    assert (res["n_truncated"], res["truncation_rate"], res["accuracy"]) == (2, 0.5, 0.75)
    rows = [json.loads(line) for line in (tmp_path / "gsm8k.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in rows] == [True, True, False, False]


def test_hashes_in_the_outputs(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    canned = {q[:12]: "\\boxed{1}" for q, _ in GSM}
    res = evaluate_model(tiny_model_dir, _gsm_cfg(bench_dir), tmp_path, generator=FakeGenerator(tiny_tokenizer, canned))
    summary = json.loads((tmp_path / "summary.json").read_text())
    prov = summary["provenance"]
    data = bench_dir / "gsm8k" / "test.json"
    assert prov["datasets"]["gsm8k"]["sha256"] == _sha(data) and prov["datasets"]["gsm8k"]["path"] == str(data)
    assert prov["datasets"]["gsm8k"]["matches_reference"] is False  # not the reference's copy
    weights = prov["model"]["weights"]
    assert weights == {"model.safetensors": _sha(tiny_model_dir / "model.safetensors")}
    assert prov["model"]["files"]["tokenizer.json"] == _sha(tiny_model_dir / "tokenizer.json")
    assert len(prov["model"]["sha256"]) == 64
    ref_src = Path(__file__).resolve().parents[2] / "wdl" / "eval" / "grading" / "reference.py"
    assert prov["graders"]["reference"]["sha256"] == _sha(ref_src)
    assert prov["graders"]["reference"]["math_verify"] and "lenient" in prov["graders"]
    assert res["gsm8k"]["provenance"] == {"dataset_sha256": _sha(data), "grader_sha256": _sha(ref_src),
                                          "model_sha256": prov["model"]["sha256"]}


def test_reference_copies_are_recognised(shared_dir):
    data = shared_dir / "data" / "seed_eval"
    if not data.is_dir():
        pytest.skip("../shared/data/seed_eval is not present")
    cfg = EvalConfig(data_dir=str(data))
    for name in ("aime2025", "amc23", "aqua", "gsm8k", "mawps", "svamp"):
        assert dataset_provenance(BenchmarkSpec(name=name), cfg)["matches_reference"] is True, name


# ------------------------------------------------------------------------------------------- opd
GRADER = '''from .helper import normalize


def compute_score(response, answer):
    if "boom" in response:
        raise RuntimeError("grader bug")
    return {"acc": normalize(response).endswith(normalize(answer)), "score": 1.0}
'''


@pytest.fixture
def external_grader(tmp_path) -> Path:
    folder = tmp_path / "ttrl_math"
    folder.mkdir()
    (folder / "__init__.py").write_text(GRADER)
    (folder / "helper.py").write_text("def normalize(s):\n    return s.strip().rstrip('.')\n")
    return folder / "__init__.py"


@pytest.fixture
def clean_opd_env(monkeypatch):
    for name in OPD_RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)  # restored after the test


def _opd_cfg(path, grader_path, **kw):
    return EvalConfig(protocol="opd", benchmarks=[BenchmarkSpec(name="math500", path=str(path))],
                      allow_row_count_mismatch=True, progress=False, grader="external",
                      grader_path=str(grader_path), **kw)


def test_opd_end_to_end(qwen_vocab_dir, external_grader, clean_opd_env, tmp_path):
    from transformers import AutoTokenizer

    data = write_json(tmp_path / "math500.json", [
        {"prompt": [{"role": "user", "content": "What is 2+2?"}], "reward_model": {"ground_truth": "4"}},
        {"prompt": [{"role": "user", "content": "What is 3+3?"}], "reward_model": {"ground_truth": "6"}},
        {"prompt": [{"role": "user", "content": "What is 1+1?"}], "reward_model": {"ground_truth": "2"}}])
    tok = AutoTokenizer.from_pretrained(qwen_vocab_dir)
    fake = FakeGenerator(tok, {"2+2": "<think>ok</think> so 4.", "3+3": "it is 5", "1+1": "boom"})
    cfg = _opd_cfg(data, external_grader, grader_sha256=_sha(external_grader))
    res = evaluate_model(qwen_vocab_dir, cfg, tmp_path / "out", generator=fake)["math500"]
    assert (res["accuracy"], res["grader"], res["protocol"], res["grader_errors"]) == (1 / 3, "external", "opd", 1)
    assert (res["max_input_tokens"], res["max_new_tokens"], res["max_model_len"]) == (1024, 4096, 5120)
    assert {r.max_new_tokens for r in fake.requests} == {4096}
    assert fake.calls[0][2].temperature == 0.0 and fake.calls[0][2].seed == 42
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stop_token_ids"] == [151643, 151645] and summary["skip_special_tokens"] is False
    assert summary["system_prompt"] is None and summary["runtime"]["trust_remote_code"] is True
    assert summary["runtime"]["locked_environment"] == OPD_RUNTIME_ENV
    assert all(os.environ[k] == v for k, v in OPD_RUNTIME_ENV.items())
    ext = summary["provenance"]["graders"]["external"]
    assert ext["sha256"] == _sha(external_grader) and ext["companions"] == {"helper.py": _sha(external_grader.parent
                                                                                             / "helper.py")}
    assert summary["compared_graders"] == ["reference", "lenient"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "math500.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"].startswith("<|im_start|>user\nWhat is 2+2?")  # user-only
    assert [r["grader_error"] for r in rows] == [None, None, "RuntimeError: grader bug"]


def test_opd_grader_is_pinned(qwen_vocab_dir, external_grader, clean_opd_env, tmp_path):
    data = write_json(tmp_path / "m.json", [{"problem": "p", "answer": "1"}])
    with pytest.raises(ValueError, match=f"has SHA-256 {_sha(external_grader)}, the pinned one is {OPD_GRADER_SHA256}"):
        evaluate_model(qwen_vocab_dir, _opd_cfg(data, external_grader), tmp_path / "o")
    with pytest.raises(ValueError, match="eval.grader_path: .* does not exist"):
        evaluate_model(qwen_vocab_dir, _opd_cfg(data, tmp_path / "none.py", grader_sha256="0" * 64), tmp_path / "o")


@pytest.mark.parametrize("kw,pattern", [
    ({"benchmarks": [BenchmarkSpec(name="gsm8k")]}, r"benchmark: gsm8k \(the opd protocol covers math500"),
    ({"max_new_tokens": 2048}, r"lengths \(input, new, context\): \(2048, 2048, 10240\), the contract's are "
                               r"\(2048, 8192, 10240\)"),
    ({"mode": "pass1", "temperature": 0.7}, r"temperature: 0.7 \(mode pass1 allows \[0.1, 0.5\]\)"),
    ({"mode": "passk", "n": 4}, r"n: 4 \(mode passk takes 8\)"),
    ({"seed": 1}, "seed: 1"),
    ({"dtype": "float16"}, "dtype: float16"),
    ({"stop_token_ids": [151645]}, r"stop_token_ids: \[151645\]"),
    ({"skip_special_tokens": True}, "skip_special_tokens: True"),
    ({"trust_remote_code": False}, "trust_remote_code: False"),
    ({"truncation": "left"}, "truncation: left"),
])
def test_opd_contract_is_locked(kw, pattern):
    benches = kw.pop("benchmarks", [BenchmarkSpec(name="aime2025")])
    cfg = EvalConfig(protocol="opd", allow_public_grader=True, **kw)
    with pytest.raises(ValueError, match=pattern):
        check_opd(cfg, benches[0])
    with pytest.raises(ValueError, match=pattern):  # already when the config is built
        EvalConfig(protocol="opd", allow_public_grader=True, benchmarks=benches, **kw)


def test_opd_contract_accepts_its_modes():
    for kw in ({}, {"mode": "pass1", "temperature": 0.1}, {"mode": "pass1"}, {"mode": "passk"}):
        cfg = EvalConfig(protocol="opd", allow_public_grader=True, benchmarks=[BenchmarkSpec(name="amc23")], **kw)
        check_opd(cfg, cfg.benchmarks[0])


def test_opd_needs_qwen_stop_tokens_and_a_long_context(tiny_model_dir, clean_opd_env, tmp_path):
    data = write_json(tmp_path / "m.json", [{"problem": "p", "answer": "1"}])
    cfg = EvalConfig(protocol="opd", allow_public_grader=True, allow_row_count_mismatch=True,
                     benchmarks=[BenchmarkSpec(name="math500", path=str(data))])
    with pytest.raises(ValueError, match=r"the opd protocol stops at \{151643: '<\|endoftext\|>'"):
        evaluate_model(tiny_model_dir, cfg, tmp_path / "o")


def test_opd_environment_conflicts(monkeypatch, clean_opd_env):
    cfg = EvalConfig(protocol="opd", allow_public_grader=True)
    monkeypatch.setenv("VLLM_USE_DEEP_GEMM", "1")
    with pytest.raises(ValueError, match="with VLLM_USE_DEEP_GEMM=0, but the environment has VLLM_USE_DEEP_GEMM=1"):
        lock_runtime_environment(cfg)
    assert lock_runtime_environment(EvalConfig()) == {}


# ------------------------------------------------------------------------------------------- external grader
def test_external_grader_entry_points_and_errors(tmp_path):
    def write(name, text):
        f = tmp_path / name
        f.write_text(text)
        return f, _sha(f)

    f, digest = write("verl.py", "def grade_answer_verl(response, answer):\n    return answer in response\n")
    g = ExternalGrader(f, digest)
    assert g.grade("it is 42", "42").correct and not g.grade("it is 41", "42").correct
    assert g.grade("x", "y").method == "external"
    f, digest = write("plain.py", "def compute_score(response, answer):\n    return response == answer\n")
    assert ExternalGrader(f, digest).grade("7", "7").correct
    f, digest = write("none.py", "x = 1\n")
    with pytest.raises(ValueError, match="defines neither grade_answer_verl"):
        ExternalGrader(f, digest)
    f, digest = write("broken.py", "import not_a_module_here\n")
    with pytest.raises(ValueError, match="importing .*broken.py failed: ModuleNotFoundError"):
        ExternalGrader(f, digest)
    f, digest = write("slow.py", "import time\ndef compute_score(r, a):\n    time.sleep(5)\n    return True\n")
    verdict = ExternalGrader(f, digest, timeout_seconds=1).grade("a", "a")
    assert not verdict.correct and verdict.error == "GraderTimeout: no verdict within 1 s"


def test_external_grader_needs_a_pin():
    with pytest.raises(ValueError, match="grader_sha256: an external grader runs only pinned"):
        EvalConfig(grader="external", grader_path="g.py")
    assert EvalConfig(protocol="opd", grader="external", grader_path="g.py").grader_sha256 is None  # opd's own pin
