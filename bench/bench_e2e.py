#!/usr/bin/env python
"""End-to-end training-step benchmark: tokens/s, MFU and peak memory of SFT and joint steps, the fused path
against the reference path (both models' full logits, stacked, mixed, fp32-upcast loss) in the SAME loop, and
the longest sequence each path fits.

    python bench/bench_e2e.py --models 1.7b --seq 2048,4096,8192 --ac 0,1 --micro-batch 1,2 --max-seq \
        --out runs/bench-e2e                                                                  # one GPU
    python bench/bench_e2e.py --cpu --out /tmp/e2e                                           # tiny shapes, seconds
    python bench/bench_e2e.py --report runs/bench-e2e/e2e.jsonl --out runs/bench-e2e    # table + plot of earlier rows

Models are random-weight Qwen3s built in code from the published shapes (no download). A case is
(model, mode, path, activation checkpointing): mode `sft` (one model), `joint` (both trainable, the paper's
setting), `joint_frozen` (weak frozen). Each case builds its models and optimizer once, then times
--warmup + --steps optimizer steps (one micro-batch of --micro-batch sequences of the given length; every
label supervised) at each sequence length, and with --max-seq searches the longest length that fits (doubling,
then bisection to --seq-granularity). Rows go to OUT/e2e.csv and OUT/e2e.jsonl with the commit, device and
versions (bench/common.py); OUT/e2e.png plots them and OUT/e2e_summary_<run>.md compares each path at its
best setting (micro-batch, activation checkpointing) and gives a verdict on each of issue 3's targets from the
measured rows (`not measured` where a row is missing). An out-of-memory case is recorded as such, never
estimated.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen3Config  # noqa: E402
from wdl_kernels import MixedCEStats  # noqa: E402

from wdl.labels import IGNORE_INDEX  # noqa: E402
from wdl.models import JointOutput  # noqa: E402

from bench.common import ENV_COLUMNS, GIB, ResultsWriter, env_info, free_device_memory, is_oom, run_id  # noqa: E402

# Published Qwen3 shapes (reference/paper.md section 4.1); Base and instruct share the architecture.
QWEN3_SHAPES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
    # CPU mode: same structure, tiny sizes
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=True),
}
QWEN3_VOCAB = 151936
MODES = ("sft", "joint", "joint_frozen")
PATHS = ("fused", "reference")

CASE_COLUMNS = ("run_id", "label", "kind", "model", "mode", "path", "activation_checkpointing", "backend",
                "zero_stage", "offload_optimizer", "fsdp_cpu_offload", "dtype", "vocab", "micro_batch", "seq_len",
                "tokens_per_step")
RESULT_COLUMNS = ("status", "error", "steps", "step_ms_median", "step_ms_p20", "step_ms_p80", "tokens_per_s",
                  "mfu", "peak_mem_gib", "first_loss", "trainable_params", "total_params")
COLUMNS = ENV_COLUMNS + CASE_COLUMNS + RESULT_COLUMNS


class MaterializedMixedCrossEntropy:
    """The reference implementation's loss, as a JointModel loss: both models' full logits, stacked (a copy, as in
    QwenBoostForCausalLM), mixed, upcast to fp32 (as HF's ForCausalLMLoss does), F.cross_entropy."""

    def __call__(self, hidden, weight, labels, weak_hidden=None, weak_weight=None, *, lam, num_items=None):
        logits = F.linear(hidden, weight)
        if weak_hidden is not None:
            stacked = torch.stack([F.linear(weak_hidden, weak_weight), logits])
            logits = (1.0 - lam) * stacked[0] + lam * stacked[1]
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        if num_items is not None:
            loss = loss / num_items
        return JointOutput(loss, stats_from_logits(logits, labels))


@torch.no_grad()
def stats_from_logits(z: torch.Tensor, labels: torch.Tensor) -> MixedCEStats:
    """The kernel's per-row statistics computed from materialized logits [N, V]."""
    z = z.float()
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(z, dim=1)
    logp = z - lse[:, None]
    entropy = -(logp.exp() * logp).sum(dim=1)
    zy = z.gather(1, safe[:, None]).squeeze(1)
    zero = torch.zeros_like(lse)
    others = (z.sum(dim=1) - zy) / max(z.shape[1] - 1, 1)
    return MixedCEStats(
        lse=lse, entropy=entropy, nll=torch.where(valid, lse - zy, zero), target_logit=torch.where(valid, zy, zero),
        margin=torch.where(valid, zy - others, zero), max_prob=torch.exp(z.amax(dim=1) - lse),
        accuracy=(valid & (zy >= z.amax(dim=1))).float(),
    )


def qwen3_config(name: str, vocab: int, attn: str) -> Qwen3Config:
    return Qwen3Config(vocab_size=vocab, head_dim=128 if name != "tiny" else 32, max_position_embeddings=131072,
                       rms_norm_eps=1e-6, rope_theta=1_000_000.0, use_cache=False, attn_implementation=attn,
                       **QWEN3_SHAPES[name])


class Case:
    """One (model, mode, path, AC) setting: models + backend built once, stepped at several sequence lengths."""

    def __init__(self, args, model: str, mode: str, path: str, ac: bool, device: torch.device):
        from wdl.distributed import init_distributed
        from wdl.models import FusedMixedCrossEntropy, JointModel
        from wdl.models.loading import enable_activation_checkpointing, pick_attn_implementation
        from wdl.train import TrainConfig
        from wdl.train.backends import make_backend
        from wdl.train.metrics import FlopCounter, peak_bf16_flops

        self.args, self.device = args, device
        self.cfg = TrainConfig(lr=1e-5, warmup_ratio=0.0, schedule="constant", dtype=args.dtype, lam=0.5,
                               freeze_weak=mode == "joint_frozen", backend=args.backend,
                               zero_stage=args.zero_stage, offload_optimizer=args.offload_optimizer,
                               fsdp_cpu_offload=args.fsdp_cpu_offload,
                               activation_checkpointing=ac, tensorboard=False)
        self.dist = init_distributed(require_group=args.backend != "single")
        self.backend = make_backend(self.cfg, self.dist)
        dtype = self.backend.compute_dtype
        config = qwen3_config(model, args.vocab, pick_attn_implementation(args.attn))
        torch.manual_seed(args.seed)
        build_on = device if args.backend == "single" else torch.device("cpu")
        subs = []
        for _ in range(2 if mode != "sft" else 1):
            with torch.device(build_on):
                m = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # fp32 master weights
            if ac:
                enable_activation_checkpointing(m)
            subs.append(m)
        loss = FusedMixedCrossEntropy() if path == "fused" else MaterializedMixedCrossEntropy()
        joint = JointModel(subs[0], subs[1] if len(subs) > 1 else None, freeze_weak=self.cfg.freeze_weak, loss=loss)
        self.total_params = sum(p.numel() for p in joint.parameters())
        self.trainable_params = sum(p.numel() for p in joint.parameters() if p.requires_grad)
        self.backend.setup(joint)
        self.backend.joint.train()
        self.flops = [FlopCounter(config, trainable=True)]
        if mode != "sft":
            self.flops.append(FlopCounter(config, trainable=mode != "joint_frozen"))
        self.peak = peak_bf16_flops(device)
        self.dtype_name = "bf16" if dtype == torch.bfloat16 else "fp32"

    def batch(self, seq_len: int, b: int) -> dict:
        g = torch.Generator().manual_seed(self.args.seed + seq_len)
        ids = torch.randint(0, self.args.vocab, (b, seq_len), generator=g)
        labels = torch.randint(0, self.args.vocab, (b, seq_len), generator=g)
        labels[:, -1] = IGNORE_INDEX
        pos = torch.arange(seq_len).expand(b, seq_len).contiguous()
        return {k: v.to(self.device) for k, v in {"input_ids": ids, "labels": labels, "position_ids": pos}.items()}

    def step(self, batch: dict) -> float:
        factor = self.backend.gradient_divide_factor
        out = self.backend.forward_backward(batch, int((batch["labels"] != IGNORE_INDEX).sum()) / factor)
        self.backend.optimizer_step(self.cfg.lr, math.isfinite(float(out.loss)))
        return float(out.loss) / factor

    def run(self, seq_len: int, warmup: int, steps: int, micro_batch: int = 1) -> dict:
        """Time `steps` optimizer steps after `warmup`; an OOM is returned as status 'oom'."""
        batch = self.batch(seq_len, micro_batch)
        times, first_loss = [], None
        try:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            for i in range(warmup + steps):
                self._sync()
                t0 = time.perf_counter()
                loss = self.step(batch)
                self._sync()
                if first_loss is None:
                    first_loss = loss
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - recorded per case, the sweep goes on
            self.backend.optimizer_step(0.0, False)  # drop partial gradients
            free_device_memory(self.device)
            if is_oom(e):
                return {"status": "oom", "error": str(e).splitlines()[0][:200]}
            raise
        tokens = micro_batch * seq_len
        med = statistics.median(times)
        flops = sum(f.step_flops(tokens, micro_batch * seq_len**2) for f in self.flops)
        row = {
            "status": "ok", "steps": steps, "step_ms_median": 1e3 * med,
            "step_ms_p20": 1e3 * _quantile(times, 0.2), "step_ms_p80": 1e3 * _quantile(times, 0.8),
            "tokens_per_s": tokens / med, "first_loss": first_loss,
            "mfu": flops / (med * self.peak) if self.peak else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated(self.device) / GIB if self.device.type == "cuda" else None,
        }
        free_device_memory(self.device)
        return row

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self):
        self.backend.close()
        del self.backend
        free_device_memory(self.device)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def longest_fitting(case: Case, start: int, granularity: int, limit: int) -> tuple[int | None, list[tuple[int, str]]]:
    """Largest sequence length (multiple of `granularity`, <= limit) whose step fits: doubling, then bisection."""
    probes: list[tuple[int, str]] = []

    def fits(n: int) -> bool:
        status = case.run(n, warmup=0, steps=1)["status"]
        probes.append((n, status))
        return status == "ok"

    lo, hi, n = None, None, start
    while n <= limit:
        if fits(n):
            lo, n = n, n * 2
        else:
            hi = n
            break
    if lo is None:
        return None, probes
    hi = hi if hi is not None else limit + granularity
    while hi - lo > granularity:
        mid = (lo + hi) // 2 // granularity * granularity
        if mid <= lo:
            break
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (a smoke run: seconds, fp32)")
    ap.add_argument("--models", type=_csv(str), help="comma list of 0.6b,1.7b,4b,8b (default 1.7b; tiny with --cpu)")
    ap.add_argument("--modes", type=_csv(str), default=list(MODES), help="sft,joint,joint_frozen")
    ap.add_argument("--paths", type=_csv(str), default=list(PATHS), help="fused,reference")
    ap.add_argument("--ac", type=_csv(int), default=[1], help="activation checkpointing settings to run, e.g. 0,1")
    ap.add_argument("--seq", type=_csv(int), help="sequence lengths (default 2048,4096,8192; 32,64 with --cpu)")
    ap.add_argument("--micro-batch", type=_csv(int), default=[1],
                    help="sequences per micro-batch, e.g. 1,2,4 (each is a setting of the best-setting comparison)")
    ap.add_argument("--vocab", type=int, help=f"vocabulary (default {QWEN3_VOCAB}; 512 with --cpu)")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--attn", default="auto", help="attention implementation (auto: flash_attention_2 if installed)")
    ap.add_argument("--backend", choices=["single", "deepspeed", "fsdp2"], default="single")
    ap.add_argument("--zero-stage", type=int, default=3)
    ap.add_argument("--offload-optimizer", action="store_true", help="deepspeed: optimizer states on the CPU")
    ap.add_argument("--fsdp-cpu-offload", action="store_true",
                    help="fsdp2: parameters, gradients and optimizer states on the CPU")
    ap.add_argument("--warmup", type=int, help="untimed steps per length (default 2; 1 with --cpu)")
    ap.add_argument("--steps", type=int, help="timed steps per length (default 10, torchtitan's minimum; 2 with --cpu)")
    ap.add_argument("--max-seq", action="store_true", help="also search the longest sequence each case fits")
    ap.add_argument("--max-seq-only", action="store_true", help="only the longest-sequence search (implies --max-seq)")
    ap.add_argument("--max-seq-start", type=int, default=2048)
    ap.add_argument("--max-seq-limit", type=int, default=131072)
    ap.add_argument("--seq-granularity", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="free text stored in every row")
    ap.add_argument("--out", default="runs/bench-e2e", help="output directory")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--report", type=Path, metavar="JSONL",
                    help="run nothing: the summary, target verdicts and plot of rows recorded earlier")
    args = ap.parse_args(argv)
    args.max_seq = args.max_seq or args.max_seq_only
    if args.cpu:
        args.models = args.models or ["tiny"]
        args.seq = args.seq or [32, 64]
        args.vocab = args.vocab or 512
        args.warmup = 1 if args.warmup is None else args.warmup
        args.steps = args.steps or 2
        args.dtype = "fp32" if args.dtype == "auto" else args.dtype
        if args.max_seq:
            args.max_seq_start, args.max_seq_limit, args.seq_granularity = 32, 256, 32
    else:
        args.models = args.models or ["1.7b"]
        args.seq = args.seq or [2048, 4096, 8192]
        args.vocab = args.vocab or QWEN3_VOCAB
        args.warmup = 2 if args.warmup is None else args.warmup
        args.steps = args.steps or 10
    for name, values, allowed in (("models", args.models, QWEN3_SHAPES), ("modes", args.modes, MODES),
                                  ("paths", args.paths, PATHS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report, Path(args.out), plot_png=not args.no_plot)
    device = torch.device("cpu") if args.cpu or not torch.cuda.is_available() else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    env = env_info(device)
    rid = run_id(env)
    writer = ResultsWriter(args.out, COLUMNS, stem="e2e")
    label = args.label or ("CPU smoke (tiny shapes)" if device.type == "cpu" else env.get("device_name", ""))
    rows = []
    for model in args.models:
        for mode in args.modes:
            for ac in args.ac:
                for path in args.paths:
                    base = {**{k: env.get(k) for k in ENV_COLUMNS}, "run_id": rid, "label": label, "model": model,
                            "mode": mode, "path": path, "activation_checkpointing": bool(ac),
                            "backend": args.backend, "zero_stage": args.zero_stage if args.backend == "deepspeed"
                            else None, "offload_optimizer": args.offload_optimizer,
                            "fsdp_cpu_offload": args.fsdp_cpu_offload, "vocab": args.vocab,
                            }
                    try:
                        case = Case(args, model, mode, path, bool(ac), device)
                    except Exception as e:  # noqa: BLE001
                        if not is_oom(e):
                            raise
                        r = {**base, "kind": "throughput", "status": "oom", "error": "model/optimizer do not fit"}
                        writer.append([r])
                        rows.append(r)
                        print(f"{model} {mode} {path} ac={ac}: model does not fit")
                        free_device_memory(device)
                        continue
                    base.update(dtype=case.dtype_name, trainable_params=case.trainable_params,
                                total_params=case.total_params)
                    for seq in [] if args.max_seq_only else args.seq:
                        for mb in args.micro_batch:
                            r = {**base, "kind": "throughput", "seq_len": seq, "micro_batch": mb,
                                 "tokens_per_step": seq * mb, **case.run(seq, args.warmup, args.steps, mb)}
                            writer.append([r])
                            rows.append(r)
                            _print(r)
                    if args.max_seq:
                        best, probes = longest_fitting(case, args.max_seq_start, args.seq_granularity,
                                                       args.max_seq_limit)
                        r = {**base, "kind": "max_seq", "seq_len": best, "micro_batch": 1,
                             "status": "ok" if best else "oom",
                             "error": "probes " + " ".join(f"{n}:{s}" for n, s in probes)}
                        writer.append([r])
                        rows.append(r)
                        print(f"{model} {mode} {path} ac={ac}: longest fitting sequence {best}")
                    case.close()
    _write_report(rows, Path(args.out), f"e2e_summary_{rid}.md", plot_png=not args.no_plot)
    return 0


def report(jsonl: Path, out: Path, plot_png: bool = True) -> int:
    """OUT/e2e_summary.md (summary and target verdicts) and OUT/e2e.png over rows recorded earlier, e.g. by
    several invocations into one file, or one cut short by its time limit."""
    from bench.common import read_jsonl

    if not jsonl.is_file():
        print(f"bench_e2e: --report {jsonl}: no such file", file=sys.stderr)
        return 2
    rows = read_jsonl(jsonl)
    if not rows:
        print(f"bench_e2e: --report {jsonl}: no rows", file=sys.stderr)
        return 2
    _write_report(rows, out, "e2e_summary.md", plot_png)
    return 0


def _write_report(rows: list[dict], out: Path, name: str, plot_png: bool) -> None:
    from wdl.io import atomic_write_text

    if plot_png:
        plot(rows, out / "e2e.png")
    summary = summarize(rows)
    if summary:
        summary += "\n" + format_targets(rows)
        atomic_write_text(out / name, summary)
        print(summary)


def format_targets(rows: list[dict]) -> str:
    """Issue 3's GPU targets, each judged from the measured CUDA rows only (a CPU run measures none)."""
    rows = [r for r in rows if r["device_type"] == "cuda"]
    ok = [r for r in rows if r["status"] == "ok"]

    def best(kind, path, **match):
        cands = [r for r in ok if r["kind"] == kind and r["path"] == path
                 and all(r.get(k) == v for k, v in match.items())]
        key = "seq_len" if kind == "max_seq" else "tokens_per_s"
        return max(cands, key=lambda r: r[key]) if cands else None

    lines = ["| target (one 80 GB GPU) | measured | verdict |", "|---|---|---|"]

    def add(name, measured, passed):
        verdict = "not measured" if passed is None else ("PASS" if passed else "FAIL")
        lines.append(f"| {name} | {measured} | {verdict} |")

    j = dict(model="1.7b", mode="joint")
    f, r = best("max_seq", "fused", **j), best("max_seq", "reference", **j)
    add("2x1.7B joint: longest sequence >= 4x the reference path's",
        f"{f['seq_len']} vs {r['seq_len']}" if f and r else "-",
        f["seq_len"] >= 4 * r["seq_len"] if f and r else None)
    # tokens/s at each path's best fitting setting, at the longest length both paths ran
    joint = {p: [x for x in ok if x["kind"] == "throughput" and x["path"] == p
                 and (x["model"], x["mode"]) == ("1.7b", "joint")] for p in PATHS}
    both = sorted({x["seq_len"] for x in joint["fused"]} & {x["seq_len"] for x in joint["reference"]})
    f = best("throughput", "fused", seq_len=both[-1], **j) if both else None
    r = best("throughput", "reference", seq_len=both[-1], **j) if both else None
    add("2x1.7B joint: tokens/s >= 1.3x the reference path's (best settings)",
        f"{f['tokens_per_s']:.0f} vs {r['tokens_per_s']:.0f} tok/s at {both[-1]}" if f and r else "-",
        f["tokens_per_s"] >= 1.3 * r["tokens_per_s"] if f and r else None)
    fm = [x for x in joint["fused"] if x.get("mfu") is not None]
    top = max(fm, key=lambda x: x["mfu"]) if fm else None
    add("2x1.7B joint: MFU >= 40%", f"{100 * top['mfu']:.1f}% at {top['seq_len']}" if top else "-",
        top["mfu"] >= 0.40 if top else None)
    off = [x for x in rows if x["kind"] == "throughput" and x["model"] == "4b" and x["mode"] == "joint_frozen"
           and x["path"] == "fused" and (x.get("offload_optimizer") or x.get("fsdp_cpu_offload"))
           and x["seq_len"] >= 8192]
    fits = [x for x in off if x["status"] == "ok"]
    add("2x4B, weak frozen, optimizer offload: trains at >= 8192 tokens",
        f"{max(x['seq_len'] for x in fits)} tokens ok" if fits else ("OOM" if off else "-"),
        bool(fits) if off else None)
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict]) -> str:
    """Markdown: per (model, mode, sequence length) each path's best setting (micro-batch, AC) and the ratios the
    issue's targets are stated in; per (model, mode) the longest fitting sequence of each path."""
    ok = [r for r in rows if r["kind"] == "throughput" and r["status"] == "ok"]
    lines = []
    keys = sorted({(r["model"], r["mode"], r["seq_len"]) for r in ok}, key=lambda k: (k[0], k[1], k[2]))
    if keys:
        lines += ["| model | mode | seq | fused tok/s (mb, AC) | reference tok/s (mb, AC) | speed-up | fused MFU |",
                  "|---|---|---|---|---|---|---|"]
    for model, mode, seq in keys:
        best = {}
        for path in PATHS:
            cands = [r for r in ok if (r["model"], r["mode"], r["seq_len"], r["path"]) == (model, mode, seq, path)]
            best[path] = max(cands, key=lambda r: r["tokens_per_s"]) if cands else None

        def cell(r):
            if r is None:
                return "OOM / not run"
            return f"{r['tokens_per_s']:.0f} ({r['micro_batch']}, {'on' if r['activation_checkpointing'] else 'off'})"

        f, ref = best["fused"], best["reference"]
        ratio = f"{f['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if f and ref else "-"
        mfu = f"{100 * f['mfu']:.1f}%" if f and f.get("mfu") is not None else "-"
        lines.append(f"| {model} | {mode} | {seq} | {cell(f)} | {cell(ref)} | {ratio} | {mfu} |")
    maxes = [r for r in rows if r["kind"] == "max_seq"]
    if maxes:
        lines += ["", "| model | mode | fused longest seq | reference longest seq | ratio |", "|---|---|---|---|---|"]
        for model, mode in sorted({(r["model"], r["mode"]) for r in maxes}):
            best = {p: max((r["seq_len"] or 0 for r in maxes if (r["model"], r["mode"], r["path"]) == (model, mode, p)),
                           default=0) for p in PATHS}
            ratio = f"{best['fused'] / best['reference']:.2f}x" if best["fused"] and best["reference"] else "-"
            lines.append(f"| {model} | {mode} | {best['fused'] or 'OOM'} | {best['reference'] or 'OOM'} | {ratio} |")
    return "\n".join(lines) + "\n" if lines else ""


