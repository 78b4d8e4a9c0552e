"""The web app on tiny models: its endpoints through gradio_client, and the page in a real headless Chromium."""

import json
import logging
import os
import re
import socket
import time

import pytest
from runs import manifest_lines

from ivmixed.app import (
    GENERATE_INPUTS,
    PRESETS,
    App,
    RequestError,
    knob_info,
    launch,
    preset_values,
)
from ivmixed.config import IV_MIXED_KEYS, RunConfig
from ivmixed.sampler import IVMixedSettings, count_network_calls

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.*")  # gradio's own deprecation notes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEPS = 2
STOP_STEPS = 250  # the most the page's Steps slider takes: a run that would last a minute or more
# AnimateDiff's zz=1000 puts the image model in every zigzag: 2 steps make 2 + 2*2 video and 2*2 image calls.
EXPECTED = {"iv_mix": count_network_calls(STEPS, IVMixedSettings(zz=1000)), "standard": count_network_calls(STEPS, None)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, app, demo, url, downloads):
        self.app, self.demo, self.url, self.downloads = app, demo, url, downloads

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=self.downloads)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-cache"))
    app = App(output_dir=str(tmp_path_factory.mktemp("app-outputs")), tiny=True)
    port = free_port()
    demo = launch(app, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield Server(app, demo, f"http://127.0.0.1:{port}/", str(tmp_path_factory.mktemp("downloads")))
    finally:
        demo.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


def generate(client, **values):
    values = {"interval_end": "", "inference_step": STEPS, "num_frames": 2, **values}
    return client.predict(**values, api_name="/generate")


def lines_of(folder):
    return manifest_lines(folder) if os.path.exists(os.path.join(folder, "manifest.jsonl")) else []


def table(value):
    """{video label: (video-model calls, image-model calls, seconds)} of the calls table."""
    return {row[0]: tuple(row[1:]) for row in value["data"]}


# -- the endpoints ---------------------------------------------------------------------------------------------


def test_generate_makes_both_videos_the_contact_sheet_and_a_manifest_record(server):
    client = server.client()
    seed, standard, iv_mix, sheet, calls, record, status = generate(client, prompt="a red fox", seed=7)
    assert seed == 7
    for path in (standard, iv_mix, sheet, record):
        assert path and os.path.getsize(path) > 0
    rows = table(calls)
    assert rows["IV-mixed"][:2] == (EXPECTED["iv_mix"]["video"], EXPECTED["iv_mix"]["image"]) == (6, 4)
    assert rows["Standard"][:2] == (EXPECTED["standard"]["video"], EXPECTED["standard"]["image"]) == (2, 0)
    assert all(isinstance(row[2], float) and row[2] > 0 for row in rows.values())
    assert status.startswith("**Made**")

    (line,) = manifest_lines(server.app.output_dir)
    assert line["prompt"] == "a red fox" and line["seed"] == 7
    assert line["network_calls"] == {"iv_mix": EXPECTED["iv_mix"], "standard": EXPECTED["standard"]}
    for kind in ("iv_mix", "standard", "side_by_side", "contact_sheet", "record"):
        assert os.path.isfile(os.path.join(server.app.output_dir, line["files"][kind])), kind
    assert os.path.basename(iv_mix) == line["files"]["iv_mix"]


def test_the_sdxl_pipeline_is_a_choice_that_makes_both_videos(server):
    client = server.client()
    seed, standard, iv_mix, sheet, calls, record, status = generate(client, prompt="a grey heron", seed=4,
                                                                      pipeline="AnimatediffSDXL")
    for path in (standard, iv_mix, sheet, record):
        assert path and os.path.getsize(path) > 0
    assert table(calls)["IV-mixed"][:2] == (6, 4) and status.startswith("**Made**")
    line = next(line for line in manifest_lines(server.app.output_dir) if line["prompt"] == "a grey heron")
    with open(os.path.join(server.app.output_dir, line["files"]["record"]), encoding="utf-8") as f:
        assert json.load(f)["pipeline"] == "AnimatediffSDXL"


def test_the_same_settings_again_come_from_the_history_the_command_line_shares(server):
    from ivmixed.cli import main

    client = server.client()
    before = manifest_lines(server.app.output_dir)
    *_, calls, record_path, status = generate(client, prompt="a red fox", seed=7)
    assert status.startswith("**Already made**")
    assert table(calls)["IV-mixed"][:2] == (6, 4)
    assert manifest_lines(server.app.output_dir) == before

    # the record holds the equivalent command line: the CLI finds the same files finished and makes nothing
    with open(record_path, encoding="utf-8") as f:
        command = json.load(f)["command_line"]
    assert command[0] == "ivmixed" and "--tiny" in command
    logger = logging.getLogger("ivmixed")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        assert main(command[1:]) == 0
    finally:  # the CLI routes the package's log through the terminal; give other tests theirs back
        logger.handlers[:], logger.level, logger.propagate = saved
    assert manifest_lines(server.app.output_dir) == before


def test_bad_input_shows_one_line_and_the_server_keeps_serving(server):
    from gradio_client.exceptions import AppError

    client = server.client()
    before = len(lines_of(server.app.output_dir))
    cases = {
        "\u201cInterval end\u201d must be between 0 and 1 (steps - 1), got 7": {"interval_end": "7"},
        "\u201cInterval end\u201d must be a whole number, got 'soon'": {"interval_end": "soon"},
        "\u201cPrompt\u201d is empty": {"prompt": "  "},
        "\u201cWidth\u201d must be a positive multiple of 8, got 100": {"width": 100},
        "\u201czz\u201d must be at least 1, got 0": {"zz": 0},
        "\u201cSeed\u201d must be a whole number from 0 to 2**64 - 1, got -1": {"seed": -1},
    }
    for message, values in cases.items():
        with pytest.raises(AppError) as info:
            generate(client, **{"prompt": "a bad one", **values})
        assert message in str(info.value)
        assert "\n" not in str(info.value).strip()
    rows = client.predict(None, None, api_name="/history")[0]["data"]  # still serving
    assert len(rows) == before
    seed, *_ , status = generate(client, prompt="still here", seed=3)
    assert seed == 3 and status.startswith("**Made**")


def test_stop_interrupts_a_running_generation_within_a_step(server):
    from gradio_client.exceptions import AppError

    client = server.client()
    before = lines_of(server.app.output_dir)
    job = client.submit(prompt="a long one", interval_end="", inference_step=STOP_STEPS, num_frames=2,
                        api_name="/generate")
    deadline = time.time() + 30
    while time.time() < deadline:
        progress = job.status().progress_data or []
        if any(p.desc == "IV-mixed video" and (p.index or 0) >= 1 for p in progress) or job.done():
            break
        time.sleep(0.05)
    else:
        pytest.fail("no sampling progress within 30 s")
    started = time.time()
    assert client.predict(api_name="/stop").startswith("Stopped.")
    with pytest.raises(AppError, match="stopped"):
        job.result(timeout=30)
    assert time.time() - started < 10  # long before the last step
    assert not any("a-long-one" in name for name in os.listdir(server.app.output_dir))
    assert lines_of(server.app.output_dir) == before


def test_history_lists_every_run_newest_first(server):
    client = server.client()
    generate(client, prompt="history one", seed=1, zz=1)
    value, run_a, run_b = client.predict(None, None, api_name="/history")
    rows = value["data"]
    header = value["headers"]
    assert len(rows) == len(manifest_lines(server.app.output_dir))
    newest = dict(zip(header, rows[0]))
    assert newest["Prompt"] == "history one" and newest["zz"] == 1
    assert newest["IV-mixed calls (video/image)"] == "{video}/{image}".format(
        **count_network_calls(STEPS, IVMixedSettings(zz=1)))
    assert run_a["value"] == newest["Record"] and run_b["value"] is None
    assert [value for _, value in run_a["choices"]] == [row[-1] for row in rows]


# -- the page's pieces -----------------------------------------------------------------------------------------


def test_every_knob_is_on_the_page_with_its_help_and_a_direction():
    assert set(IV_MIXED_KEYS) | {"reference_compat"} <= set(GENERATE_INPUTS)
    for name in IV_MIXED_KEYS + ("reference_compat",):
        text = knob_info(name)
        assert text.endswith(".") and ("favours" in text or "Neither" in text or "lower of" in text), name


def test_starting_points_order_image_model_share_and_are_valid_settings(tmp_path):
    app = App(output_dir=str(tmp_path), tiny=True)
    steps = 20
    image_calls = []
    for name in PRESETS:
        config = app.config({"prompt": "x", "inference_step": steps, **preset_values(name, steps)})
        assert isinstance(config, RunConfig)
        image_calls.append(count_network_calls(steps, config.iv_mixed)["image"])
    assert image_calls == sorted(image_calls) and len(set(image_calls)) == len(image_calls)
    with pytest.raises(RequestError, match="\u201crho\u201d must be a positive number"):
        app.config({"prompt": "x", "rho": 0.0})


def test_app_subcommand_and_module_share_one_parser(capsys):
    from ivmixed.entry import main

    with pytest.raises(SystemExit) as info:
        main(["app", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--tiny", "--host", "--port", "--output-dir", "--share", "--config"):
        assert option in text


# -- the page in a browser -------------------------------------------------------------------------------------


def test_page_in_headless_chromium_generates_both_videos(server):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e .[dev]")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url, wait_until="load", timeout=30000)
            page.get_by_label("Prompt", exact=True).fill("a lighthouse in a storm")
            for label, value in (("Steps", STEPS), ("Frames", 4)):
                box = page.get_by_label(f"number input for {label}")
                box.fill(str(value))
                box.press("Enter")
            page.get_by_role("button", name="Generate", exact=True).click()
            page.wait_for_function(
                "() => ['#standard-video video', '#ivmixed-video video'].every(s => {"
                " const v = document.querySelector(s); return v && (v.currentSrc || v.getAttribute('src')); })",
                timeout=60000)
            sources = [page.eval_on_selector(f"{s} video", "v => v.currentSrc || v.getAttribute('src')")
                       for s in ("#standard-video", "#ivmixed-video")]
            assert all(src and src.endswith(".mp4") for src in sources), sources
            assert "_standard.mp4" in sources[0] and "_iv_mix.mp4" in sources[1]
            assert page.locator("#standard-video").get_by_text("Standard", exact=True).count() >= 1
            assert page.locator("#ivmixed-video").get_by_text("IV-mixed", exact=True).count() >= 1

            page.wait_for_selector("#calls-table [data-testid='cell-1-0']", timeout=10000)
            cells = page.eval_on_selector("#calls-table", """e => {
                const rows = {};
                e.querySelectorAll('[role=gridcell]').forEach(c => {
                    (rows[c.dataset.row] = rows[c.dataset.row] || [])[+c.dataset.col] = c.innerText.trim(); });
                return Object.values(rows); }""")
            rows = {row[0]: row[1:] for row in cells}
            assert rows["IV-mixed"][:2] == ["6", "4"], rows
            assert rows["Standard"][:2] == ["2", "0"], rows
            assert re.search(r"Made", page.inner_text("#status"))
            page.wait_for_selector("#contact-sheet img", timeout=10000)
            # the README's picture: refreshed with IVMIXED_UPDATE_DOCS=1, else kept beside the test's files
            shot = os.path.join(ROOT, "docs", "app.png") if os.environ.get("IVMIXED_UPDATE_DOCS") else str(
                server.app.output_dir) + "-screenshot.png"
            save_screenshot(page, shot)
            assert os.path.getsize(shot) > 10_000
        finally:
            browser.close()
    lines = manifest_lines(server.app.output_dir)
    assert any(line["prompt"] == "a lighthouse in a storm" for line in lines)


def save_screenshot(page, path):
    """The whole page as a small PNG (a 128-colour palette)."""
    import io

    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
