"""Loading Hugging Face causal LMs for training and scoring: dtype, attention kernel, activation checkpointing,
optional Liger-Kernel blocks.

Nothing here downloads anything that the caller did not ask for: a model is a local checkpoint directory or a
hub name that transformers resolves from its cache. `check_model_source` tells, before any work, whether a
model can be loaded at all (local files complete, or the name in the cache or on a reachable hub), in one line.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.utils import cached_file

from .export import check_hf_checkpoint, check_safetensors_files

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' | 'auto' (bf16 on CUDA, fp32 elsewhere) -> torch.dtype."""
    if name == "auto":
        dev = torch.device(device) if device is not None else default_device()
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join([*DTYPES, 'auto'])}, got {name!r}")
    return DTYPES[name]


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def flash_attn_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def pick_attn_implementation(requested: str | None = None) -> str:
    """The attention kernel: `requested` when given, else flash_attention_2 when importable on CUDA, else sdpa.

    Packed micro-batches need no attention mask with either: transformers detects the sequence boundaries from
    position_ids that restart at 0 (varlen flash attention, or a block-diagonal mask for sdpa/eager).
    """
    if requested is None or requested == "auto":
        return "flash_attention_2" if flash_attn_available() else "sdpa"
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)} or auto, "
                         f"got {requested!r}")
    if requested == "flash_attention_2" and not flash_attn_available():
        raise ValueError("attn_implementation='flash_attention_2' needs CUDA and the flash-attn package "
                         "(pip install flash-attn); use 'sdpa' instead")
    return requested


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ("name" or "org/name")."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model_source(name: str | Path, what: str = "model") -> None:
    """`name` (a local checkpoint directory or a hub model name) can be loaded; a one-line ValueError naming it
    and the fix otherwise. A hub name is looked up in the local cache first, then (unless HF_HUB_OFFLINE) on
    the hub."""
    name = str(name)
    if _looks_local(name):
        try:
            check_hf_checkpoint(Path(name).expanduser())
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        return
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
    except OSError:
        pass
    else:
        _check_cached_weights(name, what)
        return
    try:
        AutoConfig.from_pretrained(name)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} {name!r}: not a local directory, and not in the Hugging Face cache nor reachable "
                         f"on the hub ({first}): download it where the hub is reachable (`hf download {name}`) or "
                         "give the path of a local checkpoint directory") from None


def _check_cached_weights(name: str, what: str) -> None:
    """The safetensors files of hub model `name` already in the Hugging Face cache are complete (shards not
    downloaded yet are the loader's business)."""
    config = cached_file(name, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False)
    if config is None:
        return
    try:
        check_safetensors_files(Path(config).parent, "a damaged copy in the Hugging Face cache: download it "
                                f"again (`hf download {name} --force-download`)")
    except ValueError as e:
        raise ValueError(f"{what} {name!r}: {e}") from None


def load_config(path: str | Path) -> PretrainedConfig:
    return AutoConfig.from_pretrained(str(path))


def load_causal_lm(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    activation_checkpointing: bool = False,
    use_liger: bool = False,
    device: torch.device | str | None = "cpu",
) -> PreTrainedModel:
    """A causal LM from a checkpoint directory (or hub name), parameters in `dtype`, on `device`.

    Activation checkpointing is transformers' own (per decoder layer, non-reentrant, so it composes with FSDP2
    and ZeRO-3 hooks and with frozen inputs). `use_liger` swaps in Liger-Kernel's RMSNorm/RoPE/SwiGLU for the
    decoder blocks (never its loss: the lm_head and loss are ours) when running on CUDA with liger-kernel
    installed; otherwise it warns and does nothing.
    """
    attn = pick_attn_implementation(attn_implementation)
    if Path(path).is_dir():
        check_hf_checkpoint(path)  # a missing or truncated file: a message naming it, not a loader traceback
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn)
    if device is not None:
        model.to(device)
    model.config.use_cache = False  # training/scoring never decode: no KV cache
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if use_liger:
        apply_liger(model, device=torch.device(device) if device is not None else None)
    return model


def causal_lm_skeleton(
    path: str | Path,
    *,
    attn_implementation: str | None = None,
    activation_checkpointing: bool = False,
    use_liger: bool = False,
    device: torch.device | str | None = None,
) -> PreTrainedModel:
    """The same module tree as `load_causal_lm`, with every tensor on the meta device (no memory, no weights).

    For ranks that receive their shards from rank 0 (FSDP2): only rank 0 reads the checkpoint into host memory.
    Buffers (e.g. rotary frequencies) must be filled in after materialisation.
    """
    attn = pick_attn_implementation(attn_implementation)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(path), dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if use_liger:
        apply_liger(model, device=torch.device(device) if device is not None else None)
    return model


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    if not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"{type(model).__name__} does not support activation checkpointing; "
                         "set train.activation_checkpointing=false")
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; older: gradient_...
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model: PreTrainedModel, *, device: torch.device | None = None) -> bool:
    """Liger-Kernel RMSNorm / RoPE / SwiGLU in the decoder blocks of a Qwen3 model (in place). True if applied."""
    on_cuda = (device.type == "cuda") if device is not None else next(model.parameters()).is_cuda
    reason = None
    if not on_cuda:
        reason = "it needs CUDA"
    elif not liger_available():
        reason = "liger-kernel is not installed (pip install liger-kernel)"
    elif model.config.model_type != "qwen3":
        reason = f"only Qwen3 blocks are patched, this model is {model.config.model_type!r}"
    if reason is not None:
        warnings.warn(f"use_liger=true ignored: {reason}", stacklevel=2)
        return False
    from liger_kernel.transformers import apply_liger_kernel_to_qwen3

    # cross-entropy stays ours: the fused mixed loss never builds logits.
    apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)
    return True
