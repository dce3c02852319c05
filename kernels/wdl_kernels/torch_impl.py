"""Pure-PyTorch backend: the same math in (token x vocabulary) chunks, computed in float32.

Used on the CPU, as the fallback anywhere, and as a second opinion for the Triton path. No [N, V] buffer:
the largest temporary is one chunk of logits, `chunk_elements` floats, independent of V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .problem import Problem
from .stats import Partials, empty_partials, merge_partials, partials_from_logits


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


@dataclass(frozen=True)
class TorchBackend:
    # ~8 MiB of fp32 logits per chunk: big enough for efficient GEMMs, small beside any model.
    chunk_elements: int = 1 << 21
    max_token_chunk: int = 2048

    def chunks(self, prob: Problem, n_rows: int) -> tuple[int, int]:
        token_chunk = max(1, min(n_rows, self.max_token_chunk))
        vocab_chunk = max(1, min(prob.vocab, self.chunk_elements // token_chunk))
        return token_chunk, vocab_chunk

    def grad_dtype(self, prob: Problem) -> torch.dtype:
        return torch.float32

    def mixed_logits(self, prob: Problem, rows, v0: int, v1: int) -> torch.Tensor:
        """fp32 z for the given rows (slice or index tensor) and vocabulary columns [v0, v1)."""
        z = None
        if prob.use_strong:
            z = _f32(prob.hidden[rows]) @ _f32(prob.weight[v0:v1]).T
            if prob.strong_coef != 1.0:
                z.mul_(prob.strong_coef)
        if prob.use_weak:
            zw = _f32(prob.weak_hidden[rows]) @ _f32(prob.weak_weight[v0:v1]).T
            z = zw.mul_(prob.weak_coef) if z is None else z.add_(zw, alpha=prob.weak_coef)
        return z

    def forward_partials(self, prob: Problem, ignore_index: int, with_stats: bool) -> Partials:
        n, vocab = prob.n, prob.vocab
        token_chunk, vocab_chunk = self.chunks(prob, n)
        out = empty_partials(n, prob.hidden.device)
        for r0 in range(0, n, token_chunk):
            rows = slice(r0, min(n, r0 + token_chunk))
            acc = None
            for v0 in range(0, vocab, vocab_chunk):
                v1 = min(vocab, v0 + vocab_chunk)
                z = self.mixed_logits(prob, rows, v0, v1)
                part = partials_from_logits(z, prob.labels[rows] - v0)
                acc = part if acc is None else merge_partials(acc, part)
            for dst, src in zip(out, acc):
                dst[rows] = src
        return out

    def grad_logits(self, prob, r0, r1, v0, v1, lse, grad_rows, out=None) -> torch.Tensor:
        index = slice(r0, r1)
        z = self.mixed_logits(prob, index, v0, v1)
        g = torch.exp(z.sub_(lse[:, None]))
        local = prob.labels[index] - v0
        in_chunk = (local >= 0) & (local < v1 - v0)
        target = torch.where(in_chunk, local, torch.zeros_like(local))
        g.scatter_add_(1, target[:, None], -in_chunk.to(g.dtype)[:, None])
        g.mul_(grad_rows[:, None])
        if out is not None:
            out.copy_(g)
            return out
        return g
