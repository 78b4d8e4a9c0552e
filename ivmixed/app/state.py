"""The app's state and every request the page makes of it, without gradio: settings from the page's values, one
generation at a time through :class:`~ivmixed.runner.Runner` (the same fingerprinted files, records and
``manifest.jsonl`` as the command line, so both share one history), stopping a run or all of them, and the output
folder's history, reading and serving only files directly in that folder. :class:`App` is used and tested
without a browser; :mod:`ivmixed.app.page` lays out the page over it.
"""

import json
import logging
import os
import random
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..config import SETTINGS, RunConfig, build_config
from ..errors import SettingError
from ..failures import describe_failure
from ..flags import flag
from ..lora_paths import resolve_lora
from ..manifest import Manifest
from .fields import CONTROLNET_FIELDS, CONTROLNET_ONLY, NO_LORA, PIPELINE_OWN, UPLOAD_FIELDS, render_error, spell
from .tables import calls_table

logger = logging.getLogger("ivmixed")

RANDOM_SEED_LIMIT = 2**32  # random seeds stay exact in the browser's numbers (2**53)


def _is_lora_folder(spec: str) -> bool:
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


def _upload_path(key: str, value: Any) -> Optional[str]:
    """An upload field's value as a path: a path string (Gradio's temporary copy, named as the file was) or a
    file's data as Gradio's client or API sends it (``{"path": ...}``); empty or ``None``: no file."""
    if isinstance(value, Mapping):
        value = value.get("path")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RequestError(f"{spell(key)} must be an uploaded file, got {type(value).__name__}")
    return str(value)


def _number_text(value: float) -> str:
    """``value`` as the command line would type it: short (0.7, 1), exact."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _one_of(key: str, value: Any) -> tuple:
    """The page's single value for repeatable setting ``key`` (its one ControlNet slot) as the setting's tuple: the
    source's text, the upload's path or the scale's number; empty: none. A tuple or list (the API, or a value
    read back from a record) is taken as it is."""
    if isinstance(value, (tuple, list)):
        if key in UPLOAD_FIELDS:
            return tuple(path for path in (_upload_path(key, v) for v in value) if path is not None)
        return tuple(str(v) for v in value)
    if key in UPLOAD_FIELDS:
        path = _upload_path(key, value)
        return () if path is None else (path,)
    if key == "controlnet_scale":
        if value is None or (isinstance(value, str) and not value.strip()):
            return ()
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RequestError(f"{spell(key)} must be a number, got {value!r}") from None
        return (_number_text(number),)
    if value is None:
        return ()
    if not isinstance(value, str):
        raise RequestError(f"{spell(key)} must be text, got {type(value).__name__}")
    return (value.strip(),) if value.strip() else ()


def _upload_error(exc: SettingError, settings: Mapping[str, Any]) -> str:
    """The page's line for ``exc``, each uploaded file named by its file name, not the path of Gradio's copy (a
    folder of hashes under the temporary folder): the line says what is wrong with the file the user picked."""
    message = render_error(exc)
    for key in UPLOAD_FIELDS:
        value = settings.get(key)
        for path in value if isinstance(value, (tuple, list)) else (value,):  # a repeatable one: each of its files
            if isinstance(path, str) and _is_upload(path) and path in message:
                message = message.replace(path, f"{_file_name(path)} (uploaded)")
    return message


def _is_upload(path: str) -> bool:
    """Whether ``path`` is in Gradio's folder of uploads."""
    import tempfile

    folder = os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)
    except ValueError:
        return False


