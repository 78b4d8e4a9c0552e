"""Every failure of a run as an exit status and one line, the same in every command."""

from __future__ import annotations

from .errors import SettingError
from .flags import flag


def describe_failure(exc: Exception):
    """The exit status and one-line message for a failure during a run."""
    from .errors import ModelLoadError
    from .export import OutputWriteError

    if isinstance(exc, SettingError):
        return 2, exc.render(flag)
    if isinstance(exc, ModelLoadError):
        return 1, exc.render(flag)
    if isinstance(exc, OutputWriteError):
        return 1, str(exc)
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return 1, ("out of GPU memory; reduce it with --offload model (or model-swap: less), fewer --num-frames, a smaller "
                   "--height/--width or --image-batch-size 4 (videos already finished are kept)")
    if name == "NonFiniteLatentsError":
        return 1, str(exc)
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return 1, f"{name}: {first} (rerun with --debug for the traceback)"


__all__ = ["describe_failure"]
