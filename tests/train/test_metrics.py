"""FLOP counting, packed-sequence lengths, the device peak table, Liger's fallback."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from wdl.tiny import tiny_qwen3_config
from wdl.train.metrics import PEAK_BF16_TFLOPS, FlopCounter, peak_bf16_flops, sequence_lengths


def test_flop_counter_counts_every_matmul_parameter_and_attention():
    cfg = tiny_qwen3_config(300, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=32, tie_word_embeddings=True)
    m = AutoModelForCausalLM.from_config(cfg)
    matmul = sum(p.numel() for n, p in m.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    matmul += cfg.vocab_size * cfg.hidden_size  # the tied lm_head still costs a matmul
    fc = FlopCounter(cfg, trainable=True)
    assert fc.matmul_params == matmul
    # 6 N per token + 12 * layers * heads*head_dim * T per token (PaLM), for one sequence of T tokens
    t = 50
    assert fc.step_flops(t, t * t) == pytest.approx(6 * matmul * t + 12 * 2 * 64 * t * t)
    assert FlopCounter(cfg, trainable=False).step_flops(t, t * t) == pytest.approx(fc.step_flops(t, t * t) / 3)


def test_sequence_lengths_of_packed_rows_skip_padding():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1, 2, 3]])
    sidx = torch.tensor([[5, 5, 5, 6, 6, -1, -1, -1, -1], [7, 7, 7, 7, 7, 8, 8, 8, 8]])
    assert sorted(sequence_lengths(pos, sidx).tolist()) == [2, 3, 4, 5]


def test_no_mfu_peak_on_the_cpu_and_specific_names_first():
    assert peak_bf16_flops(torch.device("cpu")) is None
    keys = [k for k, _ in PEAK_BF16_TFLOPS]
    assert keys.index("h100 pcie") < keys.index("h100") and keys.index("l40s") < keys.index("l40") < keys.index("l4")


def test_liger_is_a_warned_no_op_without_cuda():
    from wdl.models.loading import apply_liger

    m = AutoModelForCausalLM.from_config(tiny_qwen3_config(300))
    with pytest.warns(UserWarning, match="use_liger=true ignored"):
        assert apply_liger(m, device=torch.device("cpu")) is False
