"""Outputs are never wrong: fingerprinted names, resume by configuration, and injected faults (full disk, short
writes, cut-off manifests, signals, a closed stderr) that leave only complete, truthful files."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import pytest
from runs import count_generations, files_of, manifest_lines, only_record, records, run_main, snapshot

from ivmixed import export
from ivmixed.config import build_config
from ivmixed.manifest import Manifest
from ivmixed.runner import Runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu"]


def no_hidden_files(folder):
    return [name for name in os.listdir(folder) if name.startswith(".")] == []


# -- resume decides by configuration ------------------------------------------------------------------------


def test_identical_rerun_makes_nothing_and_a_changed_setting_makes_new_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    made = count_generations(monkeypatch)
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)[0] == 0
    first = snapshot(out)
    assert made == [("a cat", "iv_mix"), ("a cat", "standard")]
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)
    assert code == 0 and "1 already finished" in err and len(made) == 2 and snapshot(out) == first
    assert len(manifest_lines(out)) == 1
    for change in (["--inference-step", "3"], ["--zz", "3"], ["--guidance-scale", "5"], ["--seed", "9"],
                   ["--negative-prompt", "blurry"]):
        before = len(made)
        assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out), *change], capsys)[0] == 0, change
        assert len(made) > before, change
        assert {k: v for k, v in snapshot(out).items() if k in first} == first  # earlier files byte-identical
    # --zz changes only the IV-mixed video: the standard video of that configuration was reused, not remade
    assert [kind for prompt, kind in made[2:]].count("standard") == 4
    assert len({r["fingerprint"] for r in manifest_lines(out)}) == 6


def test_tiny_check_then_real_run_is_not_finished(tmp_path, capsys):
    """The README's offline check leaves tiny-model videos that a real run must never take as its own."""
    out = tmp_path / "out"
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)[0] == 0
    real = build_config({"prompt": "a cat", "output_dir": str(out), "device": "cpu", "inference_step": 2,
                         "num_frames": 2, "height": 64, "width": 64})
    plan = Runner(real).plan()
    assert plan.finished == 0 and plan.todo[0].make == ["iv_mix", "standard"]
    tiny = build_config({"prompt": "a cat", "output_dir": str(out), "device": "cpu", "tiny": True, "inference_step": 2,
                         "num_frames": 2})
    assert Runner(tiny).plan().finished == 1


def test_a_prompt_file_id_and_a_prompt_never_share_files(tmp_path, capsys):
    out = tmp_path / "out"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a dog on a beach", "id": "cat"}\n')
    assert run_main([*TINY, "--no-standard", "--prompt-file", str(prompts), "--output-dir", str(out)], capsys)[0] == 0
    first = snapshot(out)
    assert run_main([*TINY, "--no-standard", "--prompt", "cat", "--output-dir", str(out)], capsys)[0] == 0
    assert {k: v for k, v in snapshot(out).items() if k in first} == first
    by_prompt = {r["prompt"]: r for r in records(out)}
    assert set(by_prompt) == {"a dog on a beach", "cat"}
    assert by_prompt["cat"]["files"]["iv_mix"] != by_prompt["a dog on a beach"]["files"]["iv_mix"]
    assert all(r["files"]["iv_mix"].startswith("cat_23523_Animatediff_") for r in by_prompt.values())


def test_a_rerun_makes_only_the_files_that_are_new(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    made = count_generations(monkeypatch)
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)[0] == 0
    first = snapshot(out)
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out), "--side-by-side"], capsys)[0] == 0
    assert len(made) == 2  # side by side from the finished videos: nothing sampled again
    record = manifest_lines(out)[-1]
    assert {"side_by_side", "contact_sheet"} <= set(record["files"])
    assert iio.imread(out / record["files"]["side_by_side"]).shape == (2, 64, 128, 3)
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out), "--format", "gif"], capsys)[0] == 0
    assert len(made) == 4  # another format is another file: made
    now = snapshot(out)
    assert all(now[name] == content for name, content in first.items() if not name.endswith(".json"))


def test_overwrite_replaces_only_this_configurations_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main([*TINY, "--no-standard", "--prompt", "a cat", "--output-dir", str(out)], capsys)[0] == 0
    assert run_main([*TINY, "--no-standard", "--prompt", "a cat", "--zz", "1", "--output-dir", str(out)], capsys)[0] == 0
    other = {name: data for name, data in snapshot(out).items() if name in manifest_lines(out)[1]["files"].values()}
    assert run_main([*TINY, "--no-standard", "--prompt", "a cat", "--overwrite", "--output-dir", str(out)], capsys)[0] == 0
    assert {name: snapshot(out)[name] for name in other} == other


# -- faults while writing ------------------------------------------------------------------------------------


def full_disk_after(nbytes):
    """An encoder that writes ``nbytes`` of the file and then fails as a full disk does."""

    def encode(frames, path, fps, ext):
        with open(path, "wb") as f:
            f.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return encode


@pytest.mark.parametrize("broken", ["full_disk", "short_write"])
def test_a_failed_video_write_leaves_nothing_and_records_nothing(tmp_path, capsys, monkeypatch, broken):
    out = tmp_path / "out"
    real_encode = export.encode_video
    if broken == "full_disk":
        monkeypatch.setattr(export, "encode_video", full_disk_after(1000))
        cause = "no space left on device"
    else:  # the writer returns normally but the file holds fewer frames than asked for
        monkeypatch.setattr(export, "encode_video", lambda frames, path, fps, ext: real_encode(frames[:1], path, fps, ext))
        cause = "the written video has 1 frame(s), expected 2 (a short write)"
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert cause in lines[0] and "_iv_mix.mp4" in lines[0] and "nothing was recorded" in lines[0]
    assert "wrote" not in err
    assert files_of(out) == [] and no_hidden_files(out)  # no video, no record, no manifest, no temporary file
    monkeypatch.setattr(export, "encode_video", real_encode)
    assert run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)[0] == 0
    record = only_record(out)
    for kind in ("iv_mix", "standard"):
        assert iio.imread(out / record["files"][kind]).shape[0] == 2


