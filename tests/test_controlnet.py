"""ControlNet under IV-mixed sampling: stock parity for one and two ControlNets, the residuals every image-UNet call
gets (recomputed here from that call's own input), the counts, the algorithm, and the command line."""

import struct
import zlib

import imageio.v3 as iio
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AnimateDiffControlNetPipeline
from runs import files_of, only_record, reference_zigzag_run, run_main, stock_pipeline

from ivmixed import count_network_calls
from ivmixed.pipelines.control import controlnet_of
from ivmixed.sampler import IVMixedSettings
from ivmixed.testing import save_tiny_controlnet, tiny_controlnet, tiny_pipeline

FRAMES, SIZE = 3, 64


@pytest.fixture(scope="module")
def pipe_and_nets():
    pipe = tiny_pipeline("Animatediff")
    return pipe, [tiny_controlnet(seed=s, unet=pipe.image_unet) for s in (1, 2)]


def control_frames(seed=0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(FRAMES)]


def noise(seed=0):
    return torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def with_nets(pipe, nets):
    pipe.register_modules(controlnet=controlnet_of(list(nets)))
    return pipe


def control_tensor(frames, halves=2):
    """The control images as diffusers prepares them: [0, 1] RGB, one row per frame, both halves."""
    rows = torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32) / 255.0).permute(2, 0, 1) for f in frames])
    return torch.cat([rows] * halves)


@pytest.mark.parametrize("count", [1, 2])
def test_iv_mixed_off_equals_stock_animatediff_controlnet(pipe_and_nets, count):
    pipe = with_nets(*pipe_and_nets[:1], pipe_and_nets[1][:count])
    stock = stock_pipeline(pipe, AnimateDiffControlNetPipeline)
    frames = control_frames() if count == 1 else [control_frames(0), control_frames(1)]
    kwargs = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=4, guidance_scale=7.5, output_type="latent", conditioning_frames=frames,
                  controlnet_conditioning_scale=0.8 if count == 1 else [0.8, 0.5], control_guidance_end=0.6)
    ours = pipe(latents=noise(), iv_mixed=False, **kwargs)
    theirs = stock(latents=noise(), **kwargs)
    assert torch.equal(ours.frames, theirs.frames[0] if isinstance(theirs.frames, tuple) else theirs.frames)
    assert ours.network_calls == {"video": 4, "image": 0, "controlnet_video": 4 * count, "controlnet_image": 0}


