"""Helpers the tests share: reading what a run wrote (the manifest's lines, the records), running the command line
in this process, a silent progress bar for the sampler, and a count of the host traffic a GPU would wait on."""

import collections
import inspect
import json
import math
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def manifest_lines(folder):
    with open(os.path.join(folder, "manifest.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def records(folder):
    """The JSON records the manifest points to, in manifest order."""
    out = []
    for line in manifest_lines(folder):
        with open(os.path.join(folder, line["files"]["record"]), encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def only_record(folder):
    (record,) = records(folder)
    return record


def files_of(folder):
    """Every visible file in ``folder``, sorted."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def snapshot(folder):
    """name -> (size, content bytes) of every file except the manifest, to prove files were left alone."""
    out = {}
    for name in files_of(folder):
        if name != "manifest.jsonl":
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = f.read()
    return out


def run_main(args, capsys):
    """The command line in this process: ``(exit status, stderr)``."""
    from ivmixed.cli import main

    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def count_generations(monkeypatch):
    """Count the videos sampled (by kind) while keeping the real sampling."""
    from ivmixed.runner import Runner

    made = []
    real = Runner._generate

    def generate(self, pipe, job, kind):
        made.append(([j.prompt for j in job] if isinstance(job, list) else job.prompt, kind))
        return real(self, pipe, job, kind)

    monkeypatch.setattr(Runner, "_generate", generate)
    return made


def no_bar(total):
    """A progress bar for :func:`ivmixed.sample_iv_mixed` that shows nothing."""

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def update(self, n):
            pass

    return Bar()


class HostTraffic(TorchDispatchMode):
    """Counts what makes a GPU stream wait on the host: reads of a tensor's value on the host (``.item()``,
    ``int(t)``, indexing a host list by a device value: ``aten._local_scalar_dense``), tensors built from Python
    data (``torch.tensor(...)``: ``aten.lift_fresh``, a host-to-device copy on a GPU) and copies between devices."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            self.counts["host_reads"] += 1
        elif name in ("lift_fresh", "lift_fresh_copy"):
            self.counts["host_made"] += 1
        elif name in ("_to_copy", "copy_") and args and isinstance(args[0], torch.Tensor):
            target = kwargs.get("device") if name == "_to_copy" else getattr(args[1], "device", None) if len(args) > 1 else None
            if target is not None and torch.device(target) != args[0].device:
                self.counts["device_copies"] += 1
        return func(*args, **kwargs)


def reference_zigzag_run(scheduler, latents, n, gs, zz, w_image, w_video, video, image, start=0):
    """docs/ALGORITHM.md section 1 with constant guidance weights, written out on guided predictors
    ``video(x, t, w)`` and ``image(x, t, w)`` over video latents: the four DDIM moves, then the main step; from
    main step ``start`` on (video-to-video), counting steps from there, with the stride of all ``n`` steps."""
    scheduler.set_timesteps(n)
    ac, D = scheduler.alphas_cumprod.tolist(), 1000 // n

    def ab(s):
        return ac[s] if s >= 0 else ac[0]

    def move(x, e, a, b):
        return math.sqrt(b) * (x - math.sqrt(1 - a) * e) / math.sqrt(a) + math.sqrt(1 - b) * e

    x = latents
    for i, t in enumerate(scheduler.timesteps.tolist()[start:]):
        t1, t2 = max(t - D, 0), max(t - 2 * D, 0)
        M, wM = (image, w_image) if i % zz < zz - 1 else (video, w_video)
        x = move(x, M(x, t, wM), ab(t), ab(t - D))
        x = move(x, video(x, t1, w_video), ab(t1), ab(t1 - D))
        x = move(x, M(x, t2, -wM), ab(t1 - D), ab(t1))
        x = move(x, video(x, t1, -w_video), ab(t - D), ab(t))
        x = scheduler.step(video(x, t, gs), t, x).prev_sample
    return x


def stock_components(pipe, stock_class):
    """``pipe``'s components that diffusers' ``stock_class`` takes (not the image model's, nor another pipeline's
    optional ones), to build the stock pipeline over the same modules."""
    taken = inspect.signature(stock_class.__init__).parameters
    return {name: module for name, module in pipe.components.items() if name in taken}


def stock_pipeline(pipe, stock_class):
    """diffusers' ``stock_class`` over ``pipe``'s components (:func:`stock_components`), its progress bar off."""
    stock = stock_class(**stock_components(pipe, stock_class))
    stock.set_progress_bar_config(disable=True)
    return stock


def video_frames(out):
    """A pipeline output's videos: diffusers' ``frames``, or its first element where it is a tuple."""
    return out.frames[0] if isinstance(out.frames, tuple) else out.frames
