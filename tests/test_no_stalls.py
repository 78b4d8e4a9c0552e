"""Work a GPU would wait on: host reads of device values and tensors made from host data inside the sampling
loop, and torch.compile graph breaks and recompiles. Counted on the tiny models on the CPU."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from runs import HostTraffic, no_bar

from ivmixed.performance import apply_performance_options
from ivmixed.sampler import IVMixedSettings, sample_iv_mixed
from ivmixed.testing import t2v_scheduler, tiny_pipeline

PIPELINES = ("Animatediff", "ModelScope", "VideoCrafter")


@pytest.fixture(scope="module", params=PIPELINES)
def pipe(request):
    pipe = tiny_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def traffic(pipe, steps, iv_mixed, **kwargs):
    mode = HostTraffic()
    with mode:
        pipe(prompt="a cat", num_frames=2, num_inference_steps=steps, output_type="latent", iv_mixed=iv_mixed,
             generator=torch.Generator().manual_seed(0), **kwargs)
    return {key: mode.counts[key] for key in ("host_reads", "host_made", "device_copies")}


def test_iv_mixed_adds_no_host_traffic_per_zigzag_step(pipe):
    """Standard sampling's traffic is the stock scheduler's own (DDIM indexes its alphas with the device timestep)
    and the prompt encoding's; IV-mixed may add a fixed amount per run (its zigzag timesteps, the image model's
    prompt), never any per zigzag step: the extra traffic is the same with 3 and with 5 zigzag steps."""
    extra = {}
    for steps in (3, 5):
        standard, iv_mixed = traffic(pipe, steps, False), traffic(pipe, steps, True)
        extra[steps] = {key: iv_mixed[key] - standard[key] for key in standard}
    assert extra[3] == extra[5]
    assert extra[5]["host_reads"] == 0
    assert extra[5]["device_copies"] == 0


def test_the_zigzag_moves_with_one_device_copy_of_its_timesteps():
    """The sampler alone (no networks): IV-mixed makes one tensor from host data per run, however many steps."""
    def model(x, t, w):
        return torch.zeros_like(x)

    made = {}
    for steps in (2, 6):
        scheduler = t2v_scheduler()
        scheduler.set_timesteps(steps)
        mode = HostTraffic()
        with mode:
            sample_iv_mixed(model, model, torch.zeros(1, 4, 2, 8, 8), scheduler, 7.5, IVMixedSettings(),
                            progress_bar=no_bar)
        made[steps] = dict(mode.counts)
        standard = HostTraffic()
        with standard:
            sample_iv_mixed(model, None, torch.zeros(1, 4, 2, 8, 8), scheduler, 7.5, None,
                            progress_bar=no_bar)
        made[steps] = {key: made[steps].get(key, 0) - standard.counts.get(key, 0)
                       for key in ("host_reads", "host_made", "device_copies")}
    assert made[2] == made[6] == {"host_reads": 0, "host_made": 1, "device_copies": 0}


def test_every_network_call_gets_a_device_timestep():
    """The networks never get a Python number (diffusers would make a device tensor of it at every call, and
    torch.compile would specialise on its value): every timestep is a 0-d tensor on the latents' device, of the
    scheduler's dtype, in the zigzag as in the main steps."""
    seen = []

    def model(x, t, w):
        seen.append(t)
        return torch.zeros_like(x)

    scheduler = t2v_scheduler()
    scheduler.set_timesteps(4)
    sample_iv_mixed(model, model, torch.zeros(1, 4, 2, 8, 8), scheduler, 7.5, IVMixedSettings(),
                    progress_bar=no_bar)
    assert len(seen) == 4 * 5
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 and t.dtype == scheduler.timesteps.dtype for t in seen)
    first = [int(t) for t in seen[:5]]  # step 0: M at t, the VDM at t1, M at t2, the VDM at t1, then the main step
    t0, stride = int(scheduler.timesteps[0]), scheduler.config.num_train_timesteps // 4
    assert first == [t0, t0 - stride, t0 - 2 * stride, t0 - stride, t0]


def test_compile_makes_one_graph_per_unet_and_never_recompiles(pipe, monkeypatch):
    """``compile=True`` through the pipeline's own option: each UNet compiles to one graph with no graph breaks
    (``fullgraph=True``; VideoCrafter's fps condition is no longer a forward hook), and a second call with other
    timesteps (another step count) compiles nothing more: timesteps are tensors, so no value is specialised."""
    counters = {}
    real_compile = torch.compile
    modes = []

    def counting_compile(module, mode=None, **kwargs):
        modes.append(mode)
        counters[len(counters)] = counter = CompileCounter()
        return real_compile(module, backend=counter, fullgraph=True)

    monkeypatch.setattr(torch, "compile", counting_compile)
    originals = {name: getattr(pipe, name) for name in ("unet", "image_unet")}
    try:
        apply_performance_options(pipe, device="cpu", compile=True, compile_mode="max-autotune")
        assert modes == ["max-autotune", "max-autotune"]
        for steps in (2, 3):
            pipe(prompt="a cat", num_frames=2, num_inference_steps=steps, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
        assert [counter.frame_count for counter in counters.values()] == [1, 1]
    finally:
        for name, module in originals.items():
            setattr(pipe, name, module)


def test_compiled_pipeline_equals_the_eager_one():
    pipe = tiny_pipeline("VideoCrafter")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat", num_frames=2, num_inference_steps=2, output_type="latent")
    eager = pipe(generator=torch.Generator().manual_seed(1), **kwargs).frames
    pipe.unet = torch.compile(pipe.unet, backend="eager", fullgraph=True)
    compiled = pipe(generator=torch.Generator().manual_seed(1), **kwargs).frames
    torch.testing.assert_close(compiled, eager)


def test_unknown_compile_mode_is_refused():
    pipe = tiny_pipeline("Animatediff")
    with pytest.raises(ValueError, match="compile_mode must be one of default, reduce-overhead, max-autotune"):
        apply_performance_options(pipe, device="cpu", compile=True, compile_mode="fastest")
