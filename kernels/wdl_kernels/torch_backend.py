"""Pure-PyTorch backend: the same math as the Triton kernels, in (token x vocabulary) blocks of float32.

Used on the CPU, as the fallback anywhere, and as a second opinion for the Triton path. No [N, V] buffer: the
largest temporary of the forward and the lean backward is one block of `chunk_elements` floats; fast mode
holds two [token_chunk, V] float32 blocks at its peak (`fast_workspace_bytes` each) plus, for batches over
one chunk, the fp32 dW accumulators (fast.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import LossOptions
from .problem import Problem
from .stats import Partials, empty_partials, merge_partials, partials_from_logits


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def mixed_logits(prob: Problem, rows, v0: int, v1: int) -> torch.Tensor:
    """fp32 z (options applied) for `rows` (a slice) and vocabulary columns [v0, v1)."""
    opts = prob.opts
    z = None
    if prob.use_strong:
        z = _f32(prob.hidden[rows]) @ _f32(prob.weight[v0:v1]).T
        if prob.strong_coef != 1.0:
            z.mul_(prob.strong_coef)
    if prob.use_weak:
        zw = _f32(prob.weak_hidden[rows]) @ _f32(prob.weak_weight[v0:v1]).T
        z = zw.mul_(prob.weak_coef) if z is None else z.add_(zw, alpha=prob.weak_coef)
    assert z is not None, "a problem always uses at least one head"
    if opts.temperature != 1.0:
        z.div_(opts.temperature)
    if prob.bias is not None:  # already mixed and divided by the temperature (problem.py)
        z.add_(prob.bias[v0:v1])
    if opts.has_softcap:
        z.div_(opts.softcap).tanh_().mul_(opts.softcap)
    return z


def softcap_chain(z: torch.Tensor, opts: LossOptions) -> torch.Tensor | None:
    """d z / d u = 1 - tanh^2 = 1 - (z / softcap)^2 (a new block), or None without a cap."""
    if not opts.has_softcap:
        return None
    t = z / opts.softcap
    return t.mul_(t).neg_().add_(1.0)


def loss_grad_(p: torch.Tensor, lse: torch.Tensor, local_labels: torch.Tensor, gcoef: torch.Tensor,
               lcoef: torch.Tensor | None, dcap: torch.Tensor | None, opts: LossOptions, vocab: int
               ) -> torch.Tensor:
    """Overwrite the fp32 softmax block p [r, c] with G = (gcoef * dLoss/dz + lcoef * p) * dcap (options.py).

    The temperature's 1/T is not applied here: the drivers fold it into the GEMM scale.
    """
    in_block = (local_labels >= 0) & (local_labels < p.shape[1])
    target = torch.where(in_block, local_labels, torch.zeros_like(local_labels))
    pl = p * lcoef[:, None] if lcoef is not None else None
    if opts.z_loss != 0.0:
        p.mul_((1.0 + 2.0 * opts.z_loss * lse)[:, None])
    p.scatter_add_(1, target[:, None], -(1.0 - opts.label_smoothing) * in_block.to(p.dtype)[:, None])
    if opts.label_smoothing != 0.0:
        p.sub_(opts.label_smoothing / vocab)
    g = p.mul_(gcoef[:, None])
    if pl is not None:
        g.add_(pl)
    if dcap is not None:
        g.mul_(dcap)
    return g


@dataclass(frozen=True)
class TorchBackend:
    name: str = "torch"
    # ~8 MiB of fp32 logits per block: big enough for efficient GEMMs, small beside any model.
    chunk_elements: int = 1 << 21
    max_token_chunk: int = 2048
    vocab_chunk: int | None = None  # lean backward override
    # fast mode: one [rows, V] fp32 block of about this size
    fast_workspace_bytes: int = 128 << 20
    token_chunk: int | None = None  # fast mode override

    def lean_chunks(self, prob: Problem) -> tuple[int, int]:
        token_chunk = max(1, min(prob.n, self.max_token_chunk))
        vocab_chunk = self.vocab_chunk or self.chunk_elements // token_chunk
        return token_chunk, max(1, min(prob.vocab, vocab_chunk))

    def fast_token_chunk(self, prob: Problem) -> int:
        rows = self.token_chunk or self.fast_workspace_bytes // (4 * prob.vocab)
        return max(1, min(prob.n, rows))

    def grad_dtype(self, prob: Problem) -> torch.dtype:
        return torch.float32

    def grad_scale(self, prob: Problem) -> float:
        return 1.0

    def forward_partials(self, prob: Problem, with_stats: bool) -> Partials:
        n, vocab = prob.n, prob.vocab
        token_chunk, vocab_chunk = self.lean_chunks(prob)
        out = empty_partials(n, prob.hidden.device)
        for r0 in range(0, n, token_chunk):
            rows = slice(r0, min(n, r0 + token_chunk))
            acc = None
            for v0 in range(0, vocab, vocab_chunk):
                v1 = min(vocab, v0 + vocab_chunk)
                part = partials_from_logits(mixed_logits(prob, rows, v0, v1), prob.labels[rows] - v0)
                acc = part if acc is None else merge_partials(acc, part)
            for dst, src in zip(out, acc):
                dst[rows] = src
        return out

    def grad_block(self, prob, r0, r1, v0, v1, lse, gcoef, lcoef, out=None) -> torch.Tensor:
        rows = slice(r0, r1)
        z = mixed_logits(prob, rows, v0, v1)
        dcap = softcap_chain(z, prob.opts)
        p = z.sub_(lse[:, None]).exp_()
        g = loss_grad_(p, lse, prob.labels[rows] - v0, gcoef, lcoef, dcap, prob.opts, prob.vocab)
        if out is not None:
            out.copy_(g)
            return out
        return g

    def new_fast_workspace(self, prob: Problem, rows: int) -> None:
        return None  # each chunk's logits block is allocated by its GEMM

    def fast_block(self, prob: Problem, r0: int, r1: int, with_stats: bool, workspace=None
                   ) -> tuple[Partials, torch.Tensor]:
        # Two [rows, V] blocks at the peak: the logits (reused in place for z - m) and exp(z - m) (becomes G).
        rows = slice(r0, r1)
        labels = prob.labels[rows]
        z = mixed_logits(prob, rows, 0, prob.vocab)
        in_vocab = (labels >= 0) & (labels < prob.vocab)
        zy = torch.where(in_vocab, z.gather(1, torch.where(in_vocab, labels, 0)[:, None]).squeeze(1), 0.0)
        sumz = z.sum(dim=1)
        dcap = softcap_chain(z, prob.opts)
        m = z.amax(dim=1)
        d = z.sub_(m[:, None])
        e = torch.exp(d)
        s = e.sum(dim=1)
        t = torch.bmm(e.unsqueeze(1), d.unsqueeze(2)).view(-1)  # row dots without an [rows, V] product
        del z, d
        lse = m + torch.log(s)
        gcoef = (labels != prob.opts.ignore_index).to(torch.float32)
        g = loss_grad_(e.div_(s[:, None]), lse, labels, gcoef, None, dcap, prob.opts, prob.vocab)
        return Partials(m, s, t, sumz, zy), g
