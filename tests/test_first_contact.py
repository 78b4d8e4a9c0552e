"""What a new user meets first: start-up, quiet output, the terminal, contact sheets and counts."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ivmixed.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu", "--no-standard"]


def python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_import_is_instant_and_silent():
    result = python("import sys, ivmixed; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    assert result.returncode == 0 and result.stdout.strip() == "[]" and result.stderr == ""


def test_loading_the_library_prints_nothing():
    result = python("import ivmixed, ivmixed.lora; pipe = ivmixed.tiny_pipeline('modelscope'); "
                    "out = pipe('a cat', num_frames=2, num_inference_steps=2, output_type='np'); "
                    "print(out.network_calls)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'video': 6, 'image': 4}" and result.stderr == ""


def test_a_rerun_with_nothing_to_do_does_not_import_diffusers(tmp_path):
    out = str(tmp_path / "out")
    args = [*TINY, "--prompt", "a cat", "--output-dir", out]
    assert main(args) == 0
    result = python(f"import sys; from ivmixed.cli import main; code = main({args!r}); "
                    "print(code, 'diffusers' in sys.modules, 'transformers' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 False False"
    assert "1 already finished" in result.stderr


def test_ctrl_c_while_starting_is_one_line():
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def slow(name, *a, **k):\n"
            "    if name == 'cli' or name.endswith('.cli'):\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = slow\n"
            "from ivmixed.entry import main\n"
            "sys.exit(main())\n")
    result = python(code)
    assert result.returncode == 130
    assert result.stderr.strip() == "interrupted while starting; nothing was made"


def test_done_counts_what_this_run_made(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\na blue sky\n")
    out = str(tmp_path / "out")
    assert main([*TINY, "--prompt-file", str(prompts), "--output-dir", out]) == 0
    assert "done: 2 prompt(s) made in this run, 0 already finished" in capsys.readouterr().err
    prompts.write_text("a red car\na blue sky\na green tree\n")
    assert main([*TINY, "--prompt-file", str(prompts), "--output-dir", out]) == 0
    err = capsys.readouterr().err
    assert "3 prompt(s): 2 already finished" in err and "done: 1 prompt(s) made in this run, 2 already finished" in err


def test_log_lines_go_above_progress_bars(tmp_path, capsys):
    """Every log line goes through tqdm.write, so a bar in progress is redrawn below it, not garbled."""
    import tqdm

    written = []
    real = tqdm.tqdm.write

    def spy(message, *args, **kwargs):
        written.append(message)
        return real(message, *args, **kwargs)

    tqdm.tqdm.write = spy
    try:
        assert main([*TINY, "--prompt", "a cat", "--output-dir", str(tmp_path)]) == 0
    finally:
        tqdm.tqdm.write = real
    assert any(m.startswith("wrote ") for m in written) and any(m.startswith("done: ") for m in written)


@pytest.mark.parametrize("size", [64, 512])
def test_contact_sheet_labels_scale_and_frames_have_gaps(size):
    from ivmixed.compare import contact_sheet, font_for

    frames = np.zeros((4, size, size, 3), dtype=np.uint8)
    sheet = contact_sheet(frames, frames, caption="a cat | seed 1 | zz 3")
    assert font_for(size).size == max(10, size // 20)
    assert sheet.shape[1] > 4 * size and sheet.shape[0] > 2 * size  # gaps, labels and a caption around the frames
    white_columns = np.where((sheet == 255).all(axis=(0, 2)))[0]
    assert len(white_columns) >= 3 * max(2, size // 32)  # the gaps between the four frames are blank


def test_bad_values_and_help_answer_without_importing_torch():
    result = python("import sys\nfrom ivmixed.cli import main\n"
                    "for args in (['--prompt', 'x', '--zz', '0'], ['--help']):\n"
                    "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
                    "print('torch' in sys.modules)")
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert "--zz must be at least 1, got 0" in result.stderr


def test_verbose_lets_the_libraries_speak():
    """`import ivmixed` keeps diffusers and transformers to errors; --verbose (set_verbose) gives their notes back."""
    import logging

    import diffusers
    import transformers

    from ivmixed.runtime import quiet_libraries

    try:
        quiet_libraries(verbose=True)
        assert [lib.utils.logging.get_verbosity() for lib in (diffusers, transformers)] == [logging.INFO] * 2
        assert diffusers.utils.logging.is_progress_bar_enabled() and transformers.utils.logging.is_progress_bar_enabled()
    finally:
        quiet_libraries(verbose=False)
    assert [lib.utils.logging.get_verbosity() for lib in (diffusers, transformers)] == [logging.ERROR] * 2
