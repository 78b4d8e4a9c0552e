"""From a checked :class:`~ivmixed.config.RunConfig` to finished files: jobs, resume, processes, writing, records.

Resume: a job is finished when ``manifest.jsonl`` holds a record with its fingerprint and every file it wants
(for this run's format, ``no_standard`` and ``side_by_side``) is on disk. What is missing is made; finished files
are kept (``overwrite`` makes this configuration's files again). Files of other configurations are never touched.

Batches: with ``batch_size`` above 1, consecutive jobs of a process's share are sampled together, one pipeline call
per video kind for the jobs of the batch that still need that kind, each job from its own seed's noise (see
:meth:`Runner.batches`). Files, records and manifest lines stay per job; the batch size is no part of a fingerprint.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from .claims import CLAIM_FILE, Claim, claim, holder, wait_for_claim
from .config import EXTRA_MODEL_SOURCES, RunConfig, check_output_dir, with_resolved_runtime
from .errors import ModelLoadError, SettingError
from .leftovers import sweep_files
from .manifest import Manifest
from .outputs import OutputSet, lora_identity, output_set
from .prompts import Job, read_prompt_file
from .registry import PIPELINES
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
    # The manifest's records when planned: a job whose record changed since was made by another process.
    records: Dict[str, Dict[str, Any]] = field(default_factory=dict)


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


def process_share(todo: List[Todo], index: int, count: int) -> List[Todo]:
    """The jobs process ``index`` of ``count`` makes: every ``count``-th, from its own index."""
    return todo[index::count]


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
        return (config.pipeline, config.tiny, tuple(sorted(config.model_sources().items())), config.vae,
                config.video_model_config, config.image_model_config, config.motion_lora, config.scheduler,
                config.timestep_spacing, config.beta_schedule, config.dtype,
                config.device, config.lora, config.lora_scale, config.lora_target, config.offload, config.compile,
                config.compile_mode, config.channels_last, config.vae_slicing, config.vae_tiling, config.ip_adapter,
                config.ip_adapter_scale, config.controlnet)

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
        pipe = spec.pipeline_class().from_checkpoints(**sources, dtype=torch_dtype(config.dtype), **{
            k: getattr(config, k) for k in EXTRA_MODEL_SOURCES if getattr(config, k) is not None})
    lora_record = None
    if config.lora:
        from .lora import apply_lora_to_pipeline

        lora_record = apply_lora_to_pipeline(pipe, config.lora, config.lora_scale, config.lora_target)
    motion_lora_records = None
    if config.motion_lora:
        from .motion_lora import apply_motion_loras, loaded_motion_loras

        motion_lora_records = apply_motion_loras(pipe, loaded_motion_loras(config.motion_lora, config.tiny))
    ip_adapter_record = None
    if config.ip_adapter:
        from .ip_adapter import load_ip_adapter

        ip_adapter_record = load_ip_adapter(pipe, config.ip_adapter, config.ip_adapter_scale)
    controlnet_records = None
    if config.controlnet:
        from .controlnets import load_controlnets

        controlnet_records = load_controlnets(pipe, config.controlnet, torch_dtype(config.dtype))
    if config.scheduler or config.timestep_spacing or config.beta_schedule:
        from .schedulers import make_scheduler

        pipe.scheduler = make_scheduler(pipe.scheduler, name=config.scheduler, timestep_spacing=config.timestep_spacing,
                                        beta_schedule=config.beta_schedule)
    performance = apply_performance_options(
        pipe, device=config.device, offload=config.offload, compile=config.compile, compile_mode=config.compile_mode,
        channels_last=config.channels_last, vae_slicing=config.vae_slicing, vae_tiling=config.vae_tiling,
    )
    info = {
        "models": {**{k: ("tiny-random" if config.tiny else v) for k, v in config.model_sources().items()},
                   **{k: getattr(config, k) for k in EXTRA_MODEL_SOURCES if getattr(config, k) and not config.tiny}},
        "lora": lora_record,
        "motion_lora": motion_lora_records,
        "ip_adapter": ip_adapter_record,
        "controlnet": controlnet_records,
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
    ``should_stop`` is polled before every batch of jobs (every job, with ``batch_size`` 1) and at every step
    (returning true stops the run with :class:`RunStopped`, recording nothing of the batch in progress; a rerun
    makes it). ``command_line`` goes into the records.
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
        sweep_files(config.output_dir, CLAIM_FILE)
        done = self.manifest.records()
        recorded = recorded_files(done, self.complete)
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
        self._check_batch_memory(todo)
        return Plan(unique, todo, finished, len(jobs) - len(unique), done)

    def batches(self, todo: List[Todo]) -> List[List[Todo]]:
        """``todo`` (one process's share) as the groups sampled together, in order: consecutive jobs, at most
        ``batch_size`` of them. What one pipeline call cannot sample for several videos goes alone: a prompt
        schedule, and every job of a run in FreeNoise's context windows."""
        size = 1 if self.context is not None else self.config.batch_size
        groups: List[List[Todo]] = []
        current: List[Todo] = []
        for item in todo:
            if size > 1 and item.outputs.job.schedule(self.config.num_frames) is None:
                current.append(item)
                if len(current) < size:
                    continue
                groups.append(current)
            else:
                if current:
                    groups.append(current)
                groups.append([item])
            current = []
        if current:
            groups.append(current)
        return groups

    def _check_batch_memory(self, todo: List[Todo]) -> None:
        """The memory check (:func:`ivmixed.memory.check_fits_memory`) for the largest batch a process samples,
        when that is more than one job (one job is checked with the settings). The first process's share is the
        largest."""
        if self.config.batch_size <= 1 or not todo:
            return
        from .memory import check_fits_memory

        count = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        largest = max(len(group) for group in self.batches(process_share(todo, 0, count)))
        if largest > 1:
            check_fits_memory(self.config, batch=largest)

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
    def guide_inputs(self) -> Dict[str, Any]:
        """The pipeline keywords of the guiding input files (:mod:`ivmixed.guide_files`), read once per run: the
        init video's frames at the run's size with its strength, the IP-Adapter image."""
        from .guide_files import read_image, read_video

        config, out = self.config, {}
        if config.init_video is not None:
            out.update(video=read_video(config.init_video, config.num_frames, config.width, config.height),
                       strength=config.strength)
        if config.ip_adapter is not None:
            out["ip_adapter_image"] = read_image(config.ip_adapter_image)
        if config.controlnet:
            from .controlnets import controlnet_inputs

            nets = controlnet_inputs(config)
            videos = [read_video(net.video, config.num_frames, config.width, config.height, key="controlnet_video")
                      for net in nets]
            strengths = [net.scale for net in nets]
            out.update(conditioning_frames=videos[0] if len(videos) == 1 else videos,
                       controlnet_conditioning_scale=strengths[0] if len(videos) == 1 else strengths,
                       control_guidance_start=config.control_guidance_start,
                       control_guidance_end=config.control_guidance_end)
        return out

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
        if not config.spec.takes("context_length"):  # no FreeNoise: a clip is one motion window at most
            if config.num_frames > limit:
                raise SettingError(f"{{num_frames}} {config.num_frames} is more than the {limit} frames the motion "
                                   f"adapter takes at once, and {config.pipeline} has no context windows; use at most "
                                   f"{limit} {{num_frames}}")
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
            takers = ", ".join(spec.name for spec in PIPELINES.values() if spec.prompt_schedules)
            raise SettingError(f"{where}prompt schedules (\"0: ... | 24: ...\") work with {{pipeline}} {takers} only; "
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
        if plan.todo:
            self.guide_inputs  # the input files decode, read before any model loads
        # Loaded before any process group exists: transformers saves (the tiny checkpoints) on rank 0 only after.
        loaded = self.pipelines.get(config) if plan.todo else None
        state = process_state(config)
        is_main = state is None or state.is_main_process
        self.report = RunReport(skipped=plan.finished)
        if is_main:
            self._log_plan(plan)
            if self.context is not None and plan.todo:
                logger.info("%d frames: sampling in context windows of %d frames, stride %d (FreeNoise)%s",
                            config.num_frames, *self.context,
                            ", one prompt per call (--batch-size does not apply)" if config.batch_size > 1 else "")
        mine = plan.todo
        if state is not None:
            state.wait_for_everyone()  # everyone has read the manifest before anyone appends to it
            mine = process_share(plan.todo, state.process_index, state.num_processes)
        if mine:
            show_overall = is_main and len(mine) > 1 and self.progress_bars
            loaded.pipe.set_progress_bar_config(position=1 if show_overall else 0, leave=not show_overall,
                                                disable=not (is_main and self.progress_bars))
            from tqdm.auto import tqdm

            done = 0
            with tqdm(total=len(mine), desc="prompts", position=0, disable=not show_overall, unit="prompt") as bar:
                for group, claims in self._claimed_batches(mine, plan.records, bar):
                    try:
                        if self.should_stop is not None and self.should_stop():
                            raise RunStopped("stopped")
                        if len(group) > 1:
                            logger.info("prompts %d-%d/%d: sampled together", done + 1, done + len(group), len(mine))
                        for n, item in enumerate(group, done + 1):
                            if len(mine) > 1:
                                logger.info("prompt %d/%d: %s", n, len(mine), describe_job(item.outputs.job))
                        self.report.made.extend(self.make_batch(loaded, group))
                    finally:
                        for held in claims:
                            held.release()
                    done += len(group)
                    bar.update(len(group))
        if state is not None:
            state.wait_for_everyone()
        return self.report

    def _claimed_batches(self, mine: List[Todo], planned: Dict[str, Dict[str, Any]],
                         bar) -> Iterator[Tuple[List[Todo], List[Claim]]]:
        """The batches of ``mine`` this process makes, each job claimed (see :mod:`ivmixed.claims`), so that
        independent processes sharing the output folder make every job once. A job another process holds is passed
        over, then waited for once the rest is made: when its holder finishes it, it is skipped; when its holder
        died, it is made here. A job recorded by another process since the plan is skipped."""
        passed: List[Todo] = []
        for group in self.batches(mine):
            taken = self._claim(group, planned, bar, passed)
            if taken[0]:
                yield taken
        for group in self.batches(passed):
            taken = self._claim(group, planned, bar, None)
            if taken[0]:
                yield taken

    def _claim(self, group: List[Todo], planned: Dict[str, Dict[str, Any]], bar,
               passed: Optional[List[Todo]]) -> Tuple[List[Todo], List[Claim]]:
        """Claim the jobs of ``group`` still to make: those another process holds go to ``passed`` (``None``: wait
        for them). Returns the jobs claimed, with what each still needs, and their claims; a stop while waiting
        releases the claims taken so far."""
        folder = self.config.output_dir
        held: List[Tuple[Todo, Claim]] = []
        try:
            for item in group:
                key = item.outputs.fingerprint
                taken = claim(folder, key)
                if taken is None and passed is not None:
                    passed.append(item)
                    continue
                if taken is None:
                    logger.info("waiting for %s: another process (%s) is making it", describe_job(item.outputs.job),
                                holder(folder, key) or "unknown")
                    taken = wait_for_claim(folder, key, self.should_stop)
                    if taken is None:
                        raise RunStopped("stopped")
                held.append((item, taken))
        except BaseException:
            for _, taken in held:
                taken.release()
            raise
        records = self.manifest.records() if held else {}  # read once the claims are held: what others finished
        recorded = recorded_files(records, self.complete)
        items: List[Todo] = []
        claims: List[Claim] = []
        for item, taken in held:
            make = self._still_to_make(item, planned, records, recorded)
            if make:
                items.append(replace(item, make=make))
                claims.append(taken)
                continue
            taken.release()
            logger.info("%s: made by another process", describe_job(item.outputs.job))
            self.report.skipped += 1
            bar.update(1)
        return items, claims

    def _still_to_make(self, item: Todo, planned: Dict[str, Dict[str, Any]], records: Dict[str, Dict[str, Any]],
                       recorded: Set[str]) -> List[str]:
        """What claimed ``item`` needs by the manifest's ``records`` now: nothing when another process recorded it
        since the plan."""
        key = item.outputs.fingerprint
        if records.get(key) is not None and records.get(key) != planned.get(key):
            return []
        return self._missing(item.outputs, records.get(key), recorded) if not self.config.overwrite else item.make

    def _log_plan(self, plan: Plan) -> None:
        total = len(plan.todo) + plan.finished
        if plan.repeats:
            logger.info("%d prompt(s) repeat an earlier one with the same seed: made once", plan.repeats)
        if total > 1 or plan.finished:
            logger.info("%d prompt(s): %d already finished in %s%s, %d to make", total, plan.finished,
                        self.config.output_dir, " (--overwrite makes them again)" if plan.finished else "",
                        len(plan.todo))

    def _generate(self, pipe, job: Union[Job, Sequence[Job]], kind: str):
        """One pipeline call sampling ``kind``: one job's video, or, for a list of jobs, one video of each in a
        single call (``frames[i]`` is ``job[i]``'s), each from a generator of its own seed. Generators are seeded
        afresh so both videos of a job share their initial noise."""
        import torch

        config = self.config
        total = config.steps_run

        def step_end(pipeline, i, t, tensors):
            if self.on_step is not None:
                self.on_step(kind, i + 1, total)
            if self.should_stop is not None and self.should_stop():
                pipeline._interrupt = True
            return {}

        # diffusers keeps the bar's options in the pipeline; the label says which video is sampling
        pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}), "desc": VIDEO_LABELS[kind]})
        if isinstance(job, Job):
            schedule = job.schedule(config.num_frames)
            prompt, negative_prompt = (schedule if schedule is not None else job.prompt), job.negative_prompt
            generator = torch.Generator("cpu").manual_seed(job.seed)
        else:  # prompt schedules are sampled alone (see batches)
            prompt, negative_prompt = [j.prompt for j in job], [j.negative_prompt for j in job]
            generator = [torch.Generator("cpu").manual_seed(j.seed) for j in job]
        kwargs = dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            num_inference_steps=config.inference_step,
            guidance_scale=config.guidance_scale,
            generator=generator,
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
        kwargs.update(self.guide_inputs)
        out = pipe(**kwargs)
        if getattr(pipe, "interrupt", False):
            raise RunStopped("stopped")
        return out

    def make(self, loaded: LoadedPipeline, item: Todo) -> Dict[str, Any]:
        """Make one job's missing files, write its record and append it to the manifest; returns the record."""
        return self.make_batch(loaded, [item])[0]

    def make_batch(self, loaded: LoadedPipeline, items: Sequence[Todo]) -> List[Dict[str, Any]]:
        """Make the missing files of jobs sampled together, then write their records and append them to the
        manifest, in order; returns the records.

        Each video kind is sampled in one pipeline call for the jobs that still need it. No record is written
        before every video of the batch is: a stop or a failure on the way leaves none of them recorded, and a
        rerun makes them again.
        """
        from .export import write_json, write_video

        config, folder = self.config, self.config.output_dir
        frames: List[Dict[str, Any]] = [{} for _ in items]
        calls: List[Dict[str, Dict[str, int]]] = [{} for _ in items]
        timings: List[Dict[str, float]] = [{} for _ in items]
        sizes: List[Dict[str, int]] = [{} for _ in items]  # how many jobs shared the call of each video
        self._set_context_windows(loaded.pipe)
        for item, seen in zip(items, frames):
            if "side_by_side" in item.make or "contact_sheet" in item.make:  # read before sampling: fail early
                for kind in VIDEO_KINDS:
                    if kind not in item.make:
                        seen[kind] = read_finished_video(os.path.join(folder, item.outputs.files[kind]))
        for kind in VIDEO_KINDS:
            needing = [n for n, item in enumerate(items) if kind in item.make]
            if not needing:
                continue
            jobs = [items[n].outputs.job for n in needing]
            t0 = time.perf_counter()
            out = self._generate(loaded.pipe, jobs[0] if len(jobs) == 1 else jobs, kind)
            seconds = round(time.perf_counter() - t0, 3)
            for n, video in zip(needing, out.frames):
                name = items[n].outputs.files[kind]
                timings[n][f"{kind}_s"], sizes[n][kind] = seconds, len(needing)
                calls[n][kind], frames[n][kind] = dict(out.network_calls), video
                if os.path.exists(os.path.join(folder, name)):
                    logger.warning("replacing %s (%s)", name, "--overwrite" if config.overwrite else
                                   "no record lists it: the run that made it stopped before finishing its prompt")
                write_video(video, os.path.join(folder, name), config.fps)
                logger.info("wrote %s (%s)", name, ", ".join(
                    f"{k.replace('controlnet_', 'ControlNet evaluations for the ')}" + (": " if k.startswith("control")
                                                                                     else " calls: ") + str(v)
                    for k, v in calls[n][kind].items()))
        for item, seen in zip(items, frames):
            self._write_comparisons(item, seen)
        records = []
        for n, item in enumerate(items):
            record = self._record(loaded, item.outputs, calls[n], timings[n], sizes[n], item.previous)
            write_json(record, os.path.join(folder, item.outputs.files["record"]))
            logger.info("wrote %s", item.outputs.files["record"])
            self.manifest.append(manifest_entry(record))
            records.append(record)
        return records

    def _write_comparisons(self, item: Todo, frames: Dict[str, Any]) -> None:
        """The side-by-side video and the contact sheet ``item`` makes, from both videos' ``frames``."""
        if "side_by_side" not in item.make and "contact_sheet" not in item.make:
            return
        from .compare import contact_sheet, side_by_side
        from .export import write_image, write_video

        config, folder, files = self.config, self.config.output_dir, item.outputs.files
        if "side_by_side" in item.make:
            write_video(side_by_side(frames["standard"], frames["iv_mix"]),
                        os.path.join(folder, files["side_by_side"]), config.fps)
            logger.info("wrote %s", files["side_by_side"])
        if "contact_sheet" in item.make:
            caption = contact_caption(config, item.outputs.job)
            write_image(contact_sheet(frames["standard"], frames["iv_mix"], caption=caption),
                        os.path.join(folder, files["contact_sheet"]))
            logger.info("wrote %s", files["contact_sheet"])

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

    def _record(self, loaded: LoadedPipeline, outputs: OutputSet, calls, timings, sizes,
                previous: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """The job's record; videos made by an earlier run keep the calls, time and batch size it measured
        (``previous``). ``sizes``: by video kind, how many jobs the call that sampled it covered (its time in
        ``timings`` is that call's, and its ``network_calls`` the call's guided evaluations, each covering them all).
        """
        config, job = self.config, outputs.job
        compat = type(loaded.pipe).reference_compat_options if config.reference_compat else None
        nets = len(config.controlnet)
        expected = {"iv_mix": count_network_calls(config.steps_run, config.iv_mixed, reference_compat=compat,
                                                  controlnets=nets)}
        if "standard" in outputs.files:
            expected["standard"] = count_network_calls(config.steps_run, None, controlnets=nets)
            if "standard" not in calls:  # made by an earlier run (shared by every IV-mixed setting)
                calls["standard"] = measured(previous, "network_calls").get("standard", expected["standard"])
        if "iv_mix" not in calls and previous is not None:
            calls["iv_mix"] = measured(previous, "network_calls").get("iv_mix", expected["iv_mix"])
        for kind in VIDEO_KINDS:
            if f"{kind}_s" not in timings and f"{kind}_s" in measured(previous, "timings"):
                timings[f"{kind}_s"] = measured(previous, "timings")[f"{kind}_s"]
            if kind in outputs.files and kind not in sizes:  # a record without batch sizes: one job per call
                sizes[kind] = measured(previous, "batch_size").get(kind, 1)
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
            "batch_size": sizes,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })


