"""check_model_source: a hub model name resolved from the Hugging Face cache has its cached weights checked like a
local directory (a truncated safetensors file is named with the fix), and a complete cached model passes."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
from transformers import AutoModelForCausalLM

from wdl.models import check_model_source
from wdl.tiny import tiny_qwen3_config


def _cached_model(cache: Path, repo: str = "org/tiny") -> Path:
    """A model laid out as the hub cache keeps it (refs/main -> snapshots/<commit>/...)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abcd")
    cfg = tiny_qwen3_config(64, hidden_size=32, intermediate_size=64, head_dim=16, num_hidden_layers=1)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(snapshot)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_a_complete_cached_model_passes(hub_cache):
    _cached_model(hub_cache)
    check_model_source("org/tiny", "model.base")


def test_a_truncated_cached_weight_file_is_named(hub_cache):
    weights = _cached_model(hub_cache) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        check_model_source("org/tiny", "model.base")
    message = str(err.value)
    assert message.startswith(f"model.base 'org/tiny': {weights}: truncated")
    assert "hf download org/tiny --force-download" in message


def test_an_uncached_name_offline_is_one_line(hub_cache):
    with pytest.raises(ValueError, match="not in the Hugging Face cache nor reachable on the hub"):
        check_model_source("org/absent", "model.base")
