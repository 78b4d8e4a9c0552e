"""The scores summed up and written: ``metrics.csv``, ``metrics_summary.csv`` and ``metrics.md``."""

from __future__ import annotations

import csv
import math
from typing import Any, Dict, List, Sequence

from ..export import atomic_path
from .scores import CSV_COLUMNS, DIFFERENCE, METRICS, VARIANTS


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (a video CLIP could not score); NaN when none is."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def distinct_videos(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The first row of each video: several records can list one file (a sweep's cells share its standard
    video), and a video counts once, in the means too."""
    seen: Dict[Any, Dict[str, Any]] = {}
    for r in rows:
        seen.setdefault((r["file"], r["prompt"]) if "file" in r else id(r), r)
    return list(seen.values())


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Mean of each metric per variant over its distinct videos, and the mean IV-mixed minus standard difference
    over the records that have both videos (equal to the difference of the means when every record has both
    and none shares a video)."""
    summary: Dict[str, Dict[str, float]] = {}
    for variant in VARIANTS:
        chosen = distinct_videos([r for r in rows if r["variant"] == variant])
        summary[variant] = {m: finite_mean([r[m] for r in chosen]) for m in METRICS}
        summary[variant]["videos"] = len(chosen)
    by_key = {(r.get("record", r["id"]), r["variant"]): r for r in rows}  # by record: a sweep's cells share an id
    pairs = [(by_key[(i, "iv_mix")], by_key[(i, "standard")]) for i, v in by_key if v == "standard" and (i, "iv_mix") in by_key]
    summary[DIFFERENCE] = {m: finite_mean([iv[m] - std[m] for iv, std in pairs]) for m in METRICS}
    summary[DIFFERENCE]["videos"] = len(pairs)
    return summary


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> str:
    """One row per video."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return path


def write_summary_csv(summary: Dict[str, Dict[str, float]], path: str) -> str:
    """One row per variant with the means, and one for the IV-mixed minus standard difference."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=("variant", "videos") + METRICS)
            writer.writeheader()
            for variant, means in summary.items():
                writer.writerow({"variant": variant, **means})
    return path


def score_text(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    if value is None:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: Sequence[Dict[str, Any]], summary: Dict[str, Dict[str, float]], path: str, clip_model: str) -> str:
    """A per-prompt table (standard beside IV-mixed) and an averages table, for a README or a PR."""
    by_key = {(r.get("record", r["id"]), r["variant"]): r for r in rows}
    ids = list(dict.fromkeys(r.get("record", r["id"]) for r in rows))
    lines = [
        "# IV-mixed vs standard sampling",
        "",
        f"CLIP model: `{clip_model}`. Scores are cosine similarities ×100: *CLIP score* is the prompt against "
        "each frame, *consistency* each frame against the next, both averaged over the video.",
        "",
        "## Per video",
        "",
        "| id | prompt | seed | CLIP score (standard) | CLIP score (IV-mixed) | consistency (standard) | consistency (IV-mixed) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for i in ids:
        std, iv = by_key.get((i, "standard"), {}), by_key.get((i, "iv_mix"), {})
        first = iv or std
        cells = [first["id"], first["prompt"], first["seed"]]
        cells += [row.get(m, math.nan) for m in METRICS for row in (std, iv)]
        lines.append("| " + " | ".join(score_text(c) for c in cells) + " |")
    lines += [
        "",
        "## Averages",
        "",
        "| metric | standard | IV-mixed | IV-mixed − standard |",
        "|---|---:|---:|---:|",
    ]
    for metric, label in zip(METRICS, ("CLIP score", "frame consistency")):
        cells = [label] + [summary[v][metric] for v in VARIANTS + (DIFFERENCE,)]
        lines.append("| " + " | ".join(score_text(c) for c in cells) + " |")
    counts = ", ".join(f"{summary[v]['videos']} {name}" for v, name in (("standard", "standard"), ("iv_mix", "IV-mixed")))
    pairs = summary[DIFFERENCE]["videos"]
    lines += ["", f"Videos: {counts}; the difference is over the {pairs} IV-mixed video{'s' if pairs != 1 else ''} "
              "with a standard video of the same seed to compare with.", ""]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
    return path
