"""Helpers the tests share: reading what a run wrote (the manifest's lines, the records), running the command line
in this process, and a silent progress bar for the sampler."""

import json
import os


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
