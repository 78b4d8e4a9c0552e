"""From a checked :class:`~ivmixed.config.RunConfig` to finished files: jobs, resume, processes, writing, records.

Resume: a job is finished when ``manifest.jsonl`` holds a record with its fingerprint and every file it wants
(for this run's format, ``no_standard`` and ``side_by_side``) is on disk. What is missing is made; finished files
are kept (``overwrite`` makes this configuration's files again). Files of other configurations are never touched.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .config import RunConfig, check_output_dir, with_resolved_runtime
from .errors import ModelLoadError, SettingError
from .leftovers import sweep_files
from .manifest import Manifest
from .outputs import OutputSet, lora_identity, output_set
from .prompts import Job, read_prompt_file
from .sampler import count_network_calls
from .stopping import RunStopped

logger = logging.getLogger("ivmixed")

VIDEO_KINDS = ("iv_mix", "standard")
VIDEO_LABELS = {"iv_mix": "IV-mixed", "standard": "standard"}  # the step bars' labels
# step observer: (video kind, step index, total steps)
StepObserver = Callable[[str, int, int], None]


@dataclass
class Todo:
    """One job's output set and which of its files this run makes."""

    outputs: OutputSet
    make: List[str]
    # The newest earlier record listing a video this run reuses (for the calls and time it measured).
    previous: Optional[Dict[str, Any]] = None


@dataclass
class Plan:
    jobs: List[Job]  # without repeats (a prompt repeated with the same seed is made once, under its first name)
    todo: List[Todo]
    finished: int
    repeats: int = 0


