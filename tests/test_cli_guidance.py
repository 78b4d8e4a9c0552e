"""The command line guides a user who mistypes: flags it does not know get the nearest real ones, the names other
tools use are accepted, and a flag that would have no effect is refused or reported, once."""

import logging
import os

import pytest

from ivmixed.cli import CLI_ONLY, build_parser, main
from ivmixed.config import ALIASES, SETTINGS, SettingWarning, build_config, build_config_with_layers, check, \
    load_yaml_config
from ivmixed.registry import PIPELINES
from ivmixed.settings import ReferenceCompat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The presets of the pipelines, one each (configs/ also holds presets of other models)
PIPELINE_PRESETS = [f"{name.lower()}.yaml" for name in PIPELINES]
TINY = ["--tiny", "--prompt", "a cat", "--inference-step", "1", "--num-frames", "2", "--device", "cpu",
        "--no-standard"]


def usage_error(argv, capsys):
    """The exit status and the stderr lines of a command line argparse refuses."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def refused(argv, capsys, monkeypatch):
    """The one error line of a command line refused before any model loads."""
    import ivmixed.runner

    def no_loading(config):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ivmixed.runner, "load_pipeline", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def config_of(argv):
    """The run configuration a command line gives, without running it."""
    args = vars(build_parser().parse_args(argv))
    return build_config({k: v for k, v in args.items() if k not in CLI_ONLY})


# -- did you mean ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typed,message", [
    (["--promt", "a cat"], "unrecognized argument --promt; did you mean --prompt?"),
    (["--inference-steps", "20"], "unrecognized argument --inference-steps; did you mean --inference-step?"),
    (["--negative", "blurry"], "unrecognized argument --negative; did you mean --negative-prompt?"),
    (["--guidance", "7"], "unrecognized argument --guidance; did you mean --guidance-scale?"),
    (["--image_modle", "x"], "unrecognized argument --image_modle; did you mean --image-model?"),
    (["--outputdir=x"], "unrecognized argument --outputdir; did you mean --output-dir?"),
    (["-prompt", "a cat"], "unrecognized argument -prompt; did you mean --prompt?"),
    (["--interval", "3"], "unrecognized argument --interval; did you mean --interval-begin or --interval-end?"),
    (["--xyzzy"], "unrecognized argument --xyzzy"),
])
def test_a_mistyped_flag_names_the_nearest_flags(capsys, typed, message):
    code, lines = usage_error(typed, capsys)
    assert code == 2
    assert len(lines) == 2 and lines[0].startswith("usage: ") and lines[0].endswith("(--help lists them)")
    assert lines[1] == f"ivmixed: error: {message}"


def test_several_mistyped_flags_are_named_on_one_line(capsys):
    code, lines = usage_error(["--promt", "a cat", "--seeed", "3"], capsys)
    assert code == 2 and len(lines) == 2
    assert lines[1] == ("ivmixed: error: unrecognized arguments --promt (did you mean --prompt?), --seeed (did you "
                        "mean --seed?)")


def test_a_stray_value_says_how_values_are_given(capsys):
    code, lines = usage_error(["--prompt", "a", "cat"], capsys)
    assert code == 2 and len(lines) == 2
    assert lines[1] == ("ivmixed: error: unrecognized argument 'cat'; a value goes right after its flag, in quotes "
                        "when it has spaces (--prompt \"a red car\")")


def test_argparse_own_errors_are_unchanged(capsys):
    code, lines = usage_error(["--prompt", "x", "--zz", "many"], capsys)
    assert code == 2 and lines[1] == "ivmixed: error: argument --zz: invalid int value: 'many'"


# -- aliases -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["--num-inference-steps", "--num_inference_steps", "--steps"])
def test_step_aliases_give_the_same_config_as_the_flag(alias):
    assert config_of(["--prompt", "x", alias, "7"]) == config_of(["--prompt", "x", "--inference-step", "7"])
    assert config_of(["--prompt", "x", alias, "7"]).inference_step == 7


def test_aliases_are_owned_by_their_setting_and_listed_in_help(capsys):
    assert ALIASES == {"num_inference_steps": "inference_step", "steps": "inference_step"}
    assert SETTINGS["inference_step"].aliases == ("num_inference_steps", "steps")
    assert not set(ALIASES) & set(SETTINGS)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--inference-step N, --inference_step N, --num-inference-steps N, --num_inference_steps N, --steps N" \
        in help_text


def test_negative_is_not_an_alias(capsys):
    code, lines = usage_error(["--prompt", "x", "--negative", "blurry"], capsys)
    assert code == 2 and lines[1].endswith("did you mean --negative-prompt?")


# -- flags that would do nothing ---------------------------------------------------------------------------


def test_lora_scale_without_a_lora_is_refused(capsys, monkeypatch):
    line = refused(["--prompt", "a cat", "--lora-scale", "0.5"], capsys, monkeypatch)
    assert line == ("ivmixed: error: --lora-scale is the strength of a --lora, and no --lora is given; give one or "
                    "drop --lora-scale")
    line = refused([*TINY, "--lora_scale", "0.5"], capsys, monkeypatch)
    assert "--lora-scale is the strength of a --lora" in line


def test_lora_scale_without_a_lora_is_refused_by_the_library_too():
    with pytest.raises(ValueError) as info:
        build_config({"prompt": "x", "lora_scale": 0.5})
    assert str(info.value) == "lora_scale is the strength of a lora, and no lora is given; give one or drop lora_scale"


def warning_lines(err):
    return [line for line in err.splitlines() if ": warning: " in line]


def test_a_checkpoint_with_tiny_is_reported_once(tmp_path, capsys):
    assert main([*TINY, "--image-model", "someone/sd-finetune", "--output-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert warning_lines(err) == [
        "ivmixed: warning: --image-model is not loaded: --tiny uses random tiny models instead"]


def test_several_checkpoints_with_tiny_are_one_warning():
    _, layers = build_config_with_layers({"prompt": "x", "tiny": True, "video_model": "a/video",
                                          "motion_adapter": "a/adapter", "image_model": "an/image"})
    assert [str(w) for w in layers.warnings] == [
        "video_model and motion_adapter and image_model are not loaded: tiny uses random tiny models instead"]
    _, layers = build_config_with_layers({"prompt": "x", "tiny": True, "pipeline": "VideoCrafter", "unet": "a/unet"})
    assert [str(w) for w in layers.warnings] == ["unet is not loaded: tiny uses random tiny models instead"]


@pytest.mark.parametrize("name", PIPELINE_PRESETS)
def test_a_preset_spelling_out_the_default_checkpoints_stays_quiet_with_tiny(name):
    preset = load_yaml_config(os.path.join(ROOT, "configs", name))
    _, layers = build_config_with_layers({"prompt": "x", "tiny": True}, preset)
    assert layers.warnings == ()


def test_zz_ignored_by_reference_compat_is_reported_once(tmp_path, capsys):
    argv = [*TINY, "--pipeline", "ModelScope", "--reference-compat", "--zz", "3", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert warning_lines(err) == ["ivmixed: warning: --zz 3 is ignored with --reference-compat on ModelScope: the "
                                  "published code moved with the image model on every zigzag step"]


@pytest.mark.parametrize("given,warned", [
    ({"pipeline": "ModelScope", "reference_compat": True, "zz": 1}, True),
    ({"pipeline": "ModelScope", "reference_compat": True}, False),  # the preset's zz, nothing given
    ({"pipeline": "ModelScope", "zz": 1}, False),  # without reference_compat zz counts
    ({"pipeline": "Animatediff", "reference_compat": True, "zz": 1}, False),  # its published code has zz
    ({"pipeline": "VideoCrafter", "reference_compat": True, "zz": 5}, False),
])
def test_only_knobs_the_published_code_ignores_are_reported(given, warned):
    _, layers = build_config_with_layers({"prompt": "x", **given})
    assert len(layers.warnings) == int(warned)


def test_lora_target_without_a_lora_is_reported_once(tmp_path, capsys):
    assert main([*TINY, "--lora-target", "both", "--output-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert warning_lines(err) == ["ivmixed: warning: --lora-target both does nothing without a --lora"]


def test_a_plain_run_has_no_warnings(tmp_path, capsys):
    assert main([*TINY, "--output-dir", str(tmp_path)]) == 0
    assert warning_lines(capsys.readouterr().err) == []


def test_the_library_returns_its_warnings_and_logs_none(caplog):
    with caplog.at_level(logging.DEBUG, logger="ivmixed"):
        config, layers = build_config_with_layers({"prompt": "x", "tiny": True, "image_model": "an/image"})
    assert caplog.records == []
    (warning,) = layers.warnings
    assert isinstance(warning, SettingWarning) and isinstance(warning, UserWarning)
    assert warning.render(lambda name: f"<{name}>") == (
        "<image_model> is not loaded: <tiny> uses random tiny models instead")
    # what a sweep's cell check returns (and may ignore)
    assert [w.template for w in check(config)] == [
        "{image_model} is not loaded: {tiny} uses random tiny models instead"]
    assert check(build_config({"prompt": "x"})) == ()


def test_the_plain_data_deviations_are_the_pipelines_own():
    for name, spec in PIPELINES.items():
        assert spec.pipeline_class().reference_compat_options == spec.reference_compat, name
    assert PIPELINES["ModelScope"].reference_compat.ignored_knobs() == {
        "zz": "the published code moved with the image model on every zigzag step"}
    assert ReferenceCompat().ignored_knobs() == {}
