"""The training loop: one phase (SFT, joint, continued SFT, pretraining), one loop for all of them.

    train_phase(...)              the public entry; every rank calls it under torchrun
      Trainer.__init__            process group, seeds, backend (it builds the models), data loader, schedule
      Trainer.run                 resume (checkpoint + log truncation) -> steps -> final checkpoint -> export
        Trainer.train_step        micro-batches, all-reduced metrics, finite check, update

Token-weighted normalisation happens in one place: the loss divides every micro-batch's summed loss by the same
divisor, derived from the step's global label-token count (the same on every rank, announced by the loader),
so the update is the token mean of the whole step however it is split into micro-batches and ranks. The
finite check runs before the optimizer update on values every rank shares (the all-reduced loss, the global
gradient norm): all ranks take the same decision.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wdl.data import StepLoader
from wdl.distributed import all_reduce_sum, barrier, broadcast_object, init_distributed
from wdl.io import STEP_LOG_FIX, atomic_write_jsonl, read_jsonl
from wdl.labels import IGNORE_INDEX
from wdl.models import export_dtype, is_complete_hf_checkpoint, save_hf_checkpoint

from .backend import move_batch
from .backends import build_backend
from .checkpoint import CheckpointError, CheckpointManager
from .config import TrainConfig
from .extract import extract_submodel
from .retention import finished_checkpoint
from .metrics import FlopCounter, MetricsSink, host_peak_rss_gib, peak_bf16_flops, peak_memory_gib, \
    reset_peak_memory, sequence_lengths
from .optim import LRSchedule
from .rank_state import rng_state, set_rng_state

# What a step sums over its micro-batches and then over the ranks, in one all-reduce (in this order).
STEP_SUMS = ("loss", "entropy", "margin", "label_tokens", "tokens", "squared_lengths")


class NonFiniteLossError(RuntimeError):
    """A step's loss or gradient norm was NaN/inf under nan_policy='stop' (raised before the update)."""


