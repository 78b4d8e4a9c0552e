"""The sweep file (``sweep_<axes>_<fingerprint>.sweep.json``): how a sweep is recognised and read back, and the
baseline videos it lists that no manifest record does (so evaluation scores them too)."""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

SWEEP_SUFFIX = ".sweep.json"
SWEEP_KIND = "ivmixed-sweep"


def read_sweeps(output_dir: str) -> List[Tuple[str, Dict[str, Any]]]:
    """``(file name, content)`` of every sweep file in ``output_dir``; unreadable ones are skipped with a warning."""
    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), "*" + SWEEP_SUFFIX))):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("kind") != SWEEP_KIND or not isinstance(data.get("prompts"), list):
                raise ValueError("not a sweep file")
        except (OSError, ValueError, AttributeError) as exc:
            logging.getLogger("ivmixed.evaluate").warning("skipping %s: %s", path, exc)
            continue
        out.append((os.path.basename(path), data))
    return out


def sweep_baselines(output_dir: str, entries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Manifest-like entries for the sweeps' baseline videos that no manifest record lists (the baselines of
    sweeps over guidance or steps), so that evaluation scores them too."""
    listed = {e["files"].get("standard") for e in entries}
    out, seen = [], set()
    for _, data in read_sweeps(output_dir):
        for prompt in data["prompts"]:
            name = prompt.get("baseline")
            if isinstance(name, str) and name not in listed and name not in seen:
                seen.add(name)
                out.append({"id": prompt["id"], "prompt": prompt["prompt"], "seed": prompt.get("seed"),
                            "fingerprint": f"baseline:{name}", "files": {"standard": name}})
    return out
