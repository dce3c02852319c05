"""Writing a sub-model as a plain Hugging Face checkpoint (safetensors, config, tokenizer, generation config).

The caller gathers the full state dict (wdl.train backends do it for FSDP2 / ZeRO-3); this module builds the
model skeleton on the meta device, assigns the tensors (tied embeddings re-tied, never duplicated) and writes
everything into a temporary directory that is renamed into place, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PretrainedConfig

from wdl.io import atomic_directory

IM_END = "<|im_end|>"


def is_complete_hf_checkpoint(path: str | Path) -> bool:
    """A directory written by `save_hf_checkpoint` (or any HF checkpoint with a config and weights)."""
    p = Path(path)
    has_weights = any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").is_file()
    return p.is_dir() and (p / "config.json").is_file() and has_weights


def verify_hf_checkpoint(path: str | Path) -> None:
    """Raise ValueError unless `path` is a complete HF checkpoint: config.json loads, and every weight file is
    whole (its size is what its safetensors header declares) and holds every parameter of the model the
    config describes, with its shape. Reads the headers only, not the weights."""
    path = Path(path)
    if not is_complete_hf_checkpoint(path):
        raise ValueError(f"{path}: not a complete Hugging Face checkpoint (config.json and *.safetensors)")
    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found: dict[str, tuple] = {}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors weights (only safetensors exports are verified)")
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if f.stat().st_size != 8 + n + end:
            raise ValueError(f"{f}: {f.stat().st_size} bytes, its header declares {8 + n + end}: the file is cut short")
        found.update({k: tuple(t["shape"]) for k, t in header.items()})
    wrong = [k for k, s in found.items() if k in expected and expected[k] != s]
    aliases: dict[int, list[str]] = {}  # a tied lm_head is saved once, under either name
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    missing = [names[0] for names in aliases.values() if not any(a in found for a in names)]
    if wrong or missing:
        raise ValueError(f"{path}: the weights do not match its config: missing {missing[:5]}, wrong shapes "
                         f"{wrong[:5]} (of {len(aliases)} parameters)")


def export_dtype(model_path: str | Path) -> torch.dtype:
    """The dtype the source checkpoint was stored in (bf16 for Qwen3), fp32 when it does not say: exports of a
    trained sub-model keep the source's storage dtype."""
    dtype = getattr(AutoConfig.from_pretrained(str(model_path)), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def generation_config_for(tokenizer, source: str | Path | None = None) -> GenerationConfig:
    """The source checkpoint's generation config (if any) with eos ids that include <|im_end|>.

    Chat-trained models end their turns with <|im_end|> while a Base model's config names <|endoftext|>;
    without both ids generation would run past the end of the answer.
    """
    gen = None
    if source is not None and (Path(source) / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(str(source))
    if gen is None:
        gen = GenerationConfig(do_sample=False)
    eos = gen.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    candidates = []
    im_end = tokenizer.convert_tokens_to_ids(IM_END) if IM_END in tokenizer.get_vocab() else None
    if im_end is not None:
        candidates.append(im_end)
    if tokenizer.eos_token_id is not None:
        candidates.append(tokenizer.eos_token_id)
    for i in candidates:
        if i not in eos_ids:
            eos_ids.append(i)
    gen.eos_token_id = eos_ids if len(eos_ids) != 1 else eos_ids[0]
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def save_hf_checkpoint(
    config: PretrainedConfig,
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    tokenizer_path: str | Path | None = None,
    generation_source: str | Path | None = None,
    overwrite: bool = True,
) -> Path:
    """Write `state_dict` (full tensors, any device) as an HF checkpoint at `out_dir`, atomically."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if unexpected or still_meta:
        raise ValueError(f"state dict does not match {type(model).__name__}: missing {still_meta[:5] or missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) == 1:
        model.config.dtype = dtypes.pop()
    model.config.use_cache = True  # the exported model is for inference
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path)) if tokenizer_path is not None else None
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            generation_config_for(tokenizer, generation_source).save_pretrained(tmp)
    return Path(out_dir)
