"""Continual methods. Adding one is one new file in this package:

    from .base import SegmentorMethod
    from . import register

    @register("my-method")
    class MyMethod(SegmentorMethod):
        def extra_loss(self, t, images, masks, prompts):
            return {"my_term": ...}

Every module here is imported on first lookup, so the decorator is all the registration needed.
"""
from __future__ import annotations

import importlib
import pkgutil

METHODS: dict[str, type] = {}
_loaded = False


def register(name: str):
    def deco(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base":
                importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True


def available_methods() -> list[str]:
    _load_all()
    return sorted(METHODS)


def get_method(name: str) -> type:
    _load_all()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
