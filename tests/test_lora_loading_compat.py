"""The LoRA converter's command line (stopping, leftovers, torch-free answers, the folders it creates), the
torch-free LoRA check the run configuration uses, and ``from_checkpoints`` offline.

Converter runs that must be stopped mid-save run in a subprocess whose ``save_pretrained`` is slowed by a
``sitecustomize`` module on its ``PYTHONPATH``: it saves, then says so through a marker file and waits.
"""

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from runs import run_main
from safetensors.torch import load_file, save_file

from ivmixed.errors import ModelLoadError, SettingError
from ivmixed.leftovers import LOCK_NAME, held_temp_folder
from ivmixed.lora import convert_lora
from ivmixed.lora_paths import check_lora, check_lora_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "lora", "convert_lora_safetensor_to_diffusers.py")
LAYER = "lora_unet_down_blocks_0_attentions_0_proj_in"
HEAVY = ("torch", "diffusers", "transformers", "safetensors")

SLOW_SAVE = """
import time

from diffusers import DiffusionPipeline

_save = DiffusionPipeline.save_pretrained


def save_pretrained(self, save_directory, *args, **kwargs):
    _save(self, save_directory, *args, **kwargs)
    open({marker!r}, "w").close()
    for _ in range(600):  # at most a minute: the test stops the process long before
        time.sleep(0.1)


DiffusionPipeline.save_pretrained = save_pretrained
"""


def flag(name):
    return "--" + name.replace("_", "-")


@pytest.fixture(scope="module")
def base(animatediff_paths):
    return animatediff_paths["image_model"]


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, base):
    """A kohya LoRA of one layer of the tiny SD UNet."""
    from diffusers import UNet2DConditionModel

    weight = UNet2DConditionModel.from_pretrained(base, subfolder="unet").down_blocks[0].attentions[0].proj_in.weight
    generator = torch.Generator().manual_seed(0)
    entries = {
        f"{LAYER}.lora_down.weight": torch.randn(2, *weight.shape[1:], generator=generator),
        f"{LAYER}.lora_up.weight": torch.randn(weight.shape[0], 2, *weight.shape[2:], generator=generator),
        f"{LAYER}.alpha": torch.tensor(1.0),
    }
    path = str(tmp_path_factory.mktemp("lora") / "style.safetensors")
    save_file(entries, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, base, lora_file):
    path = str(tmp_path_factory.mktemp("converted") / "style")
    convert_lora(base, lora_file, path)
    return path


def partials(folder, name="style"):
    return sorted(entry for entry in os.listdir(folder) if entry.startswith(f".{name}.partial-"))


def start_slow_conversion(tmp_path, base, lora_file, dump_path):
    """The converter in a subprocess whose save_pretrained waits after saving; returns it once it waits."""
    site = tmp_path / "site"
    site.mkdir()
    marker = str(tmp_path / "saving")
    (site / "sitecustomize.py").write_text(SLOW_SAVE.format(marker=marker))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, SCRIPT, "--base_model_path", base, "--checkpoint_path", lora_file,
                             "--dump_path", dump_path], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not os.path.exists(marker):
        if proc.poll() is not None:
            pytest.fail(f"the converter ended before saving (status {proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the converter did not reach save_pretrained in 300 s")
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_while_saving_removes_everything_the_run_made(tmp_path, base, lora_file, signum):
    dump_path = str(tmp_path / "made" / "by-run" / "style")
    proc = start_slow_conversion(tmp_path, base, lora_file, dump_path)
    parent = os.path.dirname(dump_path)
    [partial] = partials(parent)  # the save is under way, in its locked temporary folder
    assert os.path.isfile(os.path.join(parent, partial, LOCK_NAME))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: stopped by signal {int(signum)}; nothing was written at {dump_path}"
    # no partial folder, and neither of the folders above it that the run made (beside the test's own files)
    assert sorted(os.listdir(tmp_path)) == ["saving", "site"]


