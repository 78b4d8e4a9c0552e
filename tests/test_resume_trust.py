"""A prompt is finished only when the manifest holds its record and its files are on disk: every way a run can stop
between writing a prompt's videos and recording them (signals, a lost, cut or unreadable manifest, a full disk)
leaves that prompt to be made again and recorded by the next run, exactly once. Also: the manifest is never
followed out of the output folder, and leftovers of killed runs are swept (only when nobody holds them)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import imageio.v3 as iio
import pytest
from runs import count_generations, files_of, manifest_lines, run_main

from ivmixed import export, leftovers
from ivmixed import manifest as manifest_module
from ivmixed import runner as runner_module
from ivmixed.manifest import Manifest
from ivmixed.runner import Runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu"]
PROMPTS = [f"prompt number {i}" for i in range(4)]


def prompt_file(tmp_path):
    path = tmp_path / "four.txt"
    path.write_text("".join(p + "\n" for p in PROMPTS))
    return str(path)


def run(tmp_path, out, capsys, *extra):
    return run_main([*TINY, "--prompt-file", prompt_file(tmp_path), "--output-dir", str(out), *extra], capsys)


def assert_each_prompt_recorded_once(out):
    """Every prompt has exactly one valid manifest line, and the files it lists are complete videos."""
    valid = Manifest(str(out)).records()
    counts = Counter(line["prompt"] for line in lines_that_parse(out) if line["fingerprint"] in valid)
    assert counts == Counter(PROMPTS)
    for record in valid.values():
        for kind in ("iv_mix", "standard"):
            assert iio.imread(out / record["files"][kind]).shape[0] == 2


def lines_that_parse(out):
    lines = []
    for raw in (out / "manifest.jsonl").read_bytes().split(b"\n"):
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
    return [line for line in lines if isinstance(line, dict) and "fingerprint" in line]


# -- a stop between a prompt's videos and its record ---------------------------------------------------------


@pytest.mark.parametrize("signum, moment", [(signal.SIGTERM, "before_record"), (signal.SIGINT, "before_record"),
                                            (signal.SIGHUP, "before_manifest_line")])
def test_a_prompt_stopped_before_its_record_is_made_again_and_recorded(tmp_path, capsys, monkeypatch, signum, moment):
    out = tmp_path / "out"
    seen = []
    if moment == "before_record":  # both videos written, the record not yet
        real = Runner._record

        def record(self, *args):
            seen.append(1)
            if len(seen) == 2:
                os.kill(os.getpid(), signum)
            return real(self, *args)

        monkeypatch.setattr(Runner, "_record", record)
    else:  # the record file written, its manifest line not yet
        real_append = Manifest.append

        def append(self, entry):
            seen.append(1)
            if len(seen) == 2:
                os.kill(os.getpid(), signum)
            return real_append(self, entry)

        monkeypatch.setattr(Manifest, "append", append)
    code, err = run(tmp_path, out, capsys)
    assert code == 128 + signum, err
    assert [line["prompt"] for line in manifest_lines(out)] == PROMPTS[:1]
    stopped = [n for n in files_of(out) if n.startswith("prompt-number-1_")]
    assert any(n.endswith("_iv_mix.mp4") for n in stopped)  # its videos are on disk, under their final names
    monkeypatch.undo()
    made = count_generations(monkeypatch)
    code, err = run(tmp_path, out, capsys)
    assert code == 0, err
    assert "1 already finished" in err and "3 to make" in err
    assert sorted({prompt for prompt, _ in made}) == PROMPTS[1:]  # the stopped prompt was made again
    assert "no record lists it" in err
    assert_each_prompt_recorded_once(out)
    code, err = run(tmp_path, out, capsys)  # and now it is finished
    assert code == 0 and "4 already finished" in err


@pytest.fixture(scope="module")
def finished_folder(tmp_path_factory):
    """An output folder in which all four prompts are finished (made once, copied by each test)."""
    from ivmixed.config import build_config

    root = tmp_path_factory.mktemp("finished")
    config = build_config({"prompt_file": prompt_file(root), "output_dir": str(root / "out"), "tiny": True,
                           "inference_step": 2, "num_frames": 2, "device": "cpu"})
    Runner(config, progress_bars=False).run()
    return root


def finished_run(tmp_path, out, capsys, finished_folder):
    import shutil

    shutil.copytree(finished_folder / "out", out)
    assert len(manifest_lines(out)) == 4
    return (out / "manifest.jsonl").read_bytes()


@pytest.mark.parametrize("damage", ["cut_mid_line", "garbage", "emptied", "removed"])
def test_a_damaged_manifest_makes_its_lost_prompts_again(tmp_path, capsys, monkeypatch, damage, finished_folder):
    out = tmp_path / "out"
    data = finished_run(tmp_path, out, capsys, finished_folder)
    path = out / "manifest.jsonl"
    lost = {"cut_mid_line": PROMPTS[3:], "garbage": PROMPTS[1:3], "emptied": PROMPTS, "removed": PROMPTS}[damage]
    lines = data.split(b"\n")
    if damage == "cut_mid_line":
        path.write_bytes(data[: len(data) - len(lines[3]) // 2 - 1])
    elif damage == "garbage":
        path.write_bytes(b"\n".join([lines[0], b"\x00\xff garbage {", b"[1, 2, 3]", lines[3], b""]))
    elif damage == "emptied":
        path.write_bytes(b"")
    else:
        path.unlink()
    made = count_generations(monkeypatch)
    code, err = run(tmp_path, out, capsys)
    assert code == 0, err
    assert f"{4 - len(lost)} already finished" in err
    assert sorted({prompt for prompt, _ in made}) == sorted(lost)
    assert_each_prompt_recorded_once(out)


def test_a_read_only_manifest_is_refused_before_loading(tmp_path, capsys, monkeypatch, finished_folder):
    out = tmp_path / "out"
    finished_run(tmp_path, out, capsys, finished_folder)
    before = (out / "manifest.jsonl").read_bytes()
    real_open = os.open

    def read_only(path, flags, *args):  # as a read-only file or file system answers (root ignores chmod)
        if str(path).endswith("manifest.jsonl") and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, *args)

    monkeypatch.setattr(manifest_module.os, "open", read_only)
    monkeypatch.setattr(runner_module, "load_pipeline", lambda config: pytest.fail("models were loaded"))
    prompts = tmp_path / "more.txt"
    prompts.write_text("a new prompt\n")
    code, err = run_main([*TINY, "--prompt-file", str(prompts), "--output-dir", str(out)], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1
    assert "cannot append to" in lines[0] and "manifest.jsonl" in lines[0] and "permission denied" in lines[0]
    assert "--output-dir" in lines[0]
    assert (out / "manifest.jsonl").read_bytes() == before


@pytest.mark.parametrize("where", ["record", "manifest"])
def test_a_full_disk_at_the_record_leaves_the_prompt_unfinished(tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "out"
    calls = []
    if where == "record":
        real = export._write_all

        def write_all(fd, data):
            calls.append(1)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        monkeypatch.setattr(export, "_write_all", write_all)
    else:
        real_write = os.write

        def write(fd, data):  # os.write is every module's: count the manifest's lines only
            if bytes(data).startswith(b'{"id"'):
                calls.append(1)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(manifest_module.os, "write", write)
    code, err = run(tmp_path, out, capsys)
    assert code == 1 and "no space left on device" in err
    assert [line["prompt"] for line in manifest_lines(out)] == PROMPTS[:1]
    monkeypatch.undo()
    made = count_generations(monkeypatch)
    code, err = run(tmp_path, out, capsys)
    assert code == 0 and "1 already finished" in err
    assert sorted({prompt for prompt, _ in made}) == PROMPTS[1:]
    assert_each_prompt_recorded_once(out)


def test_a_stopped_cell_of_a_sweep_keeps_the_shared_baseline(tmp_path, capsys, monkeypatch):
    """The sweep's baseline has no record of its own; its cells still reuse it rather than make it again."""
    out = tmp_path / "out"
    made = count_generations(monkeypatch)
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out), "--sweep", "zz=1,2"], capsys)
    assert code == 0, err
    assert Counter(kind for _, kind in made) == Counter({"standard": 1, "iv_mix": 2})


