"""The floating-point work of the UNets' forward calls: recorded call shapes, counted once per distinct shape.

A run's UNet work is the sum over its forward calls of each call's FLOPs. The calls of one run have few distinct
input shapes (the video UNet sees the same latents shape at every step), so the benchmark records every call's
input signature (tensor shapes and dtypes, the kinds of the other arguments) with forward pre-hooks, then counts
one forward per distinct signature with ``torch.utils.flop_counter.FlopCounterMode`` and multiplies by its call
count. The counting forward runs on a copy of the network built from its config on the ``meta`` device: shapes
only, no weights, no time or memory on the benchmark's device, whatever offload or compilation the benchmark
uses. FLOPs here are 2 x multiply-accumulates of convolutions, matrix products and attention (scores and values);
normalisations, activations and other elementwise work are not counted (they are a small share of the total).

Command line: the UNet work of a full-size run, counted on the CPU without a GPU (the UNets on ``meta``)::

    python benchmarks/flops.py --pipeline Animatediff --steps 50      # 16 frames at the training size
    python benchmarks/flops.py --pipeline AnimatediffSDXL --steps 50  # 16 frames at 1024x1024
    python benchmarks/flops.py --pipeline Animatediff --controlnets 1  # with a full-size SD 1.5 ControlNet

It also prints every network's parameter count and its fp16 weight size. With ``--controlnets N`` the run has N
full-size ControlNets (on ``meta`` too) and one control image per frame; under IV-mixed sampling they run on every
guided call of both UNets, and each ControlNet forward is counted under the UNet whose call it feeds
(``controlnet_video`` / ``controlnet_image``, the keys of the pipeline's ``network_calls``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name; the first
# match wins, so the more specific names come first.
PEAK_TFLOPS: Tuple[Tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("4090", 165.0),
)
PEAK_DTYPES = ("fp16", "bf16")  # the peaks above are for these; fp32 (or TF32) peaks are different


def peak_tflops(device_name: Optional[str]) -> Optional[float]:
    """The dense fp16/bf16 peak of a GPU named ``device_name`` (``torch.cuda.get_device_name``), or ``None``."""
    if not device_name:
        return None
    name = device_name.lower()
    for key, peak in PEAK_TFLOPS:
        if key.lower() in name:
            return peak
    return None


# -- call signatures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    shape: Tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{str(self.dtype).replace('torch.', '')}[{', '.join(map(str, self.shape))}]"


class Number:
    """A Python number argument (a timestep): part of a signature by its type only, so the calls at different
    timesteps share one count. Keeps the first value seen, to replay the call."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other) -> bool:
        return isinstance(other, Number) and type(other.value) is type(self.value)

    def __hash__(self) -> int:
        return hash((Number, type(self.value)))

    def __str__(self) -> str:
        return type(self.value).__name__


def _spec(value: Any) -> Any:
    """``value`` with tensors replaced by their :class:`TensorSpec` and numbers by :class:`Number`."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return Number(value)
    if isinstance(value, dict):
        return {k: _spec(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_spec(v) for v in value)
    return value


def _key(spec: Any) -> Any:
    """A hashable key of a spec tree."""
    if isinstance(spec, dict):
        return ("dict",) + tuple(sorted((k, _key(v)) for k, v in spec.items()))
    if isinstance(spec, (list, tuple)):
        return (type(spec).__name__,) + tuple(_key(v) for v in spec)
    try:
        hash(spec)
    except TypeError:
        return ("unhashable", type(spec).__name__)
    return spec


def describe(spec: Any) -> str:
    """A short text of a spec tree, for the JSON record: ``float16[2, 4, 16, 64, 64], int, ...``."""
    if isinstance(spec, dict):
        return "{" + ", ".join(f"{k}={describe(v)}" for k, v in spec.items() if v is not None) + "}"
    if isinstance(spec, (list, tuple)):
        return ", ".join(describe(v) for v in spec)
    return str(spec)


def materialise(spec: Any, device) -> Any:
    """A spec tree back to values: tensors of the recorded shape and dtype on ``device`` (zeros, or empty on
    ``meta``), numbers with their recorded value."""
    if isinstance(spec, TensorSpec):
        return torch.zeros(spec.shape, dtype=spec.dtype, device=device)
    if isinstance(spec, Number):
        return spec.value
    if isinstance(spec, dict):
        return {k: materialise(v, device) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return type(spec)(materialise(v, device) for v in spec)
    return spec


class CallRecorder:
    """Records the input signature of every forward call of some modules, by forward pre-hooks that read only
    shapes and dtypes (no synchronisation, no copies)."""

    def __init__(self):
        self.counts: Dict[str, Counter] = {}
        self.specs: Dict[Tuple[str, Any], Any] = {}

    def record(self, model: str, args: tuple, kwargs: dict) -> None:
        spec = _spec((tuple(args), dict(kwargs)))
        key = _key(spec)
        self.counts.setdefault(model, Counter())[key] += 1
        self.specs.setdefault((model, key), spec)

    def attach(self, module: torch.nn.Module, model: str):
        self.counts.setdefault(model, Counter())

        def pre(_module, args, kwargs):
            self.record(model, args, kwargs)

        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def forward_calls(self) -> Dict[str, int]:
        return {model: sum(counts.values()) for model, counts in self.counts.items()}

    def signatures(self, model: str) -> List[Tuple[Any, int]]:
        """``(spec, calls)`` of each distinct signature of ``model``, most called first."""
        return [(self.specs[(model, key)], n) for key, n in self.counts.get(model, Counter()).most_common()]


# -- counting -----------------------------------------------------------------------------------------------


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Scores ``q k^T`` and values ``p v`` of attention over ``(batch, heads, length, dim)`` tensors."""
    *lead, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    batch_heads = 1
    for n in lead:
        batch_heads *= n
    return 2 * batch_heads * lq * lk * d + 2 * batch_heads * lq * lk * dv


