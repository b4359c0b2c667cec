"""Diffusers schedulers by class name, and the step arguments each one takes.

Shared by Stage 2 (Prompt-to-Prompt rendering) and Stage 4 (the editor's sampler, SDEdit), so a
scheduler named in pipelines.yaml means the same thing in both.
"""
from __future__ import annotations

import inspect


def make_scheduler(name: str, config):
    """A fresh scheduler of class ``name`` (e.g. EulerAncestralDiscreteScheduler) from ``config``;
    an unknown name raises ValueError listing the ones diffusers has."""
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and "Flow" not in n)
        raise ValueError(f"unknown scheduler {name!r}; diffusers has: {', '.join(known)}")
    return cls.from_config(config)


def step_kwargs(scheduler, generators) -> dict:
    """What ``scheduler.step`` takes beyond the sample: the generator(s) of stochastic schedulers
    (none for deterministic ones such as LMS and PNDM), and eta = 0 where it has one (DDIM's
    default, said explicitly)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in params:
        kwargs["generator"] = generators
    if "eta" in params:
        kwargs["eta"] = 0.0
    return kwargs
