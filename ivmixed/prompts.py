"""Prompt lists: one prompt or a prompt file (.txt, .csv, .jsonl) turned into generation jobs."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from hashlib import sha1
from typing import List, Optional

from .errors import SettingError, quote

PROMPT_FILE_TYPES = (".txt", ".csv", ".jsonl")
SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)


@dataclass(frozen=True)
class Job:
    """One prompt to generate. ``where`` says where it was read (``file:line``) for messages."""

    prompt: str
    seed: int
    negative_prompt: Optional[str] = None
    id: Optional[str] = None
    where: Optional[str] = None

    def schedule(self, num_frames: int):
        """The prompt as ``{frame: prompt}`` when it is written as a schedule (``"0: ... | 24: ..."``), else None."""
        from .prompt_schedule import is_prompt_schedule, parse_prompt_schedule

        if not is_prompt_schedule(self.prompt):
            return None
        return parse_prompt_schedule(self.prompt, num_frames)

    def prefix(self, pipeline: str) -> str:
        """The readable start of its file names: ``<id or prompt slug>_<seed>_<pipeline>``."""
        return f"{slugify(self.id) if self.id else slugify(self.prompt)}_{self.seed}_{pipeline}"


def slugify(text: str, limit: int = 80) -> str:
    """A file-name-safe stem: ASCII letters, digits and dashes, with a short hash whenever text was lost."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    if slug and len(slug) <= limit and slug.replace("-", " ") == text.strip().lower():
        return slug
    digest = sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug[:limit].rstrip('-')}-{digest}" if slug else f"prompt-{digest}"


def parse_seed(raw, where: str) -> int:
    """A seed from a prompt file or a flag: a whole number in [0, 2**64); ``1.9``, ``true`` or ``"7x"`` are refused."""
    if isinstance(raw, bool) or isinstance(raw, float):
        raise SettingError(f"{where}: seed must be a whole number, got {quote(raw)}")
    if isinstance(raw, str):
        if not re.fullmatch(r"\s*\d+\s*", raw):
            raise SettingError(f"{where}: seed must be a whole number, got {quote(raw)}")
        raw = int(raw)
    if not isinstance(raw, int):
        raise SettingError(f"{where}: seed must be a whole number, got {quote(raw)}")
    if not 0 <= raw < SEED_LIMIT:
        raise SettingError(f"{where}: seed must be from 0 to 2**64 - 1, got {raw}")
    return raw


def _text_field(row: dict, key: str, where: str) -> Optional[str]:
    value = row.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "id":
        return str(value)
    if not isinstance(value, str):
        raise SettingError(f"{where}: {key} must be text, got {quote(value)}")
    return value


def _row_to_job(row: dict, where: str, seed: int, negative_prompt: Optional[str]) -> Job:
    prompt = row.get("prompt")
    if isinstance(prompt, dict):  # a prompt schedule {"0": "...", "24": "..."}
        from .prompt_schedule import describe_schedule, prompt_schedule_from_mapping

        try:
            prompt = describe_schedule(prompt_schedule_from_mapping(prompt))
        except ValueError as exc:
            raise SettingError(f"{where}: {exc}") from None
    if not isinstance(prompt, str) or not prompt.strip():
        raise SettingError(f"{where}: missing or empty 'prompt'")
    raw_seed = row.get("seed")
    if raw_seed not in (None, ""):
        seed = parse_seed(raw_seed, where)
    negative = _text_field(row, "negative_prompt", where) or negative_prompt
    return Job(prompt.strip(), seed, negative, _text_field(row, "id", where), where)


def _read_rows(path: str, ext: str):
    # utf-8-sig: spreadsheet programs save UTF-8 with a byte-order mark
    with open(path, encoding="utf-8-sig", newline="") as f:
        if ext == ".txt":
            return [(f"{path}:{n}", {"prompt": line.strip()}) for n, line in enumerate(f, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
        if ext == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise SettingError(f"prompt file {path} needs a header row with a 'prompt' column")
            return [(f"{path}:{reader.line_num}", row) for row in reader]
        rows = []
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise SettingError(f"{path}:{n}: not a JSON object") from None
            if not isinstance(row, dict):
                raise SettingError(f"{path}:{n}: not a JSON object")
            rows.append((f"{path}:{n}", row))
        return rows


def read_prompt_file(path: str, seed: int, negative_prompt: Optional[str] = None) -> List[Job]:
    """Jobs from a prompt file; ``seed`` and ``negative_prompt`` apply where a row gives none.

    Ids must be unique, ignoring letter case (they name files): a repeat is refused with its line.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in PROMPT_FILE_TYPES:
        raise SettingError(f"prompt file {path} must end in {', '.join(PROMPT_FILE_TYPES)}")
    try:
        rows = _read_rows(path, ext)
    except FileNotFoundError:
        raise SettingError(f"prompt file not found: {path}") from None
    except IsADirectoryError:
        raise SettingError(f"prompt file {path} is a folder; give a file") from None
    except UnicodeDecodeError:
        raise SettingError(f"cannot read prompt file {path}: it is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise SettingError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    jobs = [_row_to_job(row, where, seed, negative_prompt) for where, row in rows]
    if not jobs:
        raise SettingError(f"prompt file {path} holds no prompts")
    seen = {}
    for job in jobs:
        if job.id is None:
            continue
        key = job.id.lower()
        if key in seen:
            raise SettingError(f"{job.where}: id {quote(job.id)} repeats the id of {seen[key]} (ids name files, "
                               "so they must be unique, ignoring case); give this row another id")
        seen[key] = job.where
    return jobs
