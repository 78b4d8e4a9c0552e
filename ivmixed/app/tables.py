"""The rows of the page's tables, from run records: guided network calls and seconds per video, the history of the
output folder, the history's pickers and where two runs differ. Plain functions of a record (a dict read from a
record file or a manifest line), so they are checked without a browser and the page only shows what they return.
"""

from typing import Any, List, Mapping, Tuple

VIDEO_LABELS = {"standard": "Standard", "iv_mix": "IV-mixed"}
CALLS_HEADERS = ["Video", "Video-model calls", "Image-model calls", "Time (s)"]
# Appended to the calls table only for a run with ControlNets: their evaluations beside each model's calls.
CONTROLNET_KEYS = ("controlnet_video", "controlnet_image")
CONTROLNET_HEADERS = ["ControlNet evaluations (video model)", "ControlNet evaluations (image model)"]


def calls_table(record: Mapping[str, Any]) -> List[List[Any]]:
    """Rows of guided network calls and seconds per video, standard first; with ControlNets, their evaluations
    for each model after the seconds (so the first four columns are the same with or without them)."""
    rows = []
    calls, timings = record.get("network_calls", {}), record.get("timings", {})
    kinds = [kind for kind in ("standard", "iv_mix") if kind in calls or kind in record.get("files", {})]
    controlled = any(key in calls.get(kind, {}) for kind in kinds for key in CONTROLNET_KEYS)
    for kind in kinds:
        c = calls.get(kind, {})
        seconds = timings.get(f"{kind}_s")
        rows.append([VIDEO_LABELS[kind], c.get("video", ""), c.get("image", ""),
                     "" if seconds is None else round(float(seconds), 2)]
                    + ([c.get(key, "") for key in CONTROLNET_KEYS] if controlled else []))
    return rows


def calls_headers(rows: List[List[Any]]) -> List[str]:
    """The headers of the calls table ``rows``: the ControlNet columns where they have them."""
    return (CALLS_HEADERS + CONTROLNET_HEADERS)[: max([len(CALLS_HEADERS)] + [len(row) for row in rows])]


HISTORY_HEADERS = ["Finished (UTC)", "Prompt", "Seed", "Pipeline", "Steps", "Frames", "Size", "Guidance",
                   "Interval", "zz", "Image w", "Video w", "rho", "IV-mixed calls (video/image)", "IV-mixed s",
                   "Standard s", "Record"]


def _w(settings: Mapping[str, Any], prefix: str) -> str:
    begin, end = settings.get(f"{prefix}_begin"), settings.get(f"{prefix}_end")
    if not isinstance(begin, (int, float)) or not isinstance(end, (int, float)):
        return ""
    return f"{begin:g}" if begin == end else f"{begin:g}\u2192{end:g}"


def history_row(record: Mapping[str, Any]) -> List[Any]:
    s = record.get("settings", {})
    calls = record.get("network_calls", {}).get("iv_mix", {})
    timings = record.get("timings", {})
    interval = "" if s.get("interval_begin") is None else f"{s.get('interval_begin')}\u2013{s.get('interval_end')}"
    return [
        str(record.get("finished_at", "")).replace("T", " ").replace("+00:00", ""),
        record.get("prompt", ""),
        record.get("seed", ""),
        record.get("pipeline", ""),
        s.get("inference_step", ""),
        s.get("num_frames", ""),
        f"{s['height']}x{s['width']}" if "height" in s and "width" in s else "",
        s.get("guidance_scale", ""),
        interval,
        s.get("zz", ""),
        _w(s, "i_sigma"),
        _w(s, "v_sigma"),
        s.get("rho", ""),
        f"{calls.get('video', '')}/{calls.get('image', '')}" if calls else "",
        timings.get("iv_mix_s", ""),
        timings.get("standard_s", ""),
        record.get("files", {}).get("record", ""),
    ]


def history_choice(record: Mapping[str, Any]) -> Tuple[str, str]:
    """(label, value) of a run in the history's pickers; the value is its record's file name."""
    s = record.get("settings", {})
    when = str(record.get("finished_at", "")).replace("T", " ").replace("+00:00", "")
    prompt = str(record.get("prompt", ""))
    prompt = prompt if len(prompt) <= 40 else prompt[:39] + "\u2026"
    label = f"{when} \u00b7 {prompt} \u00b7 seed {record.get('seed', '')} \u00b7 zz {s.get('zz', '?')}"
    return label, record.get("files", {}).get("record", "")


def settings_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[List[Any]]:
    """Rows (setting, run A, run B) where two records differ: prompt, seed and every setting."""
    def flat(r):
        return {"prompt": r.get("prompt"), "negative_prompt": r.get("negative_prompt"), "seed": r.get("seed"),
                **r.get("settings", {})}

    if not (a and b):
        return []
    fa, fb = flat(a), flat(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [[k, _cell(fa.get(k)), _cell(fb.get(k))] for k in keys if _same(fa.get(k)) != _same(fb.get(k))]


def _same(value) -> Any:
    """``value`` as compared: a repeatable setting's values (a list in a record, a tuple in a config) as a tuple,
    none of them as ``None`` (a record from before the setting existed lacks it)."""
    if isinstance(value, (list, tuple)):
        return tuple(value) or None
    return value


def _cell(value) -> str:
    if isinstance(value, (list, tuple)):  # a repeatable setting: its values, in order
        return ", ".join(map(str, value))
    return "" if value is None else str(value)
