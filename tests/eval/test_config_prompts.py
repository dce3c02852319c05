"""EvalConfig / BenchmarkSpec validation and YAML building; protocols and modes; chat prompts (with the
reference's fallbacks), truncation, stop tokens."""

from __future__ import annotations

import pytest

from wdl.config import build
from wdl.eval import REFERENCE_SYSTEM_PROMPT, BenchmarkSpec, EvalConfig
from wdl.eval.prompts import build_prompt, render, stop_token_ids
from wdl.eval.runner import plan_lengths


def test_defaults_are_the_paper_protocol():
    cfg = EvalConfig()
    assert (cfg.protocol, cfg.grader, cfg.thinking) == ("paper", "reference", True)
    d = cfg.decoding
    assert (d.mode, d.temperature, d.top_p, d.top_k, d.n, d.seed, d.repetition_penalty) == (
        "greedy", 0.0, 1.0, -1, 1, 42, 1.0)
    assert cfg.system_prompt_text == REFERENCE_SYSTEM_PROMPT and "\u2019" in REFERENCE_SYSTEM_PROMPT
    assert (cfg.effective_truncation, cfg.effective_skip_special_tokens, cfg.effective_trust_remote_code) == (
        "error", True, False)
    assert (cfg.engine_dtype("vllm"), cfg.engine_dtype("transformers")) == ("bfloat16", "auto")
    assert (cfg.engine_batch_size("vllm"), cfg.engine_batch_size("transformers")) == (128, 32)
    assert EvalConfig(dtype="fp32").engine_dtype("vllm") == "float32"
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
    ({"mode": "greedy", "n": 4}, "n: mode greedy takes exactly one sample"),
    ({"mode": "greedy", "temperature": 0.5}, "temperature: mode greedy needs temperature 0"),
    ({"mode": "passk", "n": 1}, "n: mode passk needs n >= 2"),
    ({"n": 4, "temperature": 0}, "n: n=4 samples of greedy decoding"),
    ({"mode": "beam"}, "mode: must be greedy, pass1 or passk"),
    ({"protocol": "lighteval"}, "protocol: must be paper or opd"),
    ({"repetition_penalty": 0}, "repetition_penalty: must be > 0"),
    ({"grader": "strict"}, "grader: must be reference, lenient or external"),
    ({"grader": "external"}, "grader_path: grader external needs grader_path"),
    ({"grader": "external", "grader_path": "g.py"}, "grader_sha256: an external grader runs only pinned"),
    ({"grader": "external", "grader_path": "g.py", "grader_sha256": "abc"}, "grader_sha256: must be 64"),
    ({"grader_path": "g.py"}, "grader_path: is used by grader external"),
    ({"protocol": "opd"}, "grader: the opd protocol grades with its pinned external grader"),
    ({"protocol": "opd", "allow_public_grader": True, "system_prompt": "reference"},
     "system_prompt: the opd protocol is user-only"),
    ({"protocol": "opd", "allow_public_grader": True, "thinking": False}, "thinking: the opd protocol"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
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
    ({"name": "a", "path": "x.json", "sha256": "00"}, "sha256: must be 64 hexadecimal digits"),
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
    assert stop_token_ids(tiny_tokenizer) == [tiny_tokenizer.eos_token_id]
    assert stop_token_ids(tiny_tokenizer, extra_ids=[7], model_eos=[5, tiny_tokenizer.eos_token_id]) == [
        tiny_tokenizer.eos_token_id, 5, 7]


def test_generation_config_eos_is_what_vllm_adds(tmp_path, tiny_model_dir):
    """vLLM stops at the generation_config.json eos ids, else at the model config's: the paper stops."""
    import json
    import shutil

    from wdl.eval.prompts import generation_config_eos

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert generation_config_eos(str(d)) == [2, 0]
    (d / "generation_config.json").unlink()
    config = json.loads((d / "config.json").read_text())
    assert generation_config_eos(str(d)) == ([config["eos_token_id"]] if config.get("eos_token_id") is not None
                                             else [])
    assert generation_config_eos(str(tmp_path / "nothing")) == []


def test_modes_fill_in_temperature_and_samples():
    assert EvalConfig(mode="pass1").decoding.temperature == 0.5 and EvalConfig(mode="pass1").decoding.n == 1
    d = EvalConfig(mode="passk").decoding
    assert (d.temperature, d.n) == (0.5, 8)
    assert EvalConfig(mode="passk").effective_pass_k == [1, 8]
    # no mode: read from temperature / n
    assert EvalConfig(temperature=0.6).decoding.mode == "pass1"
    assert EvalConfig(temperature=0.6, n=4).decoding.mode == "passk"
    assert EvalConfig(n=4).decoding.temperature == 0.5
    assert EvalConfig(mode="passk", n=16, temperature=1.0).decoding.n == 16


def test_opd_protocol_values():
    cfg = EvalConfig(protocol="opd", allow_public_grader=True)
    assert cfg.system_prompt_text is None
    assert (cfg.effective_skip_special_tokens, cfg.effective_trust_remote_code) == (False, True)
    assert cfg.lengths(BenchmarkSpec(name="math500")) == (1024, 4096, 5120)
    assert cfg.lengths(BenchmarkSpec(name="aime2025")) == (2048, 8192, 10240)
    assert cfg.lengths(BenchmarkSpec(name="amc23")) == (2048, 8192, 10240)


def test_explicit_lengths_must_fit_the_context():
    with pytest.raises(ValueError, match=r"max_input_tokens \(4096\) \+ max_new_tokens \(8192\) exceed max_model_len"):
        EvalConfig(max_new_tokens=8192, max_model_len=8192).lengths(BenchmarkSpec(name="math500"))
    # an unset context grows to hold both
    assert EvalConfig(max_new_tokens=8192).lengths(BenchmarkSpec(name="math500")) == (4096, 8192, 12288)
    # already when the config is built (a pipeline fails before it trains), also for one set's own lengths
    with pytest.raises(ValueError, match=r"benchmark gsm8k: max_input_tokens \(4096\) \+ max_new_tokens \(8192\) "
                                         r"exceed max_model_len \(8192\); raise max_model_len"):
        EvalConfig(max_new_tokens=8192, max_model_len=8192, benchmarks=[BenchmarkSpec(name="gsm8k")])
    with pytest.raises(ValueError, match=r"benchmark a: max_input_tokens \(100\) \+ max_new_tokens \(4096\)"):
        EvalConfig(benchmarks=[BenchmarkSpec(name="a", path="a.json", max_input_tokens=100, max_model_len=4100)])


class _NoTemplate:
    def apply_chat_template(self, *a, **kw):
        raise ValueError("no chat template")


class _NoThinkingKwarg:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
        if kw:
            raise TypeError("unexpected keyword enable_thinking")
        return "|".join(m["content"] for m in messages) + "|<gen>"


def test_render_falls_back_like_the_reference(tiny_tokenizer):
    assert render(_NoTemplate(), "question", system_prompt="system", thinking=True) == (
        "system: system\n\nuser: question\n\nassistant:")
    assert render(_NoTemplate(), "q", system_prompt=None, thinking=True) == "user: q\n\nassistant:"
    assert render(_NoThinkingKwarg(), "q", system_prompt="s", thinking=True) == "s|q|<gen>"
    with pytest.raises(ValueError, match="cannot render its chat template in thinking mode"):
        render(_NoTemplate(), "q", system_prompt=None, thinking=True, strict=True)
    # a real tokenizer without a template (transformers raises ValueError): the plain text fallback
    import copy

    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    assert render(bare, "2+2?", system_prompt=None, thinking=True) == "user: 2+2?\n\nassistant:"
