"""Provenance: SHA-256 digests of what produced a number — the benchmark file, the grader, the model.

They go into summary.json (and from there into the pipeline's report.json), so two results can be checked
for having read the same bytes. Digests of large files are computed once per process (keyed by path, size
and modification time).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from functools import lru_cache
from pathlib import Path

# files of a checkpoint that decide its outputs: weights, configs, tokenizer
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SKIP_WEIGHTS = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state")
_CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
                     "chat_template.json", "added_tokens.json")


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    return _sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)


def combined_sha256(files: dict[str, str]) -> str:
    """One digest over {name: sha256}: changes when any file, or the set of files, changes."""
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()


def _checkpoint_dir(model: str) -> Path | None:
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    try:  # a hub name: its local snapshot, when one is cached (nothing is downloaded)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not a repo id, or not cached
        return None


def model_provenance(model: str) -> dict:
    """{path, sha256 (over the files below), weights: {file: sha256}, files: {config/tokenizer file: sha256}};
    sha256 None when `model` is not a checkpoint on this machine."""
    folder = _checkpoint_dir(model)
    if folder is None:
        return {"path": model, "sha256": None, "weights": {}, "files": {},
                "note": "not a local checkpoint (nothing to hash)"}
    weights = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
               if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and not p.name.startswith(_SKIP_WEIGHTS)}
    files = {name: sha256_file(folder / name) for name in _CHECKPOINT_FILES if (folder / name).is_file()}
    return {"path": str(folder), "sha256": combined_sha256({**weights, **files}), "weights": weights, "files": files}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def builtin_grader_provenance(name: str) -> dict:
    """A built-in grader: the SHA-256 of its source file and the versions of the libraries it calls."""
    source = Path(__file__).with_name("grading") / f"{name}.py"
    return {"name": name, "path": f"wdl/eval/grading/{name}.py", "sha256": sha256_file(source),
            "math_verify": _version("math-verify"), "latex2sympy2_extended": _version("latex2sympy2_extended")}
