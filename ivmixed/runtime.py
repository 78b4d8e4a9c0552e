"""Where and how a run computes: device and dtype choice, CPU threads and quiet libraries.

Shared by the command line, the runner and the benchmark, so they choose alike.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Optional, Tuple

DTYPE_NAMES = ("fp16", "bf16", "fp32")


def torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def pick_device_and_dtype(device: Optional[str] = None, dtype: Optional[str] = None) -> Tuple[str, str, "object"]:
    """The device (CUDA when available), the dtype name and the torch dtype (fp16 on CUDA, fp32 elsewhere)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = dtype or ("fp16" if str(device).startswith("cuda") else "fp32")
    return device, name, torch_dtype(name)


def set_cpu_threads(device: str, tiny: bool) -> int:
    """Threads for CPU runs: one for the tiny models (their ops are too small to gain from more; measured about
    8x faster than two on 2 cores), else the physical cores torch sees, never more than the CPUs this process may
    use (oversubscription makes every op wait)."""
    import torch

    if not str(device).startswith("cpu"):
        return torch.get_num_threads()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = 1 if tiny else max(1, min(torch.get_num_threads(), available))
    torch.set_num_threads(threads)
    return threads


VERBOSE = False


def set_verbose(verbose: bool = True) -> None:
    """Let the libraries (diffusers, transformers, the hub) print their own messages and loading bars."""
    global VERBOSE
    VERBOSE = verbose


def quiet_libraries(verbose: Optional[bool] = None) -> None:
    """Keep the terminal to our own messages: no loading bars, dtype notes or library warnings unless asked
    (:func:`set_verbose`)."""
    verbose = VERBOSE if verbose is None else verbose
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "0" if verbose else "1")
    import diffusers
    import transformers

    if verbose:  # `import ivmixed` set the libraries' verbosity to errors; asked for more, say more
        for lib in (diffusers, transformers):
            lib.utils.logging.set_verbosity_info()
            lib.utils.logging.enable_progress_bar()
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