def test_a_killed_run_leaves_its_locked_folder_and_the_next_run_removes_it(tmp_path, base, lora_file, caplog):
    dump_path = str(tmp_path / "out" / "style")
    proc = start_slow_conversion(tmp_path, base, lora_file, dump_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    [left] = partials(tmp_path / "out")
    assert os.path.isfile(tmp_path / "out" / left / LOCK_NAME)

    # A conversion to another folder leaves it alone; the next one to the same folder removes it.
    convert_lora(base, lora_file, str(tmp_path / "out" / "other"))
    assert partials(tmp_path / "out") == [left]
    with caplog.at_level(logging.INFO, logger="ivmixed"):
        convert_lora(base, lora_file, dump_path)
    assert partials(tmp_path / "out") == []
    assert sorted(os.listdir(tmp_path / "out")) == ["other", "style"]
    assert os.path.isfile(os.path.join(dump_path, "unet", "config.json"))
    assert not os.path.exists(os.path.join(dump_path, LOCK_NAME))
    assert any("removed 1 temporary folder(s) named .style.partial-*" in r.getMessage() for r in caplog.records)


def test_a_conversion_in_progress_is_not_swept(tmp_path, base, lora_file):
    with held_temp_folder(prefix=".style.partial-", parent=str(tmp_path)) as live:
        convert_lora(base, lora_file, str(tmp_path / "style"))
        assert os.path.isdir(live)
    assert sorted(os.listdir(tmp_path)) == ["style"]
    os.mkdir(tmp_path / "plain")  # the result gets a new folder's permissions, not the temporary folder's
    assert os.stat(tmp_path / "style").st_mode == os.stat(tmp_path / "plain").st_mode


def run_script_torch_free(args, cwd):
    """The converter with ``args`` in a fresh interpreter: ``(exit status, stderr, heavy modules imported)``."""
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = [{SCRIPT!r}, *{list(args)!r}]\n"
        "code = 0\n"
        "try:\n"
        f"    runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=str(cwd), capture_output=True, text=True, timeout=120)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out["code"], result.stderr, out["heavy"], result.stdout


def test_help_and_bad_arguments_answer_without_torch(tmp_path, lora_file, converted):
    code, err, heavy, out = run_script_torch_free(["--help"], tmp_path)
    assert (code, heavy) == (0, []) and "--base_model_path" in out and "--dump_path" in out

    code, err, heavy, _ = run_script_torch_free(["--base_model_path", "x"], tmp_path)
    assert (code, heavy) == (2, []) and "the following arguments are required: --checkpoint_path" in err

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    missing = str(tmp_path / "no-sd")
    cases = [
        (["--base_model_path", missing, "--checkpoint_path", lora_file, "--dump_path", str(tmp_path / "a")],
         f"error: --base_model_path {missing}: no such folder; give an existing checkpoint folder or a hub id"),
        (["--base_model_path", "org/sd", "--checkpoint_path", str(bad), "--dump_path", str(tmp_path / "a")],
         f"error: {bad} is not a readable .safetensors file (its header is not JSON); download it again or pass "
         "another file"),
        (["--base_model_path", "org/sd", "--checkpoint_path", lora_file, "--dump_path", converted],
         f"error: {converted} already exists; remove it or choose another --dump_path"),
    ]
    for args, message in cases:
        code, err, heavy, _ = run_script_torch_free(args, tmp_path)
        assert (code, heavy, err) == (2, [], message + "\n")
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]


def import_script():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import convert_lora_safetensor_to_diffusers as script
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    return script


def failing_save(monkeypatch):
    """save_pretrained that writes part of the folder, then fails as on a full disk."""
    from diffusers import DiffusionPipeline

    def save_pretrained(self, save_directory, *args, **kwargs):
        os.makedirs(os.path.join(save_directory, "unet"), exist_ok=True)
        with open(os.path.join(save_directory, "unet", "config.json"), "w") as f:
            f.write("{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DiffusionPipeline, "save_pretrained", save_pretrained)


def test_a_failed_conversion_leaves_no_folder_it_created(tmp_path, base, lora_file, monkeypatch, capsys):
    failing_save(monkeypatch)
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError, match="No space left on device"):
        convert_lora(base, lora_file, str(tmp_path / "kept" / "new" / "deeper" / "style"))
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == []

    with pytest.raises(SystemExit) as exit_info:
        import_script().main(["--base_model_path", base, "--checkpoint_path", lora_file,
                              "--dump_path", str(tmp_path / "outputs" / "style")])
    assert exit_info.value.code == "error: [Errno 28] No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["kept"]


