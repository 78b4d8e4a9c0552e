"""Independent processes on one prompt file and output folder share the work: each prompt is made once, and a
killed process's prompt is taken by a process still running."""

import os
import re
import signal
import subprocess
import sys
import time

from runs import manifest_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [f"prompt number {n}" for n in range(5)]
# Runs the command line; with DIE_HOLDING=1 the process stops after its first video is written, holding that
# prompt's claim until every other prompt is in the manifest, then kills itself (SIGKILL: no cleanup runs).
RUNNER = r"""
import os, signal, sys, time
sys.argv[0] = "inference.py"
if os.environ.get("DIE_HOLDING") == "1":
    import ivmixed.export as export
    real = export.write_video
    def write_and_die(frames, path, fps):
        real(frames, path, fps)
        manifest = os.path.join(os.path.dirname(path), "manifest.jsonl")
        deadline = time.time() + 240
        while time.time() < deadline:
            if os.path.exists(manifest) and sum(1 for _ in open(manifest)) >= int(os.environ["OTHERS"]):
                break
            time.sleep(0.2)
        print("dying after", os.path.basename(path), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    export.write_video = write_and_die
from ivmixed.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start(args, **env):
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", **env})


def written_videos(stderr):
    return re.findall(r"^wrote (\S+\.mp4)", stderr, re.M)


def test_three_processes_make_every_prompt_once_and_take_over_a_killed_ones(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    args = ["--tiny", "--prompt-file", str(prompts), "--output-dir", str(out), "--inference-step", "2",
            "--num-frames", "2", "--no-standard", "--device", "cpu"]
    doomed = start(args, DIE_HOLDING="1", OTHERS=str(len(PROMPTS) - 1))
    deadline = time.time() + 120
    while not (out.is_dir() and any(name.endswith(".claim") for name in os.listdir(out))):  # it holds a prompt
        assert time.time() < deadline and doomed.poll() is None, doomed.stderr.read()
        time.sleep(0.1)
    others = [start(args) for _ in range(2)]
    results = [(p.returncode, p.stderr.read()) for p in others if p.wait(timeout=300) is not None]
    doomed.wait(timeout=60)
    doomed_err, doomed_out = doomed.stderr.read(), doomed.stdout.read()

    assert doomed.returncode == -signal.SIGKILL, doomed_err
    assert [code for code, _ in results] == [0, 0], [err for _, err in results]
    (taken,) = re.findall(r"^dying after (\S+\.mp4)$", doomed_out, re.M)  # wrote one video, died holding its claim
    assert not written_videos(doomed_err)
    made = [name for _, err in results for name in written_videos(err)]
    assert sorted(made) == sorted(set(made)) and len(made) == len(PROMPTS)  # each prompt once among the others
    assert taken in made  # its prompt was made again by a process that waited for its claim
    assert any(f"replacing {taken}" in err for _, err in results)
    lines = manifest_lines(str(out))
    assert sorted(line["prompt"] for line in lines) == sorted(PROMPTS)  # one record per prompt
    assert not [name for name in os.listdir(out) if name.endswith(".claim") or ".partial." in name]

    rerun = start(args)
    assert rerun.wait(timeout=300) == 0
    assert f"{len(PROMPTS)} already finished" in rerun.stderr.read()
