"""The `wdl` command.

  wdl run [CONFIG] [--out DIR] [key=value ...]      every phase (complete ones are skipped, a partial one resumes)
  wdl run [CONFIG] --from DIR --out NEW ...         a branch of DIR: its phases this config would redo identically
                                                    are taken (hard links), the rest run in NEW
  wdl score | sft | weights | joint [CONFIG] [--out DIR] [key=value ...]
                                                    the pipeline up to that phase (same run directory)
  wdl score --model PATH --name NAME ...            score any model on the config's training data
  wdl weights --scores-dir D --out-dir D ...        weights + resampling from existing score files
  wdl extract --from DIR --out DIR                  the strong sub-model of a joint checkpoint -> HF checkpoint
  wdl eval ...                                      the evaluator (wdl.eval), see `wdl eval --help`
  wdl check [CONFIG] [--out DIR] [key=value ...]    the preflight alone: models, tokenizer, data, eval sets,
                                                    disk (and GPU memory); each problem one line with its fix
  wdl config [CONFIG] [key=value ...]               print the resolved config (training data not required)
  wdl --version

CONFIG is a YAML file or a preset name; without it the embedded default (`tiny`) runs.

Errors the user can fix (config, data, run directory, a damaged file) print one line naming what to change and
exit with status 2; I/O errors (disk full, permission denied) one line with the path, status 1; Ctrl-C exits
with 130 ("interrupted; rerun the same command to resume"). WDL_TRACEBACK=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import io
import os
import sys
from pathlib import Path

import datasets
from transformers.utils import logging as hf_logging

from wdl.config import dump_yaml, load_pipeline_config, preset_names
from wdl.eval.cli import build_parser as eval_parser
from wdl.eval.cli import main as eval_main
from wdl.io import DiskFullError, is_disk_full, was_interrupted
from wdl.models import check_model_source
from wdl.pipeline import PHASE_NAMES, Pipeline
from wdl.preflight import problems
from wdl.train import NonFiniteLossError, extract_submodel
from wdl.weights_phase import compute_weights

PHASE_COMMANDS = {
    "score": ("score_base", "score the base model (and M1 once trained) on the training data"),
    "sft": ("sft", "supervised fine-tuning of the base model -> DIR/sft"),
    "weights": ("weights", "score M1, merge scores by idx, sampling weights and resampling -> DIR/sampling"),
    "joint": ("joint", "joint weak/strong training by logit mixing -> DIR/wmss"),
}

_CONFIG_HELP = (
    "CONFIG (a YAML file or a preset name: {presets}; default: tiny) followed by key.path=value overrides, "
    "e.g. sft.lr=2e-5 run.sft_continued=true"
)


def _add_config_args(p: argparse.ArgumentParser, *, runs: bool = False) -> None:
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value", help=_CONFIG_HELP.format(presets=", ".join(
        preset_names())))
    p.add_argument("--out", metavar="DIR", help="run directory (default: run.out of the config)")
    if runs:
        p.add_argument("--allow-data-change", action="store_true",
                       help="resume although a training data file changed since the run started: go on with the "
                       "new content (phases already complete keep what they computed from the old)")
        p.add_argument("--no-preflight", dest="preflight", action="store_false",
                       help="skip the checks before any work (see `wdl check`)")
        p.add_argument("--from", dest="source", metavar="DIR", type=Path,
                       help="branch from the run in DIR: take each of its finished phases whose config values and "
                       "inputs are the same in this run (hard links; e.g. scoring and SFT for a joint.lam sweep), "
                       "run the rest in --out")
        p.add_argument("--copy", dest="copy_from_source", action="store_true",
                       help="with --from: copy the reused files instead of hard-linking them")


def version() -> str:
    try:
        return importlib.metadata.version("wdl")
    except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wdl",
        description="Weak-Driven Learning (WMSS): SFT, entropy-based resampling and joint weak/strong training "
        "by logit mixing, with fused kernels.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--version", action="version", version=f"wdl {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the whole pipeline (the embedded tiny default without CONFIG)",
                       description="Run every phase: " + ", ".join(PHASE_NAMES) + ". Complete phases are skipped; "
                       "an interrupted one resumes. Rerun the same command after any interruption. The "
                       "preflight (`wdl check`) runs first.")
    _add_config_args(p, runs=True)

    for name, (target, text) in PHASE_COMMANDS.items():
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. Runs the pipeline up to "
                           f"phase {target!r} in the run directory (complete phases are skipped).")
        _add_config_args(p, runs=True)
        if name == "score":
            p.add_argument("--model", help="score this model (HF name or checkpoint) instead of the pipeline's")
            p.add_argument("--name", help="with --model: output name, DIR/scores/NAME.jsonl")
        if name == "weights":
            p.add_argument("--scores-dir", type=Path, help="standalone: a folder with base.jsonl and sft.jsonl "
                           "(and third.jsonl for brownboost) score files; needs --out-dir")
            p.add_argument("--out-dir", type=Path, help="standalone: where weights.jsonl and resampled.json go")

    p = sub.add_parser("extract", help="extract the strong sub-model of a joint training checkpoint",
                       description="Write the strong sub-model of a joint training run (its work directory or a "
                       "checkpoint in it) as a plain Hugging Face checkpoint.")
    p.add_argument("--from", dest="source", required=True, type=Path, help="joint work dir (DIR/work/joint) or "
                   "one of its checkpoints")
    p.add_argument("--out", required=True, type=Path, help="output directory (HF checkpoint): new, empty, or a "
                   "previous export of wdl (replaced)")
    p.add_argument("--which", choices=("strong", "weak"), default="strong", help="sub-model to extract")

    sub.add_parser("eval", help="evaluate checkpoints on math benchmarks (see `wdl eval --help`)", add_help=False)

    p = sub.add_parser("check", help="check models, tokenizer, data, eval sets, disk and GPU memory before a run",
                       description="The preflight of `wdl run` alone: the base model and tokenizer load (config, "
                       "chat template), the training files exist and their first records parse, the eval sets are "
                       "present, the free disk covers an estimate of what the run writes, and (where a GPU is "
                       "present) an estimate of each phase's memory fits. One line per check; each problem names "
                       "its fix. Exit status 1 when there is a problem.")
    _add_config_args(p)

    p = sub.add_parser("config", help="print the resolved config (validates it)",
                       description="Print the resolved config as YAML, after presets, extends and overrides. "
                       "A preset prints without training data (`wdl run` needs data.sources).")
    _add_config_args(p)
    p.add_argument("--presets", action="store_true", help="list the preset names and exit")
    return parser


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] key=value ... -> (CONFIG or None, overrides)."""
    config, overrides = None, []
    for item in items:
        if "=" in item and not Path(item).exists():
            overrides.append(item)
        elif config is None and not overrides:
            config = item
        else:
            raise ValueError(f"{item!r}: expected key.path=value (the CONFIG comes first, once)")
    return config, overrides


