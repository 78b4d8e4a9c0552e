"""Input built to hurt, or just broken: text that is not UTF-8, YAML and prompt files made to hang or overflow,
sizes no device can hold, prompts of a million characters. Each is refused with one line and exit status 2
before any model loads, quickly, writing nothing."""

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from runs import files_of, only_record, run_main

import ivmixed.memory as memory_module
import ivmixed.runner as runner_module
from ivmixed.config import ConfigError, build_config
from ivmixed.memory import memory_needed
from ivmixed.outputs import output_set
from ivmixed.prompts import MAX_PROMPT_CHARS, Job, read_prompt_file, slugify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu"]
GIB = 1 << 30


def refusal(err, prog="ivmixed"):
    """The one error line of a refused run (the --tiny notice may come first), checked to be the only one."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("--tiny:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


def cli(args, env=None, timeout=60):
    """inference.py in a new process (args may be bytes), with a timeout so that a hang fails the test."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"), *args], cwd=ROOT, capture_output=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=timeout)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model would load."""
    def refuse(config):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner_module, "load_pipeline", refuse)


@pytest.fixture
def ram_24_gib(monkeypatch):
    """This machine has 24 GiB of RAM (whatever it really has), for deterministic size checks."""
    real = os.sysconf

    def sysconf(name):
        return {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * GIB // 4096}.get(name) or real(name)

    monkeypatch.setattr(os, "sysconf", sysconf)
    monkeypatch.setattr(memory_module, "gpu_driver_present", lambda: False)


# -- text that is not UTF-8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--prompt", "--negative-prompt", "--output-dir", "--prompt-file", "--config"])
def test_undecodable_bytes_in_a_flag_are_refused_under_the_c_locale(tmp_path, flag):
    """A Latin-1 terminal's b"caf\\xe9" reaches Python as a surrogate escape; it used to fail in the file names
    (or after sampling, in the record) with UnicodeEncodeError."""
    value = os.fsencode(tmp_path) + b"/caf\xe9.txt" if flag in ("--output-dir", "--prompt-file", "--config") \
        else b"caf\xe9"
    args = [*TINY, "--output-dir", str(tmp_path / "out"), flag, value]
    if flag not in ("--prompt", "--prompt-file"):
        args += ["--prompt", "a cat"]
    result = cli(args, env={"LC_ALL": "C", "LANG": "C"})
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    line = refusal(err, "inference.py")
    assert f"error: {flag} holds bytes that are not UTF-8 text (byte 0xe9 at character" in line
    assert "give it as UTF-8" in line
    assert os.listdir(tmp_path) == []  # nothing made, inside the output folder or out of it


def test_a_utf8_prompt_works_under_the_c_locale(tmp_path):
    """The same word spelled in UTF-8 is fine without a UTF-8 locale: an ASCII file name, the text in the record."""
    result = cli([*TINY, "--no-standard", "--prompt", "un café".encode(), "--output-dir", str(tmp_path)],
                 env={"LC_ALL": "C", "LANG": "C"}, timeout=600)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    record = only_record(tmp_path)
    assert record["prompt"] == "un café"
    assert all(name.isascii() for name in files_of(tmp_path))
    assert record["files"]["iv_mix"].startswith("un-caf-")


@pytest.mark.parametrize("args,message", [
    (["--prompt", "x\ud800y"],
     "--prompt holds a lone surrogate U+D800 at character 2 ('x\\ud800'), half of a character"),
    (["--prompt", "a cat", "--negative-prompt", "caf\udce9"], "--negative-prompt holds bytes that are not UTF-8 text"),
], ids=["prompt", "negative-prompt"])
def test_surrogates_given_in_process_are_refused(tmp_path, capsys, no_loading, args, message):
    code, err = run_main([*TINY, *args, "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in refusal(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,content,message", [
    ("p.txt", b"a cat\ncaf\xe9\n",
     "p.txt:2: holds bytes that are not UTF-8 text (byte 0xe9); save the prompt file as UTF-8"),
    ("p.csv", b"\xef\xbb\xbfprompt,seed\na cat,1\ncaf\xe9,2\n",
     "p.csv:3: holds bytes that are not UTF-8 text (byte 0xe9)"),
    ("p.jsonl", b'{"prompt": "a cat"}\n{"prompt": "x\\ud800"}\n', "p.jsonl:2: prompt holds a lone surrogate U+D800"),
    ("p.jsonl", b'{"prompt": "a cat", "negative_prompt": "\\udfff"}\n',
     "p.jsonl:1: negative_prompt holds a lone surrogate U+DFFF"),
    ("p.jsonl", b'{"prompt": "a cat", "id": "caf\\udce9"}\n', "p.jsonl:1: id holds bytes that are not UTF-8 text"),
], ids=["latin-1 txt", "latin-1 csv after a byte-order mark", "jsonl prompt", "jsonl negative_prompt", "jsonl id"])
def test_prompt_files_with_text_that_is_not_utf8(tmp_path, capsys, no_loading, name, content, message):
    (tmp_path / name).write_bytes(content)
    code, err = run_main([*TINY, "--prompt-file", str(tmp_path / name), "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in refusal(err)
    assert os.listdir(tmp_path) == [name]


def test_file_names_never_come_from_broken_text():
    """Jobs made by other callers pass the same rule before their files are named; the slug itself never fails."""
    assert slugify("caf\udce9").startswith("caf-") and slugify("caf\udce9").isascii()
    config = build_config({"prompt": "a cat", "tiny": True})
    with pytest.raises(ConfigError, match="x.txt:3: prompt holds bytes that are not UTF-8 text"):
        output_set(config, Job("caf\udce9", 1, where="x.txt:3"), None)
    with pytest.raises(ConfigError, match="id holds a lone surrogate"):
        output_set(config, Job("a cat", 1, id="\ud83d"), None)


# -- files built to hang or overflow --------------------------------------------------------------------------


def _alias_bomb(levels=9):
    lines, previous = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'], "a"
    for name in "bcdefghij"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def _alias_bomb_under_a_key():
    """Every anchor inside the value of a real setting: refusing it used to repr 9**9 strings."""
    parts, previous = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'], "a"
    for name in "bcdefghi":
        parts.append(f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "prompt: [" + ", ".join(parts) + "]\n"


def _merge_bomb():
    lines, previous = ["a: &a {k0: 1, k1: 2, k2: 3, k3: 4, k4: 5, k5: 6, k6: 7, k7: 8, k8: 9}"], "a"
    for name in "bcdefghij":
        lines.append(f"{name}: &{name} {{<<: [" + ", ".join([f"*{previous}"] * 9) + "]}")
        previous = name
    return "\n".join(lines) + "\n"


def _make(tmp_path, kind):
    path = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "oversized":
        with open(path, "wb") as f:
            f.truncate(2 << 20)
    else:
        path.write_text({
            "alias bomb": _alias_bomb(),
            "alias bomb under a key": _alias_bomb_under_a_key(),
            "merge-key bomb": _merge_bomb(),
            "20,000 nested brackets": "prompt: " + "[" * 20000 + "]" * 20000 + "\n",
            "5,000-digit number": "seed: " + "9" * 5000 + "\n",
            "huge hex number": "seed: 0x" + "f" * 2000 + "\n",
            "impossible date": "seed: 2001-13-45\n",
            "60,000 unknown keys": "".join(f"k{n}: 1\n" for n in range(60000)),
        }[kind])
    return str(path)


CONFIG_FILE_REFUSALS = dict([
    ("alias bomb", "repeats a list or mapping by an alias (*name) at line 2; settings do not need them"),
    ("alias bomb under a key", "repeats a list or mapping by an alias (*name) at line 1"),
    ("merge-key bomb", "repeats a list or mapping by an alias (*name) at line 2"),
    ("20,000 nested brackets", "nests too deeply to be settings"),
    ("5,000-digit number", "holds a value YAML cannot read (Exceeds the limit (4300 digits)"),
    ("huge hex number", "--seed must be a whole number in its range, got a number of 8,000 bits"),
    ("impossible date", "holds a value YAML cannot read (month must be in 1..12)"),
    ("60,000 unknown keys", "has unknown key(s) k0, k1, k10, k100, k1000, k10000, k10001, k10002 and 59,992 more;"),
    ("fifo", "is not a regular file (a pipe, socket or device)"),
    ("folder", "is a folder; give a YAML file"),
    ("oversized", "is larger than the 1 MiB a config file may be"),
])


@pytest.mark.parametrize("kind", list(CONFIG_FILE_REFUSALS))
def test_hostile_config_files_are_refused_quickly(tmp_path, kind):
    message = CONFIG_FILE_REFUSALS[kind]
    out = tmp_path / "out"
    path = _make(tmp_path, kind)
    started = time.monotonic()
    result = cli(["--config", path, "--prompt", "a cat", *TINY, "--output-dir", str(out)], timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    line = refusal(err, "inference.py")
    assert message in line and len(line) < 400, line
    assert time.monotonic() - started < 30
    assert not out.exists()


PROMPT_FILE_REFUSALS = dict([
    ("fifo", "prompt file {path} is not a regular file (a pipe, socket or device)"),
    ("folder", "prompt file {path} is a folder; give a file"),
    ("nested jsonl", "{path}:2: the JSON nests too deeply; a row is one flat object"),
    ("5,000-digit seed", "{path}:1: cannot read the row (Exceeds the limit (4300 digits)"),
    ("a 41-digit seed string", "{path}:1: seed must be from 0 to 2**64 - 1, got a 41-digit number"),
    ("oversized", "prompt file {path} is larger than the 64 MiB a prompt file may be"),
    ("csv field over the csv limit", "{path}:3: not a CSV row (field larger than field limit (131072))"),
])


@pytest.mark.parametrize("kind", list(PROMPT_FILE_REFUSALS))
def test_hostile_prompt_files_are_refused_quickly(tmp_path, kind):
    message = PROMPT_FILE_REFUSALS[kind]
    path = tmp_path / ("p.csv" if "csv" in kind else "p.jsonl")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "oversized":
        with open(path, "wb") as f:
            f.truncate(65 << 20)
    else:
        path.write_text({
            "nested jsonl": '{"prompt": "a cat"}\n{"prompt": ' + "[" * 100000 + "]" * 100000 + "}\n",
            "5,000-digit seed": '{"prompt": "a cat", "seed": ' + "9" * 5000 + "}\n",
            "a 41-digit seed string": '{"prompt": "a cat", "seed": "' + "9" * 41 + '"}\n',
            "csv field over the csv limit": 'prompt\na cat\n"' + "a\n" * 70000 + '"\n',
        }[kind])
    out = tmp_path / "out"
    result = cli(["--prompt-file", str(path), *TINY, "--output-dir", str(out)], timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert message.format(path=path) in refusal(err, "inference.py")
    assert not out.exists()


# -- sizes no device can hold ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--num-frames", "100000"], "100000 frames of 64x64 px need at least 30.6 GiB at fp32 (video UNet activations "
                                 "30.5 GiB + latents 0.1 GiB), more than the 24.0 GiB of RAM; lower --num-frames, "
                                 "--height or --width"),
    (["--num-frames", "8", "--height", "100000"], "8 frames of 100000x64 px need at least 48.8 GiB at fp32 (VAE "
                                                  "decoding 48.8 GiB + latents 0.0 GiB), more than the 24.0 GiB of "
                                                  "RAM; decode in tiles with --vae-tiling, or lower --num-frames"),
    (["--num-frames", "64", "--height", "8192", "--width", "8192"], "and far more than any GPU can sample; lower"),
], ids=["100000 frames", "height 100000", "64 frames of 8192x8192"])
def test_sizes_that_cannot_fit_are_refused_before_loading(tmp_path, capsys, no_loading, ram_24_gib, args, message):
    args = ["--tiny", "--prompt", "a cat", "--device", "cpu", *args, "--output-dir", str(tmp_path / "out")]
    code, err = run_main(args, capsys)
    assert code == 2
    assert message in refusal(err)
    assert os.listdir(tmp_path) == []


def test_sizes_people_run_are_not_refused(ram_24_gib, monkeypatch):
    build_config({"prompt": "x", "tiny": True, "device": "cpu"})
    build_config({"prompt": "x", "num_frames": 64, "context_length": 16, "device": "cpu"})  # 64 x 512 x 512 on 24 GiB
    build_config({"prompt": "x", "pipeline": "ModelScope", "num_frames": 64, "height": 320, "width": 576})
    # a 24 GB GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=24 * 10**9))
    build_config({"prompt": "x", "device": "cuda"})  # 16 x 512 x 512 AnimateDiff
    build_config({"prompt": "x", "device": "cuda", "num_frames": 32, "height": 768, "width": 768})
    with pytest.raises(ConfigError) as info:
        build_config({"prompt": "x", "device": "cuda:0", "num_frames": 3000})
    assert info.value.render(lambda name: "--" + name.replace("_", "-")) == (
        "3000 frames of 512x512 px need at least 29.4 GiB at fp16 (video UNet activations 29.3 GiB + latents 0.1 GiB), "
        "more than the 22.4 GiB of GPU memory of cuda:0; lower --num-frames, --height or --width")


def test_the_estimate_counts_what_it_says():
    config = build_config({"prompt": "x"})  # 16 frames of 512x512, guidance 7.5, AnimateDiff
    assert memory_needed(config, 2) == {
        "latents": 16 * 4 * 64 * 64 * 2,
        "video UNet activations": 2 * 2 * 16 * 320 * 64 * 64 * 2,
        "VAE decoding": 2 * 16 * 128 * 512 * 512 * 2,
        "decoded video": 16 * 3 * 512 * 512 * 4,
    }
    long = build_config({"prompt": "x", "num_frames": 64, "guidance_scale": 1.0, "vae_slicing": True})
    parts = memory_needed(long, 4)
    assert parts["video UNet activations"] == 2 * 1 * 64 * 320 * 64 * 64 * 4  # no guidance: one half
    assert parts["VAE decoding"] == 2 * 1 * 128 * 512 * 512 * 4  # one frame at a time
    assert memory_needed(build_config({"prompt": "x", "vae_tiling": True}), 2)["VAE decoding"] == 0
    modelscope = build_config({"prompt": "x", "pipeline": "ModelScope", "num_frames": 40})
    assert memory_needed(modelscope, 2)["VAE decoding"] == 2 * 40 * 128 * 256 * 256 * 2  # all frames at once


def test_the_size_check_leaves_torch_unloaded_without_a_cuda_device():
    if memory_module.gpu_driver_present():
        pytest.skip("this machine has a GPU driver: a run without --device may be on CUDA")
    code = ("import sys\nfrom ivmixed.config import ConfigError, build_config\n"
            "try:\n    build_config({'prompt': 'x', 'num_frames': 10**6})\nexcept ConfigError as exc:\n"
            "    print('refused', 'GiB of RAM' in str(exc), 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["refused", "True", "False"], result.stderr


# -- prompts of a million characters ---------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--prompt", "a" * 1_000_000], "--prompt is 1,000,000 characters long, more than the 5,000 a prompt may have"),
    (["--prompt", "a cat", "--negative-prompt", "b" * 6000], "--negative-prompt is 6,000 characters long"),
], ids=["prompt", "negative-prompt"])
def test_overlong_prompts_are_refused_before_loading(tmp_path, capsys, no_loading, args, message):
    code, err = run_main([*TINY, *args, "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    line = refusal(err)
    assert message in line and "CLIP reads the first 77 tokens" in line and len(line) < 300
    assert os.listdir(tmp_path) == []


def test_a_prompt_at_the_limit_makes_its_side_by_side(tmp_path, capsys):
    """The limit sits below what the contact sheet's caption can hold: the longest prompt allowed gets every file."""
    prompt = " ".join(["word"] * 1000)[:MAX_PROMPT_CHARS]
    code, err = run_main([*TINY, "--side-by-side", "--prompt", prompt, "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    record = only_record(tmp_path)
    assert record["prompt"] == prompt and set(record["files"]) == {"iv_mix", "standard", "side_by_side",
                                                                   "contact_sheet", "record"}


def test_a_prompt_at_the_limit_is_accepted(tmp_path):
    assert build_config({"prompt": "a" * MAX_PROMPT_CHARS}).prompt == "a" * MAX_PROMPT_CHARS
    path = tmp_path / "p.txt"
    path.write_text("b" * MAX_PROMPT_CHARS + "\n")
    assert read_prompt_file(str(path), 1)[0].prompt == "b" * MAX_PROMPT_CHARS


@pytest.mark.parametrize("name,content,message", [
    ("p.txt", "a cat\n" + "a" * 6000 + "\n", "p.txt:2: prompt is 6,000 characters long"),
    ("p.jsonl", json.dumps({"prompt": "a cat", "negative_prompt": "n" * 7000}) + "\n",
     "p.jsonl:1: negative_prompt is 7,000 characters long"),
    ("p.csv", "prompt,id\na cat,cat\n" + "a dog," + "i" * 5001 + "\n",
     "p.csv:3: id is 5,001 characters long, more than the 5,000 an id may have (ids name files)"),
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "' + "x" * 50_000_000 + '"}\n',
     "p.jsonl:2: the line is 50,000,015 characters long, more than the 1,048,576 a prompt file's line may be"),
], ids=["txt prompt", "jsonl negative_prompt", "csv id", "a 50 MB line"])
def test_overlong_prompt_file_rows_are_refused_with_their_line(tmp_path, capsys, no_loading, name, content, message):
    (tmp_path / name).write_text(content)
    started = time.monotonic()
    code, err = run_main([*TINY, "--prompt-file", str(tmp_path / name), "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    line = refusal(err)
    assert message in line and len(line) < 400
    assert time.monotonic() - started < 20  # a 50 MB line never reaches the JSON parser or the tokenizer
    assert os.listdir(tmp_path) == [name]
