"""Each rank's resume state (data-loader position, RNG states) as a safetensors file that cannot run code.

    write_rank_state(path, {"rng": rng_state(), "loader": loader.state_dict()})
    state = read_rank_state(path)

Tensors and numpy arrays are stored as safetensors tensors; everything else (ints, floats, strings, bools,
None, lists, tuples, dicts with string keys) as JSON in the file's metadata, with tuples and arrays tagged so
that they come back as the same types (`random.setstate` needs tuples, `np.random.set_state` an array).
Reading parses JSON and raw tensor bytes only: unlike a pickle, nothing in the file is ever executed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from wdl.io import atomic_write_bytes

FORMAT = "wdl-rank-state-1"
_TENSOR, _ARRAY, _TUPLE = "__tensor__", "__ndarray__", "__tuple__"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(
            np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "iub" else np.float64)
        )
        return {_ARRAY: key, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(x, tensors, f"{where}[{i}]") for i, x in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(x, tensors, f"{where}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            assert isinstance(k, str) and not k.startswith("__"), f"rank state {where}: key {k!r}"
            out[k] = _encode(v, tensors, f"{where}.{k}")
        return out
    assert obj is None or isinstance(obj, (bool, int, float, str)), f"rank state {where}: {type(obj).__name__}"
    return obj


def _decode(obj: Any, f) -> Any:
    if isinstance(obj, list):
        return [_decode(x, f) for x in obj]
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return f.get_tensor(obj[_TENSOR])
        if _ARRAY in obj:
            return f.get_tensor(obj[_ARRAY]).numpy().astype(np.dtype(obj["dtype"]))
        if _TUPLE in obj:
            return tuple(_decode(x, f) for x in obj[_TUPLE])
        return {k: _decode(v, f) for k, v in obj.items()}
    return obj


def write_rank_state(path: str | os.PathLike, state: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "")
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"format": FORMAT, "state": json.dumps(tree)}))


def read_rank_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            return _decode(json.loads(meta["state"]), f)
    except Exception as e:  # safetensors' own errors name no file
        raise ValueError(f"{path}: not a readable rank state file ({e})") from None
