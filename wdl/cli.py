"""The `wdl` command.

  wdl run [CONFIG] [--out DIR] [key=value ...]      every phase (complete ones are skipped, a partial one resumes)
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
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import datasets
from transformers.utils import logging as hf_logging

from wdl.config import dump_yaml, load_pipeline_config, preset_names
from wdl.eval.cli import main as eval_main
from wdl.pipeline import PHASE_NAMES, Pipeline
from wdl.preflight import problems
from wdl.train import extract_submodel
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


def _add_config_args(p: argparse.ArgumentParser, *, preflight: bool = False) -> None:
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value", help=_CONFIG_HELP.format(presets=", ".join(
        preset_names())))
    p.add_argument("--out", metavar="DIR", help="run directory (default: run.out of the config)")
    if preflight:
        p.add_argument("--no-preflight", dest="preflight", action="store_false",
                       help="skip the checks before any work (see `wdl check`)")


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
    _add_config_args(p, preflight=True)

    for name, (target, text) in PHASE_COMMANDS.items():
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. Runs the pipeline up to "
                           f"phase {target!r} in the run directory (complete phases are skipped).")
        _add_config_args(p, preflight=True)
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
    p.add_argument("--out", required=True, type=Path, help="output directory (HF checkpoint)")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":  # the evaluator owns its arguments (and its --help)
        return eval_main(argv[1:]) or 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `wdl run CONFIG --out DIR key=value ...`: positionals after an option land in `extra`; they are overrides
    if extra:
        if not hasattr(args, "args") or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args = [*args.args, *extra]
    try:
        return _dispatch(args)
    except ValueError as e:  # configuration and input errors: a message, no traceback
        print(f"wdl {args.command}: error: {e}", file=sys.stderr)
        return 2


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
    pipe = Pipeline(cfg, cfg.run.out, preflight=getattr(args, "preflight", True))
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
        pipe.prepare_run_dir()
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
