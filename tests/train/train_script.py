"""Child process for the multi-process and kill/resume tests: one train_phase call on fake packed data.

    python train_script.py SPEC.json           (or under torchrun)

SPEC: model_dir, weak_dir (or null), work_dir, export_dir, log_path, train (TrainConfig fields),
data (FakeDataConfig fields), n_samples, vocab, kill_at_step (SIGKILL itself right after that step's
log row, or null), nan_at_step (NaN loss in that step, or null), summary_path (rank 0 writes the TrainSummary there).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_data import FakeDataConfig, make_samples, use_fake_loader  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    use_fake_loader()
    from wdl.train import TrainConfig, train_phase
    from wdl.train.loop import Trainer

    kill_at = spec.get("kill_at_step")
    if kill_at is not None:
        original = Trainer.train_step

        def train_step(self, data_step):
            row = original(self, data_step)
            if self.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9: no cleanup, no flush beyond what was done
            return row

        Trainer.train_step = train_step

    nan_at = spec.get("nan_at_step")
    if nan_at is not None:  # poison every micro-batch loss of that optimizer step
        from wdl.models import JointModel

        forward = JointModel.forward
        per_step = spec.get("data", {}).get("micro_batches_per_step", 4) // int(os.environ.get("WORLD_SIZE", "1"))
        calls = {"n": 0}

        def poisoned(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            calls["n"] += 1
            if (nan_at - 1) * per_step < calls["n"] <= nan_at * per_step:
                return out._replace(loss=out.loss * float("nan"))
            return out

        JointModel.forward = poisoned

    samples = make_samples(spec["n_samples"], spec["vocab"], seed=spec.get("data_seed", 0))
    summary = train_phase(
        "test", spec["model_dir"], samples, FakeDataConfig(**spec.get("data", {})), TrainConfig(**spec["train"]),
        Path(spec["work_dir"]), Path(spec["export_dir"]), Path(spec["log_path"]), weak_model=spec.get("weak_dir"),
    )
    if int(os.environ.get("RANK", "0")) == 0 and spec.get("summary_path"):
        Path(spec["summary_path"]).write_text(json.dumps(summary.to_dict()))
    from wdl.distributed import leave_distributed

    leave_distributed()  # a barrier, then the teardown


if __name__ == "__main__":
    main()
