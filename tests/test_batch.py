"""Benchmark-scale runs: prompt files, the manifest and resume, several processes, interruption, side by side."""

import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import pytest

from runs import manifest_lines

from ivmixed.cli import main
from ivmixed.config import ConfigError
from ivmixed.manifest import Manifest
from ivmixed.prompts import read_prompt_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu"]


def fields(jobs):
    return [(j.prompt, j.seed, j.negative_prompt, j.id) for j in jobs]


def test_txt_prompt_file_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# a comment\nfirst prompt\n\n   \n  second prompt  \n#another\n")
    jobs = read_prompt_file(str(path), 5)
    assert fields(jobs) == [("first prompt", 5, None, None), ("second prompt", 5, None, None)]
    assert [j.where for j in jobs] == [f"{path}:2", f"{path}:5"]


def test_csv_and_jsonl_prompt_files_with_seeds(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('prompt,seed,negative_prompt,id\n"a cat, running",7,,cat\na dog,,blurry,\n')
    assert fields(read_prompt_file(str(csv_path), 1)) == [("a cat, running", 7, None, "cat"), ("a dog", 1, "blurry", None)]
    jsonl_path = tmp_path / "p.jsonl"
    jsonl_path.write_text('{"prompt": "a cat", "seed": 3}\n\n{"prompt": "a dog", "id": 12}\n')
    assert fields(read_prompt_file(str(jsonl_path), 1, "ugly")) == [("a cat", 3, "ugly", None), ("a dog", 1, "ugly", "12")]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("p.csv", "text\nhello\n", "needs a header row with a 'prompt' column"),
        ("p.jsonl", '{"prompt": "x"}\nnot json\n', "p.jsonl:2: not a JSON object"),
        ("p.csv", "prompt,seed\nx,abc\n", "p.csv:2: seed must be a whole number, got 'abc'"),
        ("p.jsonl", '{"prompt": "x", "seed": 1.9}\n', "p.jsonl:1: seed must be a whole number, got 1.9"),
        ("p.jsonl", '{"prompt": "x", "seed": true}\n', "seed must be a whole number, got True"),
        ("p.jsonl", '{"prompt": "x", "seed": 18446744073709551616}\n', "seed must be from 0 to 2\\*\\*64 - 1"),
        ("p.jsonl", '{"prompt": "x", "negative_prompt": ["a"]}\n', "p.jsonl:1: negative_prompt must be text"),
        ("p.jsonl", '{"prompt": "a", "id": "Cat"}\n{"prompt": "b", "id": "cat"}\n', "p.jsonl:2: id 'cat' repeats the id of .*p.jsonl:1"),
        ("p.csv", "prompt,id\na,x\nb,y\nc,X\n", "p.csv:4: id 'X' repeats"),
        ("p.txt", "# only a comment\n\n", "holds no prompts"),
        ("p.md", "x\n", "must end in"),
    ],
)
def test_bad_prompt_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_prompt_file(str(path), 1)


def test_prompt_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffprompt,seed\nun café,3\n".encode("utf-8"))
    assert fields(read_prompt_file(str(path), 1)) == [("un café", 3, None, None)]


