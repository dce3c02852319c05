from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_data import make_samples  # noqa: E402


@pytest.fixture(scope="session")
def model_pair(tmp_path_factory, tiny_tokenizer) -> tuple[Path, Path]:
    """(strong, weak): two differently initialised tiny Qwen3 checkpoints (fp32, tied embeddings)."""
    from transformers import AutoModelForCausalLM

    from wdl.tiny import tiny_qwen3_config

    root = tmp_path_factory.mktemp("pair")
    out = []
    for name, seed in (("strong", 1), ("weak", 2)):
        torch.manual_seed(seed)
        cfg = tiny_qwen3_config(len(tiny_tokenizer), hidden_size=64, intermediate_size=128, head_dim=32)
        m = AutoModelForCausalLM.from_config(cfg)
        m.save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
        out.append(root / name)
    return out[0], out[1]


@pytest.fixture(scope="session")
def samples(tiny_tokenizer) -> list[dict]:
    return make_samples(24, len(tiny_tokenizer), seed=0)
