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
from ivmixed.app.fields import CONTROLNET_NOTE, GUIDE_FIELDS, LABELS, guide_info, knob_steps
from ivmixed.app.tables import CALLS_HEADERS, CONTROLNET_HEADERS, calls_headers, calls_table, settings_difference
from ivmixed.config import IV_MIXED_KEYS, SETTINGS, RunConfig
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
# With one ControlNet every guided call of either UNet also runs it once.
CONTROLLED = {"iv_mix": count_network_calls(STEPS, IVMixedSettings(zz=1000), controlnets=1),
              "standard": count_network_calls(STEPS, None, controlnets=1)}


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


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory):
    """A tiny ControlNet folder (what --tiny takes), made once for the module."""
    from ivmixed.testing import save_tiny_controlnet

    return save_tiny_controlnet(str(tmp_path_factory.mktemp("tiny-controlnet")), seed=1)


def generate(client, **values):
    values = {"interval_end": "", "inference_step": STEPS, "num_frames": 2, **values}
    return client.predict(**values, api_name="/generate")


def lines_of(folder):
    return manifest_lines(folder) if os.path.exists(os.path.join(folder, "manifest.jsonl")) else []


def write_video(path, frames=6, height=48, width=64):
    import imageio.v3 as iio
    import numpy as np

    pixels = (np.random.default_rng(0).random((frames, height, width, 3)) * 255).astype(np.uint8)
    iio.imwrite(str(path), pixels, fps=8)
    return str(path)


def write_image(path, size=(40, 30)):
    from PIL import Image

    Image.new("RGB", size, (200, 120, 10)).save(str(path))
    return str(path)


def record_of(folder, line):
    with open(os.path.join(folder, line["files"]["record"]), encoding="utf-8") as f:
        return json.load(f)


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
    assert calls["headers"] == CALLS_HEADERS and all(len(row) == 3 for row in rows.values())  # no ControlNet columns
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


def assert_uploads_refused_in_one_line(server, client, cases, prompt):
    """Each of ``cases`` (message -> field values) is refused with its message, in one line that names an upload by
    its own name (not Gradio's copy of it); nothing is written to the output folder."""
    from gradio_client.exceptions import AppError

    before = lines_of(server.app.output_dir)
    for message, values in cases.items():
        with pytest.raises(AppError) as info:
            generate(client, **{"prompt": prompt, **values})
        text = str(info.value).strip()
        assert message in text, text
        assert "\n" not in text and "Traceback" not in text
        assert os.environ["GRADIO_TEMP_DIR"] not in text
    assert lines_of(server.app.output_dir) == before
    assert not any(prompt.replace(" ", "-") in name for name in os.listdir(server.app.output_dir))


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


# -- guiding the video with uploaded files ------------------------------------------------------------------------


def test_an_uploaded_init_video_runs_the_kept_steps_and_is_recorded(server, tmp_path):
    from gradio_client import handle_file

    client = server.client()
    video = write_video(tmp_path / "river.mp4")
    before = len(lines_of(server.app.output_dir))
    seed, standard, iv_mix, sheet, calls, record, status = generate(
        client, prompt="a river from a video", seed=5, init_video=handle_file(video), strength=0.5,
        inference_step=4, num_frames=4)
    for path in (standard, iv_mix, sheet, record):
        assert path and os.path.getsize(path) > 0
    rows = table(calls)  # strength 0.5 of 4 steps: the last 2 run, as in a text-to-video run of 2 steps
    assert rows["IV-mixed"][:2] == (EXPECTED["iv_mix"]["video"], EXPECTED["iv_mix"]["image"]) == (6, 4)
    assert rows["Standard"][:2] == (EXPECTED["standard"]["video"], EXPECTED["standard"]["image"]) == (2, 0)
    assert status.startswith("**Made**")
    assert "video-to-video from `river.mp4` at strength 0.5: the last 2 of 4 steps ran" in status

    lines = lines_of(server.app.output_dir)
    assert len(lines) == before + 1
    line = lines[-1]
    assert line["prompt"] == "a river from a video" and line["network_calls"]["iv_mix"] == {"video": 6, "image": 4}
    settings = record_of(server.app.output_dir, line)["settings"]
    assert settings["init_video"] and os.path.basename(settings["init_video"]) == "river.mp4"
    assert settings["strength"] == 0.5 and settings["inference_step"] == 4

    # the same video under another name is the same run (the fingerprint is by content, not by the upload's path)
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(open(video, "rb").read())
    *_, calls, _, status = generate(client, prompt="a river from a video", seed=5, init_video=handle_file(str(copy)),
                                    strength=0.5, inference_step=4, num_frames=4)
    assert status.startswith("**Already made**") and table(calls)["IV-mixed"][:2] == (6, 4)
    assert len(lines_of(server.app.output_dir)) == before + 1


