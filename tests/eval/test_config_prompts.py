"""EvalConfig / BenchmarkSpec validation and YAML building; chat prompts, truncation, stop tokens."""

from __future__ import annotations

import pytest

from wdl.config import build
from wdl.eval import REFERENCE_SYSTEM_PROMPT, BenchmarkSpec, EvalConfig
from wdl.eval.prompts import build_prompt, render, stop_token_ids
from wdl.eval.runner import plan_lengths


def test_defaults_are_the_paper_protocol():
    cfg = EvalConfig()
    assert (cfg.temperature, cfg.top_p, cfg.n, cfg.seed, cfg.thinking) == (0.0, 1.0, 1, 42, True)
    assert cfg.system_prompt_text == REFERENCE_SYSTEM_PROMPT and "\u2019" in REFERENCE_SYSTEM_PROMPT
    assert cfg.lengths(BenchmarkSpec(name="math500")) == (4096, 4096, 8192)
    assert cfg.lengths(BenchmarkSpec(name="gsm8k")) == (4096, 4096, 8192)
    assert cfg.lengths(BenchmarkSpec(name="AIME25")) == (4096, 8192, 12288)
    assert cfg.lengths(BenchmarkSpec(name="amc23")) == (4096, 8192, 12288)
    assert EvalConfig(max_new_tokens=100).lengths(BenchmarkSpec(name="amc23")) == (4096, 100, 12288)
    assert EvalConfig(max_new_tokens=100).lengths(BenchmarkSpec(name="amc23", max_new_tokens=7))[1] == 7
    assert EvalConfig(system_prompt="none").system_prompt_text is None
    assert EvalConfig(system_prompt="Be brief.").system_prompt_text == "Be brief."


def test_lengths_are_capped_by_the_model():
    cfg = EvalConfig()
    assert plan_lengths(cfg, BenchmarkSpec(name="aime2025"), 40960) == (4096, 8192, 12288)
    # a 2048-token model: the context shrinks, half of it stays for the answer
    assert plan_lengths(cfg, BenchmarkSpec(name="aime2025"), 2048) == (1024, 2047, 2048)
    assert plan_lengths(EvalConfig(max_new_tokens=24), BenchmarkSpec(name="gsm8k"), 2048) == (2024, 24, 2048)


def test_build_from_plain_values_like_yaml():
    cfg = build(EvalConfig, {
        "benchmarks": [{"name": "gsm8k", "path": "/d/gsm8k.json", "limit": 5},
                       {"name": "mine", "path": "/d/m.jsonl", "format": "fields",
                        "fields": {"question": "q", "answer": "a"}}],
        "backend": "transformers", "temperature": 0.6, "n": 4, "pass_k": [1, 2, 4], "thinking": False,
        "vllm_kwargs": {"distributed_executor_backend": "uni"}})
    assert isinstance(cfg.benchmarks[0], BenchmarkSpec) and cfg.benchmarks[0].limit == 5
    assert cfg.benchmarks[1].format == "fields" and cfg.effective_pass_k == [1, 2, 4]
    assert EvalConfig(temperature=0.7, n=8).effective_pass_k == [1, 8]
    assert BenchmarkSpec(name="synthetic", format="gsm8k").format == "alpaca"  # a set name as a format


@pytest.mark.parametrize("kwargs,pattern", [
    ({"backend": "tgi"}, "backend: must be auto, vllm or transformers"),
    ({"temperature": -1}, "temperature: must be >= 0"),
    ({"top_p": 0}, r"top_p: must be in \(0, 1\]"),
    ({"n": 4}, "n: n=4 samples of greedy decoding"),
    ({"n": 2, "temperature": 0.5, "pass_k": [3]}, r"pass_k: every k must be in \[1, n=2\]"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"dtype": "int8"}, "dtype"),
    ({"batch_size": 0}, "batch_size"),
    ({"benchmarks": [{"name": "a"}, {"name": "a"}]}, "benchmarks: names must be unique"),
])
def test_eval_config_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        EvalConfig(**kwargs)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"name": "a b"}, "name: must be a simple name"),
    ({"name": "a", "format": "csv"}, "format: must be one of"),
    ({"name": "a", "format": "fields", "fields": {"question": "q"}},
     "fields: format 'fields' needs a mapping for answer"),
    ({"name": "a", "fields": {"question": "q", "answer": "a", "bogus": "x"}}, r"fields: unknown keys \['bogus'\]"),
    ({"name": "a", "path": "x.json", "hf": "org/ds"}, "hf: set either path or hf"),
    ({"name": "a", "limit": 0}, "limit: must be >= 1"),
    ({"name": "a", "answer_type": "text"}, "answer_type"),
])
def test_benchmark_spec_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        BenchmarkSpec(**kwargs)


def test_yaml_errors_name_the_key_path():
    with pytest.raises(ValueError) as e:
        build(EvalConfig, {"benchmarks": [{"name": "g", "limit": -2}]})
    assert getattr(e.value, "path", "") == "benchmarks[0].limit"


def test_chat_prompt_thinking_and_system(tiny_tokenizer):
    on = render(tiny_tokenizer, "What is 2+2?", system_prompt="SYS", thinking=True)
    off = render(tiny_tokenizer, "What is 2+2?", system_prompt=None, thinking=False)
    assert on.startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>")
    assert on.endswith("<|im_start|>assistant\n")
    assert "system" not in off and off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_prompt_ids_match_the_text(tiny_tokenizer):
    p = build_prompt(tiny_tokenizer, "Tom has 3 apples.", system_prompt=None, thinking=True, max_input_tokens=4096)
    assert not p.truncated and tiny_tokenizer.decode(p.ids) == p.text
    assert p.ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # specials are single tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_keeps_the_template_and_fits(tiny_tokenizer, side):
    q = "START " + "blah " * 300 + "How many apples END?"
    full = build_prompt(tiny_tokenizer, q, system_prompt=None, thinking=True, max_input_tokens=100_000)
    p = build_prompt(tiny_tokenizer, q, system_prompt=None, thinking=True, max_input_tokens=80, truncation=side)
    assert p.truncated and len(p.ids) <= 80 < len(full.ids)
    assert p.text.startswith("<|im_start|>user\n") and p.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ("END?" in p.text) == (side == "left") and ("START" in p.text) == (side == "right")


def test_truncation_error_mode(tiny_tokenizer):
    with pytest.raises(ValueError, match="over the input budget of 20"):
        build_prompt(tiny_tokenizer, "word " * 100, system_prompt=None, thinking=True, max_input_tokens=20,
                     truncation="error")


def test_stop_tokens_eos_plus_chat_end(tiny_tokenizer):
    ids = stop_token_ids(tiny_tokenizer, ["<|im_end|>", "<|endoftext|>", "<|not_a_token|>"])
    assert ids == [tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
