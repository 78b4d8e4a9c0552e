"""Checkpoints: whether a run can have them (local folder, local hub cache, a reachable hub), and load
failures as one actionable message that names the model and the fix.

Before any weight loads, every hub checkpoint a run needs is looked up in the local cache. When some are
missing and the hub cannot be reached, one message lists all of them, each with its ``hf download`` command,
instead of a minute of retries that ends on the first one.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Tuple
from urllib.parse import urlparse

from .errors import ModelLoadError

HUB_TIMEOUT_S = 3.0
TRUE = {"1", "true", "yes", "on"}

__all__ = ["ModelLoadError", "check_local_sources", "ensure_available", "ensure_checkpoints", "hub_offline", "hub_reachable", "is_cached",
           "loading", "looks_like_path"]


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def looks_like_path(model_id: str) -> bool:
    """Hub ids are ``owner/name``; anything absolute, relative-dotted or deeper is meant as a folder."""
    return os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a connection to the hub's host opens within ``timeout`` seconds (``HF_HUB_OFFLINE`` says no)."""
    if hub_offline():
        return False
    url = _hub_url()
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_file(repo_id: str, filename: str) -> Optional[str]:
    """The path of ``filename`` of hub checkpoint ``repo_id`` in the local hub cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, filename)
    except Exception:  # not a valid repo id
        return None
    return path if isinstance(path, str) else None


def is_cached(repo_id: str, marker: str) -> bool:
    """Whether the local hub cache holds ``marker`` (a file every download of that checkpoint has)."""
    return cached_file(repo_id, marker) is not None


def download_hint(what: str, source: str, key: str) -> str:
    return f"the {what} '{source}' (`hf download {source}` while online, or a local folder with {{{key}}})"


def check_local_sources(needed: Sequence[Tuple[str, str, str, str]]) -> None:
    """Raise :class:`ModelLoadError` for a source meant as a folder (see :func:`looks_like_path`) that does not
    exist: looked up as a hub id it would only get download advice for a path."""
    for _, source, key, _ in needed:
        if looks_like_path(source) and not os.path.isdir(os.path.expanduser(source)):
            raise ModelLoadError(f"{{{key}}} {source}: no such folder; give an existing checkpoint folder or a hub id")


def ensure_available(needed: Sequence[Tuple[str, str, str, str]]) -> None:
    """Raise one :class:`ModelLoadError` naming every hub checkpoint that is neither cached nor downloadable.

    ``needed`` holds ``(what, source, setting key, marker file)``. A source that looks like a path and is no
    folder is refused (:func:`check_local_sources`); existing folders are skipped. When everything is cached but
    the hub is unreachable, the libraries are switched to offline mode so loading does not retry the network for
    each file.
    """
    check_local_sources(needed)
    hub_ids = [item for item in needed if not os.path.isdir(os.path.expanduser(item[1]))]
    if not hub_ids:
        return
    missing = [item for item in hub_ids if not is_cached(item[1], item[3])]
    if hub_offline():
        reachable = False
    elif missing:
        reachable = hub_reachable()
    else:
        return  # all cached and the hub may be used: let the libraries check for updates as usual
    if missing and not reachable:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub cannot be reached ({_endpoint()})"
        raise ModelLoadError(f"{why}, and {len(missing)} checkpoint(s) this run needs are not in the local cache: "
                             + "; ".join(download_hint(what, source, key) for what, source, key, _ in missing))
    if not reachable:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass


def ensure_checkpoints(spec, **sources: str) -> None:
    """:func:`ensure_available` over every checkpoint of a pipeline: ``spec`` is its
    :class:`~ivmixed.registry.PipelineSpec`, ``sources`` its checkpoints by key. Both the run layer (before it
    imports the pipeline) and each ``from_checkpoints`` call it, so an offline load fails with one message
    instead of retrying the network per file and ending on a misleading missing ``config.json``."""
    ensure_available([(c.what, sources[c.key], c.key, c.marker) for c in spec.checkpoints])


def _hub_url():
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def _endpoint() -> str:
    return _hub_url().hostname or "huggingface.co"


@contextmanager
def loading(what: str, model_id: str, key: str) -> Iterator[None]:
    """Re-raise any failure inside the block as a :class:`ModelLoadError` about ``what`` (``model_id``);
    ``key`` names the setting that takes another source (``video_model``)."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:  # loaders raise OSError, ValueError, EnvironmentError, hub and safetensors errors
        if os.path.isdir(os.path.expanduser(model_id)):
            raise ModelLoadError(f"could not load the {what} '{model_id}' ({_reason(exc)}); check that the folder "
                                 f"holds a complete checkpoint, or pass another with {{{key}}}") from exc
        if looks_like_path(model_id):
            raise ModelLoadError(f"could not load the {what}: no folder {model_id}; check the path given with "
                                 f"{{{key}}}") from exc
        raise ModelLoadError(f"could not load the {what} '{model_id}' ({_reason(exc)}); download it with "
                             f"`hf download {model_id}` while online, or pass a local folder with {{{key}}}") from exc