@dataclass
class RunReport:
    """What a run did: the records of the output sets it finished, and how many it found finished already."""

    made: List[Dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def plan_jobs(config: RunConfig) -> List[Job]:
    """Every prompt of this run, in order."""
    if config.prompt_file:
        return read_prompt_file(config.prompt_file, config.seed, config.negative_prompt)
    return [Job(config.prompt.strip(), config.seed, config.negative_prompt)]


def package_versions() -> Dict[str, str]:
    from . import __version__

    out = {"ivmixed": __version__}
    for name in ("torch", "diffusers", "transformers", "accelerate", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def process_state(config: RunConfig):
    """accelerate's process state when launched by ``accelerate launch`` or ``torchrun``, else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=config.device == "cpu" or not torch.cuda.is_available())


@dataclass
class LoadedPipeline:
    """A pipeline placed on its device with its options applied, and what the record says about it."""

    pipe: Any
    info: Dict[str, Any]


class PipelineCache:
    """Loaded pipelines by what they were loaded from, so a long-lived caller (the web app) loads each once."""

    def __init__(self, size: int = 1):
        self.size = size
        self._items: Dict[tuple, LoadedPipeline] = {}

    @staticmethod
    def key(config: RunConfig) -> tuple:
        return (config.pipeline, config.tiny, tuple(sorted(config.model_sources().items())), config.dtype,
                config.device, config.lora, config.lora_scale, config.lora_target, config.offload, config.compile,
                config.channels_last, config.vae_slicing, config.vae_tiling)

    def get(self, config: RunConfig) -> LoadedPipeline:
        key = self.key(config)
        if key not in self._items:
            while len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = load_pipeline(config)
        return self._items[key]


def load_pipeline(config: RunConfig) -> LoadedPipeline:
    """Load ``config``'s pipeline (random tiny models with ``tiny``), place it and apply LoRA and speed options."""
    from .performance import apply_performance_options
    from .loading import ensure_checkpoints
    from .runtime import quiet_libraries, set_cpu_threads, torch_dtype

    spec, sources = config.spec, config.model_sources()
    if not config.tiny:
        ensure_checkpoints(spec, **sources)
    quiet_libraries()
    t0 = time.perf_counter()
    threads = set_cpu_threads(config.device, config.tiny)
    logger.info("loading the %s models%s", spec.name,
                " (random tiny ones)" if config.tiny else ": " + ", ".join(dict.fromkeys(sources.values())))
    if config.tiny:
        from .testing import load_tiny

        try:
            pipe = load_tiny(spec, dtype=torch_dtype(config.dtype))
        except OSError as exc:
            from .export import describe_cause

            temp = tempfile.gettempdir()
            raise ModelLoadError(f"cannot save the tiny models in the temporary folder {temp} "
                                 f"({describe_cause(exc, temp)}); free space there or set TMPDIR to another "
                                 "folder") from None
    else:
        pipe = spec.pipeline_class().from_checkpoints(**sources, dtype=torch_dtype(config.dtype))
    lora_record = None
    if config.lora:
        from .lora import apply_lora_to_pipeline

        lora_record = apply_lora_to_pipeline(pipe, config.lora, config.lora_scale, config.lora_target)
    performance = apply_performance_options(
        pipe, device=config.device, offload=config.offload, compile=config.compile,
        channels_last=config.channels_last, vae_slicing=config.vae_slicing, vae_tiling=config.vae_tiling,
    )
    info = {
        "models": {k: ("tiny-random" if config.tiny else v) for k, v in config.model_sources().items()},
        "lora": lora_record,
        "load_s": round(time.perf_counter() - t0, 3),
        "cpu_threads": threads,
        "performance": performance,
        "scheduler": {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)},
        "versions": package_versions(),
    }
    return LoadedPipeline(pipe, info)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class Runner:
    """Makes the unfinished outputs of a configuration's jobs, appending each finished set to the manifest.

    ``pipelines`` lets a caller keep loaded pipelines between runs; ``on_step`` observes sampling progress and
    ``should_stop`` is polled before every job and at every step (returning true stops the run with
    :class:`RunStopped`, writing nothing for the job in progress). ``command_line`` goes into the records.
    """

    def __init__(self, config: RunConfig, *, pipelines: Optional[PipelineCache] = None,
                 on_step: Optional[StepObserver] = None, should_stop: Optional[Callable[[], bool]] = None,
                 command_line: Optional[Sequence[str]] = None, progress_bars: bool = True):
        self.config = with_resolved_runtime(config)
        self.pipelines = pipelines or PipelineCache()
        self.on_step = on_step
        self.should_stop = should_stop
        self.command_line = list(command_line) if command_line is not None else None
        self.progress_bars = progress_bars
        self.manifest = Manifest(self.config.output_dir)
        self.report = RunReport()
        # Files known complete though no record lists them: a sweep's shared baseline, written for its cells.
        self.complete: Set[str] = set()

    # -- planning ------------------------------------------------------------------------------------------

    def plan(self, jobs: Optional[List[Job]] = None) -> Plan:
        """Which jobs are finished and which files the others need; reads the manifest, loads no model."""
        config = self.config
        jobs = plan_jobs(config) if jobs is None else jobs
        check_output_dir(config.output_dir)
        for job in jobs:
            self._check_prompt(job)
        self.manifest.check_writable()
        sweep_files(config.output_dir)
        done = self.manifest.records()
        recorded = {name for record in done.values() for name in record["files"].values()} | self.complete
        unique, todo, finished, seen = [], [], 0, set()
        for job in jobs:
            outputs = self.output_set(job)
            if outputs.fingerprint in seen:
                continue
            seen.add(outputs.fingerprint)
            unique.append(job)
            make = self._missing(outputs, done.get(outputs.fingerprint), recorded)
            if not make:
                finished += 1
            elif any(kind in outputs.files and kind not in make for kind in VIDEO_KINDS):
                todo.append(Todo(outputs, make, previous_record(done, outputs)))
            else:
                todo.append(Todo(outputs, make))
        return Plan(unique, todo, finished, len(jobs) - len(unique))

    def output_set(self, job: Job) -> OutputSet:
        """The files ``job`` makes under this run's configuration (see :mod:`ivmixed.outputs`)."""
        return output_set(self.config, job, self.lora, self.context)

    @cached_property
    def lora(self) -> Optional[Dict[str, Any]]:
        """The LoRA as it changes frames (content hash, scale, target), for the fingerprints."""
        try:
            return lora_identity(self.config)
        except (OSError, ValueError) as exc:
            raise SettingError(f"{{lora}}: {exc}") from None

    @cached_property
    def context(self) -> Optional[Tuple[int, int]]:
        """``(length, stride)`` of FreeNoise's context windows for this run, or None (see
        :func:`ivmixed.prompt_schedule.context_settings`)."""
        import re

        from .prompt_schedule import context_settings

        config = self.config
        limit = config.spec.max_frames(config.model_sources(), config.tiny)
        if limit is None:
            return None
        try:
            return context_settings(config.num_frames, limit, config.context_length, config.context_stride)
        except ValueError as exc:
            raise SettingError(re.sub(r"\b(context_length|context_stride|num_frames)\b", r"{\1}", str(exc))) from None

    def _check_prompt(self, job: Job) -> None:
        from .errors import quote

        where = f"{job.where}: " if job.where else ""
        try:
            schedule = job.schedule(self.config.num_frames)
        except ValueError as exc:
            raise SettingError(f"{where}{quote(str(exc))[1:-1]}") from None
        if schedule is not None and not self.config.spec.prompt_schedules:
            raise SettingError(f"{where}prompt schedules (\"0: ... | 24: ...\") work with {{pipeline}} Animatediff only; "
                               f"{self.config.pipeline} takes one prompt per video")

    def _missing(self, outputs: OutputSet, record: Optional[dict], recorded: Set[str]) -> List[str]:
        """The kinds of ``outputs`` this run makes. A file counts as made only when it is on disk *and* a manifest
        record lists it (``recorded``): one left by a run stopped before its record is made again. The set is
        finished when its own ``record`` lists every file it wants."""
        wanted = [kind for kind in outputs.files if kind != "record"]
        if self.config.overwrite:
            return wanted
        made = {kind for kind, name in outputs.files.items()
                if name in recorded and os.path.isfile(os.path.join(self.config.output_dir, name))}
        if record is not None and all(kind in made for kind in outputs.files):
            if all(record["files"].get(kind) == name for kind, name in outputs.files.items()):
                return []
        return [kind for kind in wanted if kind not in made]

    # -- running -------------------------------------------------------------------------------------------

    def run(self, jobs: Optional[List[Job]] = None, plan: Optional[Plan] = None) -> RunReport:
        """Make every unfinished job of this process's share (see :func:`process_state`); ``plan``: one just
        made by :meth:`plan`, not to plan again."""
        config = self.config
        plan = plan if plan is not None else self.plan(jobs)
        # Loaded before any process group exists: transformers saves (the tiny checkpoints) on rank 0 only after.
        loaded = self.pipelines.get(config) if plan.todo else None
        state = process_state(config)
        is_main = state is None or state.is_main_process
        self.report = RunReport(skipped=plan.finished)
        if is_main:
            self._log_plan(plan)
            if self.context is not None and plan.todo:
                logger.info("%d frames: sampling in context windows of %d frames, stride %d (FreeNoise)",
                            config.num_frames, *self.context)
        mine = plan.todo
        if state is not None:
            state.wait_for_everyone()  # everyone has read the manifest before anyone appends to it
            mine = plan.todo[state.process_index::state.num_processes]
        if mine:
            show_overall = is_main and len(mine) > 1 and self.progress_bars
            loaded.pipe.set_progress_bar_config(position=1 if show_overall else 0, leave=not show_overall,
                                                disable=not (is_main and self.progress_bars))
            from tqdm.auto import tqdm

            for n, item in enumerate(tqdm(mine, desc="prompts", position=0, disable=not show_overall, unit="prompt"), 1):
                if self.should_stop is not None and self.should_stop():
                    raise RunStopped("stopped")
                if len(mine) > 1:
                    logger.info("prompt %d/%d: %s", n, len(mine), describe_job(item.outputs.job))
                self.report.made.append(self.make(loaded, item))
        if state is not None:
            state.wait_for_everyone()
        return self.report

    def _log_plan(self, plan: Plan) -> None:
        total = len(plan.todo) + plan.finished
        if plan.repeats:
            logger.info("%d prompt(s) repeat an earlier one with the same seed: made once", plan.repeats)
        if total > 1 or plan.finished:
            logger.info("%d prompt(s): %d already finished in %s%s, %d to make", total, plan.finished,
                        self.config.output_dir, " (--overwrite makes them again)" if plan.finished else "",
                        len(plan.todo))

    def _generate(self, pipe, job: Job, kind: str):
        """One video; the generator is seeded afresh so both videos of a job share their initial noise."""
        import torch

        config = self.config
        total = config.inference_step

        def step_end(pipeline, i, t, tensors):
            if self.on_step is not None:
                self.on_step(kind, i + 1, total)
            if self.should_stop is not None and self.should_stop():
                pipeline._interrupt = True
            return {}

        # diffusers keeps the bar's options in the pipeline; the label says which video is sampling
        pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}), "desc": VIDEO_LABELS[kind]})
        schedule = job.schedule(config.num_frames)
        kwargs = dict(
            prompt=schedule if schedule is not None else job.prompt,
            negative_prompt=job.negative_prompt,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            num_inference_steps=config.inference_step,
            guidance_scale=config.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(job.seed),
            output_type="np",
            iv_mixed=kind == "iv_mix",
            image_batch_size=config.image_batch_size,
            callback_on_step_end=step_end,
        )
        if config.reference_compat:
            kwargs["reference_compat"] = True
        if kind == "iv_mix":
            kwargs.update(vars(config.iv_mixed))
        if "fps_condition" in config.spec.options:
            kwargs["fps"] = config.fps_condition
        out = pipe(**kwargs)
        if getattr(pipe, "interrupt", False):
            raise RunStopped("stopped")
        return out

    def make(self, loaded: LoadedPipeline, item: Todo) -> Dict[str, Any]:
        """Make one job's missing files, write its record and append it to the manifest; returns the record."""
        from .export import write_image, write_json, write_video

        config, outputs, folder = self.config, item.outputs, self.config.output_dir
        job, files = outputs.job, outputs.files
        frames: Dict[str, Any] = {}
        calls: Dict[str, Dict[str, int]] = {}
        timings: Dict[str, float] = {}
        self._set_context_windows(loaded.pipe)
        if "side_by_side" in item.make or "contact_sheet" in item.make:  # read before sampling: fail early
            for kind in VIDEO_KINDS:
                if kind not in item.make:
                    frames[kind] = read_finished_video(os.path.join(folder, files[kind]))
        for kind in VIDEO_KINDS:
            if kind not in item.make:
                continue
            t0 = time.perf_counter()
            out = self._generate(loaded.pipe, job, kind)
            timings[f"{kind}_s"] = round(time.perf_counter() - t0, 3)
            calls[kind], frames[kind] = dict(out.network_calls), out.frames[0]
            if os.path.exists(os.path.join(folder, files[kind])):
                logger.warning("replacing %s (%s)", files[kind], "--overwrite" if config.overwrite else
                               "no record lists it: the run that made it stopped before finishing its prompt")
            write_video(frames[kind], os.path.join(folder, files[kind]), config.fps)
            logger.info("wrote %s (%s)", files[kind], ", ".join(f"{k} calls: {v}" for k, v in calls[kind].items()))
        if "side_by_side" in item.make or "contact_sheet" in item.make:
            from .compare import contact_sheet, side_by_side

            if "side_by_side" in item.make:
                write_video(side_by_side(frames["standard"], frames["iv_mix"]),
                            os.path.join(folder, files["side_by_side"]), config.fps)
                logger.info("wrote %s", files["side_by_side"])
            if "contact_sheet" in item.make:
                caption = contact_caption(config, job)
                write_image(contact_sheet(frames["standard"], frames["iv_mix"], caption=caption),
                            os.path.join(folder, files["contact_sheet"]))
                logger.info("wrote %s", files["contact_sheet"])
        record = self._record(loaded, outputs, calls, timings, item.previous)
        write_json(record, os.path.join(folder, files["record"]))
        logger.info("wrote %s", files["record"])
        self.manifest.append(manifest_entry(record))
        return record

    def _set_context_windows(self, pipe) -> None:
        """Switch FreeNoise's context windows on (or off) to match this run; the pipeline may be reused."""
        enabled = getattr(pipe, "free_noise_enabled", False)
        if self.context is None:
            if enabled:
                pipe.disable_free_noise()
            return
        length, stride = self.context
        if not enabled or (pipe._free_noise_context_length, pipe._free_noise_context_stride) != (length, stride):
            pipe.enable_free_noise(context_length=length, context_stride=stride)

    def _record(self, loaded: LoadedPipeline, outputs: OutputSet, calls, timings,
                previous: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """The job's record; videos made by an earlier run keep the calls and time it measured (``previous``)."""
        config, job = self.config, outputs.job
        compat = type(loaded.pipe).reference_compat_options if config.reference_compat else None
        expected = {"iv_mix": count_network_calls(config.inference_step, config.iv_mixed, reference_compat=compat)}
        if "standard" in outputs.files:
            expected["standard"] = count_network_calls(config.inference_step, None)
            if "standard" not in calls:  # made by an earlier run (shared by every IV-mixed setting)
                calls["standard"] = (previous or {}).get("network_calls", {}).get("standard", expected["standard"])
        if "iv_mix" not in calls and previous is not None:
            calls["iv_mix"] = previous.get("network_calls", {}).get("iv_mix", expected["iv_mix"])
        for kind in VIDEO_KINDS:
            if f"{kind}_s" not in timings and previous and f"{kind}_s" in previous.get("timings", {}):
                timings[f"{kind}_s"] = previous["timings"][f"{kind}_s"]
        settings = config.settings()
        for key in ("prompt", "prompt_file", "negative_prompt", "seed"):
            settings.pop(key)
        return _jsonable({
            "id": job.id or job.prefix(config.pipeline),
            "fingerprint": outputs.fingerprint,
            "standard_fingerprint": outputs.standard_fingerprint,
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "seed": job.seed,
            "pipeline": config.pipeline,
            "files": outputs.files,
            "settings": settings,
            "command_line": self.command_line,
            **loaded.info,
            "device": config.device,
            "dtype": config.dtype,
            "context_windows": None if self.context is None else
            {"length": self.context[0], "stride": self.context[1], "method": "FreeNoise"},
            "network_calls": calls,
            "expected_network_calls": expected,
            "timings": timings,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })


def read_finished_video(path: str):
    """The frames of a finished video a comparison is built from; one line naming the file when it is damaged."""
    from .export import read_video

    try:
        return read_video(path)
    except Exception as exc:  # any decoder failure: the file was changed or cut after it was finished
        raise SettingError(f"cannot read the finished video {path} ({type(exc).__name__}); it was damaged after it "
                           "was written: delete it and run again to make it anew (or add {overwrite})") from None


def previous_record(records: Dict[str, Dict[str, Any]], outputs: OutputSet) -> Optional[Dict[str, Any]]:
    """The newest record that lists this set's standard video (for its measured calls and time)."""
    name = outputs.files.get("standard")
    for record in reversed(list(records.values())):
        if record["fingerprint"] == outputs.fingerprint or (name and record["files"].get("standard") == name):
            return record
    return None


def manifest_entry(record: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest's line for a record: enough to resume and to evaluate without opening the record."""
    keys = ("id", "fingerprint", "standard_fingerprint", "prompt", "negative_prompt", "seed", "pipeline", "files",
            "network_calls", "finished_at")
    return {k: record[k] for k in keys}


def describe_job(job: Job, limit: int = 60) -> str:
    """A job as the log names it when it starts: its id or where it was read, and the start of its prompt."""
    text = job.prompt if len(job.prompt) <= limit else job.prompt[: limit - 3].rstrip() + "..."
    name = job.id or job.where
    return f"{name}: {text!r}" if name else repr(text)


def contact_caption(config: RunConfig, job: Job) -> str:
    from .compare import caption_prompt

    iv = config.iv_mixed.resolved(config.inference_step)
    return (f"{caption_prompt(job.prompt)} | seed {job.seed} | {config.pipeline}, {config.inference_step} steps, guidance "
            f"{config.guidance_scale:g} | IV-mixed: interval {iv.interval_begin}-{iv.interval_end}, zz {iv.zz}, "
            f"image w {iv.i_sigma_begin:g}->{iv.i_sigma_end:g}, video w {iv.v_sigma_begin:g}->{iv.v_sigma_end:g}, "
            f"rho {iv.rho:g}" + (", reference-compat" if config.reference_compat else ""))


__all__ = ["LoadedPipeline", "PipelineCache", "Plan", "RunReport", "RunStopped", "Runner", "Todo", "load_pipeline",
           "plan_jobs"]