def test_a_tiny_ip_adapter_and_an_uploaded_image_prompt_make_both_videos(server, tmp_path):
    from gradio_client import handle_file

    from ivmixed.testing import save_tiny_ip_adapter, tiny_image_unet

    adapter = save_tiny_ip_adapter(str(tmp_path / "ip-adapter"), tiny_image_unet())  # fits the tiny image UNet
    image = write_image(tmp_path / "look.png")
    client = server.client()
    seed, standard, iv_mix, sheet, calls, record, status = generate(
        client, prompt="a fox in that style", seed=6, ip_adapter=adapter, ip_adapter_image=handle_file(image),
        ip_adapter_scale=0.5)
    for path in (standard, iv_mix, sheet, record):
        assert path and os.path.getsize(path) > 0
    assert table(calls)["IV-mixed"][:2] == (6, 4) and table(calls)["Standard"][:2] == (2, 0)
    assert status.startswith("**Made**") and "image prompt `look.png`" in status and "at scale 0.5" in status
    line = next(line for line in manifest_lines(server.app.output_dir) if line["prompt"] == "a fox in that style")
    saved = record_of(server.app.output_dir, line)
    assert saved["settings"]["ip_adapter"] == adapter and saved["settings"]["ip_adapter_scale"] == 0.5
    assert os.path.basename(saved["settings"]["ip_adapter_image"]) == "look.png"
    assert saved["ip_adapter"]["ip_attention_layers"]["video"] > 0 and saved["ip_adapter"]["scale"] == 0.5


def test_bad_guiding_input_shows_one_line_naming_the_upload_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client import handle_file

    client = server.client()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video either\n")
    video = write_video(tmp_path / "short.mp4", frames=3)
    image = write_image(tmp_path / "look.png")
    before = lines_of(server.app.output_dir)
    cases = {
        "\u201cInit video\u201d notes.txt (uploaded) is not a video this reads (.txt)": {
            "init_video": handle_file(str(notes))},
        "\u201cInit video\u201d fake.mp4 (uploaded) does not decode as a video": {
            "init_video": handle_file(str(fake))},
        "\u201cInit video\u201d short.mp4 (uploaded) has 3 frames and the run needs 4": {
            "init_video": handle_file(video), "num_frames": 4},
        "\u201cStrength\u201d is how much of an \u201cInit video\u201d is repainted, and no \u201cInit video\u201d is "
        "given": {"strength": 0.5},
        "\u201cStrength\u201d 0.05 keeps no step of 2 \u201cSteps\u201d": {"init_video": handle_file(video),
                                                                      "strength": 0.05},
        "\u201cIP-Adapter image\u201d needs an \u201cIP-Adapter\u201d": {"ip_adapter_image": handle_file(image)},
        "\u201cIP-Adapter scale\u201d needs an \u201cIP-Adapter\u201d": {"ip_adapter_scale": 0.5},
        "\u201cIP-Adapter\u201d needs the image prompt": {"ip_adapter": str(tmp_path)},
        "a local folder of one (ivmixed.testing.save_tiny_ip_adapter)": {"ip_adapter": "h94/IP-Adapter",
                                                                         "ip_adapter_image": handle_file(image)},
    }
    assert_uploads_refused_in_one_line(server, client, cases, "a guided bad one")
    rows = client.predict(None, None, api_name="/history")[0]["data"]  # still serving
    assert len(rows) == len(before)
    seed, *_, status = generate(client, prompt="still guided", seed=8, init_video=handle_file(video),
                                strength=0.5, inference_step=4)
    assert seed == 8 and status.startswith("**Made**")


