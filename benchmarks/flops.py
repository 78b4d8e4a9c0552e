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

It also prints every network's parameter count and its fp16 weight size.
"""

from __future__ import annotations

import argparse
import os
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
                   copies: Optional[Dict] = None) -> Dict[str, Dict]:
    """The FLOPs of every call ``recorder`` saw, per model: one counting forward per distinct signature, times its
    calls. ``device="meta"`` counts on a shapes-only copy of each module (kept in ``copies`` when given, to reuse);
    ``None`` counts on the module itself, with inputs on its own device (slower; for checks)."""
    copies = {} if copies is None else copies
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
                args, kwargs = materialise(spec, where)
                flops = count_forward_flops(target, args, kwargs)
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


@contextmanager
def shapes_only(modules: Dict[str, torch.nn.Module]) -> Iterator[None]:
    """Make ``modules`` (built on ``meta``) answer calls on real tensors with zeros of their output shape, so a
    pipeline runs its real loop around networks that compute nothing: each distinct input signature runs once on
    ``meta`` for its output shape. Forward hooks (a :class:`CallRecorder`) still see every call."""
    saved = {}
    for name, module in modules.items():
        original = module.forward
        shapes: Dict[Any, TensorSpec] = {}

        def forward(*args, _original=original, _shapes=shapes, **kwargs):
            key = _key(_spec((args, kwargs)))
            if key not in _shapes:
                with torch.no_grad():
                    sample = _original(*_to_meta(args), **_to_meta(kwargs)).sample
                _shapes[key] = TensorSpec(tuple(sample.shape), sample.dtype)
            out = _shapes[key]
            first = args[0] if args else kwargs["sample"]
            return SimpleNamespace(sample=torch.zeros(out.shape, dtype=out.dtype, device=first.device))

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


def run_flops(pipe, call_kwargs: Dict, variants=(("standard", False), ("iv_mixed", True)),
              device=None) -> Dict[str, Dict]:
    """UNet FLOPs of a call of ``pipe`` per variant, with its UNets on ``meta`` (see :func:`shapes_only`) and
    the rest on one real device (``device``, default: the text encoder's; with the text encoders on ``meta``
    too, pass the prompt embeddings in ``call_kwargs`` on ``device``); ``output_type="latent"`` skips decoding.
    Returns, per variant, the guided calls and :func:`count_recorded`."""
    unets = {"video": pipe.unet}
    if getattr(pipe, "image_unet", None) is not None:
        unets["image"] = pipe.image_unet
    real = [torch.device(device)] if device is not None else (
        [p.device for p in pipe.text_encoder.parameters()][:1] or [torch.device("cpu")])
    results = {}
    for name, iv_mixed in variants:
        recorder = CallRecorder()
        handles = [recorder.attach(module, key) for key, module in unets.items()]
        try:
            with shapes_only(unets), executing_on(pipe, real[0]):
                out = pipe(**call_kwargs, iv_mixed=iv_mixed, output_type="latent")
        finally:
            for handle in handles:
                handle.remove()
        results[name] = {"network_calls": dict(out.network_calls), "models": count_recorded(recorder, unets)}
    return results


def per_guided_call(models: Dict[str, Dict], network_calls: Dict[str, int]) -> Dict[str, Optional[float]]:
    """FLOPs per guided call of each model (a guided call may be several forwards when frames are split)."""
    return {m: (models[m]["flops"] / network_calls[m] if network_calls.get(m) else None) for m in models}


# The pipeline components whose weights count, in the order they are printed.
WEIGHTED_COMPONENTS = ("unet", "image_unet", "motion_adapter", "text_encoder", "text_encoder_2", "image_text_encoder",
                       "image_text_encoder_2", "vae")


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
    return out


def main(argv: Optional[List[str]] = None) -> Dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (root, os.path.dirname(os.path.abspath(__file__))):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import tempfile

    from full_size_models import FULL_SIZE, full_size_pipeline
    from ivmixed.registry import PIPELINES
    from ivmixed.runtime import quiet_libraries

    p = argparse.ArgumentParser(description="UNet FLOPs of a full-size run, counted on the CPU (UNets on meta)")
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="Animatediff")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    args = p.parse_args(argv)
    quiet_libraries()
    height, width = args.height or FULL_SIZE[args.pipeline][0], args.width or FULL_SIZE[args.pipeline][1]
    with tempfile.TemporaryDirectory(prefix="ivmixed-flops-") as folder:
        pipe = full_size_pipeline(args.pipeline, folder, unet_device="meta")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red fox running through fresh snow", negative_prompt="blurry", num_frames=args.frames,
                  height=height, width=width, num_inference_steps=args.steps,
                  generator=torch.Generator("cpu").manual_seed(0))
    params = parameter_counts(pipe)
    print(f"{args.pipeline} at full size: parameters (fp16 GB = 2 bytes each)")
    for name, entry in params.items():
        print(f"  {name} ({entry['class']}): {entry['parameters']:,} ({entry['fp16_gb']:.3f} GB)")
    results = run_flops(pipe, kwargs)
    print(f"{args.pipeline}, {args.frames} frames, {height}x{width} px, {args.steps} steps: UNet work")
    for name, r in results.items():
        per_call = per_guided_call(r["models"], r["network_calls"])
        total = sum(m["flops"] for m in r["models"].values())
        parts = ", ".join(f"{m} {r['network_calls'][m]} guided calls x "
                          f"{per_call[m] / 1e12:.2f} TFLOP" for m in r["models"] if per_call[m])
        print(f"  {name}: {total / 1e15:.3f} PFLOP ({parts})")
        for m, entry in r["models"].items():
            for sig in entry["signatures"]:
                sample = sig["inputs"].split("]")[0] + "]"  # the first positional input: the latents
                print(f"    {m} UNet forward, sample {sample}: {sig['calls']} calls x "
                      f"{sig['flops_per_call'] / 1e12:.4f} TFLOP")
    results["parameters"] = params
    return results


if __name__ == "__main__":
    main()
