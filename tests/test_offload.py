"""Model offload on a fake device: which modules cross between the CPU and the accelerator, and how often.

diffusers' model offload and accelerate's hooks are the real ones; only the device is fake. The execution device is
``cpu:0`` (diffusers turns ``device="cpu"`` into it), a different name for the same memory, so the outputs are
computed as usual and every ``.to()`` of a pipeline module says which way it goes: ``.to("cpu:0")`` onto the
device, ``.to("cpu")`` back to the host. :class:`FakeDevice` keeps each module's side and counts the crossings.
"""

from collections import Counter

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload, remove_hook_from_module

from ivmixed.performance import UNET_NAMES, apply_performance_options, enable_offload
from ivmixed.testing import tiny_pipeline

EXECUTION = torch.device("cpu", 0)
HOST = torch.device("cpu")
STEPS = 3
# zz=1000: every zigzag step moves with the image model twice, each time between two video moves, so a run
# switches to the image UNet 2 * STEPS times (the first time from the text encoders).
IMAGE_RUNS = 2 * STEPS
HOOKED = {"Animatediff": ["motion_adapter", "text_encoder", "vae"],
          "ModelScope": ["image_text_encoder", "text_encoder", "vae"]}


def _to_target(args, kwargs):
    target = kwargs.get("device", args[0] if args else None)
    return torch.device(target) if isinstance(target, (str, torch.device)) else None


class FakeDevice:
    """Which side (host or device) every module of ``pipe`` is on, and its crossings since :meth:`reset`.

    The modules' ``.to`` is wrapped to record the crossing each call asks for. accelerate's
    ``CpuOffload.pre_forward`` reads the parameters' device to decide whether to offload the previous module of the
    chain and to move this one; on the CPU that always reads ``cpu``, so it is replaced by the same decisions made
    on the recorded side.
    """

    def __init__(self, pipe, monkeypatch):
        self.names = {}
        self.on_device = {}
        self.moves_in, self.moves_out = Counter(), Counter()
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                self.names[id(module)] = name
                self.on_device[name] = False  # loaded on the CPU
        # On the classes: removing a hook also removes instance attributes named ``to``. The originals are taken
        # first, so that a subclass's wrapper does not wrap its base class's.
        classes = {type(module) for module in pipe.components.values() if isinstance(module, torch.nn.Module)}
        originals = {cls: cls.to for cls in classes}
        for cls, to in originals.items():
            monkeypatch.setattr(cls, "to", self._recording(to))
        fake = self

        def pre_forward(hook, module, *args, **kwargs):
            previous = hook.prev_module_hook
            if previous is not None and fake.is_on_device(previous.model):
                previous.offload()
            if not fake.is_on_device(module):
                module.to(hook.execution_device)
            return args, kwargs

        monkeypatch.setattr(CpuOffload, "pre_forward", pre_forward)

    def _recording(self, to):
        def recorded(module, *args, **kwargs):
            name = self.names.get(id(module))
            if name is None:  # not a module of the pipeline
                return to(module, *args, **kwargs)
            target = _to_target(args, kwargs)
            if target == EXECUTION and not self.on_device[name]:
                self.moves_in[name] += 1
                self.on_device[name] = True
            elif target == HOST and self.on_device[name]:
                self.moves_out[name] += 1
                self.on_device[name] = False
            elif target is not None and target not in (EXECUTION, HOST):
                raise AssertionError(f"{name} moved to an unexpected device {target}")
            return to(module, *args, **kwargs)

        return recorded

    def is_on_device(self, module) -> bool:
        return self.on_device[self.names[id(module)]]

    def reset(self):
        self.moves_in.clear()
        self.moves_out.clear()

    def moves(self):
        return {name: (self.moves_in[name], self.moves_out[name]) for name in self.on_device
                if self.moves_in[name] or self.moves_out[name]}