def _print(r: dict) -> None:
    if r["status"] != "ok":
        print(f"{r['model']} {r['mode']:<12} {r['path']:<9} ac={int(r['activation_checkpointing'])} "
              f"mb={r['micro_batch']} T={r['seq_len']:<6} {r['status']}")
        return
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
    mem = f"{r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") is not None else "-"
    print(f"{r['model']} {r['mode']:<12} {r['path']:<9} ac={int(r['activation_checkpointing'])} mb={r['micro_batch']} "
          f"T={r['seq_len']:<6} {r['tokens_per_s']:10.1f} tok/s  MFU {mfu:>6}  peak {mem}  loss {r['first_loss']:.4f}")


def plot(rows: list[dict], out: Path) -> Path | None:
    """Tokens/s and peak memory against sequence length, one line per (model, mode, path, AC)."""
    ok = [r for r in rows if r["kind"] == "throughput" and r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wdl.io import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["model"], r["mode"], r["path"], r["activation_checkpointing"]) for r in ok})
    for key in keys:
        pts = sorted((r["seq_len"], r["tokens_per_s"], r["peak_mem_gib"]) for r in ok
                     if (r["model"], r["mode"], r["path"], r["activation_checkpointing"]) == key)
        label = f"{key[0]} {key[1]} {key[2]}" + (" AC" if key[3] else "")
        style = "-" if key[2] == "fused" else "--"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        if all(p[2] is not None for p in pts):
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, marker="o", label=label)
    axes[0].set(xlabel="sequence length", ylabel="tokens / s", title="training throughput", xscale="log")
    axes[1].set(xlabel="sequence length", ylabel="peak GiB", title="peak memory (CUDA)", xscale="log")
    if not any(r["peak_mem_gib"] is not None for r in ok):
        axes[1].text(0.5, 0.5, "no CUDA memory counters (CPU run)", ha="center", va="center",
                     transform=axes[1].transAxes)
    axes[0].legend(fontsize=7)
    env = ok[0]
    fig.suptitle(f"{env.get('device_name')} · {str(env.get('git_commit'))[:8]} · torch {env.get('torch_version')}",
                 fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


if __name__ == "__main__":
    sys.exit(main())
