"""Several prompts in one pipeline call (``batch_size``): every video equals its own unbatched call, while files,
records, manifest lines and resume stay per prompt, and a stop in the middle of a batch records none of it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from runs import manifest_lines, records, run_main

import ivmixed.memory as memory_module
from ivmixed import export
from ivmixed.config import build_config
from ivmixed.errors import SettingError
from ivmixed.memory import memory_needed
from ivmixed.pipelines.common import IVMixedSamplingMixin
from ivmixed.runner import Runner, RunStopped
from ivmixed.testing import tiny_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu"]
PROMPTS = ["a red car", "a blue sky", "a green tree"]
SEEDS = [1, 7, 3]
NEGATIVES = [None, "blurry, low quality", None]
CALL = dict(num_frames=3, num_inference_steps=3, guidance_scale=7.5, zz=2)  # zz 2: both models zigzag
ATOL = 1e-5  # float32 frames in [0, 1]; batched and separate calls differ by a few 1e-6 here


def flag(name):
    return "--" + name.replace("_", "-")


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.fixture(scope="module", params=["Animatediff", "ModelScope", "VideoCrafter"])
def pipe(request):
    return tiny_pipeline(request.param)


# -- the pipelines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_batch_size", [None, 2])
def test_a_batched_call_gives_every_prompt_its_own_video(pipe, image_batch_size):
    """Three prompts with their own seeds (one with a negative prompt) in one call: each video equals its own call.
    image_batch_size 2 cuts the image model's (b f) rows across the videos' boundaries."""
    if type(pipe).__name__ == "IVMixedVideoCrafterPipeline":  # a stochastic main step: noise from the generators
        assert pipe.scheduler.config.algorithm_type == "sde-dpmsolver++"
    options = dict(CALL, output_type="np", image_batch_size=image_batch_size)
    alone = [pipe(prompt=p, negative_prompt=n, generator=torch.Generator().manual_seed(s), **options)
             for p, n, s in zip(PROMPTS, NEGATIVES, SEEDS)]
    together = pipe(prompt=PROMPTS, negative_prompt=NEGATIVES, generator=generators(SEEDS), **options)
    assert together.frames.shape == (3, *alone[0].frames.shape[1:])
    for n, out in enumerate(alone):
        assert together.network_calls == out.network_calls
        assert out.network_calls["image"] > 0  # the image model took part
        assert np.allclose(together.frames[n], out.frames[0], atol=ATOL, rtol=0), \
            max_diff(together.frames[n], out.frames[0])
    # the comparison can tell videos apart: every prompt's video differs from the others'
    assert max_diff(together.frames[0], together.frames[1]) > 100 * ATOL
    assert max_diff(together.frames[0], together.frames[2]) > 100 * ATOL


def test_a_batched_standard_call_matches_too(pipe):
    options = dict(CALL, output_type="latent", iv_mixed=False)
    alone = [pipe(prompt=p, negative_prompt=n, generator=torch.Generator().manual_seed(s), **options).frames
             for p, n, s in zip(PROMPTS[:2], NEGATIVES[:2], SEEDS[:2])]
    together = pipe(prompt=PROMPTS[:2], negative_prompt=NEGATIVES[:2], generator=generators(SEEDS[:2]), **options)
    for n, latents in enumerate(alone):
        assert torch.allclose(together.frames[n], latents[0], atol=1e-4, rtol=0)


def test_negative_prompts_of_a_batch_none_is_empty_and_one_text_is_for_all(animatediff_pipe):
    options = dict(CALL, num_inference_steps=2, output_type="latent")

    def latents(negative):
        return animatediff_pipe(prompt=PROMPTS[:2], negative_prompt=negative, generator=generators(SEEDS[:2]),
                                **options).frames

    assert torch.equal(latents([None, "blurry"]), latents(["", "blurry"]))
    assert torch.equal(latents(None), latents(["", ""]))
    assert torch.equal(latents("blurry"), latents(["blurry", "blurry"]))
    assert not torch.allclose(latents(["", "blurry"]), latents(["", ""]))


@pytest.mark.parametrize("name", ["Animatediff", "ModelScope"])
def test_reference_compat_batches_where_the_main_step_is_whole_videos(name):
    pipe = tiny_pipeline(name)
    options = dict(CALL, output_type="np", reference_compat=True)
    alone = [pipe(prompt=p, negative_prompt=n, generator=torch.Generator().manual_seed(s), **options).frames[0]
             for p, n, s in zip(PROMPTS[:2], NEGATIVES[:2], SEEDS[:2])]
    together = pipe(prompt=PROMPTS[:2], negative_prompt=NEGATIVES[:2], generator=generators(SEEDS[:2]), **options)
    for n, frames in enumerate(alone):
        assert np.allclose(together.frames[n], frames, atol=ATOL, rtol=0)


def test_videocrafter_reference_compat_takes_one_generator():
    """Its main step runs on per-frame latents, where a list of generators cannot place each video's noise."""
    pipe = tiny_pipeline("VideoCrafter")
    with pytest.raises(ValueError, match="per-frame latents.*one video per call"):
        pipe(prompt=PROMPTS[:2], generator=generators(SEEDS[:2]), reference_compat=True, **CALL)


