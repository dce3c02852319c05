"""Writing a sub-model as a plain Hugging Face checkpoint (safetensors, config, tokenizer, generation config), and
checking a checkpoint directory before it is read.

The caller gathers the full state dict (wdl.train backends do it for FSDP2 / ZeRO-3); this module builds the
model skeleton on the meta device, assigns the tensors (tied embeddings re-tied, never duplicated) and writes
everything into a temporary directory that is renamed into place, so a reader never sees half a checkpoint.
The export also holds `wdl_export.json`, the size and SHA-256 of each of its files: it marks the directory as
ours (`wdl extract --out` replaces only such a directory) and lets a reader tell a damaged file.

`check_hf_checkpoint(path)` reads headers only: a directory without config.json or weights, a shard the index
names but that is missing, or a safetensors file shorter than its header says (truncated) is a ValueError
naming the file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PretrainedConfig

from wdl.io import atomic_directory, atomic_write_json
from wdl.manifest import build_manifest, verify_manifest

IM_END = "<|im_end|>"
EXPORT_RECORD = "wdl_export.json"
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json",
                    "pytorch_model.bin.index.json")


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be complete (from its header and size), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path}: truncated ({size} bytes, not even a header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path}: truncated ({size} bytes, the header alone says {8 + n})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"{path}: not a safetensors file ({e})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    want = 8 + n + max(ends, default=0)
    if size < want:
        return f"{path}: truncated ({size} bytes, its header describes {want})"
    return None


def check_hf_checkpoint(path: str | Path) -> None:
    """A local model directory that can be loaded: config.json, weights (every shard its index names), and no
    truncated safetensors file. A ValueError naming the file otherwise; reads headers only."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{p}: {'not a directory' if p.exists() else 'does not exist'} (expected a model "
                         "checkpoint directory with config.json and model.safetensors)")
    if not (p / "config.json").is_file():
        raise ValueError(f"{p}: no config.json: not a Hugging Face model directory (missing model files)")
    if not any(any(p.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ValueError(f"{p}: no model weights (model.safetensors or its shards): missing model files")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = p / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{index}: not a valid weight index ({e})") from None
            missing = sorted(s for s in shards if not (p / s).is_file())
            if missing:
                raise ValueError(f"{p / missing[0]}: missing ({len(missing)} of the {len(shards)} shards "
                                 f"{index_name} names): copy the model again")
    check_safetensors_files(p, "the file is damaged; export or copy the model again")


def check_safetensors_files(directory: str | Path, fix: str) -> None:
    """Every *.safetensors file in `directory` is complete (header and size); a ValueError naming the first
    damaged one, followed by `fix`, otherwise."""
    for f in sorted(Path(directory).glob("*.safetensors")):
        problem = _safetensors_problem(f)
        if problem:
            raise ValueError(f"{problem}: {fix}")


def is_wdl_export(path: str | Path) -> bool:
    """A directory written by `save_hf_checkpoint`, holding nothing but what it wrote (sizes unchanged)."""
    p = Path(path)
    try:
        record = json.loads((p / EXPORT_RECORD).read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    extra = {n for n in os.listdir(p)} - {n.split("/")[0] for n in files} - {EXPORT_RECORD}
    return not extra and all((p / n).is_file() and (p / n).stat().st_size == e["size"] for n, e in files.items())


def check_export_target(path: str | Path) -> None:
    """`path` may receive an export: it does not exist, is an empty directory, or holds a previous export of ours
    (which is replaced). Anything else - a file, a directory with other content - is a ValueError."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if not p.is_dir():
        raise ValueError(f"{p} is a file, not a directory: give a directory path for the model (nothing was written)")
    if any(p.iterdir()) and not is_wdl_export(p):
        raise ValueError(f"{p} is not empty and does not hold a model exported by wdl, so it is not replaced: choose "
                         "a new or empty directory (nothing was written)")


def check_export(path: str | Path) -> list[str]:
    """What differs between an export and its record (hashes every file); [] when intact or not an export."""
    p = Path(path)
    try:
        files = json.loads((p / EXPORT_RECORD).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return verify_manifest(p, files, ignore=(EXPORT_RECORD,))


def is_complete_hf_checkpoint(path: str | Path) -> bool:
    """A directory written by `save_hf_checkpoint` (or any HF checkpoint with a config and weights)."""
    p = Path(path)
    has_weights = any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").is_file()
    return p.is_dir() and (p / "config.json").is_file() and has_weights


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
    """Write `state_dict` (full tensors, any device) as an HF checkpoint at `out_dir`, atomically. With `overwrite`
    an existing `out_dir` is replaced only when `check_export_target` allows it."""
    if overwrite:
        check_export_target(out_dir)
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
        atomic_write_json(tmp / EXPORT_RECORD, {"format": "wdl-export-1", "files": build_manifest(tmp)})
    return Path(out_dir)
