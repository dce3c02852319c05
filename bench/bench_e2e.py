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
versions (bench/env.py); OUT/e2e.png plots them and OUT/e2e_summary_<run>.md compares each path at its best
setting (micro-batch, activation checkpointing) and gives a verdict on each end-to-end target from the measured
rows (bench/e2e_report.py; `not measured` where a row is missing). An out-of-memory case is recorded as such,
never estimated.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    _root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_root), str(_root / "kernels")]

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen3Config  # noqa: E402

from bench.e2e_report import PATHS, format_targets, report, write_report  # noqa: E402, F401 (format_targets: API)
from bench.env import ENV_COLUMNS, GIB, env_info, run_id  # noqa: E402
from bench.materialized import cross_entropy_sum, mixed_logits, stats_from_logits  # noqa: E402
from bench.memory import free_device_memory, is_oom  # noqa: E402
from bench.writer import ResultsWriter  # noqa: E402
from wdl.footprint import QWEN3_SHAPES as PRESET_SHAPES  # noqa: E402
from wdl.labels import IGNORE_INDEX  # noqa: E402
from wdl.models import JointOutput  # noqa: E402
from wdl.tiny import QWEN3_VOCAB_SIZE as QWEN3_VOCAB  # noqa: E402

# The published Qwen3 shapes (one table, the presets' estimates use it too), keyed by size; "tiny" is CPU mode.
QWEN3_SHAPES = {name.removeprefix("qwen3-"): shape for name, shape in PRESET_SHAPES.items()} | {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=True),
}
MODES = ("sft", "joint", "joint_frozen")

CASE_COLUMNS = ("run_id", "label", "kind", "model", "mode", "path", "activation_checkpointing", "backend",
                "zero_stage", "offload_optimizer", "fsdp_cpu_offload", "dtype", "vocab", "micro_batch", "seq_len",
                "tokens_per_step")
RESULT_COLUMNS = ("status", "error", "steps", "step_ms_median", "step_ms_p20", "step_ms_p80", "tokens_per_s",
                  "mfu", "peak_mem_gib", "first_loss", "trainable_params", "total_params")
COLUMNS = ENV_COLUMNS + CASE_COLUMNS + RESULT_COLUMNS


class MaterializedMixedCrossEntropy:
    """The reference implementation's loss as a JointModel loss (bench/materialized.py: both models' full logits,
    stacked, mixed, upcast to fp32, F.cross_entropy)."""

    def __call__(self, hidden, weight, labels, weak_hidden=None, weak_weight=None, *, lam, num_items=None):
        logits = mixed_logits(hidden, weight, weak_hidden, weak_weight, lam=lam)
        loss = cross_entropy_sum(logits, labels)
        if num_items is not None:
            loss = loss / num_items
        return JointOutput(loss, stats_from_logits(logits, labels))


def qwen3_config(name: str, vocab: int, attn: str) -> Qwen3Config:
    return Qwen3Config(vocab_size=vocab, head_dim=128 if name != "tiny" else 32, max_position_embeddings=131072,
                       rms_norm_eps=1e-6, rope_theta=1_000_000.0, use_cache=False, attn_implementation=attn,
                       **QWEN3_SHAPES[name])


class TrainSetup:
    """One (model, mode, path, AC) setting: models + backend built once, stepped at several sequence lengths."""

    def __init__(self, args, model: str, mode: str, path: str, ac: bool, device: torch.device):
        # Here, not at the top: wdl.train imports `datasets`, which the benchmark GPU machines do not have;
        # the module's report and plotting paths must import without it.
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


def longest_fitting(setup: TrainSetup, start: int, granularity: int, limit: int
                    ) -> tuple[int | None, list[tuple[int, str]]]:
    """Largest sequence length (multiple of `granularity`, <= limit) whose step fits: doubling, then bisection."""
    probes: list[tuple[int, str]] = []

    def fits(n: int) -> bool:
        status = setup.run(n, warmup=0, steps=1)["status"]
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
                        setup = TrainSetup(args, model, mode, path, bool(ac), device)
                    except Exception as e:  # noqa: BLE001
                        if not is_oom(e):
                            raise
                        r = {**base, "kind": "throughput", "status": "oom", "error": "model/optimizer do not fit"}
                        writer.append([r])
                        rows.append(r)
                        print(f"{model} {mode} {path} ac={ac}: model does not fit")
                        free_device_memory(device)
                        continue
                    base.update(dtype=setup.dtype_name, trainable_params=setup.trainable_params,
                                total_params=setup.total_params)
                    for seq in [] if args.max_seq_only else args.seq:
                        for mb in args.micro_batch:
                            r = {**base, "kind": "throughput", "seq_len": seq, "micro_batch": mb,
                                 "tokens_per_step": seq * mb, **setup.run(seq, args.warmup, args.steps, mb)}
                            writer.append([r])
                            rows.append(r)
                            _print(r)
                    if args.max_seq:
                        best, probes = longest_fitting(setup, args.max_seq_start, args.seq_granularity,
                                                       args.max_seq_limit)
                        r = {**base, "kind": "max_seq", "seq_len": best, "micro_batch": 1,
                             "status": "ok" if best else "oom",
                             "error": "probes " + " ".join(f"{n}:{s}" for n, s in probes)}
                        writer.append([r])
                        rows.append(r)
                        print(f"{model} {mode} {path} ac={ac}: longest fitting sequence {best}")
                    setup.close()
    write_report(rows, Path(args.out), f"e2e_summary_{rid}.md", plot_png=not args.no_plot)
    return 0


def _print(r: dict) -> None:
    if r["status"] != "ok":
        print(f"{r['model']} {r['mode']:<12} {r['path']:<9} ac={int(r['activation_checkpointing'])} "
              f"mb={r['micro_batch']} T={r['seq_len']:<6} {r['status']}")
        return
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
    mem = f"{r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") is not None else "-"
    print(f"{r['model']} {r['mode']:<12} {r['path']:<9} ac={int(r['activation_checkpointing'])} mb={r['micro_batch']} "
          f"T={r['seq_len']:<6} {r['tokens_per_s']:10.1f} tok/s  MFU {mfu:>6}  peak {mem}  loss {r['first_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(main())

