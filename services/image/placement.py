"""Where the pipeline's modules run, looked up once at load instead of at every image.

diffusers finds the device to put a pipeline's inputs on by walking every submodule of every component for
offloading hooks: `_execution_device` at the start of each call (~2,100 modules for FLUX.1-dev) and
`get_module_execution_device` before each text encoder and the VAE. The walk asks each submodule for absent
attributes, which nn.Module answers by raising: 7.7 ms for `_execution_device` alone on a CPU here, and the
GPU has nothing queued meanwhile. A bf16 image on an H100 idled 5.7 ms before CLIP's input and 2.6 ms before
T5's (benchmarks/image_gpu_other.py --gaps). The service never offloads, so the answers cannot change: they
are taken once, from diffusers itself, and returned from then on. A pipeline that has offloading hooks is left
as it is.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch


def pin(pipe: Any) -> bool:
    """Answer the pipeline's device look-ups from what they return now; False (nothing done) if any
    component has offloading hooks, whose answer depends on the hook."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(_offloaded(m) for m in modules):
        return False
    lib = sys.modules[type(pipe).__module__]
    lookup = getattr(lib, "get_module_execution_device", None)
    if lookup is not None:
        if not isinstance(lookup, Pinned):
            lookup = lib.get_module_execution_device = Pinned(lookup)
        for m in modules:
            lookup.devices[m] = lookup.lookup(m)
    device = pipe._execution_device
    pipe.__dict__["_pinned_device"] = device
    pipe.__class__ = _pinned_class(type(pipe))
    return True


class Pinned:
    """diffusers' get_module_execution_device, answered from a table for the modules pinned (weakly held:
    an unloaded pipeline's modules drop out) and by diffusers for any other."""

    def __init__(self, lookup: Callable[[torch.nn.Module], torch.device]) -> None:
        self.lookup = lookup
        self.devices: weakref.WeakKeyDictionary[torch.nn.Module, torch.device] = weakref.WeakKeyDictionary()

    def __call__(self, module: torch.nn.Module) -> torch.device:
        device = self.devices.get(module)
        return self.lookup(module) if device is None else device


def _offloaded(module: torch.nn.Module) -> bool:
    from diffusers.hooks.group_offloading import _get_group_onload_device

    try:
        _get_group_onload_device(module)
        return True
    except ValueError:
        pass
    return any(getattr(m, "_hf_hook", None) is not None for m in module.modules())


@functools.cache
def _pinned_class(cls: type) -> type:
    """The pipeline's class with `_execution_device` read from the instance (same name and module)."""
    if "_pinned_device" in getattr(cls, "__pinned__", ()):
        return cls
    execution_device = property(lambda self: self.__dict__["_pinned_device"])
    return type(cls.__name__, (cls,), {"_execution_device": execution_device, "__module__": cls.__module__,
                                       "__pinned__": ("_pinned_device",)})