def test_a_tiny_controlnet_and_an_uploaded_control_video_make_both_videos(server, controlnet, tmp_path):
    from gradio_client import handle_file

    from ivmixed.cli import main

    client = server.client()
    video = write_video(tmp_path / "pose.mp4")
    before = len(lines_of(server.app.output_dir))
    values = {"prompt": "a dancer following a pose", "seed": 9, "controlnet": controlnet, "controlnet_scale": 0.7}
    seed, standard, iv_mix, sheet, calls, record, status = generate(client, **values,
                                                                      controlnet_video=handle_file(video))
    for path in (standard, iv_mix, sheet, record):
        assert path and os.path.getsize(path) > 0
    assert calls["headers"] == CALLS_HEADERS + CONTROLNET_HEADERS
    rows = table(calls)  # (video-model calls, image-model calls, seconds, ControlNet for each model)
    assert (rows["IV-mixed"][:2], rows["IV-mixed"][3:]) == ((6, 4), (6, 4))
    assert (rows["Standard"][:2], rows["Standard"][3:]) == ((2, 0), (2, 0))
    assert status.startswith("**Made**")
    assert f"ControlNet `{os.path.basename(controlnet)}` on `pose.mp4` at scale 0.7" in status

    lines = lines_of(server.app.output_dir)
    assert len(lines) == before + 1
    line = lines[-1]
    assert line["network_calls"] == CONTROLLED == {
        "iv_mix": {"video": 6, "image": 4, "controlnet_video": 6, "controlnet_image": 4},
        "standard": {"video": 2, "image": 0, "controlnet_video": 2, "controlnet_image": 0}}
    saved = record_of(server.app.output_dir, line)
    settings = saved["settings"]
    assert settings["controlnet"] == [controlnet] and settings["controlnet_scale"] == ["0.7"]
    assert [os.path.basename(v) for v in settings["controlnet_video"]] == ["pose.mp4"]
    assert (settings["control_guidance_start"], settings["control_guidance_end"]) == (0.0, 1.0)
    assert saved["controlnet"][0]["source"] == controlnet

    # the same settings again: the control video under another name is the same run, found in the manifest
    copy = tmp_path / "again.mp4"
    copy.write_bytes(open(video, "rb").read())
    *_, calls, record, status = generate(client, **values, controlnet_video=handle_file(str(copy)))
    assert status.startswith("**Already made**") and table(calls)["IV-mixed"][3:] == (6, 4)
    assert len(lines_of(server.app.output_dir)) == before + 1
    # ... and from the command line the record holds: each repeatable setting's flag with its one value
    command = saved["command_line"]
    assert command[command.index("--controlnet") + 1] == controlnet
    assert command[command.index("--controlnet-scale") + 1] == "0.7" and "--controlnet-video" in command
    logger = logging.getLogger("ivmixed")
    kept = logger.handlers[:], logger.level, logger.propagate
    try:
        assert main(command[1:]) == 0
    finally:
        logger.handlers[:], logger.level, logger.propagate = kept
    assert len(lines_of(server.app.output_dir)) == before + 1

    # the history compares it with a run without a ControlNet by the values, not by their lists; a record from
    # before a repeatable setting existed (it lacks the key) reads as having none of it
    assert settings["motion_lora"] == []
    older = {k: v for k, v in settings.items() if k != "motion_lora"}
    plain = {**saved, "settings": {**older, "controlnet": [], "controlnet_video": [], "controlnet_scale": []}}
    differences = {row[0]: row[1:] for row in settings_difference(saved, plain)}
    assert differences == {"controlnet": [controlnet, ""], "controlnet_video": [settings["controlnet_video"][0], ""],
                           "controlnet_scale": ["0.7", ""]}


