"""Fixtures for the ComfyUI tests; every test here is skipped, with one line saying why, where ComfyUI's sources
or its requirements are missing (the main environment: run ``bash .ci/comfyui.sh`` for these tests).

Collecting this folder never imports ComfyUI: ``comfy_env`` only looks modules up."""

import os
import shutil
from pathlib import Path

import pytest

from .comfy_env import requirements_problem, sources_problem

HERE = Path(__file__).resolve().parent
PROBLEM = sources_problem() or requirements_problem()
_MODELS = []  # the session's TinyModels, for the summary


def pytest_collection_modifyitems(config, items):
    if PROBLEM is None:
        return
    skip = pytest.mark.skip(reason=PROBLEM)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    for models in _MODELS:
        for line in models.records:
            terminalreporter.write_line(f"tiny ComfyUI model {line}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The session's tiny models (see models.TinyModels), each built on first use in a temp folder, removed after
    (and, should the session be killed, with pytest's old temp folders)."""
    from .models import TinyModels

    root = tmp_path_factory.mktemp("tiny-models")
    models = TinyModels(root)
    _MODELS.append(models)
    try:
        yield models
    finally:
        models.release()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy(tiny_models, tmp_path_factory):
    """ComfyUI imported in this process on the CPU (comfy_env.Comfy), with ADE and ComfyUI-IVMixed loaded and the
    tiny models' folders registered (the models themselves are built when a test first reads them)."""
    import torch

    from .comfy_env import import_comfy

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the video UNet is large enough to gain from every core
    try:
        yield import_comfy(tmp_path_factory.mktemp("comfyui-base"), models=tiny_models.root)
    finally:
        torch.set_num_threads(threads)
