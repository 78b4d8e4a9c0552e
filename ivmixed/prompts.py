"""Prompt lists: one prompt or a prompt file (.txt, .csv, .jsonl) turned into generation jobs.

Also the rules for text a run takes in (prompts, ids, setting values, the files they come from), so that a flag,
a config file and a prompt file are held to the same ones: text must be UTF-8 (it names files and goes into UTF-8
records), a prompt has a length limit, and files are read only when they are regular files of a bounded size.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from hashlib import sha1
from typing import List, Optional

from .errors import SettingError, quote, quote_message

PROMPT_FILE_TYPES = (".txt", ".csv", ".jsonl")
SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)
# CLIP reads the first 77 tokens of a prompt (about 300 characters of English); 5,000 characters leave room for a
# prompt schedule ("0: ... | 16: ...") of more than a dozen full prompts. Longer text is a pasted file or a
# mistake: refused before any model loads, rather than failing in the caption after sampling.
MAX_PROMPT_CHARS = 5000
# A prompt file's lines (a JSON row holds a prompt, a negative prompt and an id, perhaps written as \u escapes)
# and the whole file: read in one go, so a 50 MB line is refused before any parsing or tokenizing.
MAX_LINE_CHARS = 1 << 20
MAX_PROMPT_FILE_BYTES = 64 << 20

def text_problem(text: str) -> Optional[str]:
    """What makes ``text`` unusable as text (``None`` when nothing does): it must encode as UTF-8, since it
    names files and goes into UTF-8 records. Undecodable bytes on the command line (``b"caf\\xe9"`` from a Latin-1
    terminal, Python's surrogate escapes) and lone surrogates (a JSON ``"\\ud800"``) do not."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        at, code = exc.start, ord(text[exc.start])
    near = quote(text[max(0, at - 20): at + 1], 40)
    if 0xDC80 <= code <= 0xDCFF:  # a byte the UTF-8 decoder could not read, kept as a surrogate escape
        return (f"holds bytes that are not UTF-8 text (byte 0x{code - 0xDC00:02x} at character {at + 1}: {near}); "
                "give it as UTF-8 (check the terminal's or the file's encoding)")
    return (f"holds a lone surrogate U+{code:04X} at character {at + 1} ({near}), half of a character; write "
            "the whole character")


def prompt_problem(text: str, kind: str = "prompt") -> Optional[str]:
    """What makes ``text`` unusable as a prompt, a negative prompt or (``kind="id"``) an id: :func:`text_problem`,
    or more than :data:`MAX_PROMPT_CHARS` characters."""
    problem = text_problem(text)
    if problem is None and len(text) > MAX_PROMPT_CHARS:
        why = "ids name files" if kind == "id" else "CLIP reads the first 77 tokens, about 300 characters"
        article = "an" if kind == "id" else "a"
        problem = (f"is {len(text):,} characters long, more than the {MAX_PROMPT_CHARS:,} {article} {kind} may have "
                   f"({why}); shorten it")
    return problem


def read_text_file(path: str, what: str, max_bytes: int, folder_hint: str = "give a file") -> str:
    """The UTF-8 text (a byte-order mark dropped) of the regular file at ``path``, or a one-line
    :class:`SettingError` that calls it ``what`` (``"config file"``).

    A FIFO, socket or device is refused without reading (reading a FIFO blocks until someone writes to it), and
    so is a file over ``max_bytes``; undecodable bytes are refused with their line."""
    try:  # O_NONBLOCK: opening a FIFO to look at it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SettingError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SettingError(f"{what} {path} is a folder; {folder_hint}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SettingError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        st = os.fstat(fd)
        mode, size = st.st_mode, st.st_size
        if stat.S_ISDIR(mode):
            raise SettingError(f"{what} {path} is a folder; {folder_hint}")
        if not stat.S_ISREG(mode):
            raise SettingError(f"{what} {path} is not a regular file (a pipe, socket or device); save its "
                               "content to a file and give that")
        too_big = SettingError(f"{what} {path} is larger than the {max_bytes / 2**20:g} MiB a {what} may be; "
                               "split it or remove what it does not need")
        if size > max_bytes:
            raise too_big
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as exc:
            raise SettingError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
        if len(data) > max_bytes:  # it grew while being read
            raise too_big
    finally:
        os.close(fd)
    if data.startswith(b"\xef\xbb\xbf"):  # spreadsheet programs save UTF-8 with a byte-order mark
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SettingError(f"{path}:{line}: holds bytes that are not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                           f"save the {what} as UTF-8") from None


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


def check_job(job: Job) -> None:
    """Refuse a job whose prompt, negative prompt or id :func:`prompt_problem` refuses, naming where it was read;
    every job passes here before its file names are made."""
    for key in ("prompt", "negative_prompt", "id"):
        value = getattr(job, key)
        problem = prompt_problem(value, "id" if key == "id" else "prompt") if isinstance(value, str) else None
        if problem:
            raise SettingError(f"{job.where + ': ' if job.where else ''}{key} {problem}")


def slugify(text: str, limit: int = 80) -> str:
    """A file-name-safe stem: ASCII letters, digits and dashes, with a short hash whenever text was lost."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    if slug and len(slug) <= limit and slug.replace("-", " ") == text.strip().lower():
        return slug
    digest = sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]  # never fails, even on refused text
    return f"{slug[:limit].rstrip('-')}-{digest}" if slug else f"prompt-{digest}"


def parse_seed(raw, where: str) -> int:
    """A seed from a prompt file or a flag: a whole number in [0, 2**64); ``1.9``, ``true`` or ``"7x"`` are refused."""
    if isinstance(raw, bool) or isinstance(raw, float):
        raise SettingError(f"{where}: seed must be a whole number, got {quote(raw)}")
    if isinstance(raw, str):
        if not re.fullmatch(r"\s*\d+\s*", raw):
            raise SettingError(f"{where}: seed must be a whole number, got {quote(raw)}")
        if len(raw.strip()) > 40:  # int() of thousands of digits is refused by Python itself
            raise SettingError(f"{where}: seed must be from 0 to 2**64 - 1, got a {len(raw.strip()):,}-digit number")
        raw = int(raw)
    if not isinstance(raw, int):
        raise SettingError(f"{where}: seed must be a whole number, got {quote(raw)}")
    if not 0 <= raw < SEED_LIMIT:
        raise SettingError(f"{where}: seed must be from 0 to 2**64 - 1, got {quote(raw)}")
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
            raise SettingError(f"{where}: {quote_message(str(exc))}") from None
    if not isinstance(prompt, str) or not prompt.strip():
        raise SettingError(f"{where}: missing or empty 'prompt'")
    raw_seed = row.get("seed")
    if raw_seed not in (None, ""):
        seed = parse_seed(raw_seed, where)
    negative = _text_field(row, "negative_prompt", where) or negative_prompt
    job = Job(prompt.strip(), seed, negative, _text_field(row, "id", where), where)
    check_job(job)
    return job


def _read_rows(path: str, ext: str):
    text = read_text_file(path, "prompt file", MAX_PROMPT_FILE_BYTES)
    for n, line in enumerate(io.StringIO(text, newline=""), 1):
        if len(line) > MAX_LINE_CHARS:
            raise SettingError(f"{path}:{n}: the line is {len(line):,} characters long, more than the "
                               f"{MAX_LINE_CHARS:,} a prompt file's line may be (a prompt may have "
                               f"{MAX_PROMPT_CHARS:,}); put one prompt per line")
    f = io.StringIO(text, newline="")
    if ext == ".txt":
        return [(f"{path}:{n}", {"prompt": line.strip()}) for n, line in enumerate(f, 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if ext == ".csv":
        reader = csv.DictReader(f)
        try:
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise SettingError(f"prompt file {path} needs a header row with a 'prompt' column")
            return [(f"{path}:{reader.line_num}", row) for row in reader]
        except csv.Error as exc:
            raise SettingError(f"{path}:{reader.line_num + 1}: not a CSV row ({quote_message(str(exc))}); a prompt may "
                               f"have {MAX_PROMPT_CHARS:,} characters") from None
    rows = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            raise SettingError(f"{path}:{n}: the JSON nests too deeply; a row is one flat object") from None
        except json.JSONDecodeError:
            raise SettingError(f"{path}:{n}: not a JSON object") from None
        except ValueError as exc:  # a number of more than 4,300 digits
            what = quote_message(str(exc).split(";")[0], 100)
            raise SettingError(f"{path}:{n}: cannot read the row ({what})") from None
        if not isinstance(row, dict):
            raise SettingError(f"{path}:{n}: not a JSON object")
        rows.append((f"{path}:{n}", row))
    return rows


def read_prompt_file(path: str, seed: int, negative_prompt: Optional[str] = None) -> List[Job]:
    """Jobs from a prompt file; ``seed`` and ``negative_prompt`` apply where a row gives none.

    Ids must be unique, ignoring letter case (they name files): a repeat is refused with its line. Every
    prompt, negative prompt and id must pass :func:`prompt_problem`; the file must be a regular UTF-8 file of at
    most :data:`MAX_PROMPT_FILE_BYTES`, its lines at most :data:`MAX_LINE_CHARS` characters.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in PROMPT_FILE_TYPES:
        raise SettingError(f"prompt file {path} must end in {', '.join(PROMPT_FILE_TYPES)}")
    rows = _read_rows(path, ext)
    jobs = [_row_to_job(row, where, seed, negative_prompt) for where, row in rows]
    if not jobs:
        raise SettingError(f"prompt file {path} holds no prompts")
    seen = {}
    for job in jobs:
        if job.id is None:
            continue
        key = job.id.lower()
        if key in seen:
            raise SettingError(f"{job.where}: id {quote(job.id)} repeats the id of {seen[key]} (ids name "
                               "files, so they must be unique, ignoring case); give this row another id")
        seen[key] = job.where
    return jobs