# -- the runner: batches, files, records, resume --------------------------------------------------------------


def count_pipeline_calls(monkeypatch):
    """Every pipeline call as ``(video kind, its prompts)``, keeping the real sampling."""
    calls = []
    real = IVMixedSamplingMixin._generate

    def generate(self, **kwargs):
        prompt = kwargs["prompt"]
        calls.append(("standard" if kwargs["settings"] is None else "iv_mix",
                      list(prompt) if isinstance(prompt, list) else [prompt]))
        return real(self, **kwargs)

    monkeypatch.setattr(IVMixedSamplingMixin, "_generate", generate)
    return calls


def capture_videos(monkeypatch):
    """The frames of every video written, by file name."""
    written = {}
    real = export.write_video

    def write_video(frames, path, fps):
        written[os.path.basename(path)] = np.array(frames, copy=True)
        return real(frames, path, fps)

    monkeypatch.setattr(export, "write_video", write_video)
    return written


def prompt_file(tmp_path, prompts=PROMPTS):
    path = tmp_path / "prompts.jsonl"
    lines = [{"prompt": p, "seed": s, **({"negative_prompt": n} if n else {})}
             for p, s, n in zip(prompts, SEEDS * 3, NEGATIVES * 3)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_a_batched_run_makes_each_prompt_as_an_unbatched_run(tmp_path, capsys, monkeypatch):
    calls, written = count_pipeline_calls(monkeypatch), capture_videos(monkeypatch)
    prompts = prompt_file(tmp_path)
    batched, unbatched = tmp_path / "batched", tmp_path / "unbatched"
    code, err = run_main([*TINY, "--prompt-file", prompts, "--output-dir", str(batched), "--batch-size", "2"], capsys)
    assert code == 0, err
    assert "prompts 1-2/3: sampled together" in err
    # ceil(3 / 2) = 2 pipeline calls per video kind
    assert calls == [("iv_mix", PROMPTS[:2]), ("standard", PROMPTS[:2]), ("iv_mix", PROMPTS[2:]),
                     ("standard", PROMPTS[2:])]
    lines = manifest_lines(batched)
    assert [line["prompt"] for line in lines] == PROMPTS and len({line["id"] for line in lines}) == 3
    made = dict(written)
    for line in lines:
        videos = {line["files"]["iv_mix"], line["files"]["standard"]}
        assert len(videos) == 2 and videos <= set(made)
        for name in videos:
            assert export.read_video(str(batched / name)).shape[0] == 2  # the files decode, two frames each
    assert [r["batch_size"] for r in records(batched)] == ([{"iv_mix": 2, "standard": 2}] * 2
                                                           + [{"iv_mix": 1, "standard": 1}])
    assert all(r["network_calls"] == r["expected_network_calls"] for r in records(batched))

    # another batch size finds every prompt finished: the batch size is no part of a fingerprint
    del calls[:]
    code, err = run_main([*TINY, "--prompt-file", prompts, "--output-dir", str(batched), "--batch-size", "1"], capsys)
    assert code == 0 and "3 already finished" in err and calls == [] and len(manifest_lines(batched)) == 3

    # one prompt per call writes the same files, with the same frames
    written.clear()
    code, err = run_main([*TINY, "--prompt-file", prompts, "--output-dir", str(unbatched)], capsys)
    assert code == 0, err
    assert [len(p) for _, p in calls] == [1] * 6
    assert sorted(written) == sorted(made)
    for name, frames in made.items():
        assert np.allclose(frames, written[name], atol=ATOL, rtol=0), (name, max_diff(frames, written[name]))


def test_each_kind_is_sampled_once_for_the_prompts_of_a_batch_that_need_it(tmp_path, capsys, monkeypatch):
    """The first two prompts' standard videos are shared with an earlier IV-mixed setting: only the third needs one."""
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--prompt-file", prompt_file(tmp_path, PROMPTS[:2]), "--output-dir", str(out),
                          "--batch-size", "2"], capsys)
    assert code == 0, err
    calls = count_pipeline_calls(monkeypatch)
    code, err = run_main([*TINY, "--prompt-file", prompt_file(tmp_path), "--output-dir", str(out), "--batch-size", "3",
                          "--side-by-side", "--i-sigma-begin", "2"], capsys)
    assert code == 0, err
    assert calls == [("iv_mix", PROMPTS), ("standard", PROMPTS[2:])]
    latest = records(out)[2:]
    assert [r["prompt"] for r in latest] == PROMPTS
    assert [r["batch_size"] for r in latest] == [{"iv_mix": 3, "standard": 2}] * 2 + [{"iv_mix": 3, "standard": 1}]
    for record in latest:
        assert (out / record["files"]["side_by_side"]).is_file()


