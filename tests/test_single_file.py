"""Single-file checkpoints: Civitai-style SD 1.5 files as the image model and as the Animatediff base, motion modules
as the motion adapter, a replacement VAE; what a file holds, read from its header; and every refusal as one line
before any model loads."""

import collections
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from ivmixed import IVMixedAnimateDiffPipeline, IVMixedModelScopePipeline
from ivmixed.errors import ModelLoadError
from ivmixed.flags import flag
from ivmixed.registry import PIPELINES
from ivmixed.single_file import (IMAGE_MODEL, IMAGE_UNET, MOTION_ADAPTER, SD_BASE, VAE_FILE, checkpoint_problem,
                                 classify, motion_adapter_config, read_contents)
from ivmixed.testing import save_tiny_checkpoints, save_tiny_sd, tiny_vae

from runs import only_record, run_main
from sd_layout import (motion_to_original, sd_checkpoint, text_encoder_to_original, unet_to_original,
                       vae_to_original, write_header_only)

ANIMATEDIFF = PIPELINES["Animatediff"]
DEFAULT_ADAPTER = ANIMATEDIFF.checkpoint("motion_adapter").default
CALL = dict(prompt="a cat", num_frames=2, height=64, width=64, num_inference_steps=2, output_type="pt")
RUN = ["--prompt", "a cat", "--device", "cpu", "--num-frames", "2", "--inference-step", "2", "--height", "64",
       "--width", "64", "--no-standard"]


