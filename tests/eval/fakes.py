"""A generator that answers from a table of known texts: accuracy becomes exactly checkable."""

from __future__ import annotations

from wdl.eval import Completion


class FakeGenerator:
    name = "fake"

    def __init__(self, tokenizer, answers: dict[str, list[str] | str]):
        """`answers` maps a substring of the question to the text(s) to return (one per sample)."""
        self.tokenizer = tokenizer
        self.answers = answers
        self.calls = []

    def generate(self, requests, sampling, *, desc=""):
        self.calls.append((desc, len(requests), sampling))
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_ids)
            hits = [v for k, v in self.answers.items() if k in prompt]
            assert len(hits) == 1, f"no single canned answer for prompt {prompt!r}"
            texts = hits[0] if isinstance(hits[0], list) else [hits[0]] * sampling.n
            assert len(texts) == sampling.n
            out.append([Completion(t, num_tokens=len(t.split()), finish_reason="stop") for t in texts])
        return out

    def close(self):
        pass
