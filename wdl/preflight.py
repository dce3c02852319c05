"""The preflight: everything a run needs, checked in seconds before any work (`wdl check CONFIG`, and the start of
`wdl run`), each problem one line with its fix.

- models (`model.base`, `model.tokenizer`, brownboost's third model): a local checkpoint folder or a Hugging Face
  name in the local cache (or on the hub when it is reachable); the config loads and is a causal LM;
- the tokenizer loads, has a chat template that renders a user/assistant turn, fits the model's vocabulary;
- `data.sources`: the files exist and their first records parse (and render through the chat template);
- the eval sets: present and readable (`eval.data_dir`, paths), with the list to restate when one is missing;
- disk: free space against an estimate of what the pending phases write (wdl/footprint.py);
- GPU memory: an estimate per phase against the device's memory, where a GPU is present.

Only the pending phases are checked (a finished phase needs nothing more). Nothing here downloads weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from wdl import footprint
from wdl.data.records import RecordError, normalize
from wdl.data.records import check_sources as check_local_sources
from wdl.data.tokenize import assistant_spans, end_of_turn_marker
from wdl.eval import EvalConfig, load_benchmark
from wdl.models import check_model_source
from wdl.run_dir import PipelineError, RunPaths
from wdl.tiny import tiny_qwen3_config

TRAINING_PHASES = ("pretrain", "sft", "joint", "sft_continued")
SCORING_PHASES = ("score_base", "score_sft")
_FIRST_RECORDS = 3


@dataclass(frozen=True)
class Finding:
    check: str  # the config key or resource checked: "model.base", "data.sources", "disk", ...
    ok: bool
    message: str
    fix: str = ""

    def __str__(self) -> str:
        mark = "ok " if self.ok else "✗  "
        text = self.message if self.message.startswith(self.check) else f"{self.check}: {self.message}"
        return f"{mark}{text}" + (f" — fix: {self.fix}" if self.fix else "")


class PreflightError(PipelineError):
    def __init__(self, problems: Sequence[Finding]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"the preflight found {len(self.problems)} problem(s); nothing was started:\n{lines}\n"
            "(`wdl check CONFIG ...` repeats these checks; `wdl run --no-preflight` skips them)"
        )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would: its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


# ------------------------------------------------------------------------------------------------ models
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def check_model(key: str, name: str) -> tuple[Finding, Any]:
    """(finding, transformers config or None) for a model named by config key `key`: loadable files
    (`check_model_source`: a complete local checkpoint, or a hub name cached or reachable), a causal LM config."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    fix_path = (
        f"{key}=/path/to/checkpoint (a local folder with config.json and *.safetensors) or a Hugging Face "
        "model name such as Qwen/Qwen3-4B-Base"
    )
    local = Path(name).expanduser()
    try:
        check_model_source(name, key)
        config = AutoConfig.from_pretrained(
            str(local) if local.is_dir() else name, local_files_only=hub_offline() and not local.is_dir()
        )
    except (OSError, ValueError, KeyError) as e:
        return Finding(key, False, _first_line(e), fix_path if local.is_absolute() or local.exists() else ""), None
    where = "local checkpoint" if local.is_dir() else "Hugging Face hub name"
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return Finding(
            key, False, f"{name} is a {config.model_type!r} model, not a causal language model", fix_path
        ), None
    size = footprint.model_size(config)
    return Finding(
        key, True, f"{name}: {config.model_type} config loads ({where}; {size.params / 1e9:.2f} B parameters)"
    ), config