def test_manifest_resume_and_side_by_side(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red car", "seed": 1}\n{"prompt": "a blue sky", "seed": 2, "id": "sky"}\n')
    out = tmp_path / "out"
    args = [*TINY, "--prompt-file", str(prompts), "--output-dir", str(out), "--side-by-side"]
    assert main(args) == 0
    records = manifest_lines(out)
    assert [(r["id"], r["seed"]) for r in records] == [("a-red-car_1_Animatediff", 1), ("sky", 2)]
    for r in records:
        assert set(r["files"]) == {"iv_mix", "standard", "side_by_side", "contact_sheet", "record"}
        iv, std = iio.imread(out / r["files"]["iv_mix"]), iio.imread(out / r["files"]["standard"])
        both = iio.imread(out / r["files"]["side_by_side"])
        assert both.shape == (2, 64, iv.shape[2] + std.shape[2], 3)
        sheet = iio.imread(out / r["files"]["contact_sheet"])
        assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 2 * 64  # two rows of two frames, with gaps and labels
    assert records[1]["files"]["iv_mix"].startswith("sky_2_Animatediff_")
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0  # a rerun makes nothing new
    assert len(manifest_lines(out)) == 2
    assert {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "manifest.jsonl"} == {
        p: t for p, t in mtimes.items() if p.name != "manifest.jsonl"}
    os.remove(out / records[0]["files"]["standard"])  # a lost file makes its prompt unfinished again
    assert main(args) == 0
    assert len(manifest_lines(out)) == 3 and (out / records[0]["files"]["standard"]).exists()


def test_manifest_append_from_many_writers_keeps_whole_lines(tmp_path):
    code = ("import sys; from ivmixed.manifest import Manifest; m = Manifest(sys.argv[1]);\n"
            "[m.append({'id': 'x', 'fingerprint': f'{sys.argv[2]}-{i}', 'files': {}, 'pad': 'x' * 20000}) "
            "for i in range(30)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)], cwd=ROOT) for w in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(Manifest(str(tmp_path)).records()) == 90


def test_two_processes_with_torchrun_make_each_video_once(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\na blue sky\na green tree\na dog\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "inference.py", *TINY,
           "--no-standard", "--prompt-file", str(prompts), "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = manifest_lines(out)
    assert sorted(r["prompt"] for r in records) == ["a blue sky", "a dog", "a green tree", "a red car"]
    assert len({r["id"] for r in records}) == 4
    assert sorted(p for p in os.listdir(out) if p.endswith(".mp4")) == sorted(r["files"]["iv_mix"] for r in records)
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len(manifest_lines(out)) == 4
    assert "4 already finished" in again.stderr


def test_a_signal_whose_exception_is_swallowed_still_stops_the_run(tmp_path, monkeypatch, capsys):
    """Python ignores exceptions raised in at-fork hooks (run when ffmpeg starts) and finalizers: a Ctrl-C that
    lands there must still stop the run at its next step."""
    import ivmixed.export as export

    write_video, sent = export.write_video, []

    def write_then_swallow_a_signal(*args, **kwargs):
        path = write_video(*args, **kwargs)
        if not sent:
            sent.append(path)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the handler runs here
            except KeyboardInterrupt:
                pass
        return path

    monkeypatch.setattr(export, "write_video", write_then_swallow_a_signal)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    args = [*TINY, "--prompt-file", str(prompts), "--output-dir", str(out)]
    assert main(args) == 130
    assert sent and not (out / "manifest.jsonl").exists()  # stopped within the first prompt
    assert "interrupted after" in capsys.readouterr().err
    monkeypatch.setattr(export, "write_video", write_video)
    assert main(args) == 0
    assert sorted(r["prompt"] for r in manifest_lines(out)) == ["one", "three", "two"]


def test_a_signal_during_a_file_write_waits_for_the_file(tmp_path, monkeypatch, capsys):
    """Ctrl-C while ffmpeg encodes: the video is finished and named (not cut, no stray ffmpeg), then the run stops."""
    import ivmixed.export as export

    encode_video, sent = export.encode_video, []

    def signal_then_encode(frames, path, *args):
        if not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)
        return encode_video(frames, path, *args)

    monkeypatch.setattr(export, "encode_video", signal_then_encode)
    out = tmp_path / "out"
    args = [*TINY, "--prompt", "a cat", "--output-dir", str(out)]
    assert main(args) == 130
    assert "interrupted after 0 finished" in capsys.readouterr().err
    videos = list(out.glob("*.mp4"))
    assert [p.name for p in out.iterdir()] == [v.name for v in videos] and len(videos) == 1  # no partial file
    assert iio.imread(videos[0], index=None).shape[0] == 2
    mtime = videos[0].stat().st_mtime_ns
    assert main(args) == 0  # no record lists that video: the rerun makes the prompt again and records it once
    assert "no record lists it" in capsys.readouterr().err
    (line,) = manifest_lines(out)
    assert videos[0].name in line["files"].values() and videos[0].stat().st_mtime_ns != mtime


def test_interrupted_run_leaves_valid_files_and_resumes(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(6)))
    out = tmp_path / "out"
    cmd = [sys.executable, "inference.py", "--tiny", "--inference-step", "6", "--num-frames", "4", "--device", "cpu",
           "--prompt-file", str(prompts), "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "manifest.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "run the same command again" in err
    assert len([line for line in err.splitlines() if "interrupted after" in line]) == 1
    done = manifest_lines(out)
    assert 1 <= len(done) < 6
    assert not [p for p in os.listdir(out) if "partial" in p]
    for r in done:
        for f in r["files"].values():
            assert (out / f).exists()
    for p in out.glob("*.mp4"):
        assert iio.imread(p).shape[0] == 4
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0
    assert sorted(r["prompt"] for r in manifest_lines(out)) == [f"prompt number {i}" for i in range(6)]
