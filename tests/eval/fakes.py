"""Fakes: a generator that answers from a table of known texts (accuracy becomes exactly checkable), and a
stand-in `vllm` module that records what the vLLM backend hands the engine."""

from __future__ import annotations

import importlib.machinery
import types

from wdl.eval import Completion


class FakeGenerator:
    name = "fake"

    def __init__(self, tokenizer, answers: dict[str, list | str | Completion]):
        """`answers` maps a substring of the question to the output(s) to return (one per sample): texts, or
        Completions to set finish reasons and token counts."""
        self.tokenizer = tokenizer
        self.answers = answers
        self.calls = []
        self.requests = []

    def generate(self, requests, sampling, *, desc=""):
        self.calls.append((desc, len(requests), sampling))
        self.requests.extend(requests)
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_ids)
            hits = [v for k, v in self.answers.items() if k in prompt]
            assert len(hits) == 1, f"no single canned answer for prompt {prompt!r}"
            items = hits[0] if isinstance(hits[0], list) else [hits[0]] * sampling.n
            assert len(items) == sampling.n
            out.append([c if isinstance(c, Completion) else Completion(c, num_tokens=len(c.split()),
                                                                       finish_reason="stop") for c in items])
        return out

    def close(self):
        pass


def fake_vllm_module(record: dict, token_ids=(5, 6, 7), tokenizer=None):
    """A `vllm` stand-in: LLM(**kwargs) and SamplingParams(**kwargs) are recorded in `record` ("llm",
    "sampling"), so are the prompts of every generate call ("prompts") and the environment the engine starts in
    ("llm_env"). Every request returns `n` outputs of `token_ids`, or of `token_ids(prompt_ids)` when it is a
    callable. With a `tokenizer`, each output also carries vLLM's own detokenized `text` (the ids up to the
    first stop id, decoded with the request's skip_special_tokens), which the backend compares with its own."""
    import os

    class SamplingParams:
        def __init__(self, **kwargs):
            record.setdefault("sampling", []).append(kwargs)
            self.kwargs = kwargs
            self.n = kwargs["n"]

    def output(prompt_ids, params):
        ids = list(token_ids(prompt_ids) if callable(token_ids) else token_ids)
        out = types.SimpleNamespace(token_ids=ids)
        if tokenizer is not None:
            stops = set(params.kwargs.get("stop_token_ids") or ())
            cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
            out.text = tokenizer.decode(ids[:cut], skip_special_tokens=params.kwargs["skip_special_tokens"])
        return out

    class LLM:
        def __init__(self, **kwargs):
            record["llm"] = kwargs
            record["llm_env"] = dict(os.environ)

        def generate(self, prompts, params, use_tqdm=True):
            record.setdefault("batches", []).append(len(prompts))
            record.setdefault("prompts", []).extend(prompts)
            assert len(params) == len(prompts)
            return [types.SimpleNamespace(outputs=[output(pr["prompt_token_ids"], p) for _ in range(p.n)])
                    for pr, p in zip(prompts, params)]

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # importlib.util.find_spec reads it
    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module
