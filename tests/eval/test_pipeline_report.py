"""The pipeline's eval phase and report as `wdl run` calls them (wdl.pipeline.Pipeline.phase_eval, then
phase_report), with a fake generator in place of the engine: report.json carries, per model and benchmark,
the grader, protocol, every grader's accuracy and the SHA-256 provenance; report.md says which grader and
protocol made the numbers and prints both graders side by side."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from wdl import pipeline
from wdl.config import load_pipeline_config
from wdl.eval import evaluate_model

from .fakes import FakeGenerator

CANNED = {
    "sft": {"Tom has": "The answer is 7.", "A shirt": "\\boxed{60}", "dropped 8": "\\boxed{3}", "1200 hens": "?"},
    "wmss": {"Tom has": "\\boxed{7}", "A shirt": "\\boxed{60}", "dropped 8": "\\boxed{-3}", "1200 hens": "1500"},
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_names_grader_protocol_and_hashes(monkeypatch, tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    cfg = load_pipeline_config(None, ["run.eval_base=false", "run.sft_continued=false", "synthetic.n_eval=0",
                                      f"eval.data_dir={bench_dir}", "eval.benchmarks=[{name: gsm8k}]",
                                      "eval.allow_row_count_mismatch=true", "eval.progress=false"])
    p = pipeline.Pipeline(cfg, tmp_path / "run")
    for name in ("sft", "wmss"):
        shutil.copytree(tiny_model_dir, getattr(p.paths, name))
    seen = []

    def fake_evaluate(path, ev, out_dir):
        seen.append((path, ev))
        return evaluate_model(path, ev, out_dir, generator=FakeGenerator(tiny_tokenizer, CANNED[Path(path).name]))

    monkeypatch.setattr(pipeline, "evaluate_model", fake_evaluate)
    p.phase_eval()
    p.phase_report()
    assert [Path(path).name for path, _ in seen] == ["sft", "wmss"]
    assert (seen[0][1].grader, seen[0][1].protocol) == ("reference", "paper")  # the defaults reach the evaluator

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    data = bench_dir / "gsm8k" / "test.json"
    reference_src = Path(__file__).resolve().parents[2] / "wdl" / "eval" / "grading" / "reference.py"
    want = {"sft": (0.25, 0.5), "wmss": (0.75, 1.0)}  # (reference, lenient): bare numbers count for lenient only
    for model, (ref, lenient) in want.items():
        r = report["eval"][model]["gsm8k"]
        assert (r["accuracy"], r["n"], r["grader"], r["protocol"], r["mode"]) == (ref, 4, "reference", "paper",
                                                                                  "greedy")
        assert (r["accuracy_reference"], r["accuracy_lenient"]) == (ref, lenient)
        model_hash = json.loads((tmp_path / "run" / "eval" / model / "summary.json").read_text())["provenance"][
            "model"]["sha256"]
        assert r["provenance"] == {"dataset_sha256": _sha(data), "grader_sha256": _sha(reference_src),
                                   "model_sha256": model_hash}
        assert len(model_hash) == 64
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Accuracy: grader reference, protocol paper, mode greedy." in md
    section = md[md.index("### Accuracy (%) by grader"):]
    assert "| benchmark | n | sft (reference) | sft (lenient) | wmss (reference) | wmss (lenient) |" in section
    assert "| gsm8k | 4 | 25.0 | 50.0 | 75.0 | **100.0** |" in section
