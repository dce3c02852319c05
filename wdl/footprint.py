"""What a run writes to disk and holds in memory, estimated from the model configs and the settings (no weights
are read). The preflight compares these numbers with the free disk and the GPU memory; docs/pipeline.md and the
README print them for the presets. They are estimates by the formulas below, not measurements.

Parameters P are counted on a meta-device model built from the config (tied embeddings once).

Disk, per training phase (`work/<phase>/` checkpoints and the exported model):
    full checkpoint   = P_trainable x 12 bytes   (fp32 weights + AdamW's two fp32 moments; DCP: single, FSDP2)
                      = P_trainable x 14 bytes   (DeepSpeed: + the bf16 module weights)
    model-only        = P_trainable x 4 bytes    (what `train.drop_optimizer_state` keeps after the phase)
    export            = P_strong x 2 bytes       (bf16 safetensors; the source checkpoint's dtype)
    while training    = export + (keep_last + 1) x full checkpoint   (a new checkpoint is complete before the
                                                                      oldest is deleted)
    after the phase   = export + keep_last x (model-only, or full with drop_optimizer_state=false)
A frozen weak model is not checkpointed. The run's peak is the phases' "after" sizes in order plus the current
phase's "while training" size, plus the tokenized-data cache (about 3x the source files).

GPU memory, per device, of one training step (bf16 compute, AdamW):
    model states      single: 18 bytes per trainable parameter (fp32 weight 4 + fp32 gradient 4 + AdamW 8 + the
                      bf16 copy autocast keeps for the backward 2), 6 per frozen one;
                      FSDP2: 16 / W per trainable, 4 / W per frozen, plus 2 x (embeddings + lm_heads) for the
                      unsharded root unit; fsdp_cpu_offload: only that root unit;
                      ZeRO-3: 16 / W (offload_optimizer: 4 / W); ZeRO-2: 2 + 14 / W (offload_optimizer: 2 + 2 / W)
    activations       per trained sub-model and micro-batch of T tokens, with A = 2 x (4H + 2 q + 2 kv + 4I) bytes
                      per token and layer (bf16 inputs of the norms, projections and MLP; H hidden, q / kv the
                      query / key-value widths, I the MLP width, L layers):
                      activation checkpointing: T x L x H x 4 (the fp32 layer inputs) + T x A (one layer
                      recomputed); without: T x L x A. A frozen weak model holds T x A (no graph).
    loss              the fused kernel: bounded chunks, counted as 2 x T x H x 4 per sub-model (hidden gradients)
Scoring holds P x 2 bytes (bf16) plus T x A.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen3Config

from wdl.tiny import QWEN3_VOCAB_SIZE

GIB = float(1 << 30)
GB = 1e9
FULL_CKPT_BYTES = {"single": 12, "fsdp2": 12, "deepspeed": 14}
MODEL_ONLY_BYTES = 4


@dataclass(frozen=True)
class ModelSize:
    """What the estimates need from a model config."""

    params: int  # unique parameters (tied embeddings counted once)
    embedding_params: int  # input embedding + lm_head (once when tied)
    hidden_size: int
    num_layers: int
    intermediate_size: int
    q_dim: int
    kv_dim: int
    export_bytes: int = 2  # bytes per parameter of the exported checkpoint

    @property
    def act_bytes_per_token_layer(self) -> int:
        return 2 * (4 * self.hidden_size + 2 * self.q_dim + 2 * self.kv_dim + 4 * self.intermediate_size)


_PARAM_COUNTS: dict[str, tuple[int, int]] = {}


def _count_params(config) -> tuple[int, int]:
    """(unique parameters, embedding + lm_head parameters) of the model a config describes (meta device)."""
    from transformers import AutoModelForCausalLM

    key = config.to_json_string(use_diff=False)
    if key not in _PARAM_COUNTS:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        untied = head is not None and head.weight is not emb
        _PARAM_COUNTS[key] = (total, emb.numel() + (head.weight.numel() if untied else 0))
    return _PARAM_COUNTS[key]


def model_size(config) -> ModelSize:
    """A transformers config (or a checkpoint folder / hub name already resolved to one) -> ModelSize."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    total, embedding = _count_params(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    export = dtype.itemsize if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 4
    return ModelSize(
        params=total,
        embedding_params=embedding,
        hidden_size=text.hidden_size,
        num_layers=text.num_hidden_layers,
        intermediate_size=text.intermediate_size,
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        export_bytes=export,
    )