def _custom_mapping() -> Dict:
    """Attention kernels FlopCounterMode has no formula for: on the CPU scaled-dot-product attention runs a
    kernel of its own, which would otherwise count as zero (on CUDA and ``meta`` it is counted already)."""
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_flops
    return mapping


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_custom_mapping())


def _plain(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_orig_mod", module)  # a torch.compile wrapper


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    for param in _plain(module).parameters():
        return param.dtype
    return torch.float32


def meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """``module``'s architecture from its config on the ``meta`` device, in its dtype: shapes without weights."""
    module = _plain(module)
    if all(p.device.type == "meta" for p in module.parameters()) and not hasattr(module, "_hf_hook"):
        return module
    with torch.device("meta"):
        copy = type(module).from_config(module.config)
    return copy.to(dtype=module_dtype(module)).eval()


def count_forward_flops(module: torch.nn.Module, args: tuple, kwargs: dict) -> int:
    """FLOPs of one forward of ``module`` on these inputs (no gradients)."""
    with torch.no_grad(), flop_counter() as counter:
        module(*args, **kwargs)
    return int(counter.get_total_flops())


def count_recorded(recorder: CallRecorder, modules: Dict[str, torch.nn.Module], device="meta",
                   copies: Optional[Dict] = None, counted: Optional[Dict] = None) -> Dict[str, Dict]:
    """The FLOPs of every call ``recorder`` saw, per model: one counting forward per distinct signature, times its
    calls. ``device="meta"`` counts on a shapes-only copy of each module (kept in ``copies`` when given, to reuse);
    ``None`` counts on the module itself, with inputs on its own device (slower; for checks). ``counted`` (a dict
    kept across calls) reuses the count of a signature already counted on the same module: one ControlNet fed
    to both UNets, or the same call in another variant's run."""
    copies = {} if copies is None else copies
    counted = {} if counted is None else counted
    out: Dict[str, Dict] = {}
    for model, counts in recorder.counts.items():
        signatures = recorder.signatures(model)
        entry = {"flops": 0, "forward_calls": sum(counts.values()), "signatures": []}
        if signatures:
            module = modules[model]
            if device == "meta":
                if id(module) not in copies:
                    copies[id(module)] = meta_copy(module)
                target, where = copies[id(module)], "meta"
            else:
                target = _plain(module)
                where = next(target.parameters()).device
            for spec, calls in signatures:
                done = (id(target), where, _key(spec))
                if done not in counted:
                    args, kwargs = materialise(spec, where)
                    counted[done] = count_forward_flops(target, args, kwargs)
                flops = counted[done]
                entry["flops"] += flops * calls
                entry["signatures"].append({"inputs": describe(spec), "calls": calls, "flops_per_call": flops})
        out[model] = entry
    return out


# -- counting a whole run without running the networks ------------------------------------------------------


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    return value


def _output_spec(output: Any) -> Any:
    """A network's output as specs: a ``.sample`` output (a UNet's) as ``{"sample": spec}``, tuples (a
    ControlNet's ``return_dict=False`` residuals) as tuples of specs."""
    if hasattr(output, "sample"):
        return {"sample": _spec(output.sample)}
    return _spec(output)


@contextmanager
def shapes_only(modules: Dict[str, torch.nn.Module], cache: Optional[Dict] = None) -> Iterator[None]:
    """Make ``modules`` (built on ``meta``) answer calls on real tensors with zeros of their output shape, so a
    pipeline runs its real loop around networks that compute nothing: each distinct input signature runs once on
    ``meta`` for its output shape (kept in ``cache`` when given, to reuse in another run). UNets answer with
    ``.sample``, fresh zeros every call; ControlNets (called with ``return_dict=False``) with their tuple of
    residuals, zeros allocated once per signature and device and returned again on every call (a full-size
    ControlNet's residuals are 0.8 GB at 32 rows: allocating them on every call would take most of a run's
    time). The pipeline only adds residuals to one another (MultiControlNetModel sums them, in place for the mid
    block's) and hands them to a UNet, so they stay zero. Forward hooks (a :class:`CallRecorder`) still see
    every call."""
    saved = {}
    cache = {} if cache is None else cache
    for name, module in modules.items():
        original = module.forward
        shapes: Dict[Any, Any] = cache.setdefault(id(module), {})

        def forward(*args, _original=original, _shapes=shapes, **kwargs):
            key = _key(_spec((args, kwargs)))
            if key not in _shapes:
                with torch.no_grad():
                    _shapes[key] = _output_spec(_original(*_to_meta(args), **_to_meta(kwargs)))
            first = args[0] if args else kwargs["sample"]
            out = _shapes[key]
            if isinstance(out, dict) and set(out) == {"sample"}:
                return SimpleNamespace(sample=materialise(out["sample"], first.device))
            zeros = (key, str(first.device))
            if zeros not in _shapes:
                _shapes[zeros] = materialise(out, first.device)
            return _shapes[zeros]

        saved[name] = module
        module.forward = forward
    try:
        yield
    finally:
        for module in saved.values():
            del module.forward  # back to the class's forward


@contextmanager
def executing_on(pipe, device) -> Iterator[None]:
    """Pin ``pipe._execution_device`` to ``device``: with its UNets on ``meta`` diffusers may pick ``meta``."""
    cls = type(pipe)
    pipe.__class__ = type(cls.__name__, (cls,), {"_execution_device": property(lambda self: torch.device(device))})
    try:
        yield
    finally:
        pipe.__class__ = cls


def controlnet_nets(pipe) -> List[torch.nn.Module]:
    """The ControlNets of ``pipe``'s ``controlnet``: none, the one, or the nets of a ``MultiControlNetModel``."""
    net = getattr(pipe, "controlnet", None)
    if net is None:
        return []
    return list(getattr(net, "nets", [net]))


class ControlNetCalls:
    """Records every ControlNet forward under the UNet whose call it feeds: ``controlnet_video/<j>`` or
    ``controlnet_image/<j>`` for net ``j``. The pipeline runs the ControlNet(s) on a guided call's input just
    before the UNet call that takes the residuals (ivmixed.pipelines.control), so the ControlNet calls seen since
    the last UNet call are that UNet's; the ControlNet's own inputs (the same rows for both UNets) cannot tell."""

    def __init__(self, recorder: CallRecorder, nets: List[torch.nn.Module], unets: Dict[str, torch.nn.Module]):
        self.recorder = recorder
        self.pending: List[Tuple[int, tuple, dict]] = []
        self.handles = []
        self.modules: Dict[str, torch.nn.Module] = {}
        for j, net in enumerate(nets):
            for model in unets:
                name = f"controlnet_{model}/{j}"
                recorder.counts.setdefault(name, Counter())
                self.modules[name] = net
            self.handles.append(net.register_forward_pre_hook(self._net_hook(j), with_kwargs=True))
        for model, unet in unets.items():
            self.handles.append(unet.register_forward_pre_hook(self._unet_hook(model), with_kwargs=True))

    def _net_hook(self, j: int):
        def pre(_module, args, kwargs):
            self.pending.append((j, args, kwargs))
        return pre

    def _unet_hook(self, model: str):
        def pre(_module, _args, _kwargs):
            for j, args, kwargs in self.pending:
                self.recorder.record(f"controlnet_{model}/{j}", args, kwargs)
            self.pending.clear()
        return pre

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def check(self) -> None:
        """After a run: every ControlNet call was followed by the UNet call it fed."""
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} ControlNet call(s) fed no UNet call")


