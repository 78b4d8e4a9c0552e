"""Checkpoints: whether a run can have them (local folder or file, local hub cache, a reachable hub), and load
failures as one actionable message that names the model and the fix.

Before any weight loads, every hub checkpoint a run needs is looked up in the local cache. When some are
missing and the hub cannot be reached, one message lists all of them, each with its ``hf download`` command,
instead of a minute of retries that ends on the first one.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any, Collection, Iterator, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

from .errors import ModelLoadError, quote_message

HUB_TIMEOUT_S = 3.0
TRUE = {"1", "true", "yes", "on"}

__all__ = ["CHECKPOINT_FILE_EXTENSIONS", "ModelLoadError", "check_local_sources", "ensure_available", "ensure_checkpoints",
           "hub_file", "hub_offline", "hub_reachable", "is_cached", "is_single_file", "loading", "looks_like_path",
           "single_file_keys", "unavailable_message"]

# What a single-file checkpoint is called (safetensors, or a torch pickle read with weights_only=True).
CHECKPOINT_FILE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def looks_like_path(model_id: str) -> bool:
    """Hub ids are ``owner/name``; anything absolute, relative-dotted or deeper is meant as a folder."""
    return os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1


def has_checkpoint_extension(source: str) -> bool:
    return source.lower().endswith(CHECKPOINT_FILE_EXTENSIONS)


def hub_file(source: str) -> Optional[Tuple[str, str]]:
    """``(repo id, file name)`` for a source spelled ``owner/repo/[folder/]name.safetensors`` that is no local
    file: a single-file checkpoint in a hub repository; ``None`` for anything else."""
    if os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source or not has_checkpoint_extension(source):
        return None
    parts = source.split("/")
    if len(parts) < 3 or not all(parts) or os.path.exists(source):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def is_single_file(source: str) -> bool:
    """Whether ``source`` names one checkpoint file: a local file, or a file in a hub repository (:func:`hub_file`)."""
    return os.path.isfile(os.path.expanduser(source)) or hub_file(source) is not None


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


def is_cached(repo_id: str, marker: Union[str, Tuple[str, ...]]) -> bool:
    """Whether the local hub cache holds ``marker`` (a file every download of that checkpoint has; several: all
    of them). A hub file (:func:`hub_file`) is cached when that file is."""
    spot = hub_file(repo_id)
    if spot is not None:
        return cached_file(*spot) is not None
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    return all(cached_file(repo_id, m) is not None for m in markers)


def download_hint(what: str, source: str, key: str, marker: Union[str, Tuple[str, ...], None] = None) -> str:
    """How to get one checkpoint: its ``hf download`` command and the setting that takes a local one instead.
    Several markers (the configs a single file is built with) download as ``--include "*.json" "*.txt"``."""
    spot = hub_file(source)
    if spot is not None:
        return (f"the {what} '{source}' (`hf download {spot[0]} {spot[1]}` while online, or a local file with "
                f"{{{key}}})")
    if isinstance(marker, tuple):
        return (f"the {what} '{source}' (`hf download {source} --include \"*.json\" \"*.txt\"` while online, or a "
                f"local folder with {{{key}}})")
    return f"the {what} '{source}' (`hf download {source}` while online, or a local folder with {{{key}}})"


def _file_problem(path: str) -> Optional[str]:
    """Why an existing file cannot be a single-file checkpoint, or None."""
    if not has_checkpoint_extension(path):
        return (f"is not a {' or '.join(CHECKPOINT_FILE_EXTENSIONS[:2])} file; give a single-file checkpoint, a "
                "checkpoint folder or a hub id")
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied); make it readable or pass another file"
    return None


def check_local_sources(needed: Sequence[Tuple[str, str, str, Any]], file_keys: Collection[str] = ()) -> None:
    """Raise :class:`ModelLoadError` for a source meant as a folder (see :func:`looks_like_path`) that does not
    exist: looked up as a hub id it would only get download advice for a path.

    Settings in ``file_keys`` also take a single-file checkpoint: an existing, readable ``.safetensors`` or
    ``.ckpt`` file, or a hub file ``owner/repo/name.safetensors`` (:func:`hub_file`); a missing path with such an
    extension is no such file. A file given for any other setting is refused."""
    for _, source, key, _ in needed:
        path = os.path.expanduser(source)
        shown = quote_message(source, None)
        if os.path.isfile(path):
            if key not in file_keys:
                raise ModelLoadError(f"{{{key}}} {shown} is a file; give a checkpoint folder or a hub id")
            problem = _file_problem(path)
            if problem:
                raise ModelLoadError(f"{{{key}}} {shown} {problem}")
            continue
        if key in file_keys and hub_file(source) is not None:
            continue
        if looks_like_path(source) and not os.path.isdir(path):
            if key in file_keys and has_checkpoint_extension(source):
                raise ModelLoadError(f"{{{key}}} {shown}: no such file; give an existing single-file checkpoint, a "
                                     "checkpoint folder or a hub id")
            raise ModelLoadError(f"{{{key}}} {source}: no such folder; give an existing checkpoint folder or a hub id")


def unavailable_message(missing: Sequence[Tuple[str, str, str, Any]]) -> str:
    """The one line that names every checkpoint of ``missing`` the run cannot get, each with how to get it."""
    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub cannot be reached ({_endpoint()})"
    return (f"{why}, and {len(missing)} checkpoint(s) this run needs are not in the local cache: "
            + "; ".join(download_hint(what, source, key, marker) for what, source, key, marker in missing))


def ensure_available(needed: Sequence[Tuple[str, str, str, Any]], file_keys: Collection[str] = ()) -> None:
    """Raise one :class:`ModelLoadError` naming every hub checkpoint that is neither cached nor downloadable.

    ``needed`` holds ``(what, source, setting key, marker file)``; the marker may be a tuple of files, all of
    which must be cached. A source that looks like a path and is no folder is refused (:func:`check_local_sources`,
    which takes single files for the settings in ``file_keys``); existing folders and files are skipped, hub files
    are looked up by their file. When everything is cached but the hub is unreachable, the libraries are switched
    to offline mode so loading does not retry the network for each file.
    """
    check_local_sources(needed, file_keys)
    hub_ids = [item for item in needed if not os.path.exists(os.path.expanduser(item[1]))]
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
        raise ModelLoadError(unavailable_message(missing))
    if not reachable:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass


def single_file_keys(spec) -> Tuple[str, ...]:
    """The settings of pipeline ``spec`` (a :class:`~ivmixed.registry.PipelineSpec`) that also take a single-file
    checkpoint: every image model and ``vae``; an SD 1.5 base with motion modules (Animatediff) and its motion
    adapter. What each file must hold is :mod:`ivmixed.single_file`'s to check. An SDXL pipeline takes a single
    file only as its ``vae``: its models are diffusers folders or hub ids."""
    if not spec.is_sd15:
        return ("vae",)
    return ("image_model", "vae") + (("video_model", "motion_adapter") if spec.takes("motion_adapter") else ())


def ensure_checkpoints(spec, **sources: str) -> None:
    """:func:`ensure_available` over every checkpoint of a pipeline: ``spec`` is its
    :class:`~ivmixed.registry.PipelineSpec`, ``sources`` its checkpoints by key. The run layer calls it before it
    imports the pipeline, so an offline load fails with one message instead of retrying the network per file and
    ending on a misleading missing ``config.json``; each ``from_checkpoints`` calls
    :func:`ivmixed.single_file.ensure_sources`, which adds what single files hold, the configs they are built from
    and a replacement VAE. Single files (:func:`single_file_keys`) must exist and be readable checkpoint files;
    hub files are looked up in the cache."""
    ensure_available([(c.what, sources[c.key], c.key, c.marker) for c in spec.checkpoints], single_file_keys(spec))


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
        if os.path.isfile(os.path.expanduser(model_id)):
            raise ModelLoadError(f"could not load the {what} '{quote_message(model_id, None)}' "
                                 f"({quote_message(_reason(exc))}); check that the file is a complete checkpoint, or "
                                 f"pass another with {{{key}}}") from exc
        spot = hub_file(model_id)
        if spot is not None:
            raise ModelLoadError(f"could not load the {what} '{model_id}' ({quote_message(_reason(exc))}); download "
                                 f"it with `hf download {spot[0]} {spot[1]}` while online, or pass a local file with "
                                 f"{{{key}}}") from exc
        if os.path.isdir(os.path.expanduser(model_id)):
            raise ModelLoadError(f"could not load the {what} '{model_id}' ({_reason(exc)}); check that the folder "
                                 f"holds a complete checkpoint, or pass another with {{{key}}}") from exc
        if looks_like_path(model_id):
            raise ModelLoadError(f"could not load the {what}: no folder {model_id}; check the path given with "
                                 f"{{{key}}}") from exc
        raise ModelLoadError(f"could not load the {what} '{model_id}' ({_reason(exc)}); download it with "
                             f"`hf download {model_id}` while online, or pass a local folder with {{{key}}}") from exc