def generate(pipe):
    out = pipe(prompt="a cat", negative_prompt="blurry", num_frames=2, num_inference_steps=STEPS, zz=1000,
               output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.network_calls["image"] == IMAGE_RUNS
    return out.frames


@pytest.fixture(params=["Animatediff", "ModelScope"])
def pipeline_name(request):
    return request.param


@pytest.fixture
def pipe(pipeline_name):
    return tiny_pipeline(pipeline_name)


def test_model_offload_keeps_both_unets_on_the_device_for_the_whole_run(pipe, pipeline_name, monkeypatch):
    expected = generate(pipe)  # offload "none", all on the CPU
    fake = FakeDevice(pipe, monkeypatch)

    assert enable_offload(pipe, "model", "cpu") == ["image_unet", "unet"]
    # placing: each UNet moves to the device once; the rest waits on the host, hooked
    assert fake.moves() == {"image_unet": (1, 0), "unet": (1, 0)}
    for name in UNET_NAMES:
        assert not hasattr(getattr(pipe, name), "_hf_hook")
    hooked = sorted(name for name, module in pipe.components.items() if isinstance(getattr(module, "_hf_hook", None),
                                                                                   CpuOffload))
    assert hooked == HOOKED[pipeline_name]
    assert pipe._execution_device == EXECUTION

    for _ in range(2):  # the second call sees what the end of the first one (diffusers' re-enable) left
        fake.reset()
        got = generate(pipe)
        assert np.array_equal(got, expected)
        # the text encoders and the VAE come in once per call and go back by its end; the UNets never move
        assert fake.moves() == {name: (1, 1) for name in HOOKED[pipeline_name] if name != "motion_adapter"}
        assert {name for name, there in fake.on_device.items() if there} == {"image_unet", "unet"}


def test_diffusers_own_re_enable_would_move_each_unet_out_and_back(pipe, monkeypatch):
    """What ``enable_offload`` saves at the end of every call: diffusers' ``enable_model_cpu_offload`` (which its
    ``maybe_free_model_hooks`` calls) starts by moving the whole pipeline to the CPU."""
    fake = FakeDevice(pipe, monkeypatch)
    enable_offload(pipe, "model", "cpu")
    fake.reset()
    type(pipe).enable_model_cpu_offload(pipe, device=pipe._offload_device)
    assert fake.moves() == {"image_unet": (1, 1), "unet": (1, 1)}
    fake.reset()
    pipe.maybe_free_model_hooks()  # the re-enable enable_offload installs: the UNets stay
    assert fake.moves() == {}


def test_model_offload_places_again_when_its_hooks_changed(pipe, monkeypatch):
    """A module without the hook the placement gave it (as one swapped in since would be): the re-enable at the
    end of a call falls back to diffusers' full placement, which hooks it and moves each UNet out and back."""
    fake = FakeDevice(pipe, monkeypatch)
    enable_offload(pipe, "model", "cpu")
    remove_hook_from_module(pipe.text_encoder)
    fake.reset()
    pipe.maybe_free_model_hooks()
    assert isinstance(pipe.text_encoder._hf_hook, CpuOffload)
    assert fake.moves() == {"image_unet": (1, 1), "unet": (1, 1)}


def test_model_swap_moves_the_image_unet_at_every_switch(pipe, pipeline_name, monkeypatch):
    expected = generate(pipe)
    fake = FakeDevice(pipe, monkeypatch)
    assert enable_offload(pipe, "model-swap", "cpu") == []
    assert "model_cpu_offload_seq" not in vars(pipe)  # the class's chain, UNets included
    for name in UNET_NAMES:
        assert isinstance(getattr(pipe, name)._hf_hook, CpuOffload)
    for _ in range(2):
        fake.reset()
        got = generate(pipe)
        assert np.array_equal(got, expected)
        moves = fake.moves()
        # the chain lists the image UNet before the video UNet: each image call brings it in, the next video
        # call sends it back; the video UNet comes in once and leaves when the VAE decodes
        assert moves["image_unet"] == (IMAGE_RUNS, IMAGE_RUNS)
        assert moves["unet"] == (1, 1)
        assert moves["vae"] == (1, 1) and moves["text_encoder"] == (1, 1)


def test_switching_modes_drops_the_resident_setup(pipe, monkeypatch):
    FakeDevice(pipe, monkeypatch)
    enable_offload(pipe, "model", "cpu")
    assert vars(pipe)["_exclude_from_cpu_offload"] == ["unet", "image_unet"]
    enable_offload(pipe, "model-swap", "cpu")
    for name in ("model_cpu_offload_seq", "_exclude_from_cpu_offload", "enable_model_cpu_offload"):
        assert name not in vars(pipe)
    assert isinstance(pipe.image_unet._hf_hook, CpuOffload)


def test_unknown_mode_and_the_record(pipe):
    with pytest.raises(ValueError, match="model-swap"):
        enable_offload(pipe, "disk", "cpu")
    record = apply_performance_options(pipe, device="cpu")
    assert record["resident"] == sorted(name for name, module in pipe.components.items()
                                        if isinstance(module, torch.nn.Module))
