"""Where the time and the error of one loss call go: forward/backward split, device time per kernel family,
and the fp16 error against float64 at a training-sized N.

- `phase_split`: median forward and backward times of one mode, each timed on its own with device events
  (fast mode computes the gradients in its forward; its backward only applies the upstream scalar).
- `kernel_families`: one profiled call (torch.profiler), the device time of every kernel summed by family:
  the Triton forward (logits + online softmax), fast mode's G kernel, lean's recompute-and-G kernel, the cuBLAS
  GEMMs, and everything else. On a CPU the families are the aten GEMMs and everything else.
- `fp16_probe`: relative errors of the loss and of every gradient in fp16 against a float64 reference computed
  chunk by chunk (`wdl_kernels.reference` on row blocks, summed), plus the error on the weight-gradient rows of
  vocabulary ids that no label uses (the entries a scaled fp16 G would flush to zero).
"""

from __future__ import annotations

import time

import torch
import wdl_kernels
from wdl_kernels.reference import reference_loss_and_stats

from bench.cases import LossCase, LossInputs, make_inputs, refresh_inputs
from bench.correctness import relative_error
from bench.timing import TimingConfig
from wdl.labels import IGNORE_INDEX


def _loss(inp: LossInputs, case: LossCase, impl: str, mode: str) -> torch.Tensor:
    return wdl_kernels.mixed_linear_cross_entropy(inp.hidden, inp.weight, inp.labels, inp.weak_hidden,
                                                  inp.weak_weight, lam=case.lam, impl=impl, mode=mode).loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase_split(case: LossCase, impl: str, mode: str, device: torch.device, timing: TimingConfig,
                seed: int = 0) -> dict:
    """{"forward_ms", "backward_ms", "reps"}: medians over repetitions, fresh inputs each time."""
    inp = make_inputs(case, device, seed, requires_grad=True)
    gen = torch.Generator(device=device).manual_seed(seed + 5)
    fwd, bwd = [], []
    cuda = device.type == "cuda"
    for i in range(max(timing.warmup, 1) + timing.min_reps):
        refresh_inputs(inp, gen)
        _sync(device)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else []
        t0 = time.perf_counter()
        if cuda:
            marks[0].record()
        loss = _loss(inp, case, impl, mode)
        if cuda:
            marks[1].record()
        t1 = time.perf_counter()
        grads = torch.autograd.grad(loss, inp.leaves())
        if cuda:
            marks[2].record()
        _sync(device)
        t2 = time.perf_counter()
        del loss, grads
        if i < max(timing.warmup, 1):
            continue
        if cuda:
            fwd.append(marks[0].elapsed_time(marks[1]))
            bwd.append(marks[1].elapsed_time(marks[2]))
        else:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"forward_ms": med(fwd), "backward_ms": med(bwd), "reps": len(fwd)}


FAMILIES = (  # (family, substrings of kernel names), first match wins
    ("triton forward: logits + online softmax", ("mixed_ce_forward",)),
    ("triton fast G (from the stored logits)", ("fast_grad",)),
    ("triton lean recompute + G", ("mixed_ce_grad",)),
    ("GEMMs (cuBLAS / aten mm)", ("gemm", "sm90_", "sm80_", "cutlass", "xmma", "nvjet", "cublas", "aten::mm",
                                  "aten::addmm", "aten::bmm")),
)


def _family(name: str) -> str:
    low = name.lower()
    for family, keys in FAMILIES:
        if any(k in low for k in keys):
            return family
    return "other (elementwise, reductions, copies)"