@pytest.mark.parametrize("stop_at,recorded", [(3, 0), (5, 2)])
def test_a_stop_in_a_batch_records_none_of_it_and_a_rerun_makes_it(tmp_path, monkeypatch, stop_at, recorded):
    """Steps are observed 2 per video: step 3 is the first batch's standard video, step 5 the second batch's
    IV-mixed one."""
    config = build_config({"prompt_file": prompt_file(tmp_path), "output_dir": str(tmp_path / "out"), "tiny": True,
                           "inference_step": 2, "num_frames": 2, "device": "cpu", "batch_size": 2})
    steps = []
    stopper = Runner(config, on_step=lambda kind, i, total: steps.append(kind),
                     should_stop=lambda: len(steps) >= stop_at, progress_bars=False)
    with pytest.raises(RunStopped):
        stopper.run()
    lines = manifest_lines(tmp_path / "out") if os.path.exists(tmp_path / "out" / "manifest.jsonl") else []
    assert [line["prompt"] for line in lines] == PROMPTS[:recorded]
    if recorded == 0:  # the batch's IV-mixed videos were written, yet nothing lists them
        assert len([n for n in os.listdir(tmp_path / "out") if n.endswith("_iv_mix.mp4")]) == 2
    calls = count_pipeline_calls(monkeypatch)
    report = Runner(config, progress_bars=False).run()
    assert report.skipped == recorded and [r["prompt"] for r in report.made] == PROMPTS[recorded:]
    assert [p for _, p in calls] == ([PROMPTS[:2]] * 2 if recorded == 0 else []) + [PROMPTS[2:]] * 2
    assert sorted(line["prompt"] for line in manifest_lines(tmp_path / "out")) == sorted(PROMPTS)