def merge_controlnets(models: Dict[str, Dict]) -> Dict[str, Dict]:
    """:func:`count_recorded`'s entries with the per-net ``controlnet_<model>/<j>`` ones summed into
    ``controlnet_<model>`` (the keys of ``network_calls``: one evaluation per guided call per ControlNet); each
    signature keeps its ``net``."""
    out: Dict[str, Dict] = {}
    for name, entry in models.items():
        if "/" not in name:
            out[name] = entry
            continue
        merged_name, j = name.split("/")
        merged = out.setdefault(merged_name, {"flops": 0, "forward_calls": 0, "signatures": []})
        merged["flops"] += entry["flops"]
        merged["forward_calls"] += entry["forward_calls"]
        merged["signatures"] += [dict(sig, net=int(j)) for sig in entry["signatures"]]
    return out


def run_flops(pipe, call_kwargs: Dict, variants=(("standard", False), ("iv_mixed", True)),
              device=None) -> Dict[str, Dict]:
    """UNet (and ControlNet) FLOPs of a call of ``pipe`` per variant, with its UNets and ControlNets on ``meta``
    (see :func:`shapes_only`) and the rest on one real device (``device``, default: the text encoder's; with the
    text encoders on ``meta`` too, pass the prompt embeddings in ``call_kwargs`` on ``device``);
    ``output_type="latent"`` skips decoding. With ``pipe.controlnet`` set (and ``conditioning_frames`` in
    ``call_kwargs``) every ControlNet forward is counted too, as ``controlnet_video`` / ``controlnet_image`` (the
    UNet whose call it feeds, :class:`ControlNetCalls`). Returns, per variant, the guided calls and
    :func:`count_recorded` (ControlNets merged, :func:`merge_controlnets`)."""
    unets = {"video": pipe.unet}
    if getattr(pipe, "image_unet", None) is not None:
        unets["image"] = pipe.image_unet
    nets = controlnet_nets(pipe)
    networks = dict(unets, **{f"controlnet/{j}": net for j, net in enumerate(nets)})
    real = [torch.device(device)] if device is not None else (
        [p.device for p in pipe.text_encoder.parameters()][:1] or [torch.device("cpu")])
    results = {}
    # output shapes and FLOPs of each network's distinct calls, and the meta copies, shared by the variants
    shapes, counted, copies = {}, {}, {}
    for name, iv_mixed in variants:
        recorder = CallRecorder()
        handles = [recorder.attach(module, key) for key, module in unets.items()]
        control = ControlNetCalls(recorder, nets, unets)
        try:
            with shapes_only(networks, shapes), executing_on(pipe, real[0]):
                out = pipe(**call_kwargs, iv_mixed=iv_mixed, output_type="latent")
        finally:
            for handle in handles:
                handle.remove()
            control.remove()
        control.check()
        models = count_recorded(recorder, dict(unets, **control.modules), copies=copies, counted=counted)
        results[name] = {"network_calls": dict(out.network_calls), "models": merge_controlnets(models)}
    return results