def test_a_missing_local_base_model_is_no_such_folder(tmp_path, lora_file, capsys):
    for missing in (str(tmp_path / "models" / "sd15"), "./no-such-sd15", "~/no-such-sd15-folder"):
        with pytest.raises(ModelLoadError) as info:
            convert_lora(missing, lora_file, str(tmp_path / "out"))
        assert str(info.value) == f"base_model_path {missing}: no such folder; give an existing checkpoint folder or a hub id"
        with pytest.raises(SystemExit) as exit_info:
            import_script().main(["--base_model_path", missing, "--checkpoint_path", lora_file,
                                  "--dump_path", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (f"error: --base_model_path {missing}: no such folder; give an existing "
                                           "checkpoint folder or a hub id\n")
    assert os.listdir(tmp_path) == []


# -- the LoRA check before loading --------------------------------------------------------------------------


def bad_files(folder, good):
    """name -> (path, the reason the check must give) for files that are not whole .safetensors files."""
    with open(good, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    body = len(data) - 8 - length
    header = json.loads(data[8:8 + length])
    grown = json.dumps({**header, "extra": {"dtype": "F32", "shape": [4], "data_offsets": [body, body + 12]}})
    contents = {
        "empty": (b"", "0 bytes, too short for a header"),
        "random": (b"\xff" * 8 + b"x" * 100, f"header length {2 ** 64 - 1} does not fit in the file's 108 bytes"),
        "not-json": (struct.pack("<Q", 4) + b"{{{{", "its header is not JSON"),
        "a-list": (struct.pack("<Q", 2) + b"[]", "its header is not a JSON object"),
        "truncated": (data[:-4], f"its tensors take {body} bytes but the file holds {body - 4}; it may be cut short"),
        "bad-entry": (struct.pack("<Q", 15) + b'{"a": {"x": 1}}', "its header entry 'a' is malformed"),
        "wrong-size": (struct.pack("<Q", len(grown)) + grown.encode() + data[8 + length:] + b"\0" * 12,
                       "tensor 'extra' has 12 bytes for shape [4] of F32"),
        "no-tensors": (struct.pack("<Q", 2) + b"{}", "it holds no tensors"),
    }
    out = {}
    for name, (content, reason) in contents.items():
        path = os.path.join(folder, f"{name}.safetensors")
        with open(path, "wb") as f:
            f.write(content)
        out[name] = (path, reason)
    return out


def test_check_lora_reads_only_the_header_and_agrees_with_safetensors(tmp_path, lora_file):
    check_lora_file(lora_file)
    check_lora(lora_file, "video")
    for name, (path, reason) in bad_files(str(tmp_path), lora_file).items():
        message = f"{path} is not a readable .safetensors file ({reason}); download it again or pass another file"
        with pytest.raises(ValueError) as info:
            check_lora_file(path)
        assert str(info.value) == message, name
        with pytest.raises(SettingError) as info:
            check_lora(path, "image")
        assert info.value.render(flag) == f"--lora: {message}", name
        if name != "no-tensors":  # safetensors itself loads an empty table; the check refuses it as no LoRA
            with pytest.raises(Exception):
                load_file(path)


def test_check_lora_refuses_unreadable_files_and_folders_for_the_video_model(tmp_path, lora_file, converted,
                                                                             monkeypatch):
    for target in ("video", "both"):
        with pytest.raises(SettingError) as info:
            check_lora(converted, target)
        assert info.value.render(flag) == (
            f"--lora {converted} is a converted Stable Diffusion folder and can only replace the image model, not "
            f"--lora-target {target}; use --lora-target image, or pass the LoRA's .safetensors file to apply it to "
            "the video model")
    check_lora(converted, "image")
    with pytest.raises(SettingError) as info:
        check_lora(converted, "audio")
    assert info.value.render(flag) == "--lora-target must be one of image, video, both, got 'audio'"
    with pytest.raises(SettingError) as info:
        check_lora(str(tmp_path / "gone.safetensors"))
    assert info.value.render(flag) == f"--lora: LoRA file not found: {tmp_path / 'gone.safetensors'}"

    # Tests run as root, for whom every file is readable: a file this user may not read is simulated.
    import ivmixed.lora_paths as lora_paths

    real_access = os.access
    monkeypatch.setattr(lora_paths.os, "access", lambda p, mode: p != lora_file and real_access(p, mode))
    with pytest.raises(SettingError) as info:
        check_lora(lora_file)
    assert info.value.render(flag) == (f"--lora: cannot read the LoRA file {lora_file} (permission denied); make it "
                                       "readable or pass another file")


@pytest.fixture
def no_loading(monkeypatch):
    import ivmixed.runner

    def load_pipeline(config):
        pytest.fail("a model was loaded for a run that should have been refused before")

    monkeypatch.setattr(ivmixed.runner, "load_pipeline", load_pipeline)


def test_cli_refuses_a_bad_lora_before_loading(tmp_path, converted, capsys, no_loading):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    out = str(tmp_path / "out")
    tiny = ["--tiny", "--prompt", "a cat", "--inference-step", "1", "--num-frames", "2", "--output-dir", out]
    code, err = run_main([*tiny, "--lora", str(bad)], capsys)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (f"ivmixed: error: --lora: {bad} is not a readable .safetensors file (its "
                                            "header is not JSON); download it again or pass another file")
    code, err = run_main([*tiny, "--lora", converted, "--lora-target", "video"], capsys)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        f"ivmixed: error: --lora {converted} is a converted Stable Diffusion folder and can only replace the image "
        "model, not --lora-target video; use --lora-target image, or pass the LoRA's .safetensors file to apply it "
        "to the video model")


# -- from_checkpoints offline -------------------------------------------------------------------------------


def test_from_checkpoints_offline_says_what_the_cli_says(tmp_path, monkeypatch, capfd, caplog):
    from ivmixed import IVMixedAnimateDiffPipeline, IVMixedModelScopePipeline, IVMixedVideoCrafterPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    local = str(tmp_path / "no-such-folder")
    cases = [
        (IVMixedAnimateDiffPipeline, {"video_model": "ivmixed-test/no-base", "motion_adapter": "ivmixed-test/no-adapter",
                                      "image_model": "ivmixed-test/no-sd"},
         [("video model", "video_model"), ("motion adapter", "motion_adapter"), ("image model", "image_model")]),
        (IVMixedModelScopePipeline, {"video_model": "ivmixed-test/no-t2v", "image_model": "ivmixed-test/no-sd"},
         [("video model", "video_model"), ("image model", "image_model")]),
        (IVMixedVideoCrafterPipeline, {"video_model": "ivmixed-test/no-zeroscope", "unet": "ivmixed-test/no-vc2",
                                       "image_model": "ivmixed-test/no-rv"},
         [("video model", "video_model"), ("VideoCrafter2 UNet", "unet"), ("image model", "image_model")]),
    ]
    with caplog.at_level(logging.DEBUG):
        for cls, sources, named in cases:
            with pytest.raises(ModelLoadError) as info:
                cls.from_checkpoints(**sources)
            hints = [(what, sources[key], key) for what, key in named]

            def expected(spell):
                return (f"HF_HUB_OFFLINE is set, and {len(hints)} checkpoint(s) this run needs are not in the local "
                        "cache: " + "; ".join(f"the {what} '{source}' (`hf download {source}` while online, or a local "
                                               f"folder with {spell(key)})" for what, source, key in hints))

            assert str(info.value) == expected(str)
            assert info.value.render(flag) == expected(flag)  # the command line's message
        with pytest.raises(ModelLoadError) as info:
            IVMixedModelScopePipeline.from_checkpoints(video_model=local, image_model="ivmixed-test/no-sd")
        assert info.value.render(flag) == f"--video-model {local}: no such folder; give an existing checkpoint folder or a hub id"
    captured = capfd.readouterr()
    assert "Retrying" not in captured.out + captured.err
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
