"""The training loop: one phase (SFT, joint, continued SFT, pretraining), one loop for all of them.

    train_phase(...)              the public entry; every rank calls it under torchrun
      Trainer.__init__            process group, seeds, models -> JointModel -> backend, data loader, schedule
      Trainer.run                 resume (checkpoint + log truncation) -> steps -> final checkpoint -> export
        Trainer.train_step        micro-batches (token-weighted), all-reduced metrics, finite check, update

Token-weighted normalisation: every micro-batch's summed loss is divided by the step's global number of label
tokens (the same on all ranks), so the gradient does not depend on how the step is split into micro-batches
or ranks. The finite check runs before the optimizer update on values every rank shares (the all-reduced loss,
the global gradient norm): all ranks take the same decision.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wdl.io import atomic_write_jsonl
from wdl.models import JointModel, is_complete_hf_checkpoint, load_causal_lm, load_config, save_hf_checkpoint
from wdl.models.loading import causal_lm_skeleton

from .backends import build_backend, move_batch
from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .config import TrainConfig
from .distributed import all_reduce_sum, barrier, init_distributed
from .metrics import FlopCounter, MetricsSink, host_peak_rss_gib, peak_bf16_flops, peak_memory_gib, \
    reset_peak_memory, sequence_lengths
from .optim import LRSchedule

IGNORE_INDEX = -100


class NonFiniteLossError(RuntimeError):
    """A step's loss or gradient norm was NaN/inf under nan_policy='stop' (raised before the update)."""


@dataclass
class TrainSummary:
    name: str
    steps: int  # optimizer steps of the phase (including skipped ones)
    samples: int  # samples seen (counted once per time seen)
    tokens: int  # input tokens seen (padding excluded)
    label_tokens: int  # supervised tokens seen
    wall_s: float  # training time, summed over resumed attempts
    final_loss: float | None
    skipped_steps: int
    peak_mem_gib: float | None  # peak CUDA memory of rank 0 (None on the CPU)
    resumed_from: int | None  # step of the checkpoint this attempt started from
    export_dir: str
    log_path: str
    reused_export: bool = False  # the export was already complete: nothing was trained

    def to_dict(self) -> dict:
        return asdict(self)


def make_loader(dataset, data, *, rank: int, world_size: int):
    """The data package's stateful per-step loader (see docs/architecture.md)."""
    from wdl.data import StepLoader

    return StepLoader(dataset, data, rank=rank, world_size=world_size)