def test_bad_controlnet_input_shows_one_line_and_makes_nothing(server, controlnet, tmp_path):
    from gradio_client import handle_file

    client = server.client()
    notes = tmp_path / "pose.txt"
    notes.write_text("not a video\n")
    video = write_video(tmp_path / "pose.mp4")
    cases = {
        "\u201cControl video\u201d pose.txt (uploaded) is not a video this reads (.txt)": {
            "controlnet": controlnet, "controlnet_video": handle_file(str(notes))},
        "\u201cControlNet\u201d applies to \u201cPipeline\u201d Animatediff only": {
            "pipeline": "ModelScope", "controlnet": controlnet, "controlnet_video": handle_file(video)},
        "\u201cControlNet\u201d needs a \u201cControl video\u201d": {"controlnet": controlnet},
        "\u201cControl video\u201d goes with a \u201cControlNet\u201d, and none is given": {
            "controlnet_video": handle_file(video)},
        "\u201cControlNet start\u201d 0.5 must be before \u201cControlNet end\u201d 0.5": {
            "controlnet": controlnet, "controlnet_video": handle_file(video), "control_guidance_start": 0.5,
            "control_guidance_end": 0.5},
        "a local folder of one (ivmixed.testing.save_tiny_controlnet)": {
            "controlnet": "lllyasviel/control_v11p_sd15_openpose", "controlnet_video": handle_file(video)},
    }
    assert_uploads_refused_in_one_line(server, client, cases, "a controlled bad one")


def test_the_controlnet_slot_becomes_one_value_of_each_setting(tmp_path, controlnet):
    assert all(name in LABELS and name in GUIDE_FIELDS for name in SETTINGS if "control" in name)
    assert "lllyasviel/control_v11p_sd15_openpose" in guide_info("controlnet") and "Blank" in guide_info("controlnet")
    assert "--controlnet" in CONTROLNET_NOTE and "one on the page" in CONTROLNET_NOTE
    assert "mp4" in guide_info("controlnet_video") and "\u201cControlNet\u201d" in guide_info("controlnet_scale")

    app = App(output_dir=str(tmp_path), tiny=True)
    video = write_video(tmp_path / "pose.mp4")
    slot = {"prompt": "x", "num_frames": 2, "controlnet": f"  {controlnet} ", "controlnet_scale": 1.0,
            "control_guidance_start": 0.25, "control_guidance_end": 0.75}
    config = app.config({**slot, "controlnet_video": {"path": video, "meta": {"_type": "gradio.FileData"}}})
    assert (config.controlnet, config.controlnet_video, config.controlnet_scale) == ((controlnet,), (video,), ("1",))
    assert (config.control_guidance_start, config.control_guidance_end) == (0.25, 0.75)
    # blank: no ControlNet, and the sliders (which always hold a value) go as the defaults, not refused
    for blank in (None, "", "  "):
        config = app.config({**slot, "controlnet": blank, "controlnet_video": None, "controlnet_scale": 0.3})
        assert config.controlnet == config.controlnet_video == config.controlnet_scale == ()
        assert (config.control_guidance_start, config.control_guidance_end) == (0.0, 1.0)
    with pytest.raises(RequestError, match="\u201cControlNet scale\u201d must be a number, got 'strong'"):
        app.config({**slot, "controlnet_video": video, "controlnet_scale": "strong"})

    # the calls table: ControlNet columns only for a record that has ControlNet evaluations
    plain = {"network_calls": {"iv_mix": {"video": 6, "image": 4}}, "timings": {"iv_mix_s": 1.0}}
    assert calls_table(plain) == [["IV-mixed", 6, 4, 1.0]] and calls_headers(calls_table(plain)) == CALLS_HEADERS
    controlled = {"network_calls": {"iv_mix": {"video": 6, "image": 4, "controlnet_video": 6, "controlnet_image": 4},
                                    "standard": {"video": 2, "image": 0, "controlnet_video": 2,
                                                 "controlnet_image": 0}}}
    rows = calls_table(controlled)
    assert rows == [["Standard", 2, 0, "", 2, 0], ["IV-mixed", 6, 4, "", 6, 4]]
    assert calls_headers(rows) == CALLS_HEADERS + CONTROLNET_HEADERS