def check_tokenizer(key: str, source: str, *, vocab_size: int | None, enable_thinking: bool) -> tuple[Finding, Any]:
    from transformers import AutoTokenizer

    fix = f"{key}=<a checkpoint folder or model name with tokenizer files and a chat template>"
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=hub_offline())
    except (OSError, ValueError, TypeError) as e:
        return Finding(key, False, f"no tokenizer loads from {source} ({_first_line(e)})", fix), None
    if vocab_size is not None and len(tok) > vocab_size:
        return Finding(
            key,
            False,
            f"the tokenizer of {source} has {len(tok)} tokens, more than the model's {vocab_size} embeddings",
            "model.tokenizer=<the base model's own tokenizer>",
        ), None
    if not tok.chat_template:
        return Finding(
            key,
            False,
            f"the tokenizer of {source} has no chat template (needed to render "
            "the training conversations and the eval prompts)",
            fix,
        ), None
    try:
        marker = end_of_turn_marker(tok, enable_thinking)
        assistant_spans(
            tok, [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}], enable_thinking, marker
        )
    except Exception as e:  # noqa: BLE001 - any template error is the finding
        return Finding(
            key, False, f"the chat template of {source} does not render a user/assistant turn ({_first_line(e)})", fix
        ), None
    return Finding(
        key, True, f"tokenizer of {source}: {len(tok)} tokens, chat template ok (turns end with {marker!r})"
    ), tok