def per_guided_call(models: Dict[str, Dict], network_calls: Dict[str, int]) -> Dict[str, Optional[float]]:
    """FLOPs per guided call of each model (a guided call may be several forwards when frames are split)."""
    return {m: (models[m]["flops"] / network_calls[m] if network_calls.get(m) else None) for m in models}


# The pipeline components whose weights count, in the order they are printed.
WEIGHTED_COMPONENTS = ("unet", "image_unet", "motion_adapter", "controlnet", "text_encoder", "text_encoder_2",
                       "image_text_encoder", "image_text_encoder_2", "vae")


def parameter_counts(pipe) -> Dict[str, Dict]:
    """Parameters of each network of ``pipe`` (on any device, ``meta`` included): ``{component: {"class",
    "parameters", "fp16_gb"}}``, fp16 GB = 2 bytes a parameter / 1e9. Diffusers' AnimateDiff pipelines keep the
    ``motion_adapter`` registered beside the motion UNet that was built from it (which holds copies of its
    weights), so it is listed on its own: ``pipe.to(device)`` moves it too."""
    out = {}
    for name in WEIGHTED_COMPONENTS:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            n = sum(p.numel() for p in _plain(module).parameters())
            out[name] = {"class": type(_plain(module)).__name__, "parameters": n, "fp16_gb": 2 * n / 1e9}
            if hasattr(module, "nets"):  # a MultiControlNetModel: the sum of its nets
                out[name]["nets"] = len(module.nets)
    return out


def control_frames(frames: int, height: int, width: int, controlnets: int):
    """``conditioning_frames`` for ``controlnets`` ControlNets: one black RGB control image per frame (the
    content does not change the work), one list for a single ControlNet, one list per ControlNet for several."""
    import PIL.Image

    video = [PIL.Image.new("RGB", (width, height)) for _ in range(frames)]
    return video if controlnets == 1 else [list(video) for _ in range(controlnets)]


