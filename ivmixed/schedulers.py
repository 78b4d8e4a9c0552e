"""The samplers a run may choose for its main steps, by name, and how to build them (diffusers is imported on use).

:func:`make_scheduler` turns a pipeline's scheduler into the named one over the same noise schedule (diffusers'
``from_config``), with an optional timestep spacing and beta schedule. :func:`scheduler_name` and
:func:`scheduler_identity` say what a built scheduler is, for run records and fingerprints.

The names give each sampler on its evenly spaced timesteps: an explicitly named scheduler never inherits
``use_karras_sigmas``, ``use_exponential_sigmas`` or ``use_beta_sigmas`` from the config it is built from (a
checkpoint's config, or a hidden key diffusers carried along), since those bunch the steps up at low noise and
the zigzag's moves, a fixed ``T // N`` timesteps each, would no longer match the main steps. With ``name=None``
the pipeline's scheduler is kept as it is; if it spreads its steps unevenly, IV-mixed sampling refuses it
(:func:`ivmixed.sampler.zigzag_stride`) and standard sampling runs it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

# name -> what it is, for help texts and messages
SCHEDULERS = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler-a": "Euler ancestral",
    "dpm++": "DPM-Solver++ (multistep)",
    "dpm++-sde": "DPM-Solver++ (SDE)",
    "lcm": "LCM",
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
BETA_SCHEDULES = ("linear", "scaled_linear")

# name -> (diffusers class, the settings the name fixes)
SCHEDULER_CLASSES = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "lcm": ("LCMScheduler", {}),
}
# Samplers that draw fresh noise at every step (seeded by the run's generator).
STOCHASTIC = frozenset({"euler-a", "dpm++-sde", "lcm"})
# Config flags that respace the sigmas unevenly; a named scheduler switches them off.
UNEVEN_SIGMAS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
# Schedulers that keep a timestep_spacing setting but choose their timesteps without it.
_IGNORES_SPACING = ("LCMScheduler",)

__all__ = ["BETA_SCHEDULES", "SCHEDULERS", "SCHEDULER_CLASSES", "SCHEDULER_NAMES", "STOCHASTIC", "TIMESTEP_SPACINGS",
           "UNEVEN_SIGMAS", "make_scheduler", "scheduler_identity", "scheduler_name"]


def _choice(kind: str, value: Optional[str], choices) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")


def _init_keys(cls) -> frozenset:
    import inspect

    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


def make_scheduler(current, name: Optional[str] = None, timestep_spacing: Optional[str] = None,
                   beta_schedule: Optional[str] = None):
    """The scheduler named ``name`` over ``current``'s noise schedule: ``cls.from_config(current.config, ...)``.

    ``name=None`` keeps ``current``'s class (and ``current`` itself when nothing is overridden). A named scheduler
    takes the settings its name fixes (DPM-Solver++'s ``algorithm_type``) and evenly spaced sigmas (see the module
    text). ``timestep_spacing`` and ``beta_schedule`` override the config's; ``beta_start``/``beta_end`` stay the
    config's. A spacing for a scheduler that picks its timesteps without one (LCM) is refused, as it would do nothing.
    """
    _choice("scheduler", name, SCHEDULER_NAMES)
    _choice("timestep spacing", timestep_spacing, TIMESTEP_SPACINGS)
    _choice("beta schedule", beta_schedule, BETA_SCHEDULES)
    overrides: Dict[str, Any] = {}
    if timestep_spacing is not None:
        overrides["timestep_spacing"] = timestep_spacing
    if beta_schedule is not None:
        overrides["beta_schedule"] = beta_schedule
    config = dict(current.config)
    if name is None:
        if not overrides:
            return current
        cls = type(current)
    else:
        import diffusers

        class_name, fixed = SCHEDULER_CLASSES[name]
        cls = getattr(diffusers, class_name)
        keys = _init_keys(cls)
        config = {k: v for k, v in config.items() if k not in UNEVEN_SIGMAS}
        overrides = {**{flag: False for flag in UNEVEN_SIGMAS if flag in keys}, **fixed, **overrides}
    keys = _init_keys(cls)
    label = name or cls.__name__
    for key in overrides:
        if key not in keys:
            raise ValueError(f"the {label} scheduler has no {key} setting; leave {key} unset for it")
    if timestep_spacing is not None and cls.__name__ in _IGNORES_SPACING:
        raise ValueError(f"the {label} scheduler picks its own timesteps (timestep_spacing does nothing there); "
                         "leave timestep_spacing unset for it")
    return cls.from_config(config, **overrides)


def scheduler_name(scheduler) -> str:
    """The name (of :data:`SCHEDULER_NAMES`) that builds ``scheduler``'s kind of sampler, or its class name where
    none does (another class, another DPM-Solver ``algorithm_type``, or unevenly spaced sigmas)."""
    class_name = type(scheduler).__name__
    config = scheduler.config
    if any(config.get(flag) for flag in UNEVEN_SIGMAS if flag in _init_keys(type(scheduler))):
        return class_name
    for name, (cls, fixed) in SCHEDULER_CLASSES.items():
        if cls == class_name and all(config.get(key) == value for key, value in fixed.items()):
            return name
    return class_name


def scheduler_identity(scheduler) -> Dict[str, Any]:
    """What decides a scheduler's steps, as plain JSON data for a run's record and fingerprint: its name and class,
    timestep spacing, beta schedule and range, prediction type, steps offset, DPM-Solver's algorithm type and which
    uneven sigma spacing is on (``None`` where a setting does not apply)."""
    config = scheduler.config
    keys = _init_keys(type(scheduler))

    def setting(key):
        return config.get(key) if key in keys else None

    uneven = [flag[len("use_"):-len("_sigmas")] for flag in UNEVEN_SIGMAS if setting(flag)]
    return {
        "name": scheduler_name(scheduler),
        "class": type(scheduler).__name__,
        "timestep_spacing": None if type(scheduler).__name__ in _IGNORES_SPACING else setting("timestep_spacing"),
        "beta_schedule": setting("beta_schedule"),
        "beta_start": setting("beta_start"),
        "beta_end": setting("beta_end"),
        "prediction_type": setting("prediction_type"),
        "steps_offset": setting("steps_offset"),
        "algorithm_type": setting("algorithm_type"),
        "sigmas": uneven[0] if uneven else None,
    }
