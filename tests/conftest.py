"""Shared test setup.

Without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before anything imports
triton, so it is set here, at collection time, before the test modules import wdl_kernels.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the checkout (development data); tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from wdl.tiny import build_tokenizer

    return build_tokenizer(vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A randomly initialised tiny Qwen3 (fp32) saved as a plain HF checkpoint with its tokenizer."""
    from transformers import AutoModelForCausalLM

    from wdl.tiny import tiny_qwen3_config

    torch.manual_seed(1234)
    out = tmp_path_factory.mktemp("tiny_qwen3")
    model = AutoModelForCausalLM.from_config(tiny_qwen3_config(len(tiny_tokenizer)))
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out
