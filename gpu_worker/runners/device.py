"""Where a runner's model runs: CUDA in half precision when a GPU is present, else the CPU in fp32.

`choose_device()` is called once per runner at load time. The choice can be forced with
`HYB_WORKER_DEVICE` (`cpu`, `cuda`, `cuda:1`) and `HYB_WORKER_DTYPE` (`float32`, `float16`,
`bfloat16`); otherwise:

- CUDA available → `cuda:0`, bfloat16 when the card supports it (Ampere and later), else float16;
- no CUDA → `cpu`, float32, with torch's intra-op threads set to the cores this process may use
  (`HYB_TORCH_THREADS` overrides), so several workers on one machine can be given a share each.

The choice is reported through `RunnerInfo.device` / `RunnerInfo.dtype`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from broker.errors import ConfigError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_threads_configured = False


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{self.device.index or 0}"
        return str(self.device)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configure_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count once per process; returns the count in use."""
    global _threads_configured
    if threads is None:
        env = os.environ.get("HYB_TORCH_THREADS")
        if env:
            try:
                threads = int(env)
            except ValueError as exc:
                raise ConfigError(f"HYB_TORCH_THREADS must be an integer, got {env!r}") from exc
    if threads is None:
        threads = available_cores()
    if threads < 1:
        raise ConfigError(f"torch thread count must be at least 1, got {threads}")
    if not _threads_configured or torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        _threads_configured = True
    return torch.get_num_threads()


def choose_device(device: str | None = None, dtype: str | None = None, *, half_on_cuda: bool = True) -> DeviceChoice:
    """Pick the device and dtype for a model (see the module docstring for the rules)."""
    want_device = device or os.environ.get("HYB_WORKER_DEVICE") or None
    want_dtype = dtype or os.environ.get("HYB_WORKER_DTYPE") or None
    if want_dtype is not None and want_dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {want_dtype!r}; use one of {', '.join(_DTYPES)}")

    if want_device is None:
        dev = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            dev = torch.device(want_device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {want_device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {want_device!r} asked for, but CUDA is not available in this process")
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"device {want_device!r} is not supported (cpu or cuda)")

    if want_dtype is not None:
        dt = _DTYPES[want_dtype]
    elif dev.type == "cuda" and half_on_cuda:
        dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dt = torch.float32
    if dev.type == "cpu":
        configure_cpu_threads()
    return DeviceChoice(device=dev, dtype=dt)


__all__ = ["DeviceChoice", "available_cores", "choose_device", "configure_cpu_threads"]