def _load(args, *, runnable: bool = True):
    config, overrides = split_config_args(args.args)
    if args.out:
        overrides.append(f"run.out={args.out}")
    return load_pipeline_config(config, overrides, runnable=runnable)


def describe_os_error(e: OSError) -> str:
    """One line for an I/O error: what failed, on which path, and what to do."""
    if isinstance(e, DiskFullError) or is_disk_full(e):
        what = str(e) if isinstance(e, DiskFullError) else \
            "no space left on device" + (f" while writing {e.filename}" if e.filename else "")
        return f"{what}: free some space and rerun the same command to resume (nothing half-written is kept)"
    where = f": {e.filename}" if e.filename else ""
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        return f"{e.strerror or 'permission denied'}{where}: check the permissions, or choose another path"
    text = (e.strerror or str(e) or type(e).__name__).strip().splitlines()
    return f"{text[0] if text else type(e).__name__}{where}"


def _check_eval_models(argv: list[str]) -> None:
    """`wdl eval`: every local model directory given is complete (a truncated file is named, not a traceback)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args, _ = eval_parser().parse_known_args(argv)
    except SystemExit:  # --help or a usage error: the evaluator prints it
        return
    for item in args.models:
        name, sep, path = item.partition("=")
        if not (sep and name and "/" not in name and not Path(item).exists()):
            path = item
        check_model_source(path, "model")


def _guarded(command: str, run) -> int:
    """Run a command; user errors, I/O errors and Ctrl-C end in one line on stderr."""
    if os.environ.get("WDL_TRACEBACK") == "1":
        return run()
    try:
        return run()
    except BaseException as e:
        if was_interrupted(e):  # first: a Ctrl-C inside a checkpoint read arrives wrapped in another exception
            print(f"\nwdl {command}: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
        if isinstance(e, (ValueError, NonFiniteLossError)):  # config, input, run-directory errors; divergence
            print(f"wdl {command}: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            print(f"wdl {command}: error: {describe_os_error(e)}", file=sys.stderr)
            return 1
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":  # the evaluator owns its arguments (and its --help)
        return _guarded("eval", lambda: (_check_eval_models(argv[1:]), eval_main(argv[1:]) or 0)[1])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `wdl run CONFIG --out DIR key=value ...`: positionals after an option land in `extra`; they are overrides
    if extra:
        if not hasattr(args, "args") or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args = [*args.args, *extra]
    return _guarded(args.command, lambda: _dispatch(args))


def _dispatch(args) -> int:
    if args.command == "config":
        if args.presets:
            print("\n".join(preset_names()))
            return 0
        print(dump_yaml(_load(args, runnable=False)), end="")
        return 0
    if args.command == "extract":
        extract_submodel(args.source, args.out, which=args.which)
        print(f"{args.which} sub-model -> {args.out}")
        return 0
    if args.command == "weights" and (args.scores_dir or args.out_dir):
        if not (args.scores_dir and args.out_dir):
            raise ValueError("--scores-dir and --out-dir go together")
        cfg = _load(args)
        print(compute_weights(cfg.sampling, args.scores_dir, args.out_dir,
                              brownboost=cfg.sampling.scheme == "brownboost"))
        return 0

    cfg = _load(args)  # config errors first, before any work
    hf_logging.disable_progress_bar()  # per-file load/save bars would drown the phase output
    if not sys.stdout.isatty():  # in a log file a progress bar is one endless line
        datasets.disable_progress_bars()
    if getattr(args, "copy_from_source", False) and getattr(args, "source", None) is None:
        raise ValueError("--copy goes with --from DIR (it copies the phases taken from DIR)")
    pipe = Pipeline(cfg, cfg.run.out, allow_data_change=getattr(args, "allow_data_change", False),
                    preflight=getattr(args, "preflight", True), source=getattr(args, "source", None),
                    copy_from_source=getattr(args, "copy_from_source", False))
    if args.command == "check":
        findings = pipe.check()
        for f in findings:
            print(f)
        bad = problems(findings)
        print(f"{len(bad)} problem(s)" if bad else "ready to run", file=sys.stderr if bad else sys.stdout)
        return 1 if bad else 0
    if args.command == "run":
        pipe.run()
    elif args.command == "score" and args.model:
        if not args.name:
            raise ValueError("--model needs --name (the output is DIR/scores/NAME.jsonl)")
        with pipe.session():
            pipe.score_model(args.model, args.name)
    else:
        target = PHASE_COMMANDS[args.command][0]
        pipe.run(target)
        if args.command == "score" and pipe.is_done("sft"):
            pipe.check_first = False  # checked by the run above
            pipe.run("score_sft")
    return 0


if __name__ == "__main__":
    sys.exit(main())
