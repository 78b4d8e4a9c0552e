"""Prompt lists: one ``--prompt`` or a ``--prompt-file`` (.txt, .csv, .jsonl) turned into generation jobs."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from hashlib import sha1
from typing import List, Optional

from .config import ConfigError

PROMPT_FILE_TYPES = (".txt", ".csv", ".jsonl")


@dataclass(frozen=True)
class Job:
    """One prompt to generate; ``stem`` names its files and identifies it in the manifest."""

    prompt: str
    seed: int
    negative_prompt: Optional[str] = None
    id: Optional[str] = None

    def stem(self, pipeline: str) -> str:
        return f"{slugify(self.id) if self.id else slugify(self.prompt)}_{self.seed}_{pipeline}"


def slugify(text: str, limit: int = 80) -> str:
    """A file-name-safe stem: ASCII letters, digits and dashes, with a short hash whenever text was lost."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    if slug and len(slug) <= limit and slug.replace("-", " ") == text.strip().lower():
        return slug
    digest = sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug[:limit].rstrip('-')}-{digest}" if slug else f"prompt-{digest}"


def _row_to_job(row: dict, where: str, seed: int, negative_prompt: Optional[str]) -> Job:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: missing or empty 'prompt'")
    raw_seed = row.get("seed")
    if raw_seed not in (None, ""):
        try:
            seed = int(raw_seed)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: seed must be an integer, got {raw_seed!r}") from None
    negative = row.get("negative_prompt") or negative_prompt
    job_id = row.get("id")
    return Job(prompt.strip(), seed, negative, str(job_id) if job_id not in (None, "") else None)


def read_prompt_file(path: str, seed: int, negative_prompt: Optional[str] = None) -> List[Job]:
    """Jobs from a prompt file; ``seed`` and ``negative_prompt`` apply where a row gives none."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in PROMPT_FILE_TYPES:
        raise ConfigError(f"prompt file {path} must end in {', '.join(PROMPT_FILE_TYPES)}")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if ext == ".txt":
                rows = [(f"{path}:{n}", {"prompt": line.strip()}) for n, line in enumerate(f, 1)
                        if line.strip() and not line.lstrip().startswith("#")]
            elif ext == ".csv":
                reader = csv.DictReader(f)
                if not reader.fieldnames or "prompt" not in reader.fieldnames:
                    raise ConfigError(f"prompt file {path} needs a header row with a 'prompt' column")
                rows = [(f"{path}:{n}", row) for n, row in enumerate(reader, 2)]
            else:
                rows = []
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise ConfigError(f"{path}:{n}: not a JSON object") from None
                    if not isinstance(row, dict):
                        raise ConfigError(f"{path}:{n}: not a JSON object")
                    rows.append((f"{path}:{n}", row))
    except FileNotFoundError:
        raise ConfigError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc}") from None
    jobs = [_row_to_job(row, where, seed, negative_prompt) for where, row in rows]
    if not jobs:
        raise ConfigError(f"prompt file {path} holds no prompts")
    return jobs


def unique_jobs(jobs: List[Job], pipeline: str) -> List[Job]:
    """Drop repeats of the same file stem (same prompt or id, same seed): each video is made once."""
    seen, out = set(), []
    for job in jobs:
        if job.stem(pipeline) not in seen:
            seen.add(job.stem(pipeline))
            out.append(job)
    return out
