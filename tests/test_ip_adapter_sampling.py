"""IP-Adapter image prompts under IV-mixed sampling: stock parity, the image UNet sees the image embeddings per
frame, the algorithm on the real tiny UNets, and the command line."""

import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline
from runs import files_of, only_record, reference_zigzag_run, run_main, stock_pipeline, video_frames

from ivmixed.ip_adapter import load_ip_adapter
from ivmixed.testing import save_tiny_ip_adapter, tiny_image_unet, tiny_pipeline

FRAMES, SIZE = 3, 64


def image_prompt(seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ip_pipe(tmp_path_factory):
    pipe = tiny_pipeline("Animatediff")
    folder = save_tiny_ip_adapter(str(tmp_path_factory.mktemp("ip-adapter")), pipe.image_unet)
    load_ip_adapter(pipe, folder, 0.8)
    return pipe


def noise(videos=1, seed=0):
    return torch.randn(videos, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_iv_mixed_off_equals_stock_animatediff_with_the_ip_adapter(ip_pipe, output_type):
    stock = stock_pipeline(ip_pipe, AnimateDiffPipeline)
    kwargs = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=3, guidance_scale=7.5, ip_adapter_image=image_prompt(), output_type=output_type)
    ours = ip_pipe(latents=noise(), iv_mixed=False, **kwargs)
    theirs = stock(latents=noise(), **kwargs)
    if output_type == "latent":
        assert torch.equal(ours.frames, video_frames(theirs))
    else:
        assert (ours.frames == theirs.frames).all()
    other = ip_pipe(latents=noise(), iv_mixed=False, **{**kwargs, "ip_adapter_image": image_prompt(seed=7)})
    assert not np.allclose(np.asarray(other.frames), np.asarray(ours.frames))  # the image prompt does something


def record_image_embeds(module):
    calls = []

    def pre(_, args, kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        calls.append([e.clone() for e in added["image_embeds"]] if "image_embeds" in added else None)

    return calls, module.register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("image_batch_size", [None, 4])
def test_each_image_call_gets_the_image_embeddings_per_frame(ip_pipe, image_batch_size):
    video_calls, h1 = record_image_embeds(ip_pipe.unet)
    image_calls, h2 = record_image_embeds(ip_pipe.image_unet)
    try:
        out = ip_pipe(["a horse", "a boat"], num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2,
                      ip_adapter_image=image_prompt(), output_type="latent", latents=noise(2),
                      image_batch_size=image_batch_size)
    finally:
        h1.remove()
        h2.remove()
    videos = 2
    per_call = 1 if image_batch_size is None else -(-videos * FRAMES // image_batch_size)
    assert out.network_calls == {"video": 6, "image": 4} and len(image_calls) == 4 * per_call
    (video_embeds,) = video_calls[0]  # one adapter: [uncond; cond], one row per video in each half
    assert video_embeds.shape[0] == 2 * videos and all(torch.equal(c[0], video_embeds) for c in video_calls)
    rows = [(half, r) for half in range(2) for r in range(videos * FRAMES)]
    chunk = videos * FRAMES if image_batch_size is None else image_batch_size
    order = [[(h, r) for h in range(2) for r in range(s, min(s + chunk, videos * FRAMES))]
             for s in range(0, videos * FRAMES, chunk)]
    assert sorted(sum(order, [])) == sorted(rows)
    for i, call in enumerate(image_calls):
        (embeds,) = call
        covered = order[i % len(order)]
        assert embeds.shape[0] == len(covered)
        for row, (half, r) in enumerate(covered):
            assert torch.equal(embeds[row], video_embeds[half * videos + r // FRAMES])


@torch.no_grad()
def test_iv_mixed_with_an_image_prompt_matches_the_algorithm(ip_pipe):
    pipe, zz, gs = ip_pipe, 2, 7.5
    out = pipe("a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=gs,
               latents=noise(seed=1), ip_adapter_image=image_prompt(), output_type="latent", zz=zz,
               i_sigma_begin=3.0, i_sigma_end=3.0, v_sigma_begin=5.0, v_sigma_end=5.0)
    pos, neg = pipe.encode_prompt("a horse", "cpu", 1, True, None)
    emb = torch.cat([neg, pos]).repeat_interleave(FRAMES, dim=0)
    (image_embeds,) = pipe.prepare_ip_adapter_image_embeds(image_prompt(), None, "cpu", 1, True)
    per_frame = [image_embeds.repeat_interleave(FRAMES, dim=0)]

    def video(x, t, w):
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb,
                         added_cond_kwargs={"image_embeds": [image_embeds]}).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        f = x[0].permute(1, 0, 2, 3)
        u, c = pipe.image_unet(torch.cat([f, f]), t, encoder_hidden_states=emb,
                               added_cond_kwargs={"image_embeds": per_frame}).sample.chunk(2)
        return (u + w * (c - u)).permute(1, 0, 2, 3)[None]

    want = reference_zigzag_run(pipe.scheduler, noise(seed=1), 3, gs, zz, 3.0, 5.0, video, image)
    assert torch.allclose(out.frames, want, atol=1e-4, rtol=1e-4), (out.frames - want).abs().max()


def test_sdxl_iv_mixed_off_equals_stock_and_the_image_unet_gets_the_embeddings(tmp_path):
    pipe = tiny_pipeline("AnimatediffSDXL")
    load_ip_adapter(pipe, save_tiny_ip_adapter(str(tmp_path / "ip"), pipe.image_unet), 0.6)
    stock = stock_pipeline(pipe, AnimateDiffSDXLPipeline)
    kwargs = dict(prompt="a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2,
                  guidance_scale=8.0, ip_adapter_image=image_prompt(), output_type="latent")
    assert torch.equal(pipe(latents=noise(), iv_mixed=False, **kwargs).frames, video_frames(stock(latents=noise(),
                                                                                                **kwargs)))
    calls, hook = record_image_embeds(pipe.image_unet)
    try:
        out = pipe(latents=noise(), **kwargs)
    finally:
        hook.remove()
    assert out.network_calls == {"video": 6, "image": 4} and len(calls) == 4
    assert all(c is not None and c[0].shape[0] == 2 * FRAMES for c in calls)


# -- the command line -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_adapter_folder(tmp_path_factory):
    return save_tiny_ip_adapter(str(tmp_path_factory.mktemp("cli-ip")), tiny_image_unet())


def test_cli_tiny_ip_adapter_makes_both_videos(tmp_path, capsys, tiny_adapter_folder):
    image, out = tmp_path / "prompt.png", tmp_path / "out"
    image_prompt().save(image)
    argv = ["--tiny", "--prompt", "a cat", "--ip-adapter", tiny_adapter_folder, "--ip-adapter-image", str(image),
            "--ip-adapter-scale", "0.7", "--num-frames", "2", "--inference-step", "2", "--output-dir", str(out)]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    record = only_record(out)
    assert record["network_calls"]["iv_mix"] == {"video": 6, "image": 4}
    assert record["settings"]["ip_adapter_image"] == str(image) and record["settings"]["ip_adapter_scale"] == 0.7
    assert sum(n.endswith("_iv_mix.mp4") for n in files_of(out)) == 1
    image_prompt(seed=5).save(image)  # another image under the same name: new files
    assert run_main(argv, capsys)[0] == 0
    assert sum(n.endswith("_iv_mix.mp4") for n in files_of(out)) == 2


def huge_png(path, side=40000):
    """A valid PNG header claiming ``side`` x ``side`` pixels, a few dozen bytes on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes.png").write_text("not an image") and str(d / "notes.png"), "notes.png"),
    (lambda d: huge_png(d / "huge.png"), "8192"),
    (lambda d: str(d / "missing.png"), "does not exist"),
])
def test_cli_bad_image_prompts_are_one_line_and_write_nothing(tmp_path, capsys, tiny_adapter_folder, make, message):
    image, out = make(tmp_path), tmp_path / "out"
    code, err = run_main(["--tiny", "--prompt", "a cat", "--ip-adapter", tiny_adapter_folder, "--ip-adapter-image",
                          image, "--output-dir", str(out)], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "--ip-adapter-image" in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_cli_ip_adapter_settings_need_each_other_and_a_unet_that_takes_them(tmp_path, capsys, tiny_adapter_folder):
    image = tmp_path / "prompt.png"
    image_prompt().save(image)
    for argv, message in (
        (["--ip-adapter-image", str(image)], "needs an --ip-adapter"),
        (["--ip-adapter", tiny_adapter_folder], "give --ip-adapter-image"),
        (["--pipeline", "ModelScope", "--ip-adapter", tiny_adapter_folder, "--ip-adapter-image", str(image)],
         "Animatediff"),
    ):
        code, err = run_main(["--tiny", "--prompt", "a cat", "--output-dir", str(tmp_path / "o"), *argv], capsys)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
    assert not (tmp_path / "o").exists()
