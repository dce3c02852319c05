"""Peak host memory of one joint training step (forward + backward) with each loss, in a fresh process:

    python peak_memory_script.py STRONG WEAK TOKENS  ->  one JSON line per loss on stdout (fused, reference)

The step is JointModel's (both sub-models trained, fp32, one [1, TOKENS] micro-batch, every label supervised)
with the fused kernel's loss or the materialized reference (bench/bench_e2e.py). The peak is the resident set's
high-water mark during the step (VmHWM, reset before it through /proc/self/clear_refs) minus the resident set
before it.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.bench_e2e import MaterializedMixedCrossEntropy  # noqa: E402

from wdl.models import FusedMixedCrossEntropy, JointModel, load_causal_lm  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def step_peak(joint: JointModel, tokens: int) -> dict:
    torch.manual_seed(0)
    ids = torch.randint(0, 151643, (1, tokens))
    labels = torch.roll(ids, -1, dims=1)
    positions = torch.arange(tokens)[None]
    joint.zero_grad(set_to_none=True)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current resident set
    before = _status_kib("VmRSS")
    out = joint(ids, labels, positions, num_items=tokens)
    out.loss.backward()
    peak = _status_kib("VmHWM")
    return {
        "loss": float(out.loss),
        "peak_bytes": (peak - before) * 1024,
        "tokens": tokens,
        "vocab": joint.strong.config.vocab_size,
    }


def main(strong: str, weak: str, tokens: int) -> None:
    joint = JointModel(load_causal_lm(strong), load_causal_lm(weak), lam=0.5)
    for name, loss in (("fused", FusedMixedCrossEntropy()), ("reference", MaterializedMixedCrossEntropy())):
        joint.loss = loss
        print(json.dumps({"loss_impl": name, **step_peak(joint, tokens)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
