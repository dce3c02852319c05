"""Fixtures of the evaluation tests: benchmark files of every format, a tiny model whose greedy text varies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# (question, gold) pairs for the word-problem sets; the fake generator answers them by id
GSM = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "7.0"),
    ("A shirt costs $12. How much do 5 shirts cost?", "60.0"),
    ("It was 5 degrees and dropped 8 degrees. What is the temperature now?", "-3.0"),
    ("A farm has 1200 hens and buys 300 more. How many hens now?", "1500.0"),
]
AQUA = [
    ("What is 2 + 2? Answer Choices: (A) 3 (B) 4 (C) 5 (D) 6 (E) 7", "B"),
    ("Which is a multiple of 4? Answer Choices: (A) 6 (B) 10 (C) 12 (D) 14 (E) 18", "C"),
    ("What is half of 9? Answer Choices: (A) 4.5 (B) 4 (C) 5 (D) 9 (E) 18", "A"),
]
AIME = [("Find $x$ if $2x = 14$.", "7"), ("What is $\\frac{1}{2} + \\frac{1}{3}$?", "\\frac{5}{6}")]


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def bench_dir(tmp_path) -> Path:
    """A data_dir in the reference layout, one set of each format (MATH500 as JSONL)."""
    root = tmp_path / "data"
    write_json(root / "gsm8k" / "test.json",
               [{"instruction": q, "input": "", "output": "A: ...", "answer": a} for q, a in GSM])
    write_json(root / "AQuA" / "test.json",
               [{"instruction": q, "input": "", "output": "", "answer": a} for q, a in AQUA])
    write_json(root / "aime2025" / "test.json", [{"question": q, "answer": a} for q, a in AIME])
    write_json(root / "amc23" / "test.json", [{"instruction": q, "answer": a} for q, a in AIME])
    write_jsonl(root / "math500" / "test.jsonl",
                [{"problem": q, "solution": "...", "answer": a, "subject": "Algebra", "level": 1,
                  "unique_id": f"test/algebra/{i}.json"} for i, (q, a) in enumerate(AIME)])
    return root


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random tiny Qwen3 (head_dim 64, fp32) initialised with a larger std than usual, so that its greedy
    continuations are varied text instead of one repeated token: backend comparisons then mean something."""
    from transformers import AutoModelForCausalLM

    from wdl.tiny import tiny_qwen3_config

    torch.manual_seed(1234)
    cfg = tiny_qwen3_config(len(tiny_tokenizer))
    cfg.initializer_range = 0.2
    out = tmp_path_factory.mktemp("lively_qwen3")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen_vocab_dir(tmp_path_factory) -> Path:
    """A checkpoint folder (config + tokenizer, no weights: for fake generators) whose tokenizer has Qwen3's
    end tokens at Qwen3's ids (<|endoftext|> 151643, <|im_end|> 151645), as the opd protocol requires: a
    byte-level vocabulary padded with filler tokens up to those ids, and the Qwen3-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from wdl.tiny import QWEN3_CHAT_TEMPLATE, tiny_qwen3_config

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({f"<filler{i}>": i for i in range(len(vocab), 151643)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = QWEN3_CHAT_TEMPLATE
    assert fast.convert_ids_to_tokens([151643, 151644, 151645]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    out = tmp_path_factory.mktemp("qwen_vocab")
    fast.save_pretrained(out)
    tiny_qwen3_config(len(fast), max_position_embeddings=40960, eos_token_id=151643).save_pretrained(out)
    return out
