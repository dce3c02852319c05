"""Every implementation the kernel benchmark times, behind one interface (`Impl`): ours (impl="triton",
impl="torch") and the baselines.

Baselines take two heads the way a user of a single-head kernel would: one head over the concatenation
h = [(1-lam) h_w | lam h_s], W = [W_w | W_s] (h W^T = lam h_s W_s^T + (1-lam) h_w W_w^T); the two
`torch.cat`s are inside the timed call and their backward splits the gradients back to the four inputs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.kernel_cases import IGNORE_INDEX, Case, Inputs, StepOut

# --------------------------------------------------------------------------------------------------------
# Implementations


class Impl:
    """One implementation. Subclasses give a differentiable mean loss and, if they can, per-row scores."""

    name = "?"
    kind = "baseline"  # "ours" | "baseline"
    exact = True  # False: approximate by design (gradient filtering); timed even if its gradient check fails
    note = ""

    def unavailable(self, device: torch.device) -> str | None:
        """None if it can run here, else 'missing: ...' (not installed) or 'unsupported: ...'."""
        return None

    def unsupported(self, case: Case) -> str | None:
        return None

    def loss(self, case: Case, inp: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, case: Case, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(self, case: Case, inp: Inputs) -> Callable[[], StepOut]:
        if case.mode == "fwd":
            def run():
                with torch.no_grad():
                    return StepOut(loss=self.loss(case, inp))
        elif case.mode == "fwdbwd":
            def run():
                loss = self.loss(case, inp)
                return StepOut(loss=loss.detach(), grads=torch.autograd.grad(loss, inp.leaves()))
        else:
            def run():
                with torch.no_grad():
                    entropy, nll = self.scores(case, inp)
                return StepOut(entropy=entropy, nll=nll)
        return run


def _interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_here(device: torch.device) -> str | None:
    """Can Triton kernels run on this device? (the interpreter on the CPU: fp32 only, slow)"""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "missing: triton is not installed"
    if device.type != "cuda" and not _interpreter():
        return "unsupported: Triton needs CUDA here (or TRITON_INTERPRET=1 before import)"
    return None


def _interpreter_dtype(case: Case, device: torch.device) -> str | None:
    if device.type != "cuda" and case.dtype != "fp32":
        return "unsupported: the Triton interpreter's bf16/fp16 arithmetic is wrong; use fp32 on the CPU"
    return None


class Ours(Impl):
    kind = "ours"

    def __init__(self, impl: str):
        self.impl = impl
        self.name = f"ours_{impl}"
        self.note = "wdl_kernels.mixed_linear_cross_entropy(impl=%r)" % impl
        self._device = None

    def unavailable(self, device):
        self._device = device
        try:
            import wdl_kernels  # noqa: F401
        except ImportError:
            return "missing: wdl_kernels is not importable (pip install -e ./kernels or PYTHONPATH=kernels)"
        return _triton_here(device) if self.impl == "triton" else None

    def unsupported(self, case):
        if self.impl == "triton" and self._device is not None:
            return _interpreter_dtype(case, self._device)
        return None

    def _call(self, case, inp, **kw):
        import wdl_kernels

        return wdl_kernels.mixed_linear_cross_entropy(
            inp.hidden, inp.weight, inp.labels, inp.weak_hidden, inp.weak_weight, lam=case.lam,
            ignore_index=IGNORE_INDEX, impl=self.impl, **kw)

    def loss(self, case, inp):
        return self._call(case, inp).loss

    def scores(self, case, inp):
        stats = self._call(case, inp, reduction="none", return_stats=True).stats
        return stats.entropy, stats.nll


def mixed_logits_eager(case: Case, inp: Inputs) -> torch.Tensor:
    """The reference code's way: both heads' logits, torch.stack([weak, strong]), then the mix (input dtype)."""
    zs = inp.hidden @ inp.weight.T
    if not case.hw:
        return zs
    zw = inp.weak_hidden @ inp.weak_weight.T
    stacked = torch.stack([zw, zs])
    return (1.0 - case.lam) * stacked[0] + case.lam * stacked[1]


def entropy_nll_from_logits(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row entropy and NLL of fp32 logits (0 NLL at ignored rows)."""
    logp = torch.log_softmax(z, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    nll = F.nll_loss(logp, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return entropy, nll


class Eager(Impl):
    name = "eager"
    note = "materialized logits, torch.stack + mix, fp32 upcast, F.cross_entropy (the reference code's path)"

    def loss(self, case, inp):
        return F.cross_entropy(mixed_logits_eager(case, inp).float(), inp.labels, ignore_index=IGNORE_INDEX)

    def scores(self, case, inp):
        return entropy_nll_from_logits(mixed_logits_eager(case, inp).float(), inp.labels)


# --- torch.compile of a chunked loss --------------------------------------------------------------------


def chunk_logits_fp32(hs_c, ws, hw_c, ww, lam: float) -> torch.Tensor:
    z = (hs_c @ ws.T).float()
    if hw_c is not None:
        z = lam * z + (1.0 - lam) * (hw_c @ ww.T).float()
    return z


def chunk_ce_sum(hs_c, ws, hw_c, ww, y_c, lam: float) -> torch.Tensor:
    """Sum of the token losses of one chunk (logits in fp32); the function torch.compile compiles."""
    return F.cross_entropy(chunk_logits_fp32(hs_c, ws, hw_c, ww, lam), y_c, ignore_index=IGNORE_INDEX,
                           reduction="sum")


def chunk_scores(hs_c, ws, hw_c, ww, y_c, lam: float):
    return entropy_nll_from_logits(chunk_logits_fp32(hs_c, ws, hw_c, ww, lam), y_c)


def _chunks(n: int, n_chunks: int) -> list[slice]:
    size = -(-n // n_chunks)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _valid_count(labels: torch.Tensor) -> torch.Tensor:
    return (labels != IGNORE_INDEX).sum().clamp(min=1)


class _ChunkedGradInForward(torch.autograd.Function):
    """torchtitan-style: each token chunk's loss is differentiated right away inside the forward, the hidden
    gradients land in their rows, the weight gradients are summed in fp32; backward only scales by the
    upstream gradient. Peak memory: one chunk's logits and the fp32 weight-gradient sums."""

    @staticmethod
    def forward(ctx, hs, ws, hw, ww, labels, lam, n_chunks, chunk_fn):
        denom = _valid_count(labels).float()
        leaves = [t for t in (hs, ws, hw, ww) if t is not None]
        grads_in = [torch.zeros_like(hs), torch.zeros(ws.shape, dtype=torch.float32, device=ws.device)]
        if hw is not None:
            grads_in += [torch.zeros_like(hw), torch.zeros(ww.shape, dtype=torch.float32, device=ww.device)]
        total = torch.zeros((), dtype=torch.float32, device=hs.device)
        with torch.enable_grad():
            ws_d = ws.detach().requires_grad_()
            ww_d = ww.detach().requires_grad_() if ww is not None else None
            for sl in _chunks(hs.shape[0], n_chunks):
                hs_c = hs[sl].detach().requires_grad_()
                hw_c = hw[sl].detach().requires_grad_() if hw is not None else None
                loss_c = chunk_fn(hs_c, ws_d, hw_c, ww_d, labels[sl], lam) / denom
                wrt = [hs_c, ws_d] + ([hw_c, ww_d] if hw is not None else [])
                g = torch.autograd.grad(loss_c, wrt)
                grads_in[0][sl] = g[0]
                grads_in[1] += g[1]
                if hw is not None:
                    grads_in[2][sl] = g[2]
                    grads_in[3] += g[3]
                total += loss_c.detach()
        ctx.save_for_backward(*grads_in)
        ctx.dtypes = [t.dtype for t in leaves]
        ctx.has_weak = hw is not None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grads = [(g * grad_out).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes, strict=True)]
        if not ctx.has_weak:
            grads += [None, None]
        return (*grads, None, None, None, None)


_COMPILED: dict[str, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """torch.compile(fn, dynamic=False, fullgraph=True), once per function; enough recompile room for a sweep
    (past the limit Dynamo would silently fall back to eager and the 'compile' numbers would be eager's)."""
    if fn.__name__ not in _COMPILED:
        import torch._dynamo as dynamo

        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 512))
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[fn.__name__]


class CompileChunked(Impl):
    """torch.compile of a token-chunked loss (torchtune / TRL style): a Python loop over `n_chunks` token
    chunks, each chunk's logits + mix + fp32 cross-entropy compiled; autograd keeps what each chunk's compiled
    backward needs until the backward runs."""

    name = "compile_chunked"

    def __init__(self, n_chunks: int = 8, use_compile: bool = True):
        self.n_chunks, self.use_compile = n_chunks, use_compile
        self.note = f"{n_chunks} token chunks, torch.compile(dynamic=False) per chunk, autograd backward"

    def _fn(self, f):
        return compiled(f) if self.use_compile else f

    def loss(self, case, inp):
        fn = self._fn(chunk_ce_sum)
        hw, ww = inp.weak_hidden, inp.weak_weight
        total = sum(fn(inp.hidden[sl], inp.weight, hw[sl] if hw is not None else None, ww, inp.labels[sl], case.lam)
                    for sl in _chunks(case.n, self.n_chunks))
        return total / _valid_count(inp.labels)

    def scores(self, case, inp):
        fn = self._fn(chunk_scores)
        hw, ww = inp.weak_hidden, inp.weak_weight
        parts = [fn(inp.hidden[sl], inp.weight, hw[sl] if hw is not None else None, ww, inp.labels[sl], case.lam)
                 for sl in _chunks(case.n, self.n_chunks)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class CompileChunkedGradInForward(CompileChunked):
    """torchtitan ChunkedLossWrapper style: the same compiled chunk loss, differentiated chunk by chunk inside
    the forward (fp32 weight-gradient sums); only meaningful with gradients (fwdbwd)."""

    name = "compile_chunked_gif"

    def __init__(self, n_chunks: int = 8, use_compile: bool = True):
        super().__init__(n_chunks, use_compile)
        self.note = (f"{n_chunks} token chunks, torch.compile(dynamic=False) per chunk, gradients computed in the "
                     "forward chunk by chunk, fp32 weight-gradient sums (torchtitan style)")

    def unsupported(self, case):
        if case.mode != "fwdbwd":
            return "unsupported: identical to compile_chunked without gradients"
        return None

    def loss(self, case, inp):
        return _ChunkedGradInForward.apply(inp.hidden, inp.weight, inp.weak_hidden, inp.weak_weight, inp.labels,
                                           case.lam, self.n_chunks, self._fn(chunk_ce_sum))


# --- single-head fused kernels, two heads through the concatenation ---------------------------------------


def concat_heads(case: Case, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, W) with h W^T = the mixed logits: [(1-lam) h_w | lam h_s] and [W_w | W_s]; single head unchanged."""
    if not case.hw:
        return inp.hidden, inp.weight
    h = torch.cat([(1.0 - case.lam) * inp.weak_hidden, case.lam * inp.hidden], dim=1)
    w = torch.cat([inp.weak_weight, inp.weight], dim=1)
    return h, w


class Liger(Impl):
    """Liger-Kernel's LigerFusedLinearCrossEntropyLoss (Triton; token chunks, gradients computed in the forward)."""

    def __init__(self, accum_fp32: bool = False):
        self.accum_fp32 = accum_fp32
        self.name = "liger_fp32acc" if accum_fp32 else "liger"
        acc = "accum_dtype=torch.float32" if accum_fp32 else "default accum_dtype (weight grad summed in input dtype)"
        self.note = f"LigerFusedLinearCrossEntropyLoss, {acc}; two heads via concatenation (cat timed)"
        self._module, self._device = None, None

    def unavailable(self, device):
        try:
            from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            return "missing: liger-kernel is not installed"
        reason = _triton_here(device)
        if reason:
            return reason
        kw = {"accum_dtype": torch.float32} if self.accum_fp32 else {}
        self._module = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean", **kw)
        self._device = device
        return None

    def unsupported(self, case):
        if case.mode == "score":
            return "unsupported: no per-token entropy output"
        return _interpreter_dtype(case, self._device) if self._device is not None else None

    def loss(self, case, inp):
        h, w = concat_heads(case, inp)
        return self._module(w, h, inp.labels)


class CutCrossEntropy(Impl):
    """Apple's cut-cross-entropy `linear_cross_entropy` (Triton; logits never in HBM, backward recomputes).

    Its default filters gradient entries below a threshold (approximate gradients, data-dependent speed);
    `filter=False` passes filter_eps=None, the exact mode."""

    def __init__(self, filter: bool = True):
        self.filter = filter
        self.name = "cce" if filter else "cce_nofilter"
        self.exact = not filter
        self.note = ("cut_cross_entropy.linear_cross_entropy, default gradient filtering (approximate grads)"
                     if filter else "cut_cross_entropy.linear_cross_entropy(filter_eps=None): no gradient filtering")
        self.note += "; two heads via concatenation (cat timed)"
        self._fn = None

    def unavailable(self, device):
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError:
            return "missing: cut-cross-entropy is not installed"
        if device.type != "cuda":
            return "unsupported: cut-cross-entropy needs CUDA (its autotuned kernels do not run in the interpreter)"
        if not self.filter and "filter_eps" not in inspect.signature(linear_cross_entropy).parameters:
            return "unsupported: this cut-cross-entropy version has no filter_eps argument"
        self._fn = linear_cross_entropy
        return None

    def unsupported(self, case):
        if case.mode == "score":
            return "unsupported: no per-token entropy output"
        return None

    def loss(self, case, inp):
        h, w = concat_heads(case, inp)
        kw = {} if self.filter else {"filter_eps": None}
        return self._fn(h, w, inp.labels, ignore_index=IGNORE_INDEX, reduction="mean", **kw)


BASELINES: dict[str, Callable[[], Impl]] = {
    "eager": Eager,
    "compile_chunked": CompileChunked,
    "compile_chunked_gif": CompileChunkedGradInForward,
    "liger": Liger,
    "liger_fp32acc": lambda: Liger(accum_fp32=True),
    "cce": CutCrossEntropy,
    "cce_nofilter": lambda: CutCrossEntropy(filter=False),
}
OURS = ("triton", "torch")


def build_impls(ours: list[str], baselines: list[str], compile_chunks: int = 8) -> list[Impl]:
    out: list[Impl] = []
    for name in ours:
        if name not in OURS:
            raise ValueError(f"--impls: unknown {name!r}; choose from {OURS}")
        out.append(Ours(name))
    for name in baselines:
        if name not in BASELINES:
            raise ValueError(f"--baselines: unknown {name!r}; choose from {sorted(BASELINES)}")
        if name.startswith("compile"):
            out.append(BASELINES[name](n_chunks=compile_chunks))
        else:
            out.append(BASELINES[name]())
    return out