def test_a_failed_record_write_records_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def failing(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "_write_all", failing)
    code, err = run_main([*TINY, "--no-standard", "--prompt", "a cat", "--output-dir", str(out)], capsys)
    assert code == 1 and "no space left on device" in err and ".json" in err
    assert not (out / "manifest.jsonl").exists() and no_hidden_files(out)
    assert [name for name in files_of(out) if name.endswith(".json")] == []


def test_a_short_manifest_append_is_cut_back_and_the_next_lands_whole(tmp_path, monkeypatch):
    manifest = Manifest(str(tmp_path))
    manifest.append({"id": "a", "fingerprint": "1", "files": {}})
    size = os.path.getsize(manifest.path)
    import ivmixed.manifest as manifest_module

    real_write = os.write
    monkeypatch.setattr(manifest_module.os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    with pytest.raises(export.OutputWriteError, match="manifest.jsonl"):
        manifest.append({"id": "b", "fingerprint": "2", "files": {}})
    monkeypatch.setattr(manifest_module.os, "write", real_write)
    assert os.path.getsize(manifest.path) == size  # cut back: no fragment
    manifest.append({"id": "c", "fingerprint": "3", "files": {}})
    assert [r["fingerprint"] for r in manifest_lines(tmp_path)] == ["1", "3"]


def test_bad_manifest_lines_are_skipped_once_with_their_numbers(tmp_path, capsys):
    path = tmp_path / "manifest.jsonl"
    good = json.dumps({"id": "a", "fingerprint": "1", "files": {"iv_mix": "a.mp4"}})
    path.write_bytes(b"\n".join([good.encode(), b"\xff\xfe not utf-8", b'{"id": 3, "fingerprint": [1], "files": 2}',
                                 b"[1, 2]", b'{"id": "b", "fingerprint": "2", "fil']))  # cut off, no newline
    manifest = Manifest(str(tmp_path))
    from ivmixed.terminal import install_terminal

    install_terminal()
    capsys.readouterr()
    assert list(manifest.records()) == ["1"]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "skipped line(s) 2, 3, 4, 5" in warnings[0] and str(path) in warnings[0]
    manifest.append({"id": "c", "fingerprint": "3", "files": {}})  # never glued onto the cut-off line
    assert list(manifest.records()) == ["1", "3"]
    assert path.read_bytes().endswith(b'"fil\n' + json.dumps({"id": "c", "fingerprint": "3", "files": {}}).encode() + b"\n")


def test_a_run_survives_a_broken_manifest(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_bytes(b"\xff\xfe\x00garbage\n{\"cut\": ")
    code, err = run_main([*TINY, "--no-standard", "--prompt", "a cat", "--output-dir", str(out)], capsys)
    assert code == 0 and "skipped line(s) 1, 2" in err
    assert len(Manifest(str(out)).records()) == 1


# -- signals and the terminal --------------------------------------------------------------------------------


def start_run(out, tmp, *extra, stderr=subprocess.PIPE):
    prompts = out.parent / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(6)))
    cmd = [sys.executable, os.path.join(ROOT, "inference.py"), "--tiny", "--inference-step", "6", "--num-frames", "4",
           "--device", "cpu", "--prompt-file", str(prompts), "--output-dir", str(out), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_for_first_record(out, proc):
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "manifest.jsonl").exists() and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path, signum):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    proc = start_run(out, tmp)
    wait_for_first_record(out, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "interrupted after" in lines[0] and "Traceback" not in err
    done = manifest_lines(out)
    assert 1 <= len(done) < 6
    assert no_hidden_files(out)  # no partial files
    assert [name for name in os.listdir(tmp) if name.startswith("ivmixed")] == []  # no tiny-model folder left
    listed = {name for r in done for name in r["files"].values()}
    assert set(files_of(out)) == listed | {"manifest.jsonl"}
    for name in listed:
        if name.endswith(".mp4"):
            assert iio.imread(out / name).shape[0] == 4


def test_a_closed_stderr_never_stops_a_run(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    proc = start_run(out, tmp, "--no-standard")
    proc.stderr.close()  # like `... 2>&1 | head -1`: every later write to stderr fails
    proc.wait(timeout=600)
    assert proc.returncode == 0
    assert len(manifest_lines(out)) == 6


def test_a_lora_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    """Every runner of a sweep fingerprints the LoRA: one hash per version of the file, and a new one after
    the file changes, even to the same size."""
    import hashlib

    from ivmixed import outputs

    hashed, sha256 = [], hashlib.sha256

    def counting_sha256(*args):
        hashed.append(1)
        return sha256(*args)

    monkeypatch.setattr(outputs.hashlib, "sha256", counting_sha256)
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"a" * 1000)
    first = outputs.file_digest(str(path))
    assert first == outputs.file_digest(str(path)) == sha256(b"a" * 1000).hexdigest() and len(hashed) == 1
    path.write_bytes(b"b" * 1000)
    assert outputs.file_digest(str(path)) == sha256(b"b" * 1000).hexdigest() and len(hashed) == 2
