import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)  # tiny networks: more threads only add overhead


@pytest.fixture(scope="session")
def animatediff_paths(tmp_path_factory):
    from ivmixed.testing import save_tiny_checkpoints

    return save_tiny_checkpoints(str(tmp_path_factory.mktemp("animatediff")), "Animatediff")


@pytest.fixture(scope="session")
def animatediff_pipe(animatediff_paths):
    from ivmixed import IVMixedAnimateDiffPipeline

    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(**animatediff_paths)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP (32 px images) and its processor, saved like a hub repository."""
    from ivmixed.testing import save_tiny_clip

    return save_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")))
