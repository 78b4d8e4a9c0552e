"""Turning weight-loading failures into one actionable message that names the model and the fix."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says which one and how to get it."""


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def looks_like_path(model_id: str) -> bool:
    """Hub ids are ``owner/name``; anything absolute, relative-dotted or deeper is meant as a folder."""
    return os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1


@contextmanager
def loading(what: str, model_id: str, flag: str) -> Iterator[None]:
    """Re-raise any failure inside the block as a :class:`ModelLoadError` about ``what`` (``model_id``)."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:  # loaders raise OSError, ValueError, EnvironmentError, hub and safetensors errors
        if os.path.isdir(model_id):
            fix = f"check that the folder holds a complete checkpoint, or pass another with {flag}"
        elif looks_like_path(model_id):
            raise ModelLoadError(f"could not load the {what}: no folder {model_id}; check the path given with {flag}") from exc
        else:
            fix = f"download it with `huggingface-cli download {model_id}` while online, or pass a local folder with {flag}"
        raise ModelLoadError(f"could not load the {what} '{model_id}' ({_reason(exc)}); {fix}") from exc