def _file_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)).replace("`", "'")


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
        from ..runner import PipelineCache

        self.output_dir = os.path.abspath(os.path.expanduser(self.output_dir))
        self.config_file = {k: v for k, v in self.config_file.items() if k not in ("prompt", "prompt_file")}
        self.pipelines = PipelineCache()
        self._lock = threading.Lock()  # one generation at a time, even if a stopped one is still finishing
        self._stops: Dict[str, threading.Event] = {}
        self._closing = False  # set by stop_all: the server is going down, no generation starts any more
        self._active = 0  # generations inside generate(), for wait_idle
        self._idle = threading.Condition()
        self._warned: set = set()  # paths outside the output folder already warned about

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
            if key in CONTROLNET_FIELDS:  # the page's one ControlNet slot
                given[key] = _one_of(key, value)
                continue
            if key in UPLOAD_FIELDS:  # a file's path (Gradio's copy of an upload) or none: kept as it is
                value = _upload_path(key, value)
            elif isinstance(value, str):
                value = value.strip() or None
            if key == "lora" and value == NO_LORA:
                value = None
            if value == PIPELINE_OWN and SETTINGS[key].choices:
                value = None
            if SETTINGS[key].type is tuple and isinstance(value, str):  # one value per line
                value = tuple(line.strip() for line in value.splitlines() if line.strip())
            elif SETTINGS[key].type is tuple and value is None:
                value = ()
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
        if "controlnet" in given and not given["controlnet"]:
            # the scale and start/end sliders always hold a value; without a ControlNet they say nothing, and the
            # defaults go (not None: a config file's ControlNet values would come back and be refused)
            for key in CONTROLNET_ONLY:
                given[key] = SETTINGS[key].default
        elif given.get("controlnet") and "controlnet_video" in given and not given["controlnet_video"]:
            raise RequestError(f"{spell('controlnet')} needs a {spell('controlnet_video')} to follow: upload one, "
                               f"or clear {spell('controlnet')}")
        given.update(output_dir=self.output_dir, side_by_side=True, tiny=self.tiny or None)
        return given

    def config(self, values: Mapping[str, Any]) -> RunConfig:
        given = self.given(values)
        try:
            return build_config(given, self.config_file)
        except SettingError as exc:
            raise RequestError(_upload_error(exc, given)) from None

    def command_line(self, config: RunConfig) -> List[str]:
        """The ``ivmixed`` command that makes the same files: the values that differ from the CLI's defaults."""
        base = build_config({"prompt": config.prompt, "pipeline": config.pipeline, "tiny": config.tiny or None},
                            self.config_file)
        line = ["ivmixed", "--prompt", config.prompt, "--pipeline", config.pipeline, "--seed", str(config.seed)]
        ours, theirs = config.settings(), base.settings()
        for key, value in ours.items():
            if key in ("prompt", "pipeline", "seed", "output_dir", "side_by_side", "tiny") or value == theirs[key]:
                continue
            if isinstance(value, bool):
                line += [flag(key)] if value else []
            elif isinstance(value, tuple):  # a repeatable setting: its flag once per value
                line += [part for v in value for part in (flag(key), v)]
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
        with self._idle:
            if self._closing:
                raise RequestError("the server is shutting down; nothing new is started", title="Stopped")
            self._active += 1
        try:
            return self._generate(values, random_seed, session, progress)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _generate(self, values: Mapping[str, Any], random_seed: bool, session: Optional[str],
                  progress: Optional[Callable[[str, int, int], None]]) -> Result:
        from ..runner import Runner, RunStopped

        values = dict(values)
        if random_seed:
            values["seed"] = random.randrange(RANDOM_SEED_LIMIT)
        config = self.config(values)
        stop = threading.Event()
        key = session or "-"
        self._stops[key] = stop
        if self._closing:  # stop_all ran between the check above and now
            stop.set()

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
        except SettingError as exc:  # an input file that changed or does not decode, found when read
            raise RequestError(_upload_error(exc, config.settings())) from None
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

    def stop_all(self) -> int:
        """Ask every run to stop at its next step and refuse new ones (the server is going down); how many
        were running."""
        with self._idle:
            self._closing = True
            stops = list(self._stops.values())
        for stop in stops:
            stop.set()
        return len(stops)

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until no generation is running (at most ``timeout`` seconds); whether none is."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _finished_record(self, runner) -> Dict[str, Any]:
        """The record of a set the manifest lists as finished (the same settings ran before, here or in the CLI);
        the manifest's line when the record file cannot be read from the output folder."""
        from ..runner import plan_jobs

        outputs = runner.output_set(plan_jobs(runner.config)[0])
        record = self._read_record(outputs.files["record"])
        if record is None:
            record = Manifest(self.output_dir).records().get(outputs.fingerprint)
        if record is None:
            raise RequestError("the manifest lists these settings as made, but neither their record nor their "
                               "manifest line can be read; Generate again to make them again")
        return record

    def _result(self, config: RunConfig, record: Dict[str, Any], made: bool, took: float) -> Result:
        files = self.paths(record)
        status = [f"**{'Made' if made else 'Already made'}** in `{self.output_dir}`"
                  + (f" in {took:.1f} s" if made else " with these settings and seed (found in the manifest; "
                     "shared with the command line)") + f" · seed {config.seed}",
                  f"Same files from the command line: `{shlex.join(record.get('command_line') or self.command_line(config))}`"]
        guided = []
        if config.init_video is not None:
            guided.append(f"video-to-video from `{_file_name(config.init_video)}` at strength {config.strength:g}: "
                          f"the last {config.steps_run} of {config.inference_step} steps ran")
        if config.ip_adapter is not None:
            guided.append(f"image prompt `{_file_name(config.ip_adapter_image)}` through IP-Adapter "
                          f"`{config.ip_adapter}` at scale {config.ip_adapter_scale:g}")
        if config.controlnet:
            from ..controlnets import controlnet_inputs

            span = (config.control_guidance_start, config.control_guidance_end)
            when = "" if span == (0.0, 1.0) else f", from {span[0]:.0%} to {span[1]:.0%} of the steps that run"
            for net in controlnet_inputs(config):
                source = net.source
                name = _file_name(source) if os.path.exists(os.path.expanduser(source)) else source  # a folder; a hub id
                guided.append(f"ControlNet `{name}` on `{_file_name(net.video)}` at scale {net.scale:g}{when}")
        if guided:
            status.append("Guided: " + "; ".join(guided) + ".")
        if config.tiny:
            status.append("Tiny random models: the videos are noise; they check the install, not quality.")
        return Result(config.seed, files, calls_table(record), record, files.get("record", ""), "\n\n".join(status),
                      made)

    def inside(self, name: Any) -> Optional[str]:
        """The real path of file ``name`` (relative to the output folder) when it is a file directly in that
        folder, else ``None``. A manifest or record can name any path, a symlink can point anywhere: the app
        reads and serves nothing else. Each path outside is warned about once."""
        if not isinstance(name, str) or not name or "\0" in name:
            return None
        folder = os.path.realpath(self.output_dir)
        path = os.path.realpath(os.path.join(folder, name))
        if os.path.dirname(path) != folder:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning("a manifest line or record in %s names %r, which is outside that folder (or links "
                               "out of it): not read or shown", self.output_dir, name)
            return None
        return path if os.path.isfile(path) else None

    def paths(self, record: Mapping[str, Any]) -> Dict[str, str]:
        """A record's files that are on disk in the output folder, as absolute paths by kind."""
        files = record.get("files")
        if not isinstance(files, Mapping):
            return {}
        out = {}
        for kind, name in files.items():
            path = self.inside(name)
            if path is not None:
                out[kind] = path
        return out

    def _read_record(self, name: Any) -> Optional[Dict[str, Any]]:
        """The JSON record file ``name`` in the output folder, or ``None`` (outside, missing or not a record)."""
        path = self.inside(name)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("files", {}), dict):
            return None
        return loaded

    # -- history -------------------------------------------------------------------------------------------

    def history(self) -> List[Dict[str, Any]]:
        """The output folder's finished sets, newest first: each its record (the manifest's line when the
        record file is gone or not in the output folder)."""
        entries = []
        for entry in Manifest(self.output_dir).records().values():
            entries.append(self._read_record(entry["files"].get("record")) or dict(entry))
        entries.sort(key=lambda r: str(r.get("finished_at", "")), reverse=True)
        return entries