def runner_for(tmp_path, prompts, **settings):
    path = tmp_path / f"prompts-{len(list(tmp_path.glob('*.txt')))}.txt"
    path.write_text("".join(p + "\n" for p in prompts))
    config = build_config({"prompt_file": str(path), "output_dir": str(tmp_path / "out"), "tiny": True,
                           "inference_step": 2, "num_frames": 2, "device": "cpu", **settings})
    return Runner(config, progress_bars=False)


def batch_prompts(runner):
    return [[item.outputs.job.prompt for item in group] for group in runner.batches(runner.plan().todo)]


def test_batches_are_consecutive_and_a_prompt_schedule_goes_alone(tmp_path):
    plain = [f"prompt {i}" for i in range(5)]
    assert batch_prompts(runner_for(tmp_path, plain, batch_size=3)) == [plain[:3], plain[3:]]
    assert batch_prompts(runner_for(tmp_path, plain)) == [[p] for p in plain]
    schedule = "0: a cat | 1: a dog"
    mixed = ["a", schedule, "b", "c", "d"]
    assert batch_prompts(runner_for(tmp_path, mixed, batch_size=2)) == [["a"], [schedule], ["b", "c"], ["d"]]


def test_context_windows_sample_one_prompt_per_call(tmp_path):
    runner = runner_for(tmp_path, ["a", "b", "c"], batch_size=3, context_length=2)
    assert runner.context is not None
    assert batch_prompts(runner) == [["a"], ["b"], ["c"]]


# -- memory ----------------------------------------------------------------------------------------------------


def test_the_memory_estimate_scales_with_the_videos_of_a_call():
    config = build_config({"prompt": "x"})  # 16 frames of 512x512, AnimateDiff decodes 16 frames at a time
    one, three = memory_needed(config, 2), memory_needed(config, 2, batch=3)
    for part in ("latents", "video UNet activations", "decoded video"):
        assert three[part] == 3 * one[part]
    assert three["VAE decoding"] == one["VAE decoding"]  # the decoder's chunk, whatever the batch
    modelscope = build_config({"prompt": "x", "pipeline": "ModelScope", "num_frames": 8})
    assert memory_needed(modelscope, 2, batch=2)["VAE decoding"] == 2 * memory_needed(modelscope, 2)["VAE decoding"]


def test_a_batch_that_cannot_fit_is_refused_before_loading(tmp_path, monkeypatch):
    runner = runner_for(tmp_path, ["a", "b", "c"], batch_size=2)
    parts = memory_needed(runner.config, 4)
    one = parts.pop("latents") + max(parts.values())
    monkeypatch.setattr(memory_module, "device_memory", lambda device: ("RAM", int(1.5 * one), False))
    assert runner_for(tmp_path, ["a"], batch_size=2).plan().todo  # one prompt: one video per call fits
    with pytest.raises(SettingError) as info:
        runner.plan()
    message = info.value.render(flag)
    assert message.startswith("2 videos of 2 frames of 64x64 px need") and "lower --batch-size" in message


# -- several processes ---------------------------------------------------------------------------------------


def test_two_processes_batch_within_their_share(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(5)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "inference.py", *TINY,
           "--no-standard", "--prompt-file", str(prompts), "--output-dir", str(out), "--batch-size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    made = {r["prompt"]: r["batch_size"]["iv_mix"] for r in records(out)}
    # process 0 makes prompts 0, 2, 4 (a batch of two, then one), process 1 prompts 1 and 3 (one batch)
    assert made == {"prompt 0": 2, "prompt 2": 2, "prompt 4": 1, "prompt 1": 2, "prompt 3": 2}
    assert len(manifest_lines(out)) == 5


def test_batches_are_refused_with_videocrafter_reference_compat_before_loading(tmp_path):
    from ivmixed.config import ConfigError, build_config, check

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    with pytest.raises(ConfigError, match="per-frame latents"):
        check(build_config({"pipeline": "VideoCrafter", "prompt_file": str(prompts), "reference_compat": True,
                            "batch_size": 2, "tiny": True, "device": "cpu"}))
