"""Backend names -> backend objects: "torch", "triton" and any registered configuration.

`register_backend(name, backend)` makes a configured backend (other tiles, chunk sizes, split counts) usable
as `impl=name` everywhere the loss is called: benchmarks and tests use it to force small tiles or tune chunks.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from .torch_backend import TorchBackend

_REGISTERED: dict[str, object] = {}
BUILTIN = ("auto", "triton", "torch")


def register_backend(name: str, backend) -> None:
    """Make `backend` (a TorchBackend or TritonBackend instance) available as impl=name."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in impl name; register the backend under another name")
    if not hasattr(backend, "forward_partials"):
        raise ValueError(f"backend must be a TorchBackend or TritonBackend instance, got {type(backend).__name__}")
    _REGISTERED[name] = backend


def registered_backends() -> dict[str, object]:
    return dict(_REGISTERED)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, device: torch.device) -> str:
    """The backend name to run for `impl` on `device` ("auto" -> "triton?" = Triton with a torch fallback)."""
    if impl in _REGISTERED or impl == "torch":
        return impl
    if impl not in BUILTIN:
        raise ValueError(f"impl must be one of {BUILTIN} or a name given to register_backend, got {impl!r}")
    if impl == "auto":
        return "triton?" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise ValueError("impl='triton' needs the triton package: pip install triton, or use impl='torch'")
    if device.type != "cuda" and not interpreter_active():
        raise ValueError(
            f"impl='triton' needs CUDA tensors (got {device}); use impl='torch' on the CPU, "
            "or set TRITON_INTERPRET=1 before importing triton to run the kernels in the interpreter"
        )
    return "triton"


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"wdl_kernels: using the chunked torch implementation: {reason}", stacklevel=4)


def backend_for(name: str, device: torch.device, tensors):
    """The backend object for a resolved name; "triton?" falls back to torch (with a warning) on tensors
    TMA cannot address, "triton" raises ValueError there."""
    if name in _REGISTERED:
        backend = _REGISTERED[name]
    elif name == "torch":
        return TorchBackend()
    else:
        from .triton_backend import TritonBackend

        backend = TritonBackend.for_device(device)
    if backend.name == "triton":
        reason = backend.unsupported_reason(tensors)
        if reason is not None:
            if name != "triton?":
                raise ValueError(reason)
            _warn_fallback(reason)
            return TorchBackend()
    return backend