class NonFiniteWeightsError(ValueError):
    """A phase ended with non-finite weights, or skipped every step as non-finite: nothing is exported."""


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


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of steps <= `step` (those a checkpoint covers), atomically."""
    rows = [r for r in read_jsonl(path, fix=STEP_LOG_FIX) if isinstance(r.get("step"), int) and r["step"] <= step]
    atomic_write_jsonl(path, rows)


class Trainer:
    def __init__(self, *, name: str, strong_model: str | Path, weak_model: str | Path | None, dataset, data,
                 train: TrainConfig, work_dir: Path, export_dir: Path, log_path: Path,
                 tokenizer_path: str | Path | None, fingerprint: str | None = None):
        self.name = name
        self.fingerprint = fingerprint  # what produced this phase's inputs (stamped into every checkpoint)
        self.cfg = train
        self.strong_path, self.weak_path = str(strong_model), (str(weak_model) if weak_model is not None else None)
        self.work_dir, self.export_dir, self.log_path = Path(work_dir), Path(export_dir), Path(log_path)
        self.tokenizer_path = str(tokenizer_path) if tokenizer_path is not None else self.strong_path
        self.dist = init_distributed(require_group=train.backend != "single")
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(train.seed)
        self.backend = build_backend(train, self.dist, strong_model=self.strong_path, weak_model=self.weak_path)
        subs = self.backend.joint.sub_models()
        self.flops = [FlopCounter(m.config, trainable=name == "strong" or not train.freeze_weak)
                      for name, m in subs.items()]
        self.model_config = subs["strong"].config
        self.loader = StepLoader(dataset, data, rank=self.dist.rank, world_size=self.dist.world_size)
        self.total_steps = train.total_steps(len(self.loader))
        self.schedule = LRSchedule.from_config(train, self.total_steps)
        self.ckpt = CheckpointManager(self.work_dir, keep_last=train.keep_last, dist=self.dist)
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
            "fingerprint": self.fingerprint,
        }

    def rank_state(self) -> dict:
        return {"rng": rng_state(), "loader": self.loader.state_dict()}

    def _check_checkpoint(self, path: Path, state: dict) -> None:
        """Refuse a checkpoint of another run: a different fingerprint (config or inputs) or length."""
        if self.fingerprint is not None and state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{path} was written for other inputs or settings than this {self.name} phase has "
                                  f"(fingerprint {str(state.get('fingerprint'))[:12]}, now {self.fingerprint[:12]}): "
                                  f"resume with the original config and data, or delete {self.work_dir} to train "
                                  "the phase from its first step")
        if state.get("optimizer_state") is False:
            raise CheckpointError(f"{path} holds model weights only (its optimizer state was dropped when the phase "
                                  f"finished: train.drop_optimizer_state) and cannot resume training; its export "
                                  f"{self.export_dir} is missing: rebuild it with `wdl extract --from {path} --out "
                                  f"{self.export_dir}`, or delete {self.work_dir} to train the phase again")
        if state.get("total_steps") != self.total_steps:
            raise CheckpointError(f"{path}: the checkpoint belongs to a run of {state.get('total_steps')} steps, this "
                                  f"one has {self.total_steps}: same data and train settings are needed to resume "
                                  f"(or delete {self.work_dir} to start over)")

    def resume(self) -> None:
        self.ckpt.clean_stale()
        found = self.ckpt.load_latest(self.backend, check=self._check_checkpoint)
        if found is None:
            if self.dist.is_main:
                truncate_log(self.log_path, 0)  # a run without a checkpoint starts over: so does its log
            barrier()
            return
        latest, state, rank_state = found
        self.step = state["step"]
        self.samples, self.tokens = state["samples"], state["tokens"]
        self.label_tokens, self.skipped = state["label_tokens"], state["skipped_steps"]
        self.wall_s, self.last_loss = state["wall_s"], state["last_loss"]
        self.loader.load_state_dict(rank_state["loader"])
        set_rng_state(rank_state["rng"])
        self.resumed_from = self.step
        if self.dist.is_main:
            print(f"{self.name}: resuming from step {self.step}/{self.total_steps} ({latest})", flush=True)
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

    def train_step(self, batch) -> dict:
        t0 = time.perf_counter()
        dev = self.dist.device
        reset_peak_memory(dev)
        n_global = batch.global_num_label_tokens
        # The loss divides each micro-batch's sum by this. A backend whose reduction averages the ranks' gradients
        # (gradient_divide_factor = world size) needs a divisor that much smaller for the same token mean.
        num_items = max(n_global, 1) / self.backend.gradient_divide_factor
        sums = torch.zeros(len(STEP_SUMS), dtype=torch.float64, device=dev)
        counts = torch.zeros(3, dtype=torch.float64)  # from the CPU batches: no device sync per micro-batch
        for mb in batch.micro_batches:
            inputs = move_batch(mb, dev)
            out = self.backend.forward_backward(inputs, num_items)
            valid = (inputs["labels"].reshape(-1) != IGNORE_INDEX).double()
            sums[0] += out.loss.double()
            sums[1] += (out.stats.entropy.double() * valid).sum()  # the mixed distribution, over label tokens
            sums[2] += (out.stats.margin.double() * valid).sum()
            lens = sequence_lengths(mb["position_ids"], mb["sample_idx"])
            counts += torch.tensor([mb["num_label_tokens"], int(lens.sum()), int((lens.long() ** 2).sum())],
                                   dtype=torch.float64)
        sums[3:] = counts.to(dev)
        total = dict(zip(STEP_SUMS, all_reduce_sum(sums).tolist()))
        n_label, n_tokens, n_samples = int(total["label_tokens"]), int(total["tokens"]), batch.num_samples
        if n_label != n_global:
            raise ValueError(f"step {self.step}: the loader announced {n_global} label tokens, the micro-batches hold "
                             f"{n_label} (data contract: global_num_label_tokens)")
        loss = total["loss"] / self.backend.gradient_divide_factor  # the token mean of the step
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
        flops = sum(f.step_flops(n_tokens, int(total["squared_lengths"])) for f in self.flops)
        mem = peak_memory_gib(dev)
        if mem is not None:
            self.peak_mem = max(self.peak_mem or 0.0, mem)
        row = {
            "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "entropy": total["entropy"] / max(n_label, 1), "margin": total["margin"] / max(n_label, 1),
            "label_tokens": n_label, "tokens": n_tokens, "samples": n_samples,
            "step_time_s": dt, "tokens_per_s": n_tokens / dt if dt > 0 else None,
            "mfu": flops / (dt * self.peak_flops * self.dist.world_size) if self.peak_flops and dt > 0 else None,
            "peak_mem_gib": mem, "host_rss_gib": host_peak_rss_gib(), "skipped": not applied,
        }
        if nonfinite:
            row["nonfinite"] = True
        self.sink.log(row)
        self.samples += n_samples
        self.tokens += n_tokens
        self.label_tokens += n_label
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
    def check_finite_result(self, sd: dict[str, torch.Tensor] | None) -> None:
        """Refuse to export what a phase did not really train: non-finite weights (rank 0 checks its full
        state dict, every rank gets the verdict) or every step skipped as non-finite."""
        bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())] if sd else []
        bad = broadcast_object(bad)
        advice = (f"lower the learning rate ({self.name}.lr, or train.lr for every phase), check the data, and "
                  f"train the phase again: delete {self.work_dir}, or start a new run directory")
        if bad:
            raise NonFiniteWeightsError(
                f"phase {self.name}: the trained weights hold NaN/inf in {len(bad)} tensors (e.g. {bad[0]}) after "
                f"{self.step} steps, {self.skipped} of them skipped as non-finite (train.nan_policy="
                f"{self.cfg.nan_policy}); nothing was exported. To fix: {advice}")
        if self.skipped and self.skipped >= self.step:
            raise NonFiniteWeightsError(
                f"phase {self.name}: all {self.step} steps had a non-finite loss or gradient and were skipped "
                f"(train.nan_policy=skip): nothing was trained, nothing was exported. To fix: {advice}")

    def export(self) -> None:
        sd = self.backend.full_state_dict("strong")
        self.check_finite_result(sd)
        if self.dist.is_main:
            dtype = export_dtype(self.strong_path)
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
    rows = read_jsonl(log_path, fix=STEP_LOG_FIX)
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
    fingerprint: str | None = None,
) -> TrainSummary:
    """Train one phase and export the strong model as a plain HF checkpoint at `export_dir`.

    Resumes from the newest checkpoint in `work_dir` that verifies (the log is cut back to it); returns at once
    when `export_dir` already holds a complete checkpoint, and exports from the final checkpoint without training
    when the phase was finished and its checkpoints keep model weights only (train.drop_optimizer_state).
    `fingerprint` (the pipeline's digest of the phase's config and inputs) is stamped into every checkpoint, and
    a checkpoint with another one is refused. Under torchrun every rank calls this; rank 0 writes the log and the
    export.
    """
    export_dir, log_path, work_dir = Path(export_dir), Path(log_path), Path(work_dir)
    if is_complete_hf_checkpoint(export_dir):
        return _summary_from_log(name, export_dir, log_path)
    finished = finished_checkpoint(work_dir, fingerprint)  # the phase trained to its end, weights kept
    if finished is not None:
        if init_distributed().is_main:
            print(f"{name}: exporting again from its final checkpoint {finished} (the phase is finished)", flush=True)
            extract_submodel(finished, export_dir)
        barrier()
        return _summary_from_log(name, export_dir, log_path)
    trainer = Trainer(name=name, strong_model=strong_model, weak_model=weak_model, dataset=dataset, data=data,
                      train=train, work_dir=work_dir, export_dir=export_dir, log_path=log_path,
                      tokenizer_path=tokenizer_path, fingerprint=fingerprint)
    try:
        return trainer.run()
    finally:
        trainer.close()