@pytest.mark.parametrize("image_batch_size", [None, 2])
def test_every_image_call_gets_the_residuals_of_its_own_input(pipe_and_nets, image_batch_size):
    pipe, (net, _) = pipe_and_nets
    with_nets(pipe, [net])
    calls = []

    def pre(_, args, kwargs):
        calls.append((args[0].clone(), args[1].clone(), kwargs["encoder_hidden_states"].clone(),
                      [r.clone() for r in kwargs["down_block_additional_residuals"]],
                      kwargs["mid_block_additional_residual"].clone()))

    hook = pipe.image_unet.register_forward_pre_hook(pre, with_kwargs=True)
    steps, end, scale = 4, 0.5, 0.7
    try:
        out = pipe("a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                   output_type="latent", latents=noise(), conditioning_frames=control_frames(),
                   controlnet_conditioning_scale=scale, control_guidance_end=end, image_batch_size=image_batch_size)
    finally:
        hook.remove()
    assert out.network_calls == count_network_calls(steps, IVMixedSettings(), controlnets=1)
    chunk = FRAMES if image_batch_size is None else image_batch_size
    chunks = -(-FRAMES // chunk)
    assert len(calls) == out.network_calls["image"] * chunks == 8 * chunks
    frames = control_frames()
    for j, (sample, t, embeds, down, mid) in enumerate(calls):
        step = j // chunks // 2  # zz=1000: two image moves per step, each in `chunks` calls
        first = (j % chunks) * chunk
        cond = control_tensor(frames[first:first + chunk])  # this call's frames, both halves
        keep = 0.0 if step / steps < 0 or (step + 1) / steps > end else 1.0
        want_down, want_mid = net(sample, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                                  conditioning_scale=scale * keep, return_dict=False)
        assert all(torch.equal(a, b) for a, b in zip(down, want_down)) and torch.equal(mid, want_mid)
        assert (mid.abs().sum() > 0) == (keep > 0)  # steps past the end get no control


@torch.no_grad()
def test_iv_mixed_with_controlnets_matches_the_algorithm(pipe_and_nets):
    pipe, nets = pipe_and_nets
    with_nets(pipe, nets)
    zz, gs, frames, scales = 2, 7.5, [control_frames(0), control_frames(1)], [0.8, 0.5]
    out = pipe("a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=gs,
               latents=noise(1), conditioning_frames=frames, controlnet_conditioning_scale=scales,
               output_type="latent", zz=zz, i_sigma_begin=3.0, i_sigma_end=3.0, v_sigma_begin=5.0, v_sigma_end=5.0)
    pos, neg = pipe.encode_prompt("a horse", "cpu", 1, True, None)
    emb = torch.cat([neg, pos]).repeat_interleave(FRAMES, dim=0)
    conds = [control_tensor(f) for f in frames]

    def residuals(rows, t):
        down, mid = None, None
        for net, cond, s in zip(nets, conds, scales):
            d, m = net(rows, t, encoder_hidden_states=emb, controlnet_cond=cond, conditioning_scale=s,
                       return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def video(x, t, w):
        both = torch.cat([x, x])
        rows = both.transpose(1, 2).reshape(-1, 4, SIZE // 8, SIZE // 8)
        u, c = pipe.unet(both, t, encoder_hidden_states=emb, **residuals(rows, t)).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        f = x[0].permute(1, 0, 2, 3)
        rows = torch.cat([f, f])
        u, c = pipe.image_unet(rows, t, encoder_hidden_states=emb, **residuals(rows, t)).sample.chunk(2)
        return (u + w * (c - u)).permute(1, 0, 2, 3)[None]

    want = reference_zigzag_run(pipe.scheduler, noise(1), 3, gs, zz, 3.0, 5.0, video, image)
    assert torch.allclose(out.frames, want, atol=1e-4, rtol=1e-4), (out.frames - want).abs().max()
    assert out.network_calls == count_network_calls(3, IVMixedSettings(zz=zz), controlnets=2)
    assert out.network_calls["controlnet_image"] == 2 * out.network_calls["image"] == 8


# -- the command line -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_net_folder(tmp_path_factory):
    return save_tiny_controlnet(str(tmp_path_factory.mktemp("controlnet") / "net"), seed=1)


def write_video(path, count=6):
    iio.imwrite(path, np.random.default_rng(2).integers(0, 255, (count, 48, 64, 3), dtype=np.uint8), fps=8)
    return str(path)


def test_cli_tiny_controlnet_makes_both_videos_and_counts_its_evaluations(tmp_path, capsys, tiny_net_folder):
    video, out = write_video(tmp_path / "pose.mp4"), tmp_path / "out"
    code, err = run_main(["--tiny", "--prompt", "a cat", "--controlnet", tiny_net_folder, "--controlnet-video", video,
                          "--controlnet-scale", "0.7", "--num-frames", "4", "--inference-step", "2",
                          "--output-dir", str(out)], capsys)
    assert code == 0, err
    record = only_record(out)
    assert record["network_calls"] == {
        "iv_mix": {"video": 6, "image": 4, "controlnet_video": 6, "controlnet_image": 4},
        "standard": {"video": 2, "image": 0, "controlnet_video": 2, "controlnet_image": 0}}
    assert record["settings"]["controlnet"] == [tiny_net_folder] and record["settings"]["controlnet_scale"] == ["0.7"]
    assert sum(n.endswith("_iv_mix.mp4") for n in files_of(out)) == 1


def huge_frames_folder(folder, side=40000):
    """A folder of frames whose first PNG claims ``side`` x ``side`` pixels (a few dozen bytes on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder.mkdir()
    for i in range(4):
        (folder / f"frame{i}.png").write_bytes(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return str(folder)


@pytest.mark.parametrize("make, message", [
    (lambda d: write_video(d / "short.mp4", count=2), "has 2 frames and the run needs 4"),
    (lambda d: (d / "notes.mp4").write_text("a text file") and str(d / "notes.mp4"), "does not decode"),
    (lambda d: (d / "empty.mp4").write_bytes(b"") or str(d / "empty.mp4"), "empty"),
    (lambda d: huge_frames_folder(d / "huge"), "8192"),
])
def test_cli_bad_control_videos_are_one_line_and_write_nothing(tmp_path, capsys, tiny_net_folder, make, message):
    video, out = make(tmp_path), tmp_path / "out"
    code, err = run_main(["--tiny", "--prompt", "a cat", "--controlnet", tiny_net_folder, "--controlnet-video", video,
                          "--num-frames", "4", "--output-dir", str(out)], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "--controlnet-video" in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_cli_controlnet_settings_are_checked_together(tmp_path, capsys, tiny_net_folder):
    video = write_video(tmp_path / "pose.mp4")
    for argv, message in (
        (["--controlnet", tiny_net_folder], "1 --controlnet and 0 --controlnet-video"),
        (["--controlnet-video", video], "goes with a --controlnet"),
        (["--controlnet", tiny_net_folder, "--controlnet-video", video, "--controlnet-scale", "1",
          "--controlnet-scale", "2"], "2 --controlnet-scale values for 1 --controlnet"),
        (["--controlnet", tiny_net_folder, "--controlnet-video", video, "--control-guidance-start", "0.6",
          "--control-guidance-end", "0.4"], "must be before"),
        (["--controlnet", "lllyasviel/control_v11p_sd15_openpose", "--controlnet-video", video], "tiny"),
        (["--pipeline", "ModelScope", "--controlnet", tiny_net_folder, "--controlnet-video", video],
         "applies to --pipeline Animatediff only"),
    ):
        code, err = run_main(["--tiny", "--prompt", "a cat", "--num-frames", "4", "--output-dir",
                              str(tmp_path / "o"), *argv], capsys)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
    assert not (tmp_path / "o").exists()


def test_controlnet_combines_with_video_to_video_and_an_image_prompt(tmp_path, capsys, tiny_net_folder):
    """Pose from one video, colours from another, and an image prompt: the kept steps' counts, with the ControlNet
    on every guided call of both models."""
    from ivmixed.testing import save_tiny_ip_adapter, tiny_image_unet

    pose, colours, image = write_video(tmp_path / "pose.mp4"), write_video(tmp_path / "colours.mp4"), tmp_path / "im.png"
    PIL.Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    adapter = save_tiny_ip_adapter(str(tmp_path / "ip"), tiny_image_unet())
    out = tmp_path / "out"
    code, err = run_main(["--tiny", "--prompt", "a cat", "--controlnet", tiny_net_folder, "--controlnet-video", pose,
                          "--init-video", colours, "--strength", "0.5", "--ip-adapter", adapter,
                          "--ip-adapter-image", str(image), "--num-frames", "4", "--inference-step", "4",
                          "--output-dir", str(out)], capsys)
    assert code == 0, err
    record = only_record(out)
    assert record["network_calls"]["iv_mix"] == count_network_calls(2, IVMixedSettings(), controlnets=1)
    assert record["network_calls"]["standard"] == count_network_calls(2, None, controlnets=1)


def test_a_sweeps_cost_line_counts_the_controlnet_evaluations(tmp_path, capsys, tiny_net_folder):
    video = write_video(tmp_path / "pose.mp4")
    code, err = run_main(["--tiny", "--prompt", "a cat", "--controlnet", tiny_net_folder, "--controlnet-video", video,
                          "--num-frames", "2", "--inference-step", "2", "--sweep", "zz=1,1000",
                          "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 0, err
    # zz=1: 2 + 2*4 = 10 video calls; zz=1000: 6 video + 4 image; baseline 2: 22 guided calls, each with one
    # evaluation of the one ControlNet
    line = next(line for line in err.splitlines() if "sweep: 2 cells" in line)
    assert line.endswith("= 22 guided network calls, each with 1 ControlNet evaluation (22 in all)"), line


def test_a_guided_call_split_into_chunks_counts_one_evaluation(pipe_and_nets):
    pipe, (net, _) = pipe_and_nets
    with_nets(pipe, [net])
    forwards = []
    hook = net.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        out = pipe("a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2, output_type="latent",
                   latents=noise(), conditioning_frames=control_frames(), image_batch_size=1)
    finally:
        hook.remove()
    assert out.network_calls == count_network_calls(2, IVMixedSettings(), controlnets=1)
    assert len(forwards) == out.network_calls["controlnet_video"] + FRAMES * out.network_calls["controlnet_image"]