def read_log(path: Path) -> list[dict]:
    """The rows of a JSONL step log; a torn last line (a kill mid-write) is dropped."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of steps <= `step` (those a checkpoint covers), atomically."""
    rows = [r for r in read_log(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    atomic_write_jsonl(path, rows)


def compute_dtype_for(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _export_dtype(model_path: str | Path) -> torch.dtype:
    """Export in the dtype the source checkpoint was stored in (bf16 for Qwen3), fp32 when it does not say."""
    dtype = getattr(load_config(model_path), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


class Trainer:
    def __init__(self, *, name: str, strong_model: str | Path, weak_model: str | Path | None, dataset, data,
                 train: TrainConfig, work_dir: Path, export_dir: Path, log_path: Path,
                 tokenizer_path: str | Path | None):
        self.name = name
        self.cfg = train
        self.strong_path, self.weak_path = str(strong_model), (str(weak_model) if weak_model is not None else None)
        self.work_dir, self.export_dir, self.log_path = Path(work_dir), Path(export_dir), Path(log_path)
        self.tokenizer_path = str(tokenizer_path) if tokenizer_path is not None else self.strong_path
        self.dist = init_distributed(require_group=train.backend != "single")
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(train.seed)
        self.compute_dtype = compute_dtype_for(train, self.dist.device)

        # FSDP2: only rank 0 reads the checkpoints; the other ranks build meta skeletons and receive their shards
        # from rank 0 (FSDP2Backend.shard). Elsewhere every process loads the weights itself.
        skeleton = train.backend == "fsdp2" and not self.dist.is_main
        opts = dict(attn_implementation=train.attn_implementation, use_liger=train.use_liger,
                    activation_checkpointing=train.activation_checkpointing)
        # DeepSpeed: its bf16 mode keeps bf16 module weights (the fp32 master lives in the ZeRO optimizer), so load
        # in the compute dtype; under ZeRO-3 load partitioned (zero.Init): no rank holds a full model.
        loading = contextlib.nullcontext()
        if skeleton:
            def load(path):
                return causal_lm_skeleton(path, device=self.dist.device, **opts)
        elif train.backend == "deepspeed":
            if train.zero_stage == 3:
                from .deepspeed_backend import zero3_loading

                loading = zero3_loading(train, self.compute_dtype, self.dist)

            def load(path):
                return load_causal_lm(path, dtype=self.compute_dtype, device=None, **opts)
        else:
            load_device = self.dist.device if train.backend == "single" else "cpu"

            def load(path):
                return load_causal_lm(path, dtype=torch.float32, device=load_device, **opts)
        with loading:
            strong = load(self.strong_path)
            weak = load(self.weak_path) if self.weak_path is not None else None
        self.flops = [FlopCounter(strong.config, trainable=True)]
        if weak is not None:
            self.flops.append(FlopCounter(weak.config, trainable=not train.freeze_weak))
        self.model_config = strong.config
        joint = JointModel(strong, weak, lam=train.lam, freeze_weak=train.freeze_weak and weak is not None,
                           loss_impl=train.loss_impl, kernel_impl=train.kernel_impl)
        self.backend = build_backend(joint, train, self.dist, self.compute_dtype)
        self.loader = make_loader(dataset, data, rank=self.dist.rank, world_size=self.dist.world_size)
        self.total_steps = train.total_steps(len(self.loader))
        self.schedule = LRSchedule.from_config(train, self.total_steps)
        self.ckpt = CheckpointManager(self.work_dir, keep_last=train.keep_last, dist_info=self.dist)
        self.peak_flops = peak_bf16_flops(self.dist.device)
        # counters (checkpointed)
        self.step = 0
        self.samples = self.tokens = self.label_tokens = self.skipped = 0
        self.wall_s = 0.0
        self.last_loss: float | None = None
        self.peak_mem: float | None = None
        self.resumed_from: int | None = None
        self.sink: MetricsSink | None = None

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> dict:
        return {
            "name": self.name, "step": self.step, "total_steps": self.total_steps, "samples": self.samples,
            "tokens": self.tokens, "label_tokens": self.label_tokens, "skipped_steps": self.skipped,
            "wall_s": self.wall_s, "last_loss": self.last_loss, "world_size": self.dist.world_size,
            "backend": self.cfg.backend, "strong_model": self.strong_path, "weak_model": self.weak_path,
            "freeze_weak": self.cfg.freeze_weak, "lam": self.cfg.lam, "tokenizer": self.tokenizer_path,
        }

    def rank_state(self) -> dict:
        return {"rng": rng_state(), "loader": self.loader.state_dict()}

    def resume(self) -> None:
        self.ckpt.clean_stale()
        latest = self.ckpt.latest()
        if latest is None:
            if self.dist.is_main:
                truncate_log(self.log_path, 0)  # a run without a checkpoint starts over: so does its log
            barrier()
            return
        state, rank_state = self.ckpt.load(latest, self.backend)
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"{latest}: the checkpoint belongs to a run of {state['total_steps']} steps, this one "
                             f"has {self.total_steps}: same data and train settings are needed to resume (or "
                             f"delete {self.work_dir} to start over)")
        self.step = state["step"]
        self.samples, self.tokens = state["samples"], state["tokens"]
        self.label_tokens, self.skipped = state["label_tokens"], state["skipped_steps"]
        self.wall_s, self.last_loss = state["wall_s"], state["last_loss"]
        self.loader.load_state_dict(rank_state["loader"])
        set_rng_state(rank_state["rng"])
        self.resumed_from = self.step
        if self.dist.is_main:
            truncate_log(self.log_path, self.step)
        barrier()

    def save_checkpoint(self) -> None:
        self.ckpt.save(self.step, self.backend, self.trainer_state(), self.rank_state())

    # ------------------------------------------------------------------ the loop
    def _data_steps(self):
        """Optimizer steps forever: a new pass over the loader starts the next epoch (the loader reshuffles)."""
        empty_passes = 0
        while True:
            empty_passes += 1
            for item in self.loader:
                empty_passes = 0
                yield item
            if empty_passes >= 2:  # one empty pass is normal: a resume exactly at the end of an epoch
                raise ValueError("the training data yields no optimizer step: add data or lower the batch size")

    def run(self) -> TrainSummary:
        self.resume()
        self.sink = MetricsSink(name=self.name, log_path=self.log_path,
                                tensorboard_dir=(self.work_dir / "tensorboard") if self.cfg.tensorboard else None,
                                total_steps=self.total_steps, start_step=self.step, log_every=self.cfg.log_every,
                                enabled=self.dist.is_main)
        self.backend.joint.train()
        steps = self._data_steps()
        while self.step < self.total_steps:
            self.step += 1
            self.train_step(next(steps))
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        self.sink.close()
        self.export()
        return self.summary()

    def train_step(self, data_step) -> dict:
        t0 = time.perf_counter()
        reset_peak_memory(self.dist.device)
        n_global = int(data_step.global_num_label_tokens)
        scale = 1.0 / max(n_global, 1)
        dev = self.dist.device
        # [loss sum, entropy sum, margin sum, label tokens, input tokens, samples, sum of squared sequence lengths]
        acc = torch.zeros(7, dtype=torch.float64, device=dev)
        counts = torch.zeros(4, dtype=torch.float64)  # from the CPU batches: no device sync per micro-batch
        for mb in data_step.micro_batches:
            batch = move_batch(mb, dev)
            out = self.backend.forward_backward(batch, scale)
            valid = (batch["labels"].reshape(-1) != IGNORE_INDEX).double()
            acc[0] += out.loss.double()
            acc[1] += (out.stats.entropy.double() * valid).sum()  # the mixed distribution, over label tokens
            acc[2] += (out.stats.margin.double() * valid).sum()
            sidx = mb["sample_idx"]
            lens = sequence_lengths(mb["position_ids"], sidx)
            counts += torch.tensor([int((mb["labels"] != IGNORE_INDEX).sum()), int(lens.sum()),
                                    torch.unique(sidx[sidx >= 0]).numel(), int((lens.long() ** 2).sum())],
                                   dtype=torch.float64)
        acc[3:] = counts.to(dev)
        all_reduce_sum(acc)
        loss_sum, ent_sum, margin_sum, n_label, n_tokens, n_samples, sum_sq = acc.tolist()
        if int(n_label) != n_global:
            raise ValueError(f"step {self.step}: the loader announced {n_global} label tokens, the micro-batches hold "
                             f"{int(n_label)} (data contract: global_num_label_tokens)")
        loss = loss_sum / max(n_global, 1)
        loss_finite = math.isfinite(loss)
        lr = self.schedule(self.step)
        if n_global == 0:  # nothing supervised in this step: no gradient, no update
            self.backend.skip_step()
            grad_norm, applied = 0.0, False
        else:
            result = self.backend.optimizer_step(lr, loss_finite)
            grad_norm, applied = result.grad_norm, result.applied
        nonfinite = n_global > 0 and not (loss_finite and applied)
        dt = time.perf_counter() - t0
        self.wall_s += dt
        flops = sum(f.step_flops(int(n_tokens), int(sum_sq)) for f in self.flops)
        mem = peak_memory_gib(dev)
        if mem is not None:
            self.peak_mem = max(self.peak_mem or 0.0, mem)
        row = {
            "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "entropy": ent_sum / max(n_label, 1), "margin": margin_sum / max(n_label, 1),
            "label_tokens": int(n_label), "tokens": int(n_tokens), "samples": int(n_samples),
            "step_time_s": dt, "tokens_per_s": n_tokens / dt if dt > 0 else None,
            "mfu": flops / (dt * self.peak_flops * self.dist.world_size) if self.peak_flops and dt > 0 else None,
            "peak_mem_gib": mem, "host_rss_gib": host_peak_rss_gib(), "skipped": not applied,
        }
        if nonfinite:
            row["nonfinite"] = True
        self.sink.log(row)
        self.samples += int(n_samples)
        self.tokens += int(n_tokens)
        self.label_tokens += int(n_label)
        if nonfinite:
            what = f"loss {loss!r}, gradient norm {grad_norm!r}"
            if self.cfg.nan_policy == "stop":
                msg = (f"{self.name} step {self.step}: non-finite {what}; stopped before the optimizer update "
                       f"(train.nan_policy=stop). Resuming restarts from the last checkpoint in {self.work_dir}; "
                       "lower the learning rate, check the data, or set train.nan_policy=skip to skip such steps")
                self.sink.message(msg)
                raise NonFiniteLossError(msg)
            self.skipped += 1
            self.sink.message(f"{self.name} step {self.step}: non-finite {what}: update skipped "
                              f"({self.skipped} so far, train.nan_policy=skip)")
        else:
            self.last_loss = loss
        return row

    # ------------------------------------------------------------------ outputs
    def export(self) -> None:
        sd = self.backend.full_state_dict("strong")
        if self.dist.is_main:
            dtype = _export_dtype(self.strong_path)
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
            save_hf_checkpoint(self.model_config, sd, self.export_dir, tokenizer_path=self.tokenizer_path,
                               generation_source=self.strong_path)
        barrier()

    def summary(self) -> TrainSummary:
        return TrainSummary(
            name=self.name, steps=self.step, samples=self.samples, tokens=self.tokens,
            label_tokens=self.label_tokens, wall_s=self.wall_s, final_loss=self.last_loss,
            skipped_steps=self.skipped, peak_mem_gib=self.peak_mem, resumed_from=self.resumed_from,
            export_dir=str(self.export_dir), log_path=str(self.log_path),
        )

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
        self.backend.close()


def _summary_from_log(name: str, export_dir: Path, log_path: Path) -> TrainSummary:
    rows = read_log(log_path)
    finite = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    mems = [r["peak_mem_gib"] for r in rows if isinstance(r.get("peak_mem_gib"), (int, float))]
    return TrainSummary(
        name=name, steps=len(rows), samples=sum(r.get("samples", 0) for r in rows),
        tokens=sum(r.get("tokens", 0) for r in rows), label_tokens=sum(r.get("label_tokens", 0) for r in rows),
        wall_s=sum(r.get("step_time_s", 0.0) for r in rows), final_loss=finite[-1] if finite else None,
        skipped_steps=sum(1 for r in rows if r.get("nonfinite")), peak_mem_gib=max(mems) if mems else None,
        resumed_from=None, export_dir=str(export_dir), log_path=str(log_path), reused_export=True,
    )


def train_phase(
    name: str,
    strong_model: str | Path,
    dataset,
    data,
    train: TrainConfig,
    work_dir: Path,
    export_dir: Path,
    log_path: Path,
    weak_model: str | Path | None = None,
    tokenizer_path: str | Path | None = None,
) -> TrainSummary:
    """Train one phase and export the strong model as a plain HF checkpoint at `export_dir`.

    Resumes from the latest complete checkpoint in `work_dir` (the log is cut back to it); returns at once when
    `export_dir` already holds a complete checkpoint. Under torchrun every rank calls this; rank 0 writes the
    log and the export.
    """
    export_dir, log_path, work_dir = Path(export_dir), Path(log_path), Path(work_dir)
    if is_complete_hf_checkpoint(export_dir):
        return _summary_from_log(name, export_dir, log_path)
    trainer = Trainer(name=name, strong_model=strong_model, weak_model=weak_model, dataset=dataset, data=data,
                      train=train, work_dir=work_dir, export_dir=export_dir, log_path=log_path,
                      tokenizer_path=tokenizer_path)
    try:
        return trainer.run()
    finally:
        trainer.close()