# -------------------------------------------------------------------------------------------------- data
def _first_records(path: Path, n: int) -> list[tuple[int, Any]]:
    """(line or record number, parsed JSON or the decode error) of the first `n` records of a .jsonl/.json file."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return [(e.lineno, e)]
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise RecordError("a .json source must hold a list of records")
        return list(enumerate(data[:n], start=1))
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if len(out) == n:
                break
            if line.strip():
                try:
                    out.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    out.append((lineno, e))
    return out


def check_sources(data, tokenizer) -> list[Finding]:
    findings = []
    fix_missing = 'data.sources=[/path/to/train.jsonl] (chat JSONL, one {"messages": [...], "idx": N} per line)'
    for s in data.sources:
        p = Path(s).expanduser()
        if p.is_dir():
            findings.append(Finding("data.sources", False, f"{s} is a directory", "list its .jsonl/.json files"))
            continue
        if not p.exists():
            try:
                check_local_sources([s])  # the loader's rule: a path (it does not exist) or a hub dataset name
            except ValueError:
                findings.append(Finding("data.sources", False, f"{s} does not exist", fix_missing))
            else:
                findings.append(Finding("data.sources", True, f"{s}: a Hugging Face dataset (read at run time)"))
            continue
        fix_record = "fix the record, or set data.format / data.field_map (docs/data.md), or data.on_bad_record=skip"
        try:
            records = _first_records(p, _FIRST_RECORDS)
            if not records:
                findings.append(Finding("data.sources", False, f"{s} holds no record", fix_missing))
                continue
            chat = []
            for where, rec in records:
                if isinstance(rec, json.JSONDecodeError):
                    raise RecordError(f"{p}:{where}: invalid JSON ({rec.msg})")
                try:
                    messages, _, _ = normalize(rec, data.format, data.field_map)
                except RecordError as e:
                    raise RecordError(f"{p}:{where}: {e}") from None
                if messages is not None:
                    chat.append((where, messages))
            if chat and tokenizer is not None:
                marker = end_of_turn_marker(tokenizer, data.enable_thinking)
                for where, messages in chat:
                    try:
                        assistant_spans(tokenizer, messages, data.enable_thinking, marker)
                    except Exception as e:  # noqa: BLE001
                        raise RecordError(
                            f"{p}:{where}: the chat template does not render it ({_first_line(e)})"
                        ) from None
        except (RecordError, OSError, UnicodeDecodeError) as e:
            findings.append(Finding("data.sources", False, str(e), fix_record))
            continue
        kind = "chat" if chat else "plain text"
        findings.append(
            Finding(
                "data.sources",
                True,
                f"{s}: {footprint.fmt_bytes(p.stat().st_size)}, the first {len(records)} records parse ({kind})",
            )
        )
    return findings


# -------------------------------------------------------------------------------------------------- eval
def _spec_entry(spec) -> dict:
    """A benchmark spec as the short mapping a user writes (defaults left out)."""
    from dataclasses import fields

    default = type(spec)(name=spec.name)
    return {
        f.name: getattr(spec, f.name)
        for f in fields(spec)
        if f.name == "name" or getattr(spec, f.name) != getattr(default, f.name)
    }


def restate_benchmarks(specs) -> str:
    """An `eval.benchmarks=[...]` override listing `specs` (quoted for a shell)."""
    flow = yaml.safe_dump([_spec_entry(s) for s in specs], default_flow_style=True, width=10**6).strip()
    return f"'eval.benchmarks={flow}'"


def check_eval(ev: EvalConfig, user_specs) -> list[Finding]:
    """The sets of `ev` (the eval config the run will use); `user_specs` are the sets the config lists (optional
    ones included, the pipeline's synthetic set not), from which the fixes restate the list."""
    if not ev.benchmarks:
        return [
            Finding(
                "eval.benchmarks",
                False,
                "no benchmarks to evaluate on",
                "list them, e.g. 'eval.benchmarks=[{name: gsm8k}]' with eval.data_dir=/data/seed_eval "
                "(docs/eval.md), or run.eval=false",
            )
        ]
    findings = []
    if ev.data_dir and not Path(ev.data_dir).expanduser().is_dir():
        findings.append(
            Finding(
                "eval.data_dir",
                False,
                f"{ev.data_dir} does not exist",
                "eval.data_dir=/path/to/seed_eval (a folder with <set>/test.json, the reference "
                "layout), or run.eval=false",
            )
        )
    unplaced = [
        s
        for s in ev.benchmarks
        if s.info is not None and not s.path and not s.hf and s.info.hf is None and ev.resolve_path(s) is None
    ]
    if unplaced and not ev.data_dir:
        names = ", ".join(s.name for s in unplaced)
        keep = [s for s in user_specs if s.name not in {u.name for u in unplaced}]
        drop = f"evaluate the others only: {restate_benchmarks(keep)}; " if keep else ""
        findings.append(
            Finding(
                "eval.data_dir",
                False,
                f"not set, and {names} have no path",
                "eval.data_dir=/path/to/seed_eval (a folder in the reference layout: "
                f"aime2025/test.json, gsm8k/test.json, ...); {drop}or run.eval=false",
            )
        )
    for spec in ev.benchmarks:
        if spec in unplaced and not ev.data_dir:
            continue
        hub = spec.hf or (spec.info.hf if spec.info else None)
        try:
            if ev.resolve_path(spec) is None and hub and hub_offline():
                raise OSError(
                    f"no local copy, and its Hugging Face copy {hub} cannot be read: the hub is off (HF_HUB_OFFLINE)"
                )
            problems = load_benchmark(spec, ev)
        except (OSError, ValueError) as e:
            keep = [s for s in user_specs if s.name != spec.name]
            where = ev.resolve_path(spec)
            folder = spec.info.subdir if spec.info else spec.name
            place = (
                f"put it at {Path(ev.data_dir) / folder / 'test.json'}, "
                if ev.data_dir and spec.info and where is None
                else ""
            )
            restate = restate_benchmarks([*keep, type(spec)(name=spec.name, path="/path/to/test.json")])
            drop = f"drop it: {restate_benchmarks(keep)}, " if keep else ""
            findings.append(
                Finding(
                    f"eval.benchmarks: {spec.name}",
                    False,
                    _first_line(e),
                    f"{place}give its file: {restate}, {drop}or run.eval=false",
                )
            )
            continue
        findings.append(
            Finding(
                f"eval.benchmarks: {spec.name}",
                True,
                f"{len(problems)} problems from "
                f"{ev.resolve_path(spec) or spec.hf or (spec.info.hf if spec.info else '?')}",
            )
        )
    return findings


# ------------------------------------------------------------------------------------------ disk and memory
@dataclass(frozen=True)
class PhasePlan:
    """A pending training phase, for the estimates: its TrainConfig and the sizes of its sub-models."""

    name: str
    train: Any
    strong: footprint.ModelSize
    weak: footprint.ModelSize | None = None


def check_disk(root: Path, plans: Sequence[PhasePlan], other: int) -> Finding:
    phases = [footprint.training_phase_disk(p.name, p.strong, p.weak, p.train) for p in plans]
    need = footprint.run_disk_peak(phases, other)
    free = free_disk_bytes(root)
    detail = ", ".join([*(p.text for p in phases), f"data cache and scores {footprint.fmt_bytes(other)}"])
    if need > free:
        keep = sorted({p.train.keep_last for p in plans})
        fixes = ["free space or put --out on a larger disk"]
        if keep and keep[-1] > 1:
            fixes.append(f"fewer checkpoints kept: train.keep_last=1 (now {'/'.join(map(str, keep))})")
        if any(not p.train.drop_optimizer_state for p in plans):
            fixes.append("train.drop_optimizer_state=true (finished phases keep model weights only)")
        return Finding(
            "disk",
            False,
            f"the run writes up to about {footprint.fmt_bytes(need)} ({detail}); "
            f"{footprint.fmt_bytes(free)} are free under {root}",
            "; ".join(fixes),
        )
    return Finding(
        "disk", True, f"up to about {footprint.fmt_bytes(need)} ({detail}); {footprint.fmt_bytes(free)} free"
    )


def check_gpu_memory(
    plans: Sequence[PhasePlan],
    scoring: footprint.ModelSize | None,
    tokens_scoring: int,
    tokens_train: int,
    world_size: int,
) -> list[Finding]:
    if not torch.cuda.is_available():
        return []
    device = torch.cuda.current_device()
    have = torch.cuda.get_device_properties(device).total_memory
    findings = []
    for p in plans:
        est = footprint.training_memory(p.strong, p.weak, p.train, tokens_train, world_size)
        text = (
            f"{p.name} needs about {footprint.fmt_bytes(est.total)} per GPU (model states "
            f"{footprint.fmt_bytes(est.states)} + activations {footprint.fmt_bytes(est.activations)}, "
            f"{p.train.backend}, {world_size} process(es); an estimate, wdl/footprint.py); the GPU has "
            f"{footprint.fmt_bytes(have)}"
        )
        if est.total > have:
            findings.append(
                Finding(
                    f"gpu memory: {p.name}",
                    False,
                    text,
                    "more GPUs (scripts/launch_torchrun.sh: FSDP2), DeepSpeed ZeRO-3 with "
                    "OFFLOAD_OPTIMIZER=true, or "
                    f"{p.name if p.name != 'sft_continued' else 'joint'}.activation_checkpointing=true"
                    " / a smaller data.tokens_per_micro_batch",
                )
            )
        else:
            findings.append(Finding(f"gpu memory: {p.name}", True, text))
    if scoring is not None:
        est = footprint.scoring_memory(scoring, tokens_scoring)
        if est.total > have:
            findings.append(
                Finding(
                    "gpu memory: scoring",
                    False,
                    f"scoring needs about {footprint.fmt_bytes(est.total)}; the GPU has {footprint.fmt_bytes(have)}",
                    "a smaller scoring.tokens_per_micro_batch",
                )
            )
    return findings


# ------------------------------------------------------------------------------------------------ the run
def _tiny_size(cfg) -> footprint.ModelSize:
    t = cfg.model.tiny
    shape = {k: v for k, v in asdict(t).items() if k not in ("vocab_size", "seed")}
    return replace(footprint.model_size(tiny_qwen3_config(t.vocab_size, **shape)), export_bytes=4)


def preflight(
    cfg,
    paths: RunPaths,
    pending: Sequence[str],
    eval_cfg: EvalConfig | None,
    skipped_sets: Sequence = (),
    world_size: int = 1,
) -> list[Finding]:
    """Every check the pending phases of a run need (see the module docstring), in that order.

    `eval_cfg` is the eval config the run will use (None when eval is not pending), `skipped_sets` the optional
    sets it leaves out for lack of a local copy."""
    pending = set(pending)
    findings: list[Finding] = []
    uses_base = bool(pending & {"score_base", "sft", "joint", "eval"})
    uses_data = bool(pending & {"score_base", "sft", "score_sft", "joint", "sft_continued"})
    base_size, tokenizer = None, None
    if cfg.model.is_tiny:
        base_size = _tiny_size(cfg)
        if uses_base:
            findings.append(Finding("model.base", True, "tiny: built offline (phase pretrain)"))
    elif uses_base or uses_data:
        finding, config = check_model("model.base", cfg.model.base)
        findings.append(finding)
        if config is not None:
            base_size = footprint.model_size(config)
        source = cfg.model.tokenizer or cfg.model.base
        if config is not None or cfg.model.tokenizer:
            finding, tokenizer = check_tokenizer(
                "model.tokenizer" if cfg.model.tokenizer else "model.base",
                source,
                vocab_size=config.vocab_size if config is not None else None,
                enable_thinking=cfg.data.enable_thinking,
            )
            findings.append(finding)
    if "score_third" in pending:
        findings.append(check_model("sampling.brownboost.third_model", cfg.sampling.brownboost.third_model)[0])
    if uses_data:
        if cfg.synthetic.enabled:
            findings.append(Finding("data.sources", True, "the synthetic split (phase data writes it)"))
        else:
            findings.extend(check_sources(cfg.data, tokenizer))
    if eval_cfg is not None:
        synthetic = cfg.synthetic.enabled and any(b.name == "synthetic" for b in eval_cfg.benchmarks)
        checked = [b for b in eval_cfg.benchmarks if not (synthetic and b.name == "synthetic")]
        if synthetic:
            findings.append(
                Finding("eval.benchmarks: synthetic", True, "the held-out synthetic split (phase data writes it)")
            )
        if checked or not synthetic:
            listed = [b for b in cfg.eval.benchmarks if not (synthetic and b.name == "synthetic")]
            findings.extend(check_eval(replace(eval_cfg, benchmarks=checked), listed))
        for spec in skipped_sets:
            findings.append(
                Finding(
                    f"eval.benchmarks: {spec.name}",
                    True,
                    "optional and not found under "
                    f"eval.data_dir ({eval_cfg.data_dir}): skipped (evaluated once "
                    f"<data_dir>/{spec.info.subdir if spec.info else spec.name}/test.json exists, "
                    "or listed without optional: true)",
                )
            )
    if base_size is not None:
        plans = []
        if cfg.model.is_tiny and "pretrain" in pending:
            plans.append(PhasePlan("pretrain", cfg.pretrain, base_size))
        if "sft" in pending:
            plans.append(PhasePlan("sft", cfg.sft, base_size))
        if "joint" in pending:
            plans.append(PhasePlan("joint", cfg.joint, base_size, base_size))
        if "sft_continued" in pending:
            plans.append(PhasePlan("sft_continued", cfg.joint, base_size))
        if plans or uses_data:
            sources = [] if cfg.synthetic.enabled else list(cfg.data.sources)
            findings.append(check_disk(paths.root, plans, footprint.data_cache_bytes(sources) + (64 << 20)))
        scoring = base_size if pending & set(SCORING_PHASES) else None
        findings.extend(
            check_gpu_memory(
                plans, scoring, cfg.scoring.tokens_per_micro_batch, cfg.data.tokens_per_micro_batch, world_size
            )
        )
    return findings


def format_findings(findings: Sequence[Finding]) -> str:
    return "\n".join(str(f) for f in findings)


def problems(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if not f.ok]


__all__ = [
    "Finding",
    "PhasePlan",
    "PreflightError",
    "check_disk",
    "check_eval",
    "check_gpu_memory",
    "check_model",
    "check_sources",
    "check_tokenizer",
    "format_findings",
    "free_disk_bytes",
    "hub_offline",
    "preflight",
    "problems",
    "restate_benchmarks",
]