# -- the manifest stays inside the output folder ----------------------------------------------------------------


def test_a_manifest_that_is_a_link_or_a_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner_module, "load_pipeline", lambda config: pytest.fail("models were loaded"))
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(outside, linked / "manifest.jsonl")
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(linked)], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "is a symbolic link" in lines[0] and "Traceback" not in err
    assert outside.read_text() == "" and files_of(linked) == ["manifest.jsonl"]

    folder = tmp_path / "folder"
    (folder / "manifest.jsonl").mkdir(parents=True)
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(folder)], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "is not a file" in lines[0] and "IsADirectoryError" not in err
    assert Manifest(str(folder)).records() == {}  # readers (evaluate, the app) skip it with a warning


def test_an_append_never_follows_a_link_made_after_the_check(tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("")
    os.symlink(outside, tmp_path / "manifest.jsonl")
    with pytest.raises(export.OutputWriteError, match="manifest.jsonl"):
        Manifest(str(tmp_path)).append({"id": "a", "fingerprint": "1", "files": {}})
    assert outside.read_text() == ""


# -- a damaged finished video, a full temporary folder ---------------------------------------------------------


def test_side_by_side_over_a_damaged_finished_video_names_the_file_before_sampling(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)[0] == 0
    (standard,) = [n for n in files_of(out) if n.endswith("_standard.mp4")]
    (out / standard).write_bytes(b"not a video any more")
    made = count_generations(monkeypatch)
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out), "--side-by-side"], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"cannot read the finished video {out / standard}" in lines[0] and "delete it" in lines[0]
    assert made == []  # refused before sampling anything