def test_guiding_fields_are_on_the_page_and_become_settings(tmp_path):
    assert set(GUIDE_FIELDS) == {"init_video", "strength", "ip_adapter", "ip_adapter_image", "ip_adapter_scale",
                                 "controlnet", "controlnet_video", "controlnet_scale", "control_guidance_start",
                                 "control_guidance_end"}
    assert set(GUIDE_FIELDS) <= set(GENERATE_INPUTS)
    for name in GUIDE_FIELDS:
        text = guide_info(name)
        assert name in LABELS and text.endswith(".") and "{" not in text, name
    assert "Higher repaints more" in guide_info("strength") and "\u201cInit video\u201d" in guide_info("strength")
    assert "mp4" in guide_info("init_video") and "gif" in guide_info("init_video")

    app = App(output_dir=str(tmp_path), tiny=True)
    video = write_video(tmp_path / "in.mp4")
    config = app.config({"prompt": "x", "num_frames": 4, "inference_step": 10, "init_video": video, "strength": 0.3})
    assert config.init_video == video and config.strength == 0.3 and config.steps_run == 3
    sent = {"path": video, "meta": {"_type": "gradio.FileData"}}  # a file as Gradio's API sends it
    assert app.config({"prompt": "x", "num_frames": 4, "init_video": sent}).init_video == video
    for empty in (None, "", "  "):
        config = app.config({"prompt": "x", "init_video": empty, "ip_adapter": empty, "ip_adapter_image": empty,
                             "strength": SETTINGS["strength"].default, "ip_adapter_scale": 1.0})
        assert config.init_video is None and config.ip_adapter is None and config.ip_adapter_image is None
    with pytest.raises(RequestError, match="no \u201cInit video\u201d is given"):
        app.config({"prompt": "x", "strength": 0.5})

    # a starting point's interval counts the steps that run
    assert knob_steps(20) == 20 and knob_steps(20, None, 0.5) == 20 and knob_steps(20, video, 0.5) == 10
    assert knob_steps(4, video, 0.05) == 4  # keeps none: Generate says so
    steps = knob_steps(20, video, 0.3)
    config = app.config({"prompt": "x", "num_frames": 4, "inference_step": 20, "init_video": video, "strength": 0.3,
                         **preset_values("Favour coherence", steps)})
    assert config.iv_mixed.interval_end == int(round(0.4 * (6 - 1)))


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

            # the guiding inputs wait, closed, under "Guide the video"
            assert not page.get_by_label("number input for Strength").is_visible()
            page.get_by_text("Guide the video", exact=True).click()
            strength = page.get_by_label("number input for Strength")
            strength.wait_for(state="visible", timeout=10000)
            assert float(strength.input_value()) == SETTINGS["strength"].default
            for upload in ("#guide-init_video", "#guide-ip_adapter_image", "#guide-controlnet_video"):
                assert page.locator(upload).is_visible(), upload
            for source in ("#guide-ip_adapter", "#guide-controlnet"):
                assert page.locator(source).locator("textarea, input").first.input_value() == "", source
            assert float(page.get_by_label("number input for ControlNet scale").input_value()) == 1.0
            for label, value in (("ControlNet start", 0.0), ("ControlNet end", 1.0)):
                assert float(page.get_by_label(f"number input for {label}").input_value()) == value, label
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
