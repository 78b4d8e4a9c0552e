"""The example workflow, end to end: ComfyUI's server with AnimateDiff-Evolved and ComfyUI-IVMixed runs the pack's
API-format example on the tiny models, and the saved videos and latents are read back and checked."""

import copy
import io
import json
import time


from .comfy_env import PACK

API_WORKFLOW = PACK / "example_workflows" / "ivmixed_animatediff_api.json"
PACK_NODES = ("IVMixedSampler", "IVMixedStandardSampler")
FRAMES, SIZE, STEPS = 4, 64, 2


def sources(prompt, node_id):
    """The node ids whose outputs ``node_id`` takes as inputs (input name -> id)."""
    return {name: value[0] for name, value in prompt[node_id]["inputs"].items()
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)}


def tiny_prompt(prompt, video, image, motion):
    """The workflow on the tiny models: model files, frames, size and steps rewritten; every sampler's latent also
    saved (SaveLatent), to read its values back. Returns the prompt and {sampler node id: SaveLatent node id}."""
    prompt = copy.deepcopy(prompt)
    samplers = [k for k, node in prompt.items() if node["class_type"] in PACK_NODES]
    loaders = {}  # checkpoint loader id -> which model
    for node_id in samplers:
        links = sources(prompt, node_id)
        for role in ("video_model", "image_model"):
            node = links.get(role)
            while node is not None and prompt[node]["class_type"] != "CheckpointLoaderSimple":
                node = sources(prompt, node).get("model")  # through ADE's loader
            if node is not None:
                loaders[node] = role
    assert set(loaders.values()) == {"video_model", "image_model"}, f"the workflow's checkpoint loaders: {loaders}"
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            assert node_id in loaders, f"checkpoint loader {node_id} feeds no IV-mixed sampler"
            inputs["ckpt_name"] = (video if loaders[node_id] == "video_model" else image).name
        elif kind.startswith("ADE_") and "model_name" in inputs:
            inputs["model_name"] = motion.name
        elif kind == "EmptyLatentImage":
            inputs.update(width=SIZE, height=SIZE, batch_size=FRAMES)
        if kind in PACK_NODES:
            inputs["steps"] = STEPS
    saved = {}
    for node_id in samplers:
        saved[node_id] = f"latent_{node_id}"
        prompt[saved[node_id]] = {"class_type": "SaveLatent",
                                  "inputs": {"samples": [node_id, 0], "filename_prefix": f"latents/sampler_{node_id}"}}
    return prompt, saved


def read_video(data: bytes):
    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_example_workflow_runs_in_comfyui(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file

    from .server import ComfyServer

    assert API_WORKFLOW.is_file(), f"the pack's example workflow is missing: {API_WORKFLOW}"
    workflow = json.loads(API_WORKFLOW.read_text())
    video, image, motion = tiny_models.video, tiny_models.image_with_clip, tiny_models.motion
    prompt, saved = tiny_prompt(workflow, video, image, motion)
    assert sorted(prompt[k]["class_type"] for k in saved) == sorted(PACK_NODES), "the example uses both samplers"
    start = time.perf_counter()
    with ComfyServer(tmp_path, models=tiny_models.root, memory_limit_gb=12) as server:
        ready = time.perf_counter() - start
        registered = server.node_types()
        missing = sorted({node["class_type"] for node in prompt.values()} - set(registered))
        assert not missing, (f"node types not registered in ComfyUI: {missing}; the server's log ends:\n"
                             f"{server.log_tail()}")
        run_start = time.perf_counter()
        history = server.run(prompt, timeout=900)
        run_seconds = time.perf_counter() - run_start
        outputs = history["outputs"]
        videos = {}
        for node_id, node in prompt.items():
            if node["class_type"] == "SaveVideo":
                files = outputs.get(node_id, {}).get("images", [])
                assert len(files) == 1, f"SaveVideo node {node_id} saved {files}"
                videos[node_id] = read_video(server.file(files[0]))
        latents = {}
        for sampler, node_id in saved.items():
            entry = outputs[node_id]["latents"][0]
            latents[sampler] = load_file(str(server.base / "output" / entry["subfolder"] / entry["filename"]))
        peak = server.peak_rss
    total = time.perf_counter() - start
    print(f"\nend to end: {total:.1f} s (server ready in {ready:.1f} s, the workflow ran in {run_seconds:.1f} s; "
          f"{FRAMES} frames {SIZE}x{SIZE}, {STEPS} steps), server peak RSS {peak / 2**30:.1f} GiB")

    assert len(videos) == 2, f"the example saves both videos: {sorted(videos)}"
    for node_id, frames in videos.items():
        assert frames.shape == (FRAMES, SIZE, SIZE, 3), (node_id, frames.shape)
        assert frames.std() > 1.0, f"video {node_id} is one flat colour (std {frames.std():.2f})"
    samples = {}
    for sampler, tensors in latents.items():
        latent = tensors["latent_tensor"]
        assert latent.shape == (FRAMES, 4, SIZE // 8, SIZE // 8), (sampler, latent.shape)
        assert torch.isfinite(latent).all(), f"sampler {sampler}'s latent is not finite"
        assert latent.std() > 0.01, f"sampler {sampler}'s latent is constant"
        samples[prompt[sampler]["class_type"]] = latent.float()
    difference = (samples["IVMixedSampler"] - samples["IVMixedStandardSampler"]).abs().max().item()
    assert difference > 1e-3, f"the IV-mixed latent equals the standard one (max difference {difference})"
