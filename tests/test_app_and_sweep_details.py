"""The web app's history and stopping, the README's sweep example and its picture, contact-sheet captions, and
how a sweep's metrics count its shared standard video."""

import csv
import glob
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from ivmixed import evaluate as ev
from ivmixed.app import App
from ivmixed.cli import CLI_ONLY
from ivmixed.compare import CAPTION_LINES, ELLIPSIS, _wrap, contact_sheet, font_for, text_width, word_gap
from ivmixed.config import PIPELINE_NAMES, TINY_SIZES, build_config

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.*")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS_GRID = os.path.join(ROOT, "docs", "sweep-grid.png")
TILE = (1, 2, 3)  # a colour no text or background of a sheet has: marks where the frames go


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_manifest(folder, lines):
    with open(os.path.join(folder, "manifest.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def manifest_line(name, record, **files):
    return {"id": name, "fingerprint": f"fp-{name}", "prompt": f"line {name}", "seed": 1,
            "finished_at": f"2024-01-01T00:00:0{len(name) % 10}+00:00", "files": {"record": record, **files}}


# -- the history reads only the output folder ------------------------------------------------------------------


@pytest.fixture
def crafted(tmp_path):
    """An output folder whose manifest names records and videos outside it, by ``..``, by an absolute path and
    through symlinks, beside one honest record."""
    out, elsewhere = tmp_path / "outputs", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    secret = {"prompt": "SECRET", "seed": 666, "files": {"record": "secret.json"}, "settings": {}}
    (elsewhere / "secret.json").write_text(json.dumps(secret))
    (elsewhere / "video.mp4").write_bytes(b"not yours")
    os.symlink(elsewhere / "secret.json", out / "link.json")
    os.symlink(elsewhere / "video.mp4", out / "link.mp4")
    (out / "std.mp4").write_bytes(b"ours")
    honest = {"prompt": "honest", "seed": 2, "finished_at": "2024-01-02T00:00:00+00:00",
              "files": {"record": "good.json", "standard": "std.mp4", "iv_mix": "../elsewhere/video.mp4",
                        "side_by_side": "link.mp4", "contact_sheet": str(elsewhere / "video.mp4")}}
    (out / "good.json").write_text(json.dumps(honest))
    lines = [manifest_line("a", "../elsewhere/secret.json"), manifest_line("bb", str(elsewhere / "secret.json")),
             manifest_line("ccc", "link.json"), manifest_line("dddd", "good.json")]
    write_manifest(out, lines)
    return out, lines, honest


def test_history_reads_no_record_outside_the_output_folder(crafted, caplog):
    out, lines, honest = crafted
    app = App(output_dir=str(out), tiny=True)
    with caplog.at_level(logging.WARNING, logger="ivmixed"):
        history = app.history()
        assert app.history() == history  # the second look warns no more
    by_prompt = {r["prompt"]: r for r in history}
    assert set(by_prompt) == {"line a", "line bb", "line ccc", "honest"}
    assert "SECRET" not in json.dumps(history)
    for line in lines[:3]:  # outside the folder: the manifest's own line is shown
        assert by_prompt[line["prompt"]] == line
    assert by_prompt["honest"] == honest
    warned = [r.getMessage() for r in caplog.records if "outside that folder" in r.getMessage()]
    assert len(warned) == 3
    for name in ("../elsewhere/secret.json", str(out.parent / "elsewhere" / "secret.json"), "link.json"):
        assert sum(repr(name) in message for message in warned) == 1, name


def test_history_serves_no_video_outside_the_output_folder(crafted, caplog):
    out, _, honest = crafted
    app = App(output_dir=str(out), tiny=True)
    with caplog.at_level(logging.WARNING, logger="ivmixed"):
        assert app.paths(honest) == {"record": os.path.realpath(out / "good.json"),
                                     "standard": os.path.realpath(out / "std.mp4")}
        app.paths(honest)
    warned = [r.getMessage() for r in caplog.records if "outside that folder" in r.getMessage()]
    assert len(warned) == 3  # iv_mix by "..", side_by_side through a link, contact_sheet by an absolute path
    assert app.paths({"files": ["std.mp4"]}) == {} and app.paths({}) == {}


def test_an_already_made_run_shows_its_manifest_line_when_its_record_links_out(tmp_path):
    out, elsewhere = tmp_path / "outputs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    app = App(output_dir=str(out), tiny=True)
    values = {"prompt": "a fox", "seed": 5, "inference_step": 2, "num_frames": 2, "interval_end": ""}
    made = app.generate(values)
    record_name = os.path.basename(made.record_path)
    (elsewhere / "x.json").write_text(json.dumps({"prompt": "SECRET", "files": {}}))
    os.remove(out / record_name)
    os.symlink(elsewhere / "x.json", out / record_name)
    again = app.generate(values)
    assert not again.made and again.record["prompt"] == "a fox"
    (line,) = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
    assert again.record == line
    assert again.record_path == "" and "record" not in again.files
    assert set(again.files) == {"iv_mix", "standard", "side_by_side", "contact_sheet"}
    assert all(os.path.dirname(p) == os.path.realpath(out) for p in again.files.values())


# -- stop signals end the app's process cleanly ----------------------------------------------------------------


class AppProcess:
    """``python -m ivmixed.app --tiny`` on a free loopback port, its stderr in a file."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.output_dir = str(tmp_path / "outputs")
        self.err_path = str(tmp_path / "stderr.txt")
        env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), HF_HUB_OFFLINE="1")
        with open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ivmixed.app", "--tiny", "--host", "127.0.0.1", "--port", str(self.port),
                 "--output-dir", self.output_dir], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 120
        while "serving on" not in self.stderr():
            if self.process.poll() is not None or time.time() > deadline:
                self.kill()
                pytest.fail(f"the app did not start: {self.stderr()}")
            time.sleep(0.2)

    def stderr(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, signum, timeout=60) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"no exit within {timeout} s of signal {signum}: {self.stderr()}")

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def assert_clean(stderr):
    assert "terminate called" not in stderr and "Traceback" not in stderr, stderr


def test_ctrl_c_during_a_generation_stops_it_and_exits_130(tmp_path):
    client_module = pytest.importorskip("gradio_client")
    app = AppProcess(tmp_path)
    try:
        client = client_module.Client(app.url, verbose=False)
        job = client.submit(prompt="a long one", interval_end="", inference_step=250, num_frames=2,
                            api_name="/generate")
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = job.status().progress_data or []
            if any(p.desc == "IV-mixed video" and (p.index or 0) >= 1 for p in progress):
                break
            assert not job.done(), app.stderr()
            time.sleep(0.05)
        else:
            pytest.fail(f"no sampling progress within 60 s: {app.stderr()}")
        started = time.time()
        assert app.stop(signal.SIGINT) == 130
        assert time.time() - started < 30  # long before the 250th step
    finally:
        app.kill()
    stderr = app.stderr()
    assert_clean(stderr)
    assert "SIGINT: stopping the generation at its next step" in stderr and "SIGINT: server stopped" in stderr
    assert [name for name in os.listdir(app.output_dir) if not name.startswith(".")] == []


def test_sigterm_while_idle_exits_143(tmp_path):
    app = AppProcess(tmp_path)
    try:
        assert app.stop(signal.SIGTERM) == 143
    finally:
        app.kill()
    stderr = app.stderr()
    assert_clean(stderr)
    assert "SIGTERM: server stopped" in stderr and "stopping the generation" not in stderr


def test_stop_all_stops_a_running_generation_and_refuses_new_ones(tmp_path):
    """What the signal handler of ``python -m ivmixed.app`` does, in this process."""
    import threading

    from ivmixed.app import RequestError

    app = App(output_dir=str(tmp_path), tiny=True)
    steps, failure = [], []

    def run():
        try:
            app.generate({"prompt": "long", "inference_step": 250, "num_frames": 2, "interval_end": ""},
                         session="s", progress=lambda kind, step, total: steps.append(step))
        except RequestError as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.time() + 60
    while not steps and time.time() < deadline:
        time.sleep(0.02)
    assert steps, "no sampling step within 60 s"
    assert app.stop_all() == 1
    assert app.wait_idle(30)
    worker.join(5)
    assert not worker.is_alive() and failure[0].title == "Stopped" and max(steps) < 250
    with pytest.raises(RequestError, match="shutting down"):
        app.generate({"prompt": "after", "inference_step": 2, "num_frames": 2, "interval_end": ""})
    assert app.wait_idle(0)


# -- the README's sweep example and its picture ----------------------------------------------------------------


def readme_sweep_example():
    """The words of the sweep example in the README's "Settings sweeps" section (after ``python inference.py``)."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Settings sweeps"):]
    section = section[: section.index("\n## ", 1)]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    (line,) = [x for x in block[: block.index("```")].splitlines() if x.startswith("python inference.py")]
    words = shlex.split(line)
    assert words[:2] == ["python", "inference.py"] and "--sweep" in words
    return words[2:]


def example_grid(words):
    from ivmixed.sweep import parse_sweep

    return parse_sweep([words[i + 1] for i, w in enumerate(words) if w == "--sweep"])


def test_the_readme_sweep_example_is_valid_at_full_size_for_every_pipeline(tmp_path, monkeypatch):
    from ivmixed.cli import build_parser
    from ivmixed.sweep import cell_config

    words = readme_sweep_example()
    args = build_parser().parse_args(words)
    given = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    grid = example_grid(words)
    for pipeline in PIPELINE_NAMES:
        config = build_config({**given, "pipeline": pipeline, "output_dir": str(tmp_path)})
        assert config.inference_step == 50
        for values in grid.cells():
            cell_config(config, values, grid.iv_mixed_only)  # raises for a value no run of these steps takes


def test_the_readme_sweep_example_runs_as_written_with_tiny(tmp_path):
    from ivmixed.cli import main

    words = readme_sweep_example()
    grid = example_grid(words)
    update = bool(os.environ.get("IVMIXED_UPDATE_DOCS"))  # the README's picture: the example exactly, 8 frames
    extra = [] if update else ["--num-frames", "2"]  # fewer frames: the same cells and steps, quicker
    out = tmp_path / "out"
    logger = logging.getLogger("ivmixed")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        assert main([*words, "--tiny", *extra, "--output-dir", str(out)]) == 0
    finally:  # the CLI routes the package's log through the terminal; give other tests theirs back
        logger.handlers[:], logger.level, logger.propagate = saved
    assert len(glob.glob(str(out / "*_iv_mix.mp4"))) == grid.size == 6
    assert len(glob.glob(str(out / "*_standard.mp4"))) == 1
    (sweep_path,) = glob.glob(str(out / "*.sweep.json"))
    with open(sweep_path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["complete"] and data["axes"] == grid.as_json()
    assert data["base_settings"]["inference_step"] == TINY_SIZES["inference_step"]
    (png,) = glob.glob(str(out / "*_grid.png"))
    if update:
        Image.open(png).save(DOCS_GRID, optimize=True)  # lossless: the very pixels the sweep wrote


def test_the_readme_sweep_picture_is_the_png_the_example_writes(tmp_path, monkeypatch):
    """docs/sweep-grid.png has the grid PNG's layout for the README's example with --tiny: the same size, caption
    and labels (drawn here around placeholder frames), and frames where the frames go. A stale picture fails:
    ``IVMIXED_UPDATE_DOCS=1 python -m pytest tests/test_app_and_sweep_details.py`` makes it again."""
    from ivmixed.cli import build_parser
    from ivmixed.sweep import Sweep, grid_sheet

    monkeypatch.setattr("ivmixed.runner.load_pipeline", lambda config: pytest.fail("a model was loaded"))
    words = readme_sweep_example()
    args = build_parser().parse_args([*words, "--tiny", "--output-dir", str(tmp_path)])
    given = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    sweep = Sweep(build_config(given), example_grid(words), progress_bars=False)
    (prompt,) = sweep.prompts
    config = sweep.config
    frames = np.zeros((config.num_frames, config.height, config.width, 3), np.uint8) + np.uint8(TILE)
    expected = grid_sheet(sweep.grid, [frames] * len(sweep.cells), frames, sweep.baseline_text(),
                          sweep.caption(prompt.job))
    picture = np.asarray(Image.open(DOCS_GRID).convert("RGB"))
    assert picture.shape == expected.shape
    tiles = (expected == TILE).all(axis=-1)
    assert tiles.mean() > 0.5
    same = (picture == expected).all(axis=-1)
    assert same[~tiles].mean() > 0.99  # the caption, labels and background (font rendering may differ a little)
    assert picture[tiles].std() > 20  # frames (noise), not the grid video's layout or a blank


# -- contact-sheet captions ----------------------------------------------------------------------------------


def test_wrapped_captions_keep_their_words_and_spaces():
    font = font_for(64)
    caption = "a prompt about a fox | seed 7 | Animatediff, 2 steps | IV-mixed: zz 1000, rho 7"
    for width in (60, 130, 400, 2000):
        lines = _wrap(caption, font, width)
        assert " ".join(lines) == caption
        assert all(text_width(line, font) <= width for line in lines)
    assert _wrap(caption, font, 2000) == [caption]
    assert _wrap("rho   7\n and\tmore", font, 2000) == ["rho 7 and more"]


def test_a_word_wider_than_the_line_is_cut_not_lost():
    font = font_for(64)
    word = "x" * 200
    lines = _wrap(f"a {word} b", font, 120)
    assert lines[0] == "a" and lines[-1].endswith(" b")
    assert "".join(lines[1:])[: -len(" b")] == word
    assert len(lines) > 3 and all(text_width(line, font) <= 120 for line in lines)


def ink_gaps(row_band):
    """Widths of the blank column runs between the first and the last inked column."""
    columns = (row_band < 160).any(axis=(0, 2))
    inked = np.flatnonzero(columns)
    gaps, run = [], 0
    for ink in columns[inked[0]: inked[-1] + 1]:
        if ink:
            if run:
                gaps.append(run)
            run = 0
        else:
            run += 1
    return gaps


def test_contact_sheet_captions_show_a_visible_space_between_words():
    frames = np.full((2, 64, 64, 3), 128, np.uint8)
    caption = "a prompt about a cat"
    sheet = contact_sheet(frames, frames, caption=caption)
    font = font_for(64)
    gap = max(2, 64 // 32)
    band = sheet[gap: gap + font.size + gap]
    wide = [g for g in ink_gaps(band) if g >= word_gap(font)]
    assert word_gap(font) == 4 and len(wide) == caption.count(" ")  # letters stay closer than words


def test_a_100000_character_prompt_gives_a_bounded_caption():
    frames = np.full((2, 64, 64, 3), 128, np.uint8)
    font = font_for(64)
    plain = contact_sheet(frames, frames)
    line = font.size + max(2, 64 // 32)
    for caption in ("y" * 100_000, "many words " * 10_000):
        sheet = contact_sheet(frames, frames, caption=caption)
        assert sheet.shape[0] == plain.shape[0] + CAPTION_LINES * line + max(2, 64 // 32)
        lines = _wrap(caption, font, sheet.shape[1] - 2 * max(2, 64 // 32))
        assert len(lines) == CAPTION_LINES and lines[-1].endswith(ELLIPSIS)
        shown = " ".join(lines)[: -len(ELLIPSIS)]
        if " " in caption:
            assert caption.startswith(shown)
        else:  # one word, cut over the lines
            assert shown.replace(" ", "") == "y" * len(shown.replace(" ", ""))


def test_a_sweep_caption_and_grid_video_stay_bounded_for_a_long_prompt(tmp_path):
    from ivmixed.sweep import Sweep, grid_video, parse_sweep
    from ivmixed.compare import CAPTION_PROMPT

    config = build_config({"tiny": True, "prompt": "z" * 1000, "inference_step": 2, "num_frames": 2,
                           "device": "cpu", "output_dir": str(tmp_path)})
    sweep = Sweep(config, ["zz=1,1000"], progress_bars=False)
    caption = sweep.caption(sweep.prompts[0].job)
    assert caption.startswith('"' + "z" * (CAPTION_PROMPT - 1) + ELLIPSIS + '" | seed ')
    grid = parse_sweep(["zz=1,1000"])
    frames = np.full((2, 64, 64, 3), 128, np.uint8)
    long = grid_video(grid, [frames, frames], None, [], caption="w" * 100_000)
    longer = grid_video(grid, [frames, frames], None, [], caption="w " * 500_000)
    assert long.shape == longer.shape and long.shape[1] < 1000


# -- a sweep's metrics count its shared standard video once --------------------------------------------------


def test_sweep_metrics_count_the_shared_standard_video_once(tmp_path, clip_folder):
    from ivmixed.cli import main

    out = tmp_path / "sweep"
    logger = logging.getLogger("ivmixed")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        assert main(["--tiny", "--prompt", "a red fox", "--inference-step", "2", "--num-frames", "2", "--device",
                     "cpu", "--output-dir", str(out), "--sweep", "zz=1,3,1000"]) == 0
        assert ev.main([str(out), "--clip-model", clip_folder, "--device", "cpu"]) == 0
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    standard = [r for r in rows if r["variant"] == "standard"]
    assert len(standard) == 3 and len({r["file"] for r in standard}) == 1  # three records list one video
    with open(out / "metrics_summary.csv", newline="") as f:
        summary = {r["variant"]: r for r in csv.DictReader(f)}
    assert (summary["standard"]["videos"], summary["iv_mix"]["videos"], summary[ev.DIFFERENCE]["videos"]) == (
        "1", "3", "3")
    assert float(summary["standard"]["clip_score"]) == pytest.approx(float(standard[0]["clip_score"]), abs=1e-9)
    text = (out / "metrics.md").read_text(encoding="utf-8")
    assert ("Videos: 1 standard, 3 IV-mixed; the difference is over the 3 IV-mixed videos with a standard video "
            "of the same seed to compare with.") in text


def test_summary_means_weigh_a_shared_video_once():
    rows = [{"id": i, "prompt": "p", "variant": "standard", "file": "shared.mp4", "record": i, "clip_score": 10.0,
             "frame_consistency": 90.0} for i in ("a", "b", "c")]
    rows.append({"id": "d", "prompt": "q", "variant": "standard", "file": "own.mp4", "record": "d",
                 "clip_score": 20.0, "frame_consistency": 80.0})
    summary = ev.summarize(rows)
    assert summary["standard"] == {"clip_score": 15.0, "frame_consistency": 85.0, "videos": 2}
