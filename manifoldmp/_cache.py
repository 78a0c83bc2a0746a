"""Read-only cached properties for immutable geometry objects (DESIGN rule 2, trimesh-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

__all__ = ["cached_quantity", "freeze"]

T = TypeVar("T")


def freeze(value: Any) -> Any:
    """Mark numpy arrays (also inside tuples) read-only and return the value."""
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, tuple):
        for v in value:
            freeze(v)
    return value


class cached_quantity(Generic[T]):
    """A lazily computed, cached, read-only attribute.

    ``gauge=True`` marks quantities that depend on the tangent frames or the connection; they
    live in the per-object ``_gcache``. All other quantities live in ``_cache``, a dictionary
    that gauge copies of a domain share, so a quantity computed on one copy serves all.
    """

    def __init__(self, func: Callable[[Any], T] | None = None, *, gauge: bool = False) -> None:
        self.gauge = gauge
        self.func = func
        if func is not None:
            self.__doc__ = func.__doc__
            self.name = func.__name__

    def __call__(self, func: Callable[[Any], T]) -> cached_quantity[T]:
        self.func = func
        self.__doc__ = func.__doc__
        self.name = func.__name__
        return self

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        cache = obj.__dict__.setdefault("_gcache" if self.gauge else "_cache", {})
        try:
            return cache[self.name]
        except KeyError:
            value = freeze(self.func(obj))  # type: ignore[misc]
            cache[self.name] = value
            return value