def test_a_full_temporary_folder_says_where_and_what_to_do(tmp_path, capsys, monkeypatch):
    import ivmixed.testing

    def full(root, name):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ivmixed.testing, "save_tiny_checkpoints", full)
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(tmp_path / "out")], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1
    assert "cannot save the tiny models in the temporary folder" in lines[0]
    assert "no space left on device" in lines[0] and "TMPDIR" in lines[0]


# -- leftovers of killed runs ---------------------------------------------------------------------------------


def test_a_killed_writers_partial_file_is_swept_but_a_live_ones_is_kept(tmp_path):
    folder = str(tmp_path)
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from ivmixed.leftovers import held_temp_file\n"
            "fd, path = held_temp_file(%r, '.a_cat.', '.partial.mp4'); print(path, flush=True); time.sleep(60)")
    live = subprocess.Popen([sys.executable, "-c", code % (ROOT, folder)], stdout=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, "-c", code % (ROOT, folder)], stdout=subprocess.PIPE, text=True)
    try:
        live_path, killed_path = live.stdout.readline().strip(), killed.stdout.readline().strip()
        killed.kill()
        killed.wait(timeout=30)
        other = tmp_path / ".notes.partial.mp4"  # not of our pattern: never touched
        other.write_text("mine")
        assert leftovers.sweep_files(folder) == 1
        assert os.path.exists(live_path) and not os.path.exists(killed_path) and other.exists()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert leftovers.sweep_files(folder) == 1 and not os.path.exists(live_path)


def test_a_run_sweeps_partial_files_and_tiny_folders_left_by_killed_runs(tmp_path, capsys, monkeypatch):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    # what SIGKILL leaves: a partial video (nobody holds its lock now) and a locked-then-abandoned tiny folder
    (out / ".a-cat_23523_Animatediff_0123456789_iv_mix.abcd_123.partial.mp4").write_bytes(b"\0" * 100)
    tiny = tmp / "ivmixed-tiny-abc123"
    (tiny / "unet").mkdir(parents=True)
    (tiny / ".lock").write_text("")
    young = tmp / "ivmixed-tiny-young"  # no lock yet: may be a run that is starting, kept
    young.mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    code, err = run_main([*TINY, "--no-standard", "--prompt", "a cat", "--output-dir", str(out)], capsys)
    assert code == 0, err
    assert "removed 1 unfinished temporary file(s)" in err and "removed 1 temporary folder(s)" in err
    assert [n for n in os.listdir(out) if n.startswith(".")] == []
    assert sorted(os.listdir(tmp)) == ["ivmixed-tiny-young"]
    old = time.time() - 2 * leftovers.UNLOCKED_GRACE_S
    os.utime(young, (old, old))
    assert leftovers.sweep_folders(str(tmp), "ivmixed-tiny-") == 1 and os.listdir(tmp) == []


def test_the_load_says_what_it_loads_and_the_bars_say_which_video(tmp_path, capsys, monkeypatch):
    descs = []
    real = runner_module.Runner._generate

    def generate(self, pipe, job, kind):
        out = real(self, pipe, job, kind)
        descs.append((kind, pipe._progress_bar_config.get("desc")))
        return out

    monkeypatch.setattr(runner_module.Runner, "_generate", generate)
    code, err = run(tmp_path, tmp_path / "out", capsys)
    assert code == 0
    assert err.count("loading the Animatediff models (random tiny ones)") == 1
    assert err.index("loading the Animatediff models") < err.index("prompt 1/4")
    for n, prompt in enumerate(PROMPTS, 1):
        assert f"prompt {n}/4: {prompt_file(tmp_path)}:{n}: {prompt!r}" in err
    assert descs == [("iv_mix", "IV-mixed"), ("standard", "standard")] * 4
