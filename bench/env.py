"""Where and with what a benchmark row was measured: commit, device, clocks, library versions.

Every row of every benchmark carries `env_info()` (the ENV_COLUMNS), so a number can always be traced to
the code and the machine that produced it. The GPU machine gets a copy of the working tree without git; there
the commit comes from `.gpu/source.json`, written by scripts/gpu_prepare.py beside the checkout.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_STAMP = REPO_ROOT / ".gpu" / "source.json"
GIB = float(1 << 30)

ENV_COLUMNS = (
    "date_utc", "git_commit", "git_dirty", "source", "device_type", "device_name", "device_count", "sm_count",
    "device_memory_gib", "cuda_version", "driver_version", "torch_version", "triton_version",
    "transformers_version", "wdl_kernels_version", "liger_kernel_version", "cut_cross_entropy_version",
    "python_version", "platform", "cpu_count", "torch_threads",
)


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str | None:
    try:
        res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (either spelling of its name), or None when it is missing."""
    for name in (dist, dist.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def source_state(repo: Path = REPO_ROOT) -> dict:
    """{"git_commit", "git_dirty", "source"}: from git where it works, else from the travelling stamp file.

    `git_dirty` counts tracked files only (untracked scratch files do not make a result suspect).
    """
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if commit:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
        return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None, "source": "git"}
    stamp = Path(os.environ.get("WDL_SOURCE_STAMP", SOURCE_STAMP))
    if stamp.is_file():
        data = json.loads(stamp.read_text())
        # The stamp's date shows in every row, so a stale one (prepare not re-run) can be spotted.
        return {"git_commit": data.get("git_commit"), "git_dirty": data.get("git_dirty"),
                "source": f"stamp {data.get('prepared_utc', 'undated')}"}
    return {"git_commit": None, "git_dirty": None, "source": "unknown"}


def _driver_version() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def gpu_clocks() -> dict | None:
    """SM and memory clocks as nvidia-smi reads them (current and maximum, MHz), or None where it cannot.
    Read-only queries: the card's settings are never changed."""
    fields = ("clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "temperature.gpu", "power.draw")
    out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if not out:
        return None
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(fields, values)) if len(values) == len(fields) else None


def env_info(device: torch.device | str | None = None) -> dict:
    """The ENV_COLUMNS for rows measured on `device`. No hostname, no user names."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    info.update(source_state())
    info["device_type"] = dev.type
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(device_name=props.name, device_count=torch.cuda.device_count(),
                    sm_count=props.multi_processor_count, device_memory_gib=round(props.total_memory / GIB, 2),
                    cuda_version=torch.version.cuda, driver_version=_driver_version())
    else:
        info.update(device_name=(platform.processor() or platform.machine() or "cpu"), device_count=0, sm_count=None,
                    device_memory_gib=None, cuda_version=torch.version.cuda, driver_version=None)
    info.update(
        torch_version=torch.__version__,
        triton_version=package_version("triton"),
        transformers_version=package_version("transformers"),
        wdl_kernels_version=package_version("wdl-kernels") or _module_version("wdl_kernels"),
        liger_kernel_version=package_version("liger-kernel"),
        cut_cross_entropy_version=package_version("cut-cross-entropy"),
        python_version=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
    )
    return info


def _module_version(name: str) -> str | None:
    mod = sys.modules.get(name)
    return getattr(mod, "__version__", None) if mod is not None else None


def run_id(env: dict) -> str:
    """Short id of one benchmark process: UTC date-time, commit prefix, device slug."""
    stamp = env["date_utc"].replace("-", "").replace(":", "")
    commit = (env.get("git_commit") or "nogit")[:8]
    return f"{stamp}_{commit}_{device_slug(env)}"


def device_slug(env: dict) -> str:
    name = env.get("device_name") or env.get("device_type") or "unknown"
    if env.get("device_type") == "cpu":
        name = "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "unknown"