def recorded_files(records: Dict[str, Dict[str, Any]], complete: Set[str]) -> Set[str]:
    """The file names the manifest's ``records`` list, and ``complete``: the files a run may count as made."""
    return {name for record in records.values() for name in record["files"].values()} | complete


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
    """The manifest's line for a record: enough to resume and to evaluate without opening the record, and what a
    later record of a video it reuses keeps (calls, time, batch size; see :meth:`Runner._record`)."""
    keys = ("id", "fingerprint", "standard_fingerprint", "prompt", "negative_prompt", "seed", "pipeline", "files",
            "network_calls", "timings", "batch_size", "finished_at")
    return {k: record[k] for k in keys}


def measured(previous: Optional[Dict[str, Any]], key: str) -> Dict[str, Any]:
    """What an earlier manifest line measured under ``key`` (by video kind); empty when it has none."""
    value = (previous or {}).get(key)
    return value if isinstance(value, dict) else {}


def describe_job(job: Job, limit: int = 60) -> str:
    """A job as the log names it when it starts: its id or where it was read, and the start of its prompt."""
    text = job.prompt if len(job.prompt) <= limit else job.prompt[: limit - 3].rstrip() + "..."
    name = job.id or job.where
    return f"{name}: {text!r}" if name else repr(text)


def contact_caption(config: RunConfig, job: Job) -> str:
    from .compare import caption_prompt

    iv = config.iv_mixed.resolved(config.steps_run)
    guides = "".join(f" | {text}" for text in guide_captions(config))
    return (f"{caption_prompt(job.prompt)} | seed {job.seed} | {config.pipeline}, {config.inference_step} steps, guidance "
            f"{config.guidance_scale:g}{guides} | IV-mixed: interval {iv.interval_begin}-{iv.interval_end}, zz {iv.zz}, "
            f"image w {iv.i_sigma_begin:g}->{iv.i_sigma_end:g}, video w {iv.v_sigma_begin:g}->{iv.v_sigma_end:g}, "
            f"rho {iv.rho:g}" + (", reference-compat" if config.reference_compat else ""))


def guide_captions(config: RunConfig) -> List[str]:
    """The guiding inputs of a run, as the contact sheet names them."""
    out = []
    if config.init_video is not None:
        out.append(f"from {os.path.basename(os.path.normpath(config.init_video))} at strength {config.strength:g} "
                   f"({config.steps_run} of {config.inference_step} steps)")
    if config.ip_adapter is not None:
        out.append(f"image prompt {os.path.basename(config.ip_adapter_image)} at {config.ip_adapter_scale:g}")
    if config.controlnet:
        from .controlnets import controlnet_inputs

        for net in controlnet_inputs(config):
            out.append(f"ControlNet {os.path.basename(os.path.normpath(net.source))} on "
                       f"{os.path.basename(os.path.normpath(net.video))} at {net.scale:g}")
    return out


__all__ = ["LoadedPipeline", "PipelineCache", "Plan", "RunReport", "RunStopped", "Runner", "Todo", "load_pipeline",
           "plan_jobs"]
