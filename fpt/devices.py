"""Device and thread selection, shared by every command that runs a network."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from fpt.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the CLI's root callback calls configure_threads for
# every command, and commands that never compute (help, gallery list) must not pay its import.


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``auto|cpu|cuda|cuda:N|mps`` to a ``torch.device``; auto prefers CUDA."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' requested but CUDA is not available", hint="use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA devices)")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' requested but not available", hint="use --device cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"unknown device '{name}'", hint="choose auto, cpu, cuda or cuda:N")


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``FPT_THREADS`` or the argument, else one per physical core.

    On small machines oversubscribing (torch's default plus interop threads) costs more than it
    gains, so we pin to ``os.cpu_count()`` — shared among the processes torchrun starts on this
    machine (``LOCAL_WORLD_SIZE``), which would otherwise each take every core.
    """
    env = os.environ.get("FPT_THREADS")
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    n = max(1, num_threads or (int(env) if env else None) or max(1, (os.cpu_count() or 1) // local))
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
        return torch.get_num_threads()
    # Not imported yet: torch sizes its intra-op pool from OMP_NUM_THREADS when it starts (capped
    # at the core count), so the setting applies without importing torch here.
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def autocast_context(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    import torch

    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)