def sd_parts(folder):
    return (UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
            AutoencoderKL.from_pretrained(folder, subfolder="vae"),
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    return True


def frames(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(seed), **CALL).frames


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny Animatediff folders (``folders``: their configs build the files), the weights of other ones
    (``weights``: other seeds, so a file's weights are told apart from its configs' folder) as single files, and
    another VAE as a folder and a file."""
    root = tmp_path_factory.mktemp("single-file")
    paths = save_tiny_checkpoints(str(root), "Animatediff")
    weights = {"video_model": save_tiny_sd(str(root / "base-8"), seed=8),
               "image_model": save_tiny_sd(str(root / "image-9"), seed=9)}
    files = {}
    for name, folder in (("image", weights["image_model"]), ("base", weights["video_model"])):
        files[name] = str(root / f"{name}.safetensors")
        save_file(sd_checkpoint(*sd_parts(folder)), files[name])
    unet, vae, text_encoder = sd_parts(weights["video_model"])
    files["base_ckpt"] = str(root / "base.ckpt")
    torch.save({"state_dict": sd_checkpoint(unet, vae, text_encoder), "global_step": 1}, files["base_ckpt"])
    files["base_no_vae"] = str(root / "base-novae.safetensors")
    save_file(sd_checkpoint(unet, None, text_encoder), files["base_no_vae"])
    adapter = MotionAdapter.from_pretrained(paths["motion_adapter"])
    files["motion"] = str(root / "motion_diffusers.safetensors")
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, files["motion"])
    files["motion_original"] = str(root / "mm_original.ckpt")
    torch.save(motion_to_original(adapter.state_dict()), files["motion_original"])
    other = tiny_vae(seed=7)
    paths["other_vae"] = str(root / "other-vae")
    other.save_pretrained(paths["other_vae"])
    files["vae"] = str(root / "other-vae.safetensors")
    save_file({k: v.contiguous() for k, v in vae_to_original(other.state_dict(), other.config).items()}, files["vae"])
    return {"folders": paths, "weights": weights, "files": files, "root": root}


@pytest.fixture(scope="module")
def folder_pipe(tiny):
    """The pipeline on the folders the files were made from."""
    return IVMixedAnimateDiffPipeline.from_checkpoints(tiny["weights"]["video_model"], tiny["folders"]["motion_adapter"],
                                                       tiny["weights"]["image_model"])


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local hub cache, offline: nothing the machine has cached is seen."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def cache_files(hub, repo, files):
    """``files`` ({name: path of a file to copy, or a dict to write as JSON}) as the hub cache holds them."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = hub / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            target.write_text(json.dumps(content))
        else:
            shutil.copy(content, target)
    return snapshot


# -- the test's own layout writer, against diffusers' converters ------------------------------------------------


def test_the_original_layout_writer_is_what_diffusers_converts_back(tiny):
    from diffusers.loaders.single_file_utils import (convert_animatediff_checkpoint_to_diffusers,
                                                     convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    unet, vae, text_encoder = sd_parts(tiny["folders"]["image_model"])
    checkpoint = sd_checkpoint(unet, vae, text_encoder)
    assert len(unet_to_original(unet.state_dict(), unet.config)) == len(unet.state_dict())
    for model, back in ((unet, convert_ldm_unet_checkpoint(checkpoint, unet.config)),
                        (vae, convert_ldm_vae_checkpoint(checkpoint, vae.config))):
        state = model.state_dict()
        assert sorted(back) == sorted(state)
        assert all(torch.equal(back[k], state[k]) for k in state)
    clip = {k.replace("text_model.", "", 1): v for k, v in convert_ldm_clip_checkpoint(checkpoint).items()}
    state = text_encoder.state_dict()
    assert set(clip) - set(state) <= {"embeddings.position_ids"} and set(state) <= set(clip)
    assert all(torch.equal(clip[k], state[k]) for k in state)
    assert "embeddings.position_ids" in text_encoder_to_original(state)  # as real files carry it
    adapter = MotionAdapter.from_pretrained(tiny["folders"]["motion_adapter"])
    state = adapter.state_dict()
    back = convert_animatediff_checkpoint_to_diffusers(motion_to_original(state))
    # the original layout's positional encodings are rebuilt by the model, not loaded
    assert sorted(back) == sorted(k for k in state if not k.endswith("pos_embed.pe"))
    assert all(torch.equal(back[k], state[k]) for k in back)


# -- what a file holds ------------------------------------------------------------------------------------------


def lora_header(path):
    write_header_only(path, {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32),
                             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (32, 4),
                             "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()})


def sdxl_header(path):
    write_header_only(path, {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 768),
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    })


class NotATensor:
    pass


def test_files_are_told_apart_by_their_keys(tiny, tmp_path):
    files = tiny["files"]
    image, _ = read_contents(files["image"])
    assert (image.kind, image.parts, image.in_channels, image.cross_attention_dim) == (
        "sd1", frozenset({"unet", "text_encoder", "vae"}), 4, 32)
    assert read_contents(files["base_ckpt"])[0].kind == "sd1"
    assert read_contents(files["base_no_vae"])[0].parts == frozenset({"unet", "text_encoder"})
    assert read_contents(files["motion"])[0].detail == "diffusers layout"
    assert read_contents(files["motion_original"])[0].detail == "original layout"
    assert read_contents(files["vae"])[0].kind == "vae"
    lora_header(tmp_path / "lora.safetensors")
    sdxl_header(tmp_path / "sdxl.safetensors")
    assert read_contents(str(tmp_path / "lora.safetensors"))[0].kind == "lora"
    assert read_contents(str(tmp_path / "sdxl.safetensors"))[0].kind == "sdxl"
    sd = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert classify({sd: (320, 768)}).kind == "sd1"
    assert classify({sd: (320, 1024)}).kind == "sd2"
    assert classify({sd: (320, 768), "cond_stage_model.model.token_embedding.weight": (8, 1024)}).kind == "sd2"
    assert classify({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (4, 4)}).kind == "lora"
    assert classify({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 4)}).kind == "lora"
    assert classify({"first_stage_model.encoder.conv_in.weight": (1,), "first_stage_model.decoder.conv_in.weight": (1,)}
                    ).kind == "vae"
    assert classify({"conv_in.weight": (32, 4, 3, 3), "down_blocks.0.attentions.0.proj_in.weight": (32, 32)}
                    ).kind == "diffusers_unet"
    assert classify({"something.else": (3,)}).kind == "unknown"

    cut = tmp_path / "cut.safetensors"
    data = open(files["image"], "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    contents, problem = read_contents(str(cut))
    assert contents is None and "cut short" in problem
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    assert read_contents(str(tmp_path / "list.ckpt")) == (None, "its pickle holds a list, not a dict of tensors")
    torch.save({"a": NotATensor()}, tmp_path / "object.ckpt")
    assert "objects other than tensors" in read_contents(str(tmp_path / "object.ckpt"))[1]
    torch.save({"step": 3, "names": collections.OrderedDict(a=1)}, tmp_path / "no-tensors.ckpt")
    assert read_contents(str(tmp_path / "no-tensors.ckpt")) == (None, "its pickle holds no tensors")
    (tmp_path / "junk.ckpt").write_bytes(b"\x80\x04not a checkpoint at all")
    assert "not a readable PyTorch checkpoint" in read_contents(str(tmp_path / "junk.ckpt"))[1]


def test_each_setting_takes_its_own_kind(tiny, tmp_path):
    files = tiny["files"]
    assert checkpoint_problem(files["image"], IMAGE_UNET, "image_model") is None
    assert checkpoint_problem(files["image"], IMAGE_MODEL, "image_model") is None
    assert checkpoint_problem(files["base"], SD_BASE, "video_model") is None
    assert checkpoint_problem(files["motion"], MOTION_ADAPTER, "motion_adapter") is None
    assert checkpoint_problem(files["vae"], VAE_FILE, "vae") is None
    assert checkpoint_problem(files["image"], VAE_FILE, "vae") is None  # a full checkpoint's VAE
    assert checkpoint_problem(files["base_no_vae"], SD_BASE, "video_model") == (
        f"{{video_model}} {files['base_no_vae']} is a Stable Diffusion 1.x checkpoint without VAE weights "
        "(first_stage_model.*); give a VAE with {vae}")
    assert checkpoint_problem(files["motion"], IMAGE_UNET, "image_model") == (
        f"{{image_model}} {files['motion']} looks like AnimateDiff motion modules (diffusers layout), not a Stable "
        "Diffusion 1.5-family checkpoint; give motion modules with {motion_adapter}")
    assert checkpoint_problem(files["image"], MOTION_ADAPTER, "motion_adapter").startswith(
        f"{{motion_adapter}} {files['image']} looks like a Stable Diffusion 1.x checkpoint, not AnimateDiff motion "
        "modules")
    assert "looks like a VAE" in checkpoint_problem(files["vae"], IMAGE_UNET, "image_model")


def test_a_header_is_read_without_torch(tiny):
    probe = ("import sys, json; from ivmixed.single_file import read_contents; "
             f"c, p = read_contents({tiny['files']['image']!r}); "
             "print(json.dumps([c.kind, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["sd1", False], out.stderr


def test_a_motion_adapter_shape_is_read_from_its_tensors():
    from accelerate import init_empty_weights

    for kwargs in ({}, {"use_motion_mid_block": False}, {"motion_max_seq_length": 24, "motion_layers_per_block": 1}):
        with init_empty_weights():
            full = MotionAdapter(**kwargs)  # full size, on the meta device: shapes only
        state = full.state_dict()
        positions = state["down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe"].shape[-2]
        built = MotionAdapter.from_config(motion_adapter_config(state, None, positions))
        assert {k: v for k, v in built.config.items() if not k.startswith("_")} == {
            k: v for k, v in full.config.items() if not k.startswith("_")}


# -- single files load to the same weights and frames ------------------------------------------------------------


def test_a_single_file_image_model_and_base_load_to_the_same_weights_and_frames(tiny, folder_pipe):
    folders, files = tiny["folders"], tiny["files"]
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(
        video_model=files["base_ckpt"], motion_adapter=folders["motion_adapter"], image_model=files["image"],
        video_model_config=folders["video_model"], image_model_config=folders["image_model"])
    for name in ("image_unet", "unet", "vae", "text_encoder"):
        assert same_weights(getattr(pipe, name), getattr(folder_pipe, name))
    assert dict(pipe.scheduler.config) == dict(folder_pipe.scheduler.config)
    assert torch.equal(frames(pipe), frames(folder_pipe))


def test_a_single_file_image_model_through_the_command_line(tiny, folder_pipe, tmp_path, capsys, monkeypatch):
    folders, files = tiny["folders"], tiny["files"]
    loaded = []
    real = IVMixedAnimateDiffPipeline.from_checkpoints.__func__

    def record(cls, *args, **kwargs):
        loaded.append(real(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(IVMixedAnimateDiffPipeline, "from_checkpoints", classmethod(record))
    base = [*RUN, "--video-model", tiny["weights"]["video_model"], "--motion-adapter", folders["motion_adapter"]]
    videos = []
    for image in (["--image-model", files["image"], "--image-model-config", folders["image_model"]],
                  ["--image-model", tiny["weights"]["image_model"]]):
        out = tmp_path / f"out{len(videos)}"
        code, err = run_main([*base, *image, "--output-dir", str(out)], capsys)
        assert code == 0, err
        videos.append(iio.imread(out / only_record(out)["files"]["iv_mix"]))
    assert same_weights(loaded[0].image_unet, folder_pipe.image_unet)
    assert (videos[0] == videos[1]).all()
    out = tmp_path / "with-vae"
    code, err = run_main([*base, "--image-model", files["image"], "--image-model-config", folders["image_model"],
                          "--vae", files["vae"], "--output-dir", str(out)], capsys)
    assert code == 0, err
    assert same_weights(loaded[-1].vae, AutoencoderKL.from_pretrained(folders["other_vae"]))
    assert not (iio.imread(out / only_record(out)["files"]["iv_mix"]) == videos[0]).all()


def test_a_single_file_image_model_for_a_text_to_video_pipeline(tmp_path):
    folders = save_tiny_checkpoints(str(tmp_path), "ModelScope")
    weights = save_tiny_sd(str(tmp_path / "image-9"), seed=9)
    image = str(tmp_path / "image.ckpt")
    torch.save(sd_checkpoint(*sd_parts(weights)), image)
    from_folder = IVMixedModelScopePipeline.from_checkpoints(folders["video_model"], weights)
    pipe = IVMixedModelScopePipeline.from_checkpoints(folders["video_model"], image,
                                                      image_model_config=folders["image_model"])
    assert same_weights(pipe.image_unet, from_folder.image_unet)
    assert same_weights(pipe.image_text_encoder, from_folder.image_text_encoder)
    assert pipe.image_tokenizer("a cat").input_ids == from_folder.image_tokenizer("a cat").input_ids
    assert torch.equal(frames(pipe), frames(from_folder))


def test_a_single_file_motion_adapter_loads_to_the_same_weights_and_frames(tiny, folder_pipe, hub_cache, tmp_path,
                                                                           capsys):
    folders, files = tiny["folders"], tiny["files"]
    # Heads and norm groups come from the default motion adapter's config when cached (the tiny one's here).
    with open(os.path.join(folders["motion_adapter"], "config.json")) as f:
        cache_files(hub_cache, DEFAULT_ADAPTER, {"config.json": json.load(f)})
    common = dict(video_model=tiny["weights"]["video_model"], image_model=tiny["weights"]["image_model"])
    reference = frames(folder_pipe)
    for motion in (files["motion"], files["motion_original"]):
        pipe = IVMixedAnimateDiffPipeline.from_checkpoints(motion_adapter=motion, **common)
        assert same_weights(pipe.unet, folder_pipe.unet)
        assert torch.equal(frames(pipe), reference)

    out, folder_out = tmp_path / "out", tmp_path / "folder-out"
    models = ["--video-model", tiny["weights"]["video_model"], "--image-model", tiny["weights"]["image_model"]]
    code, err = run_main([*RUN, *models, "--motion-adapter", files["motion"], "--output-dir", str(out)], capsys)
    assert code == 0, err
    code, err = run_main([*RUN, *models, "--motion-adapter", folders["motion_adapter"], "--output-dir", str(folder_out)],
                         capsys)
    assert code == 0, err
    assert (iio.imread(out / only_record(out)["files"]["iv_mix"])
            == iio.imread(folder_out / only_record(folder_out)["files"]["iv_mix"])).all()


def test_a_motion_adapter_without_a_cached_config_takes_animatediffs_heads(tiny, hub_cache):
    adapter_pipe = IVMixedAnimateDiffPipeline.from_checkpoints(
        tiny["folders"]["video_model"], tiny["files"]["motion"], tiny["folders"]["image_model"])
    reference = MotionAdapter.from_pretrained(tiny["folders"]["motion_adapter"])
    config = adapter_pipe.unet.config
    assert config.motion_num_attention_heads == 8 and reference.config.motion_num_attention_heads == 2
    assert tuple(config.block_out_channels) == tuple(reference.config.block_out_channels)
    assert config.motion_max_seq_length == reference.config.motion_max_seq_length


def test_a_hub_file_comes_from_the_cache_offline(tiny, hub_cache):
    folders = tiny["folders"]
    cache_files(hub_cache, "ivmixed-test/motion", {"sub/motion.safetensors": tiny["files"]["motion"]})
    with open(os.path.join(folders["motion_adapter"], "config.json")) as f:
        cache_files(hub_cache, DEFAULT_ADAPTER, {"config.json": json.load(f)})
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(folders["video_model"], "ivmixed-test/motion/sub/motion.safetensors",
                                                       folders["image_model"])
    reference = MotionAdapter.from_pretrained(folders["motion_adapter"])
    motion = {k: v for k, v in pipe.unet.state_dict().items() if "motion_modules" in k}
    assert all(torch.equal(motion[k], v) for k, v in reference.state_dict().items() if k in motion)
    with pytest.raises(ModelLoadError) as info:
        IVMixedAnimateDiffPipeline.from_checkpoints(folders["video_model"], "ivmixed-test/motion/other.safetensors",
                                                    folders["image_model"])
    assert info.value.render(flag) == (
        "HF_HUB_OFFLINE is set, and 1 checkpoint(s) this run needs are not in the local cache: the motion adapter "
        "'ivmixed-test/motion/other.safetensors' (`hf download ivmixed-test/motion other.safetensors` while online, or "
        "a local file with --motion-adapter)")


def test_default_configs_come_from_the_cache(tiny, hub_cache, folder_pipe):
    folders = tiny["folders"]
    names = ["unet/config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
             "tokenizer/merges.txt", "vae/config.json", "scheduler/scheduler_config.json"]
    for key, folder in (("image_model", folders["image_model"]), ("video_model", folders["video_model"])):
        cache_files(hub_cache, ANIMATEDIFF.checkpoint(key).default, {n: os.path.join(folder, n) for n in names})
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(tiny["files"]["base"], folders["motion_adapter"],
                                                       tiny["files"]["image"])
    for name in ("image_unet", "unet", "vae", "text_encoder"):
        assert same_weights(getattr(pipe, name), getattr(folder_pipe, name))


# -- a replacement VAE -----------------------------------------------------------------------------------------


def test_a_replacement_vae_decodes_the_videos(tiny, folder_pipe):
    folders, files = tiny["folders"], tiny["files"]
    other = AutoencoderKL.from_pretrained(folders["other_vae"])
    expected = frames(IVMixedAnimateDiffPipeline(**{**folder_pipe.components, "vae": other}))
    for vae in (folders["other_vae"], files["vae"]):
        pipe = IVMixedAnimateDiffPipeline.from_checkpoints(tiny["weights"]["video_model"], folders["motion_adapter"],
                                                           tiny["weights"]["image_model"], vae=vae)
        assert same_weights(pipe.vae, other)
        video = frames(pipe)
        assert torch.equal(video, expected)
        assert not torch.equal(video, frames(folder_pipe))
    # with a single-file base, the replacement takes the place of the file's own VAE
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(files["base_no_vae"], folders["motion_adapter"],
                                                       folders["image_model"], vae=files["vae"],
                                                       video_model_config=folders["video_model"])
    assert same_weights(pipe.vae, other)


def test_a_replacement_vae_on_a_text_to_video_pipeline(tiny, tmp_path):
    folders = save_tiny_checkpoints(str(tmp_path), "ModelScope")
    other = AutoencoderKL.from_pretrained(tiny["folders"]["other_vae"])
    pipe = IVMixedModelScopePipeline.from_checkpoints(**folders, vae=tiny["files"]["vae"])
    assert same_weights(pipe.vae, other)


# -- refusals: one line, before anything loads or is written ------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any model loads."""
    from diffusers import DiffusionPipeline, ModelMixin
    from diffusers.loaders.single_file_model import FromOriginalModelMixin
    import ivmixed.single_file as single_file

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for owner, name in ((ModelMixin, "from_pretrained"), (DiffusionPipeline, "from_pretrained"),
                        (FromOriginalModelMixin, "from_single_file")):
        monkeypatch.setattr(owner, name, classmethod(refuse))
    for name in ("read_state_dict", "load_sd_file", "load_motion_adapter", "load_vae"):
        monkeypatch.setattr(single_file, name, refuse)


def refused(args, capsys, out):
    code, err = run_main([*args, "--output-dir", str(out)], capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err.strip()


def test_files_of_the_wrong_kind_are_refused_before_loading(tiny, tmp_path, capsys, no_loading):
    folders, files = tiny["folders"], tiny["files"]
    out = tmp_path / "out"
    lora, sdxl, cut = tmp_path / "style.safetensors", tmp_path / "xl.safetensors", tmp_path / "cut.safetensors"
    lora_header(lora)
    sdxl_header(sdxl)
    data = open(files["image"], "rb").read()
    cut.write_bytes(data[:-100])
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    torch.save({"weights": NotATensor()}, tmp_path / "object.ckpt")
    models = ["--video-model", folders["video_model"], "--motion-adapter", folders["motion_adapter"]]
    cases = [
        (["--image-model", str(lora)], f"--image-model {lora} looks like a LoRA (keys like "
         "lora_unet_down_blocks_0_attentions_0_proj_in.alpha), not a Stable Diffusion 1.5-family checkpoint; give a "
         "LoRA with --lora"),
        (["--image-model", str(sdxl)], f"--image-model {sdxl} looks like an SDXL checkpoint (cross-attention 2048), not "
         "a Stable Diffusion 1.5-family checkpoint; use a model fine-tuned from Stable Diffusion 1.5"),
        (["--image-model", str(cut)], f"--image-model {cut}: it is not a readable .safetensors file: its tensors take "),
        (["--image-model", str(tmp_path / "list.ckpt")], f"--image-model {tmp_path / 'list.ckpt'}: its pickle holds a "
         "list, not a dict of tensors; download it again or pass another file"),
        (["--image-model", str(tmp_path / "object.ckpt")], f"--image-model {tmp_path / 'object.ckpt'}: its pickle "
         "holds objects other than tensors (test_single_file.NotATensor), which are not loaded because a pickle can "
         "run code; use a .safetensors version of it or pass another file"),
        (["--image-model", str(tmp_path / "missing.safetensors")], f"--image-model {tmp_path / 'missing.safetensors'}: "
         "no such file; give an existing single-file checkpoint, a checkpoint folder or a hub id"),
        (["--image-model", folders["image_model"], "--vae", str(lora)], f"--vae {lora} looks like a LoRA"),
        (["--image-model", files["image"], "--motion-adapter", files["image"]],
         f"--motion-adapter {files['image']} looks like a Stable Diffusion 1.x checkpoint, not AnimateDiff motion "
         "modules; give a Stable Diffusion 1.5 checkpoint as --video-model or --image-model"),
        (["--image-model", files["image"], "--image-model-config", files["image"]],
         f"--image-model-config {files['image']} is a file; give the diffusers checkpoint folder or hub id whose "
         "configs build the single-file image model"),
        (["--image-model", files["image"], "--image-model-config", folders["motion_adapter"]],
         f"--image-model-config {folders['motion_adapter']} has no unet/config.json; give a Stable Diffusion 1.5 "
         "checkpoint folder in the diffusers layout (unet)"),
    ]
    for extra, message in cases:
        err = refused([*RUN, *models, *extra], capsys, out)
        assert err.startswith(f"ivmixed: error: {message}"), err
    err = refused([*RUN, "--pipeline", "ModelScope", "--video-model", files["image"]], capsys, out)
    assert err == f"ivmixed: error: --video-model {files['image']} is a file; give a checkpoint folder or a hub id"


def test_a_config_not_in_the_cache_offline_is_one_line_before_loading(tiny, tmp_path, capsys, hub_cache, no_loading):
    folders, files = tiny["folders"], tiny["files"]
    out = tmp_path / "out"
    models = ["--video-model", folders["video_model"], "--motion-adapter", folders["motion_adapter"]]
    err = refused([*RUN, *models, "--image-model", files["image"], "--image-model-config", "ivmixed-test/no-sd"],
                  capsys, out)
    assert err == (
        "ivmixed: error: HF_HUB_OFFLINE is set, and 1 checkpoint(s) this run needs are not in the local cache: the "
        "configs for the single-file image model 'ivmixed-test/no-sd' (`hf download ivmixed-test/no-sd --include "
        "\"*.json\" \"*.txt\"` while online, or a local folder with --image-model-config)")
    err = refused([*RUN, "--image-model", folders["image_model"], "--motion-adapter", folders["motion_adapter"],
                   "--video-model", files["base"]], capsys, out)
    default = ANIMATEDIFF.checkpoint("video_model").default
    assert err.endswith(f"the configs for the single-file video model '{default}' (`hf download {default} --include "
                        "\"*.json\" \"*.txt\"` while online, or a local folder with --video-model-config)")
    with pytest.raises(ModelLoadError) as info:  # the library says the same, before anything loads
        IVMixedAnimateDiffPipeline.from_checkpoints(folders["video_model"], folders["motion_adapter"], files["image"],
                                                    image_model_config="ivmixed-test/no-sd")
    assert "--include" in info.value.render(flag) and "--image-model-config" in info.value.render(flag)


def test_a_mismatched_config_is_refused_before_loading(tiny, tmp_path, capsys, no_loading):
    folders = tiny["folders"]
    wide = tmp_path / "wide.safetensors"
    write_header_only(wide, {"model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
                             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (32, 768)})
    err = refused([*RUN, "--video-model", folders["video_model"], "--motion-adapter", folders["motion_adapter"],
                   "--image-model", str(wide), "--image-model-config", folders["image_model"]], capsys, tmp_path / "o")
    assert err == (f"ivmixed: error: --image-model {wide} has a UNet cross_attention_dim of 768, but the configs it is "
                   f"built from (--image-model-config {folders['image_model']}) say 32; pass the configs of the model "
                   "it was made from with --image-model-config")


def test_checkpoint_folders_never_take_the_single_file_path(tiny, monkeypatch):
    import ivmixed.single_file as single_file

    def refuse(*args, **kwargs):
        raise AssertionError("the single-file loader was used")

    for name in ("read_state_dict", "load_sd_file", "load_motion_adapter", "load_vae", "resolve_config"):
        monkeypatch.setattr(single_file, name, refuse)
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(**{k: tiny["folders"][k] for k in
                                                          ("video_model", "motion_adapter", "image_model")})
    assert pipe.config._name_or_path == tiny["folders"]["video_model"]
