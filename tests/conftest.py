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