# ------------------------------------------------------------------------------------------------- disk
@dataclass(frozen=True)
class PhaseDisk:
    phase: str
    while_training: int  # bytes on disk at this phase's peak (its own files only)
    after: int  # bytes this phase leaves behind once complete

    @property
    def text(self) -> str:
        return f"{self.phase} {fmt_bytes(self.after)} (peak {fmt_bytes(self.while_training)})"


def training_phase_disk(phase: str, strong: ModelSize, weak: ModelSize | None, train) -> PhaseDisk:
    """Disk of one training phase; `weak` is the weak sub-model (joint), trained unless train.freeze_weak."""
    trainable = strong.params + (weak.params if weak is not None and not train.freeze_weak else 0)
    full = trainable * FULL_CKPT_BYTES[train.backend]
    model_only = trainable * MODEL_ONLY_BYTES
    export = strong.params * strong.export_bytes
    kept = model_only if getattr(train, "drop_optimizer_state", False) else full
    return PhaseDisk(phase, export + (train.keep_last + 1) * full, export + train.keep_last * kept)


def run_disk_peak(phases: list[PhaseDisk], other: int = 0) -> int:
    """The run's peak: what earlier phases leave behind plus the current phase's peak, at the worst phase."""
    peak, kept = 0, 0
    for p in phases:
        peak = max(peak, kept + p.while_training)
        kept += p.after
    return max(peak, kept) + other


def data_cache_bytes(sources: list[str]) -> int:
    """The datasets cache of parsed and tokenized records: about 3x the local source files."""
    return 3 * sum(Path(s).stat().st_size for s in sources if Path(s).is_file())


# ----------------------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryEstimate:
    states: int  # weights, gradients, optimizer states (per device)
    activations: int  # activations and loss buffers of one micro-batch
    host: int = 0  # what offloading puts in host memory (per device)

    @property
    def total(self) -> int:
        return self.states + self.activations


def _states(size: ModelSize, trainable: bool, train, world: int) -> tuple[float, float]:
    """(device bytes, host bytes) of one sub-model's states."""
    p = size.params
    if train.backend == "single":
        return (18 if trainable else 6) * p, 0.0
    if train.backend == "fsdp2":
        root = 2 * size.embedding_params
        if train.fsdp_cpu_offload:
            return root, (16 if trainable else 4) * p / world
        return (16 if trainable else 4) * p / world + root, 0.0
    if train.zero_stage == 3:
        if train.offload_optimizer and trainable:
            return 4 * p / world, 12 * p / world
        return (16 if trainable else 2) * p / world, 0.0
    if train.offload_optimizer and trainable:
        return 2 * p + 2 * p / world, 12 * p / world
    return 2 * p + (14 * p / world if trainable else 0), 0.0


def _activations(size: ModelSize, trainable: bool, tokens: int, checkpointing: bool) -> int:
    layer = tokens * size.act_bytes_per_token_layer
    if not trainable:
        return layer
    kept = tokens * size.num_layers * size.hidden_size * 4 + layer if checkpointing else size.num_layers * layer
    return kept + 2 * tokens * size.hidden_size * 4


