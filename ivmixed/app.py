"""The web app: explore frame quality against temporal coherence in a browser (``python -m ivmixed.app``).

Every generation goes through :class:`~ivmixed.runner.Runner`, like the command line: the same fingerprinted
files, records and ``manifest.jsonl`` in the output folder, so the app and the CLI share one history. The models
load once per pipeline and checkpoints (one :class:`~ivmixed.runner.PipelineCache` for the app) and one
generation runs at a time; others wait in Gradio's queue and see their position.

:class:`App` holds everything but the page (settings from the page's values, runs, stopping, the history), so it
can be used and tested without a browser; :func:`build_ui` lays out the page over it.
"""

import argparse
import inspect
import json
import logging
import os
import random
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no telemetry, no version check

from .config import IV_MIXED_KEYS, PIPELINE_NAMES, SETTINGS, TINY_SIZES, RunConfig, build_config, load_yaml_config
from .errors import SettingError
from .lora_paths import DEFAULT_SCALE, available_loras, lora_search_dirs
from .manifest import Manifest

logger = logging.getLogger("ivmixed")

RANDOM_SEED_LIMIT = 2**32  # random seeds stay exact in the browser's numbers (2**53)
VIDEO_LABELS = {"standard": "Standard", "iv_mix": "IV-mixed"}
CALLS_HEADERS = ["Video", "Video-model calls", "Image-model calls", "Time (s)"]

# What each field of the page is called; errors name settings by these labels.
LABELS: Dict[str, str] = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "pipeline": "Pipeline",
    "seed": "Seed",
    "inference_step": "Steps",
    "num_frames": "Frames",
    "height": "Height",
    "width": "Width",
    "guidance_scale": "Guidance",
    "interval_begin": "Interval begin",
    "interval_end": "Interval end",
    "zz": "zz",
    "i_sigma_begin": "Image guidance begin",
    "i_sigma_end": "Image guidance end",
    "v_sigma_begin": "Video guidance begin",
    "v_sigma_end": "Video guidance end",
    "rho": "rho",
    "reference_compat": "Reference compatibility",
    "lora": "LoRA",
    "lora_scale": "LoRA strength",
    "lora_target": "LoRA goes into",
}

# Which way each knob moves frame quality against temporal coherence (its help text says what it is).
DIRECTIONS: Dict[str, str] = {
    "interval_begin": "A later first step leaves the early layout to the video model alone (favours coherence); "
                      "0 lets the zigzag shape it from the start (favours detail).",
    "interval_end": "An earlier last step lets the video model alone finish the motion (favours coherence); empty "
                    "(the last step) refines texture to the end (favours detail).",
    "zz": "Lower favours coherence, higher favours detail.",
    "i_sigma_begin": "Higher pulls the early frames harder toward the image model (favours detail); lower keeps "
                     "them closer to the video model (favours coherence).",
    "i_sigma_end": "Higher pulls the late frames harder toward the image model (favours detail); lower keeps "
                   "them closer to the video model (favours coherence).",
    "v_sigma_begin": "Higher gives the video model's moves more weight in the early zigzags (favours coherence); "
                     "lower leaves more to the image model (favours detail).",
    "v_sigma_end": "Higher gives the video model's moves more weight in the late zigzags (favours coherence); "
                   "lower leaves more to the image model (favours detail).",
    "rho": "Matters only when a begin and end differ: larger keeps each weight near the lower of its two values "
           "for more of the steps.",
    "reference_compat": "Neither way on quality against coherence: it is for comparing with the published "
                        "results.",
}

# Named starting points for the IV-mixed knobs; ``interval_end`` as a fraction of the last step (None: the last).
PRESETS: Dict[str, Dict[str, Any]] = {
    "Favour coherence": {"interval_begin": 0, "interval_end": 0.4, "zz": 2, "i_sigma_begin": 4.0,
                         "i_sigma_end": 2.0, "v_sigma_begin": 4.0, "v_sigma_end": 4.0, "rho": 7.0},
    "Balanced": {"interval_begin": 0, "interval_end": None, "zz": 3, "i_sigma_begin": 4.0, "i_sigma_end": 4.0,
                 "v_sigma_begin": 4.0, "v_sigma_end": 4.0, "rho": 7.0},
    "Favour detail": {"interval_begin": 0, "interval_end": None, "zz": 1000, "i_sigma_begin": 4.0,
                      "i_sigma_end": 4.0, "v_sigma_begin": 4.0, "v_sigma_end": 4.0, "rho": 7.0},
}
PRESET_NOTES = {
    "Favour coherence": "the image model joins every other zigzag, in the first 40% of the steps only, its "
                        "guidance falling 4 to 2",
    "Balanced": "the image model in two of every three zigzags over all steps (VideoCrafter's published setting)",
    "Favour detail": "the image model in every zigzag over all steps (the published AnimateDiff and ModelScope "
                     "setting)",
}
NO_LORA = "none"