def kernel_families(case: LossCase, impl: str, mode: str, device: torch.device, seed: int = 0) -> dict:
    """{"families": {family: ms}, "top": [[kernel, ms], ...], "profiled_wall_ms"} for one fwd+bwd call."""
    from torch.profiler import ProfilerActivity, profile

    inp = make_inputs(case, device, seed, requires_grad=True)
    cuda = device.type == "cuda"

    def call():
        loss = _loss(inp, case, impl, mode)
        return torch.autograd.grad(loss, inp.leaves())

    call()  # compiled and warm
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        call()
        _sync(device)
    wall_ms = (time.perf_counter() - t0) * 1e3
    per_kernel: dict[str, float] = {}
    for e in prof.key_averages():
        if cuda:
            if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        else:
            if not e.key.startswith("aten::") or e.key in ("aten::empty", "aten::view"):
                continue
            us = e.self_cpu_time_total
        per_kernel[e.key] = per_kernel.get(e.key, 0.0) + us / 1e3
    families: dict[str, float] = {}
    for name, ms in per_kernel.items():
        families[_family(name)] = families.get(_family(name), 0.0) + ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:8]
    return {"families": dict(sorted(families.items(), key=lambda kv: -kv[1])), "top": [[k[:120], v] for k, v in top],
            "profiled_wall_ms": wall_ms, "device_total_ms": sum(per_kernel.values())}


def _reference_grads(case: LossCase, inp: LossInputs, chunk_rows: int):
    """float64 loss and gradients of the mean loss, accumulated over row blocks of `chunk_rows`."""
    leaves = inp.leaves()
    ws = leaves[1].detach().double().requires_grad_()
    ww = leaves[3].detach().double().requires_grad_() if case.hw else None
    valid = inp.labels != IGNORE_INDEX
    divisor = float(valid.sum().clamp(min=1))
    dhs, dhw, total = [], [], 0.0
    for r0 in range(0, case.n, chunk_rows):
        r1 = min(case.n, r0 + chunk_rows)
        hs = leaves[0][r0:r1].detach().double().requires_grad_()
        hw = leaves[2][r0:r1].detach().double().requires_grad_() if case.hw else None
        loss, _ = reference_loss_and_stats(hs, ws, inp.labels[r0:r1], hw, ww, lam=case.lam, ignore_index=IGNORE_INDEX,
                                           reduction="sum")
        (loss / divisor).backward()
        total += float(loss.detach()) / divisor
        dhs.append(hs.grad)
        if hw is not None:
            dhw.append(hw.grad)
        del loss, hs, hw
    grads = [torch.cat(dhs), ws.grad] + ([torch.cat(dhw), ww.grad] if case.hw else [])
    return torch.tensor(total, dtype=torch.float64), grads


def fp16_probe(case: LossCase, impl: str, modes, device: torch.device, chunk_rows: int, seed: int = 0) -> dict:
    """{mode: {"loss", "d_hidden", "d_weight", ..., "d_weight_unlabeled_rows"}} relative errors, fp16 inputs."""
    if case.dtype != "fp16" or case.task != "fwdbwd":
        raise ValueError(f"the fp16 probe needs an fp16 fwdbwd case, got {case.label()}")
    inp = make_inputs(case, device, seed, requires_grad=True)
    ref_loss, ref_grads = _reference_grads(case, inp, chunk_rows)
    names = ["d_hidden", "d_weight"] + (["d_weak_hidden", "d_weak_weight"] if case.hw else [])
    unlabeled = torch.ones(case.vocab, dtype=torch.bool, device=device)
    unlabeled[inp.labels[inp.labels != IGNORE_INDEX]] = False
    out = {"case": case.label(), "reference_chunk_rows": chunk_rows,
           "unlabeled_vocab_rows": int(unlabeled.sum())}
    for mode in modes:
        loss = _loss(inp, case, impl, mode)
        grads = torch.autograd.grad(loss, inp.leaves())
        errs = {"loss": relative_error(loss, ref_loss.to(device))}
        for name, g, r in zip(names, grads, ref_grads):
            errs[name] = relative_error(g, r)
        errs["d_weight_unlabeled_rows"] = relative_error(grads[1][unlabeled], ref_grads[1][unlabeled])
        errs["finite"] = all(bool(torch.isfinite(g).all()) for g in grads)
        out[mode] = errs
        del loss, grads
    return out