def training_memory(
    strong: ModelSize, weak: ModelSize | None, train, tokens_per_micro_batch: int, world_size: int = 1
) -> MemoryEstimate:
    """Per-device memory of one training step of a phase (joint: strong + weak; SFT: strong alone)."""
    subs = [(strong, True)] + ([(weak, not train.freeze_weak)] if weak is not None else [])
    dev = host = act = 0.0
    for size, trainable in subs:
        d, h = _states(size, trainable, train, world_size)
        dev, host = dev + d, host + h
        act += _activations(size, trainable, tokens_per_micro_batch, train.activation_checkpointing)
    return MemoryEstimate(int(dev), int(act), int(host))


def scoring_memory(size: ModelSize, tokens_per_micro_batch: int) -> MemoryEstimate:
    return MemoryEstimate(2 * size.params, tokens_per_micro_batch * size.act_bytes_per_token_layer)


def fmt_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


# ------------------------------------------------------------------------------------ the presets' tables
# The published shapes of the Qwen3 Base models the presets train (their config.json: V = 151936, head_dim
# 128, bf16), so the presets' estimates need no download.
QWEN3_SHAPES = {
    "qwen3-0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": dict(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "qwen3-4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
}


def qwen3_size(preset: str) -> ModelSize:
    return model_size(Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, head_dim=128, dtype="bfloat16", **QWEN3_SHAPES[preset]))


def _gib(n: float) -> str:
    return f"{n / GIB:.0f}" if n >= 10 * GIB else f"{n / GIB:.1f}"


def preset_tables() -> str:
    """The memory and disk estimates of the Qwen3 presets as markdown (README and docs/pipeline.md print it;
    `python -m wdl.footprint` regenerates it)."""
    import dataclasses

    # Here, not at the top: wdl.config imports `datasets`, and bench_e2e imports this module (QWEN3_SHAPES) on
    # machines without it.
    from wdl.config import load_pipeline_config

    mem = [
        "| preset | parameters | tokens / micro-batch | SFT, 1 GPU | joint, 1 GPU | joint, FSDP2 on 8 GPUs | "
        "joint, ZeRO-3 + optimizer offload, 1 GPU (GPU + host) |",
        "|---|---|---|---|---|---|---|",
    ]
    disk = [
        "| preset | export (bf16) | SFT checkpoint | joint checkpoint | run peak (keep_last 2) | finished run |",
        "|---|---|---|---|---|---|",
    ]
    for preset in QWEN3_SHAPES:
        cfg = load_pipeline_config(preset, runnable=False)
        size, tokens = qwen3_size(preset), cfg.data.tokens_per_micro_batch
        sft = training_memory(size, None, cfg.sft, tokens)
        joint = training_memory(size, size, cfg.joint, tokens)
        fsdp = training_memory(size, size, dataclasses.replace(cfg.joint, backend="fsdp2"), tokens, world_size=8)
        off = training_memory(
            size,
            size,
            dataclasses.replace(cfg.joint, backend="deepspeed", zero_stage=3, offload_optimizer=True),
            tokens,
        )
        mem.append(
            f"| {preset} | {size.params / 1e9:.2f} B | {tokens} | {_gib(sft.total)} GiB | {_gib(joint.total)} "
            f"GiB | {_gib(fsdp.total)} GiB | {_gib(off.total)} + {_gib(off.host)} GiB |"
        )
        phases = [training_phase_disk("sft", size, None, cfg.sft), training_phase_disk("joint", size, size, cfg.joint)]
        full = [p.params * FULL_CKPT_BYTES["single"] for p in (size,)] + [2 * size.params * FULL_CKPT_BYTES["single"]]
        disk.append(
            f"| {preset} | {_gib(size.params * size.export_bytes)} GiB | {_gib(full[0])} GiB | "
            f"{_gib(full[1])} GiB | {_gib(run_disk_peak(phases))} GiB | "
            f"{_gib(sum(p.after for p in phases))} GiB |"
        )
    return "\n".join(mem) + "\n\n" + "\n".join(disk) + "\n"


if __name__ == "__main__":  # python -m wdl.footprint: the presets' tables
    print(preset_tables(), end="")