def knob_info(name: str) -> str:
    """The help sentence a knob shows: what it is (the setting's help) and which way it moves the trade-off."""
    text = SETTINGS[name].help.strip()
    text = text[:1].upper() + text[1:]
    if not text.endswith("."):
        text += "."
    direction = DIRECTIONS.get(name)
    return f"{text} {direction}" if direction and "favours" not in text else text


def preset_values(name: str, steps: int) -> Dict[str, Any]:
    """The knob values of starting point ``name`` for a run of ``steps`` steps."""
    values = dict(PRESETS[name])
    if values["interval_end"] is not None:
        values["interval_end"] = int(round(values["interval_end"] * max(int(steps) - 1, 0)))
    return values


def spell(name: str) -> str:
    """A setting as the page names it (its field's label), for error messages."""
    if name in LABELS:
        return f"\u201c{LABELS[name]}\u201d"
    from .cli import flag

    return flag(name)


def render_error(exc: SettingError) -> str:
    return exc.render(spell)


def _is_lora_folder(spec: str) -> bool:
    from .lora_paths import resolve_lora

    try:
        return resolve_lora(spec)[0] == "folder"
    except (OSError, ValueError):  # the run says what is wrong with it
        return False


class RequestError(Exception):
    """A generation that could not run or finish, with the one line the page shows."""

    def __init__(self, message: str, title: str = "Error"):
        super().__init__(message)
        self.message = message
        self.title = title


@dataclass
class Result:
    """What one generation shows: the files (absolute paths), the calls table, the record and a status line."""

    seed: int
    files: Dict[str, str]
    calls: List[List[Any]]
    record: Dict[str, Any]
    record_path: str
    status: str
    made: bool = True