def first_tensor(inputs: str) -> str:
    """The first tensor of a :func:`describe` text: ``float32[2, 4, 16, 64, 64]``."""
    match = re.search(r"\w+\[[^\]]*\]", inputs)
    return match.group(0) if match else inputs


def unet_and_controlnet_flops(models: Dict[str, Dict]) -> Tuple[int, int]:
    """A run's FLOPs split into the UNets' and the ControlNets'."""
    control = sum(m["flops"] for name, m in models.items() if name.startswith("controlnet"))
    return sum(m["flops"] for m in models.values()) - control, control


def main(argv: Optional[List[str]] = None) -> Dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (root, os.path.dirname(os.path.abspath(__file__))):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import tempfile

    from full_size_models import FULL_SIZE, FULL_SIZE_MODELS, full_size_pipeline
    from ivmixed.registry import PIPELINES
    from ivmixed.runtime import quiet_libraries

    p = argparse.ArgumentParser(description="UNet FLOPs of a full-size run, counted on the CPU (UNets on meta)")
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="Animatediff")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--controlnets", type=int, default=0,
                   help="full-size ControlNets (on meta) with one control image per frame, counted as the UNets are "
                        "(pipelines with a ControlNet architecture: "
                        + ", ".join(n for n, m in FULL_SIZE_MODELS.items() if m.controlnet) + ")")
    args = p.parse_args(argv)
    if args.controlnets < 0:
        p.error("--controlnets must be 0 or more")
    models = FULL_SIZE_MODELS.get(args.pipeline)
    if args.controlnets and (models is None or models.controlnet is None):
        p.error(f"--controlnets: no full-size ControlNet architecture for {args.pipeline}")
    quiet_libraries()
    height, width = args.height or FULL_SIZE[args.pipeline][0], args.width or FULL_SIZE[args.pipeline][1]
    with tempfile.TemporaryDirectory(prefix="ivmixed-flops-") as folder:
        pipe = full_size_pipeline(args.pipeline, folder, unet_device="meta", controlnets=args.controlnets)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red fox running through fresh snow", negative_prompt="blurry", num_frames=args.frames,
                  height=height, width=width, num_inference_steps=args.steps,
                  generator=torch.Generator("cpu").manual_seed(0))
    if args.controlnets:
        kwargs["conditioning_frames"] = control_frames(args.frames, height, width, args.controlnets)
    params = parameter_counts(pipe)
    print(f"{args.pipeline} at full size: parameters (fp16 GB = 2 bytes each)")
    for name, entry in params.items():
        nets = f", {entry['nets']} nets" if "nets" in entry else ""
        print(f"  {name} ({entry['class']}{nets}): {entry['parameters']:,} ({entry['fp16_gb']:.3f} GB)")
    results = run_flops(pipe, kwargs)
    work = "UNet and ControlNet work" if args.controlnets else "UNet work"
    print(f"{args.pipeline}, {args.frames} frames, {height}x{width} px, {args.steps} steps: {work}")
    for name, r in results.items():
        per_call = per_guided_call(r["models"], r["network_calls"])
        total = sum(m["flops"] for m in r["models"].values())
        calls = {m: "evaluations" if m.startswith("controlnet") else "guided calls" for m in r["models"]}
        parts = ", ".join(f"{m} {r['network_calls'][m]} {calls[m]} x {per_call[m] / 1e12:.2f} TFLOP"
                          for m in r["models"] if per_call[m])
        print(f"  {name}: {total / 1e15:.3f} PFLOP ({parts})")
        for m, entry in r["models"].items():
            for sig in entry["signatures"]:
                sample = first_tensor(sig["inputs"])  # the first input: the latents (positional or sample=)
                if m.startswith("controlnet"):
                    cond = first_tensor(sig["inputs"].split("controlnet_cond=")[1])
                    what = f"{m} forward (ControlNet {sig['net']}), sample {sample}, controlnet_cond {cond}"
                else:
                    what = f"{m} UNet forward, sample {sample}"
                print(f"    {what}: {sig['calls']} calls x {sig['flops_per_call'] / 1e12:.4f} TFLOP")
    if args.controlnets:
        plural = "s add" if args.controlnets > 1 else " adds"
        print(f"What {args.controlnets} ControlNet{plural} (without: the UNets' work alone; adding the residuals is "
              "elementwise work, not counted)")
        for name, r in results.items():
            unet, control = unet_and_controlnet_flops(r["models"])
            print(f"  {name}: without {unet / 1e15:.3f} PFLOP, with {(unet + control) / 1e15:.3f} PFLOP "
                  f"(+{control / 1e15:.3f} PFLOP, +{100 * control / unet:.1f}%)")
    results["parameters"] = params
    return results


if __name__ == "__main__":
    main()
