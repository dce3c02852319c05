"""Every implementation the loss benchmark times, behind one interface (`Impl`): ours (both kernel modes, any
backend) and the baselines.

Baselines take two heads the way a user of a single-head kernel would: one head over the concatenation
h = [(1-lam) h_w | lam h_s], W = [W_w | W_s] (h W^T = lam h_s W_s^T + (1-lam) h_w W_w^T); the two
`torch.cat`s are inside the timed call and their backward splits the gradients back to the four inputs.

`rated`: whether the implementation's numbers may enter a target verdict. Approximate baselines (gradient
filtering) are timed and shown for information only.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import fields

import torch
import wdl_kernels
from wdl_kernels.backends import interpreter_active, registered_backends, triton_available
from wdl_kernels.torch_backend import TorchBackend

from bench.cases import LossCase, LossInputs, StepOut
from bench.flop_count import counted_flops
from bench.materialized import cross_entropy_sum, mixed_logits, stats_from_logits
from wdl.labels import IGNORE_INDEX


class Impl:
    """One implementation. Subclasses give a differentiable mean loss and, if they can, per-row scores."""

    name = "?"
    kind = "baseline"  # "ours" | "baseline"
    exact = True  # False: approximate by design (gradient filtering); timed even if its gradient check fails
    rated = True  # False: shown for information, never in a target verdict
    kernel_mode: str | None = None  # ours: the wdl_kernels mode that runs ("lean" | "fast")
    note = ""

    def unavailable(self, device: torch.device) -> str | None:
        """None if it can run here, else 'missing: ...' (not installed) or 'unsupported: ...'."""
        return None

    def unsupported(self, case: LossCase) -> str | None:
        return None

    def check_rows(self, case: LossCase, default: int) -> int:
        """Rows of the correctness check (chunked baselines check at their chunk size: one compilation)."""
        return min(case.n, default)

    def config(self) -> dict | None:
        """Non-default settings worth recording with the row (backend knobs)."""
        return None

    def count_flops(self, case: LossCase, inp: LossInputs) -> int | None:
        """FLOPs of the GEMMs that actually run, counted by torch (None where they are not all torch ops)."""
        return None

    def loss(self, case: LossCase, inp: LossInputs) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, case: LossCase, inp: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(self, case: LossCase, inp: LossInputs) -> Callable[[], StepOut]:
        if case.task == "fwd":
            def run():
                with torch.no_grad():
                    return StepOut(loss=self.loss(case, inp))
        elif case.task == "fwdbwd":
            def run():
                loss = self.loss(case, inp)
                return StepOut(loss=loss.detach(), grads=torch.autograd.grad(loss, inp.leaves()))
        else:
            def run():
                with torch.no_grad():
                    entropy, nll = self.scores(case, inp)
                return StepOut(entropy=entropy, nll=nll)
        return run


def _import_failure(package: str, module: str, exc: ImportError) -> str:
    """'missing: ...' when the package is not installed, 'error: ...' when it is but does not import."""
    if importlib.util.find_spec(module) is None:
        return f"missing: {package} is not installed"
    return f"error: {package} is installed but does not import here: {type(exc).__name__}: {str(exc)[:200]}"


def _triton_here(device: torch.device) -> str | None:
    """Can Triton kernels run on this device? (the interpreter on the CPU: fp32 only, slow)"""
    if not triton_available():
        return "missing: triton is not installed"
    if device.type != "cuda" and not interpreter_active():
        return "unsupported: Triton needs CUDA here (or TRITON_INTERPRET=1 before import)"
    return None


def _interpreter_dtype(case: LossCase, device: torch.device | None) -> str | None:
    if device is not None and device.type != "cuda" and case.dtype != "fp32":
        return "unsupported: the Triton interpreter's bf16/fp16 arithmetic is wrong; use fp32 on the CPU"
    return None


class Ours(Impl):
    """wdl_kernels.mixed_linear_cross_entropy(impl=..., mode=...). `impl` is "triton", "torch" or a name given to
    wdl_kernels.register_backend (then `label` names the configuration in the rows)."""

    kind = "ours"

    def __init__(self, impl: str = "triton", mode: str = "lean", label: str | None = None):
        if mode not in ("lean", "fast"):
            raise ValueError(f"mode must be 'lean' or 'fast', got {mode!r}")
        self.impl, self.kernel_mode = impl, mode
        self.backend = registered_backends().get(impl)
        self.engine = getattr(self.backend, "name", impl)  # "triton" | "torch"
        self.name = f"ours_{self.engine}_{mode}" + (f"[{label}]" if label else "")
        self.note = f"wdl_kernels.mixed_linear_cross_entropy(impl={impl!r}, mode={mode!r})"
        self._device = None

    def unavailable(self, device):
        self._device = device
        return _triton_here(device) if self.engine == "triton" else None

    def unsupported(self, case):
        if self.kernel_mode == "fast" and case.task != "fwdbwd":
            return "unsupported: without gradients fast mode runs lean's forward (see the lean rows)"
        return _interpreter_dtype(case, self._device) if self.engine == "triton" else None

    def config(self):
        if self.backend is None:
            return None
        default = type(self.backend)()
        return {f.name: getattr(self.backend, f.name) for f in fields(self.backend)
                if getattr(self.backend, f.name) != getattr(default, f.name)}

    def count_flops(self, case, inp):
        if self.engine != "torch":
            return None  # Triton's tile GEMMs are invisible to torch's counter
        return counted_flops(case, inp, self.kernel_mode, self.backend or TorchBackend())

    def _call(self, case, inp, **kw):
        return wdl_kernels.mixed_linear_cross_entropy(
            inp.hidden, inp.weight, inp.labels, inp.weak_hidden, inp.weak_weight, lam=case.lam,
            ignore_index=IGNORE_INDEX, impl=self.impl, mode=self.kernel_mode, **kw)

    def loss(self, case, inp):
        return self._call(case, inp).loss

    def scores(self, case, inp):
        stats = self._call(case, inp, reduction="none", return_stats=True).stats
        return stats.entropy, stats.nll


def _valid_count(labels: torch.Tensor) -> torch.Tensor:
    return (labels != IGNORE_INDEX).sum().clamp(min=1)


class Eager(Impl):
    name = "eager"
    note = "materialized logits, torch.stack + mix, fp32 upcast, F.cross_entropy (the reference code's path)"

    def _logits(self, case, inp):
        return mixed_logits(inp.hidden, inp.weight, inp.weak_hidden, inp.weak_weight, lam=case.lam)

    def loss(self, case, inp):
        return cross_entropy_sum(self._logits(case, inp), inp.labels) / _valid_count(inp.labels)

    def scores(self, case, inp):
        stats = stats_from_logits(self._logits(case, inp), inp.labels)
        return stats.entropy, stats.nll


# --- torch.compile of a chunked loss --------------------------------------------------------------------


def chunk_ce_sum(hs_c, ws, hw_c, ww, y_c, lam: float) -> torch.Tensor:
    """Sum of the token losses of one chunk (the materialized baseline's math); what torch.compile compiles."""
    return cross_entropy_sum(mixed_logits(hs_c, ws, hw_c, ww, lam=lam), y_c)


def chunk_scores(hs_c, ws, hw_c, ww, y_c, lam: float):
    stats = stats_from_logits(mixed_logits(hs_c, ws, hw_c, ww, lam=lam), y_c)
    return stats.entropy, stats.nll


def _chunks(n: int, rows: int) -> list[slice]:
    return [slice(i, min(n, i + rows)) for i in range(0, n, rows)]


class _ChunkedGradInForward(torch.autograd.Function):
    """torchtitan-style: each token chunk's loss is differentiated right away inside the forward, the hidden
    gradients land in their rows, the weight gradients are summed in fp32; backward only scales by the
    upstream gradient. Peak memory: one chunk's logits and the fp32 weight-gradient sums."""

    @staticmethod
    def forward(ctx, hs, ws, hw, ww, labels, lam, chunk_rows, chunk_fn):
        denom = _valid_count(labels).float()
        leaves = [t for t in (hs, ws, hw, ww) if t is not None]
        grads_in = [torch.zeros_like(hs), torch.zeros(ws.shape, dtype=torch.float32, device=ws.device)]
        if hw is not None:
            grads_in += [torch.zeros_like(hw), torch.zeros(ww.shape, dtype=torch.float32, device=ww.device)]
        total = torch.zeros((), dtype=torch.float32, device=hs.device)
        with torch.enable_grad():
            ws_d = ws.detach().requires_grad_()
            ww_d = ww.detach().requires_grad_() if ww is not None else None
            for sl in _chunks(hs.shape[0], chunk_rows):
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
    """torch.compile of a token-chunked loss (torchtune / TRL style): a Python loop over chunks of `chunk_rows`
    tokens, each chunk's logits + mix + fp32 cross-entropy compiled; autograd keeps what each chunk's compiled
    backward needs until the backward runs. Fixed chunk rows: one compiled graph serves the correctness check
    (at chunk_rows tokens) and every N that is a multiple of it, so compilation happens once per shape."""

    name = "compile_chunked"

    def __init__(self, chunk_rows: int = 2048, use_compile: bool = True):
        self.chunk_rows, self.use_compile = chunk_rows, use_compile
        how = "torch.compile(dynamic=False, fullgraph=True)" if use_compile else "uncompiled stand-in (no compile)"
        self.note = f"chunks of {chunk_rows} tokens, {how} per chunk, autograd backward"

    def check_rows(self, case, default):
        return min(case.n, self.chunk_rows)

    def config(self):
        return {"chunk_rows": self.chunk_rows, "compiled": self.use_compile}

    def _fn(self, f):
        return compiled(f) if self.use_compile else f

    def loss(self, case, inp):
        fn = self._fn(chunk_ce_sum)
        hw, ww = inp.weak_hidden, inp.weak_weight
        total = sum(fn(inp.hidden[sl], inp.weight, hw[sl] if hw is not None else None, ww, inp.labels[sl], case.lam)
                    for sl in _chunks(case.n, self.chunk_rows))
        return total / _valid_count(inp.labels)

    def scores(self, case, inp):
        fn = self._fn(chunk_scores)
        hw, ww = inp.weak_hidden, inp.weak_weight
        parts = [fn(inp.hidden[sl], inp.weight, hw[sl] if hw is not None else None, ww, inp.labels[sl], case.lam)
                 for sl in _chunks(case.n, self.chunk_rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class CompileChunkedGradInForward(CompileChunked):
    """torchtitan ChunkedLossWrapper style: the same compiled chunk loss, differentiated chunk by chunk inside
    the forward (fp32 weight-gradient sums); only meaningful with gradients (fwdbwd)."""

    name = "compile_chunked_gif"

    def __init__(self, chunk_rows: int = 2048, use_compile: bool = True):
        super().__init__(chunk_rows, use_compile)
        self.note = self.note.replace("autograd backward", "gradients computed in the forward chunk by chunk, "
                                      "fp32 weight-gradient sums (torchtitan style)")

    def unsupported(self, case):
        if case.task != "fwdbwd":
            return "unsupported: identical to compile_chunked without gradients"
        return None

    def loss(self, case, inp):
        return _ChunkedGradInForward.apply(inp.hidden, inp.weight, inp.weak_hidden, inp.weak_weight, inp.labels,
                                           case.lam, self.chunk_rows, self._fn(chunk_ce_sum))


# --- single-head fused kernels, two heads through the concatenation ---------------------------------------


def concat_heads(case: LossCase, inp: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
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
        except ImportError as e:
            return _import_failure("liger-kernel", "liger_kernel", e)
        reason = _triton_here(device)
        if reason:
            return reason
        kw = {"accum_dtype": torch.float32} if self.accum_fp32 else {}
        self._module = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean", **kw)
        self._device = device
        return None

    def unsupported(self, case):
        if case.task == "score":
            return "unsupported: no per-token entropy output"
        return _interpreter_dtype(case, self._device)

    def loss(self, case, inp):
        h, w = concat_heads(case, inp)
        return self._module(w, h, inp.labels)


class CutCrossEntropy(Impl):
    """Apple's cut-cross-entropy `linear_cross_entropy` (Triton; logits never in HBM, backward recomputes).

    Its default filters gradient entries below a threshold (approximate gradients, data-dependent speed: on
    random logits it skips most of its backward), so the filtered variant is information only (never rated);
    `filter=False` passes filter_eps=None, the exact mode."""

    def __init__(self, filter: bool = True):
        self.filter = filter
        self.name = "cce" if filter else "cce_nofilter"
        self.exact = self.rated = not filter
        self.note = ("cut_cross_entropy.linear_cross_entropy, default gradient filtering (approximate grads; "
                     "information only)" if filter else
                     "cut_cross_entropy.linear_cross_entropy(filter_eps=None): no gradient filtering")
        self.note += "; two heads via concatenation (cat timed)"
        self._fn = None

    def unavailable(self, device):
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError as e:
            return _import_failure("cut-cross-entropy", "cut_cross_entropy", e)
        if device.type != "cuda":
            return "unsupported: cut-cross-entropy needs CUDA (its autotuned kernels do not run in the interpreter)"
        if not self.filter and "filter_eps" not in inspect.signature(linear_cross_entropy).parameters:
            return "unsupported: this cut-cross-entropy version has no filter_eps argument"
        self._fn = linear_cross_entropy
        return None

    def unsupported(self, case):
        if case.task == "score":
            return "unsupported: no per-token entropy output"
        return None

    def loss(self, case, inp):
        h, w = concat_heads(case, inp)
        kw = {} if self.filter else {"filter_eps": None}
        return self._fn(h, w, inp.labels, ignore_index=IGNORE_INDEX, reduction="mean", **kw)


BASELINES: dict[str, Callable[..., Impl]] = {
    "eager": Eager,
    "compile_chunked": CompileChunked,
    "compile_chunked_gif": CompileChunkedGradInForward,
    "liger": Liger,
    "liger_fp32acc": lambda: Liger(accum_fp32=True),
    "cce": CutCrossEntropy,
    "cce_nofilter": lambda: CutCrossEntropy(filter=False),
}
OURS = tuple(f"ours_{engine}_{mode}" for engine in ("triton", "torch") for mode in ("lean", "fast"))


def build_impls(names, chunk_rows: int = 2048, use_compile: bool = True) -> list[Impl]:
    """Implementations by name: ours_<triton|torch>_<lean|fast> and the BASELINES keys."""
    out: list[Impl] = []
    for name in names:
        if name in OURS:
            _, engine, mode = name.split("_")
            out.append(Ours(engine, mode))
        elif name.startswith("compile"):
            out.append(BASELINES[name](chunk_rows=chunk_rows, use_compile=use_compile))
        elif name in BASELINES:
            out.append(BASELINES[name]())
        else:
            raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(OURS + tuple(BASELINES))}")
    return out


def describe(impl: Impl) -> str | None:
    """The row's impl_config cell: the implementation's non-default settings as JSON, or None."""
    cfg = impl.config()
    return json.dumps(cfg, sort_keys=True, default=str) if cfg else None