@dataclass
class App:
    """The app's state: where outputs go, the models kept loaded, the run in progress per browser session."""

    output_dir: str = "outputs"
    tiny: bool = False
    config_file: Mapping[str, Any] = field(default_factory=dict)
    config_path: Optional[str] = None

    def __post_init__(self):
        from .runner import PipelineCache

        self.output_dir = os.path.abspath(os.path.expanduser(self.output_dir))
        self.config_file = {k: v for k, v in self.config_file.items() if k not in ("prompt", "prompt_file")}
        self.pipelines = PipelineCache()
        self._lock = threading.Lock()  # one generation at a time, even if a stopped one is still finishing
        self._stops: Dict[str, threading.Event] = {}

    # -- settings ------------------------------------------------------------------------------------------

    def defaults(self, pipeline: Optional[str] = None) -> RunConfig:
        """The settings the page starts from for ``pipeline``: its preset, the config file, tiny sizes."""
        given = {"prompt": "-", "tiny": self.tiny or None, "pipeline": pipeline}
        return build_config(given, self.config_file)

    def pipeline_defaults(self, pipeline: str) -> Dict[str, Any]:
        """The page's values that follow the pipeline (its sizes, guidance and zz)."""
        config = self.defaults(pipeline)
        return {"height": config.height, "width": config.width, "guidance_scale": config.guidance_scale,
                "zz": config.iv_mixed.zz}

    def given(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """The page's values as run settings: blanks dropped, whole numbers made ``int``, tiny and the folder set."""
        given: Dict[str, Any] = {}
        for key, value in values.items():
            if key not in SETTINGS:
                raise TypeError(f"unknown setting {key}")
            if isinstance(value, str):
                value = value.strip() or None
            if key == "lora" and value == NO_LORA:
                value = None
            setting = SETTINGS[key]
            if setting.type in (int, float) and isinstance(value, str):  # a number typed into a text field
                try:
                    value = setting.type(value)
                except ValueError:
                    kind = "a whole number" if setting.type is int else "a number"
                    raise RequestError(f"{spell(key)} must be {kind}, got {value!r}") from None
            if setting.type is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if setting.type is bool and value is not None:
                value = bool(value)
            given[key] = value
        if given.get("prompt") is None:
            raise RequestError(f"{spell('prompt')} is empty; describe the video to make")
        if given.get("lora") is None or _is_lora_folder(given["lora"]):
            given["lora_scale"] = None  # a strength applies to a .safetensors file only
        given.update(output_dir=self.output_dir, side_by_side=True, tiny=self.tiny or None)
        return given

    def config(self, values: Mapping[str, Any]) -> RunConfig:
        try:
            return build_config(self.given(values), self.config_file)
        except SettingError as exc:
            raise RequestError(render_error(exc)) from None

    def command_line(self, config: RunConfig) -> List[str]:
        """The ``ivmixed`` command that makes the same files: the values that differ from the CLI's defaults."""
        from .cli import flag

        base = build_config({"prompt": config.prompt, "pipeline": config.pipeline, "tiny": config.tiny or None},
                            self.config_file)
        line = ["ivmixed", "--prompt", config.prompt, "--pipeline", config.pipeline, "--seed", str(config.seed)]
        ours, theirs = config.settings(), base.settings()
        for key, value in ours.items():
            if key in ("prompt", "pipeline", "seed", "output_dir", "side_by_side", "tiny") or value == theirs[key]:
                continue
            if isinstance(value, bool):
                line += [flag(key)] if value else []
            elif value is not None:
                line += [flag(key), f"{value:g}" if isinstance(value, float) else str(value)]
        if config.tiny:
            line.append("--tiny")
        if self.config_path:
            line += ["--config", self.config_path]
        return line + ["--side-by-side", "--output-dir", config.output_dir]

    # -- generating ----------------------------------------------------------------------------------------

    def generate(self, values: Mapping[str, Any], random_seed: bool = False, session: Optional[str] = None,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> Result:
        """Make (or find finished) the standard and IV-mixed videos of the page's values.

        ``progress(kind, step, total)`` sees every sampling step; :meth:`stop` with the same ``session`` stops
        the run at its next step. Raises :class:`RequestError` with the page's one-line message.
        """
        from .cli import describe_failure
        from .runner import Runner, RunStopped

        values = dict(values)
        if random_seed:
            values["seed"] = random.randrange(RANDOM_SEED_LIMIT)
        config = self.config(values)
        stop = threading.Event()
        key = session or "-"
        self._stops[key] = stop

        def on_step(kind: str, step: int, total: int) -> None:
            if progress is not None:
                progress(kind, step, total)
            if stop.is_set():  # now, not after the rest of this video's steps
                raise RunStopped("stopped")

        try:
            runner = Runner(config, pipelines=self.pipelines, on_step=on_step, should_stop=stop.is_set,
                            command_line=self.command_line(config), progress_bars=False)
            with self._lock:
                if stop.is_set():
                    raise RunStopped("stopped")
                t0 = time.perf_counter()
                report = runner.run()
                took = time.perf_counter() - t0
        except SettingError as exc:
            raise RequestError(render_error(exc)) from None
        except RunStopped:
            raise RequestError("stopped; files already complete are kept, and Generate with the same settings "
                               "makes the rest", title="Stopped") from None
        except Exception as exc:
            logger.exception("generation failed")
            raise RequestError(describe_failure(exc)[1].replace(" (rerun with --debug for the traceback)",
                                                                " (the server's log has the traceback)")) from None
        finally:
            if self._stops.get(key) is stop:
                del self._stops[key]
        if report.made:
            record, made = report.made[0], True
        else:
            record, made = self._finished_record(runner), False
        return self._result(config, record, made, took)

    def stop(self, session: Optional[str] = None) -> bool:
        """Ask the run of ``session`` to stop at its next step; whether one was running."""
        stop = self._stops.get(session or "-")
        if stop is None:
            return False
        stop.set()
        return True

    def _finished_record(self, runner) -> Dict[str, Any]:
        """The record of a set the manifest lists as finished (the same settings ran before, here or in the CLI)."""
        from .runner import plan_jobs

        outputs = runner.output_set(plan_jobs(runner.config)[0])
        with open(os.path.join(self.output_dir, outputs.files["record"]), encoding="utf-8") as f:
            return json.load(f)

    def _result(self, config: RunConfig, record: Dict[str, Any], made: bool, took: float) -> Result:
        files = self.paths(record)
        status = [f"**{'Made' if made else 'Already made'}** in `{self.output_dir}`"
                  + (f" in {took:.1f} s" if made else " with these settings and seed (found in the manifest; "
                     "shared with the command line)") + f" · seed {config.seed}",
                  f"Same files from the command line: `{shlex.join(record.get('command_line') or self.command_line(config))}`"]
        if config.tiny:
            status.append("Tiny random models: the videos are noise; they check the install, not quality.")
        return Result(config.seed, files, calls_table(record), record, files.get("record", ""), "\n\n".join(status),
                      made)

    def paths(self, record: Mapping[str, Any]) -> Dict[str, str]:
        """A record's files that are on disk, as absolute paths by kind."""
        out = {}
        folder = os.path.realpath(self.output_dir)
        for kind, name in record.get("files", {}).items():
            path = os.path.realpath(os.path.join(folder, str(name)))
            if os.path.dirname(path) == folder and os.path.isfile(path):  # never a file outside the folder
                out[kind] = path
        return out

    # -- history -------------------------------------------------------------------------------------------

    def history(self) -> List[Dict[str, Any]]:
        """The output folder's finished sets, newest first: each its record (the manifest's line when the
        record file is gone)."""
        entries = []
        for entry in Manifest(self.output_dir).records().values():
            record = dict(entry)
            try:
                with open(os.path.join(self.output_dir, entry["files"]["record"]), encoding="utf-8") as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict):
                    record = loaded
            except (KeyError, OSError, ValueError):
                pass
            entries.append(record)
        entries.sort(key=lambda r: str(r.get("finished_at", "")), reverse=True)
        return entries


def calls_table(record: Mapping[str, Any]) -> List[List[Any]]:
    """Rows of guided network calls and seconds per video, standard first."""
    rows = []
    calls, timings = record.get("network_calls", {}), record.get("timings", {})
    for kind in ("standard", "iv_mix"):
        if kind in calls or kind in record.get("files", {}):
            c = calls.get(kind, {})
            seconds = timings.get(f"{kind}_s")
            rows.append([VIDEO_LABELS[kind], c.get("video", ""), c.get("image", ""),
                         "" if seconds is None else round(float(seconds), 2)])
    return rows


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
    return [[k, _cell(fa.get(k)), _cell(fb.get(k))] for k in keys if fa.get(k) != fb.get(k)]


def _cell(value) -> str:
    return "" if value is None else str(value)


# -- the page -------------------------------------------------------------------------------------------------

VIDEO_HEIGHT = 320
MAX_STEPS = 250
CSS = """
.preset-note { font-size: 0.9em; }
"""

GENERATE_INPUTS = ("prompt", "negative_prompt", "pipeline", "seed", "inference_step", "num_frames", "height", "width",
                   "guidance_scale") + IV_MIXED_KEYS + ("reference_compat", "lora", "lora_scale", "lora_target")


def build_ui(app: App):
    """The page over ``app``; returns the (not yet launched) ``gr.Blocks``."""
    import gradio as gr

    start = app.defaults()
    start_values = start.settings()
    loras = [NO_LORA] + available_loras(lora_search_dirs())
    fields: Dict[str, Any] = {}

    def knob(name: str):
        value = start_values[name]
        info = knob_info(name)
        if name == "interval_end":  # empty means the last step, whatever the number of steps
            return gr.Textbox(value="" if value is None else str(value), label=LABELS[name], info=info,
                              placeholder="last step", elem_id=f"knob-{name}")
        if name in ("interval_begin", "zz"):
            return gr.Number(value=value, label=LABELS[name], info=info, precision=0, elem_id=f"knob-{name}")
        if name == "reference_compat":
            return gr.Checkbox(value=value, label=LABELS[name], info=info, elem_id=f"knob-{name}")
        if name in LABELS and SETTINGS[name].type is float:
            top = 20.0 if name == "rho" else 15.0
            return gr.Slider(minimum=0.5 if name == "rho" else 0.0, maximum=top, step=0.5, value=value,
                             label=LABELS[name], info=info, elem_id=f"knob-{name}")
        return gr.Number(value=value, label=LABELS.get(name, name), info=info, elem_id=f"knob-{name}")

    with gr.Blocks(title="IV-mixed sampler", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# IV-mixed sampler\nA video model samples the video while an image model refines every "
                    "frame. Each run also makes the standard video of the same seed, so the two can be compared."
                    + ("\n\n**Tiny random models** (`--tiny`): the videos are noise; this checks the install."
                       if app.tiny else ""))
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    fields["prompt"] = gr.Textbox(value="", label=LABELS["prompt"], lines=2, elem_id="prompt",
                                                  placeholder="Two horses race across a grassy field at sunset.")
                    fields["negative_prompt"] = gr.Textbox(value="", label=LABELS["negative_prompt"], lines=1,
                                                           elem_id="negative-prompt")
                    with gr.Row():
                        fields["pipeline"] = gr.Dropdown(list(PIPELINE_NAMES), value=start.pipeline,
                                                         label=LABELS["pipeline"],
                                                         info="The video model; choosing one sets its size, "
                                                              "guidance and zz.")
                        fields["seed"] = gr.Number(value=start.seed, label=LABELS["seed"], precision=0,
                                                   info="Both videos start from this seed's noise.", elem_id="seed")
                        random_seed = gr.Checkbox(value=False, label="Random seed",
                                                  info="A new seed for each generation.")
                    with gr.Row():
                        fields["inference_step"] = gr.Slider(1, MAX_STEPS, step=1, value=start.inference_step,
                                                             label=LABELS["inference_step"])
                        fields["num_frames"] = gr.Slider(1, 64, step=1, value=start.num_frames,
                                                         label=LABELS["num_frames"])
                        fields["guidance_scale"] = gr.Slider(0, 20, step=0.5, value=start.guidance_scale,
                                                             label=LABELS["guidance_scale"])
                    with gr.Row():
                        fields["height"] = gr.Slider(64, 1024, step=8, value=start.height, label=LABELS["height"])
                        fields["width"] = gr.Slider(64, 1024, step=8, value=start.width, label=LABELS["width"])
                    with gr.Accordion("LoRA for the image model", open=False):
                        with gr.Row():
                            fields["lora"] = gr.Dropdown(loras, value=start.lora or NO_LORA, allow_custom_value=True,
                                                         label=LABELS["lora"],
                                                         info="A name from lora/, or a path to a .safetensors "
                                                              "file or a converted folder.")
                            fields["lora_scale"] = gr.Slider(0, 2, step=0.05, value=start.lora_scale or DEFAULT_SCALE,
                                                             label=LABELS["lora_scale"],
                                                             info="Strength of a .safetensors file; a converted "
                                                                  "folder keeps the strength it was merged at.")
                            fields["lora_target"] = gr.Radio(list(SETTINGS["lora_target"].choices),
                                                             value=start.lora_target, label=LABELS["lora_target"])
                with gr.Column(scale=2):
                    with gr.Column(variant="panel", elem_id="iv-mixed-panel"):
                        gr.Markdown("### IV-mixed\nStarting points:")
                        with gr.Row():
                            preset_buttons = {name: gr.Button(name, size="sm", variant="secondary")
                                              for name in PRESETS}
                        gr.Markdown("\n".join(f"- **{n}**: {PRESET_NOTES[n]}" for n in PRESETS),
                                    elem_classes="preset-note")
                        with gr.Row():
                            fields["interval_begin"] = knob("interval_begin")
                            fields["interval_end"] = knob("interval_end")
                            fields["zz"] = knob("zz")
                        with gr.Row():
                            fields["i_sigma_begin"] = knob("i_sigma_begin")
                            fields["i_sigma_end"] = knob("i_sigma_end")
                        with gr.Row():
                            fields["v_sigma_begin"] = knob("v_sigma_begin")
                            fields["v_sigma_end"] = knob("v_sigma_end")
                        for name in IV_MIXED_KEYS:  # any knob not laid out above
                            if name not in fields:
                                fields[name] = knob(name)
                        fields["reference_compat"] = knob("reference_compat")
            with gr.Row():
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            status = gr.Markdown(label="Status", elem_id="status")
            with gr.Row(elem_id="videos"):
                standard_video = gr.Video(label="Standard", elem_id="standard-video", interactive=False,
                                          autoplay=True, loop=True, height=VIDEO_HEIGHT)
                iv_video = gr.Video(label="IV-mixed", elem_id="ivmixed-video", interactive=False, autoplay=True,
                                    loop=True, height=VIDEO_HEIGHT)
            with gr.Row():
                with gr.Column(scale=1):
                    # the label as text above: Gradio's label badge would cover the sheet's caption
                    gr.Markdown("Contact sheet (standard above, IV-mixed below)")
                    sheet = gr.Image(show_label=False, type="filepath", interactive=False, elem_id="contact-sheet")
                with gr.Column(scale=1):
                    calls = gr.Dataframe(headers=CALLS_HEADERS, value=[], label="Guided network calls and time "
                                         "per video", interactive=False, type="array", elem_id="calls-table")
                    record_file = gr.File(label="Run record (JSON)", interactive=False, elem_id="record-file")

        with gr.Tab("History"):
            gr.Markdown(f"Every finished run in `{app.output_dir}` (from its `manifest.jsonl`), the command line's "
                        "too, newest first. Pick two to compare.")
            refresh_button = gr.Button("Refresh", size="sm")
            history_table = gr.Dataframe(headers=HISTORY_HEADERS, value=[], interactive=False, type="array",
                                         label="Runs", elem_id="history-table", max_height=360)
            with gr.Row():
                run_a = gr.Dropdown([], value=None, label="Run A", elem_id="history-a")
                run_b = gr.Dropdown([], value=None, label="Run B (compare with)", elem_id="history-b")
            with gr.Row():
                a_standard = gr.Video(label="A: Standard", interactive=False, loop=True, height=VIDEO_HEIGHT)
                a_iv = gr.Video(label="A: IV-mixed", interactive=False, loop=True, height=VIDEO_HEIGHT)
                b_iv = gr.Video(label="B: IV-mixed", interactive=False, loop=True, height=VIDEO_HEIGHT)
            differences = gr.Dataframe(headers=["Setting", "A", "B"], value=[], interactive=False, type="array",
                                       label="Where A and B differ")
            a_record = gr.JSON(label="A: record", max_height=360)

        inputs = [fields[name] for name in GENERATE_INPUTS]

        def generate(prompt, negative_prompt, pipeline, seed, inference_step, num_frames, height, width,
                     guidance_scale, interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end, v_sigma_begin,
                     v_sigma_end, rho, reference_compat, lora, lora_scale, lora_target, random_seed,
                     request: gr.Request, progress=gr.Progress()):
            given = {name: value for name, value in locals().items() if name in GENERATE_INPUTS}
            labels = {"iv_mix": "IV-mixed video", "standard": "Standard video"}

            def on_step(kind: str, step: int, total: int) -> None:
                progress((step, total), desc=labels.get(kind, kind), unit="steps")

            progress(0, desc="Loading the models and planning")
            try:
                result = app.generate(given, random_seed=bool(random_seed),
                                      session=getattr(request, "session_hash", None), progress=on_step)
            except RequestError as exc:
                raise gr.Error(exc.message, title=exc.title, print_exception=False) from None
            f = result.files
            return (result.seed, f.get("standard"), f.get("iv_mix"), f.get("contact_sheet"), result.calls,
                    result.record_path or None, result.status)

        # the endpoint's parameters are named after the settings (gradio_client calls them by these names)
        named = tuple(inspect.signature(generate).parameters)[: len(GENERATE_INPUTS)]
        if named != GENERATE_INPUTS:
            raise RuntimeError(f"the generate endpoint's parameters {named} do not match {GENERATE_INPUTS}")

        outputs = [fields["seed"], standard_video, iv_video, sheet, calls, record_file, status]
        event = generate_button.click(generate, inputs + [random_seed], outputs, api_name="generate",
                                      concurrency_limit="default", concurrency_id="generate",
                                      show_progress_on=[standard_video, iv_video])

        def stop(request: gr.Request = None):
            running = app.stop(getattr(request, "session_hash", None))
            return ("Stopped. Files already complete are kept; Generate with the same settings makes the rest."
                    if running else "Stopped; nothing was being made.")

        stop_button.click(stop, None, status, api_name="stop", concurrency_limit=None, cancels=[event])

        def apply_preset(name):
            def set_knobs(steps):
                values = preset_values(name, steps)
                end = values["interval_end"]
                values["interval_end"] = "" if end is None else str(end)  # a text field: empty = last step
                return [values[k] for k in PRESET_KEYS]
            return set_knobs

        PRESET_KEYS = tuple(PRESETS["Balanced"])
        for name, button in preset_buttons.items():
            button.click(apply_preset(name), fields["inference_step"], [fields[k] for k in PRESET_KEYS],
                         api_visibility="private", concurrency_limit=None)

        def on_pipeline(pipeline):
            try:
                d = app.pipeline_defaults(pipeline)
            except SettingError as exc:
                raise gr.Error(render_error(exc), print_exception=False) from None
            return d["height"], d["width"], d["guidance_scale"], d["zz"]

        fields["pipeline"].input(on_pipeline, fields["pipeline"],
                                 [fields["height"], fields["width"], fields["guidance_scale"], fields["zz"]],
                                 api_visibility="private", concurrency_limit=None)

        def refresh(run_a, run_b):
            a, b = run_a, run_b
            records = app.history()
            choices = [history_choice(r) for r in records]
            names = {value for _, value in choices}
            a = a if a in names else (choices[0][1] if choices else None)
            b = b if b in names else None
            return ([history_row(r) for r in records], gr.update(choices=choices, value=a),
                    gr.update(choices=choices, value=b))

        def show(run_a, run_b):
            newest_first = app.history() if run_a or run_b else []
            by_name = {r.get("files", {}).get("record"): r for r in reversed(newest_first)}  # the newest wins
            ra, rb = by_name.get(run_a) if run_a else None, by_name.get(run_b) if run_b else None
            pa, pb = app.paths(ra or {}), app.paths(rb or {})
            return (pa.get("standard"), pa.get("iv_mix"), pb.get("iv_mix"),
                    settings_difference(ra or {}, rb or {}), ra)

        history_outputs = [history_table, run_a, run_b]
        shown = [a_standard, a_iv, b_iv, differences, a_record]
        refresh_button.click(refresh, [run_a, run_b], history_outputs, api_name="history", concurrency_limit=None)
        event.then(refresh, [run_a, run_b], history_outputs, api_visibility="private", concurrency_limit=None)
        demo.load(refresh, [run_a, run_b], history_outputs, api_visibility="private", concurrency_limit=None)
        for picker in (run_a, run_b):
            picker.change(show, [run_a, run_b], shown, api_visibility="private", concurrency_limit=None)
    return demo


def launch(app: App, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           block: bool = True, quiet: bool = False):
    """Start the app's server; returns the ``gr.Blocks`` (serving in the background when ``block`` is false)."""
    demo = build_ui(app)
    demo.queue(default_concurrency_limit=1)
    os.makedirs(app.output_dir, exist_ok=True)
    demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[app.output_dir],
                prevent_thread_lock=not block, ssr_mode=False, quiet=quiet, css=CSS, show_error=True,
                footer_links=["api", "settings"])
    return demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ivmixed app",
        description="A local web app for IV-mixed sampling: the standard and IV-mixed videos of one seed side by "
        "side, every knob, and the history of the output folder (shared with the command line).",
    )
    p.add_argument("--tiny", action="store_true", help="random tiny models, offline, in seconds (the videos are noise)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or the next free one)")
    p.add_argument("--output-dir", default=None,
                   help="where videos, records and the manifest go (default: the config file's, else outputs)")
    p.add_argument("--config", default=None,
                   help="YAML file of settings under the page's values (checkpoints, device, dtype, offload, ...)")
    p.add_argument("--share", action="store_true", help="also open a public share link (off by default)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Start the app (``python -m ivmixed.app`` or ``ivmixed app``); returns the exit status."""
    from .terminal import install_terminal

    install_terminal()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config_file = load_yaml_config(args.config) if args.config else {}
        output_dir = args.output_dir or config_file.get("output_dir") or SETTINGS["output_dir"].default
        app = App(output_dir=output_dir, tiny=args.tiny, config_file=config_file, config_path=args.config)
        app.defaults()  # a config file no run could use is refused now, not at the first Generate
    except SettingError as exc:
        from .cli import flag

        parser.exit(2, f"{parser.prog}: error: {exc.render(flag)}\n")
    try:
        import gradio  # noqa: F401
    except ImportError:
        parser.exit(1, f"{parser.prog}: error: the web app needs gradio: pip install gradio\n")
    if args.tiny:
        sizes = ", ".join(f"{k} {v}" for k, v in TINY_SIZES.items())
        logger.warning("--tiny: random tiny models (%s); the videos are noise and only check the install", sizes)
    try:
        demo = launch(app, host=args.host, port=args.port, share=args.share, block=False, quiet=True)
        share = f" and {demo.share_url}" if getattr(demo, "share_url", None) else ""
        print(f"{parser.prog}: serving on {demo.local_url}{share}; outputs in {app.output_dir}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
