"""Named registries for every pluggable component.

A :class:`Registry` maps a short name (``"dit"``) to a config class. Built-in entries are declared
lazily as ``name -> "module.path"`` so that importing :mod:`vlaforge` never imports torch models,
simulators or transformers; the module is imported the first time the name is looked up. Third-party
packages add entries through the entry-point group ``vlaforge.<registry name>`` (for example
``[project.entry-points."vlaforge.heads"] myhead = "mypkg.heads"``): the named module is imported and
its ``@HEADS.register(...)`` decorators run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from vlaforge.utils import did_you_mean

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name was looked up in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> object map with lazy built-ins, entry-point plugins and did-you-mean errors."""

    def __init__(self, kind: str, lazy: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@HEADS.register("dit")`` on the component's config class."""

        def deco(obj: T) -> T:
            other = self._entries.get(name)
            if other is not None and other is not obj:
                raise ValueError(f"{self.kind}: name {name!r} is already registered to {other!r}")
            self._entries[name] = obj
            return obj

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=f"vlaforge.{self.kind}"):
            self._lazy.setdefault(ep.name, ep.value)

    def get(self, name: str) -> T:
        """Return the entry for ``name``; unknown names raise with the closest known names."""
        if name not in self._entries:
            self._load_plugins()
            module = self._lazy.get(name)
            if module is not None:
                importlib.import_module(module)
        if name not in self._entries:
            known = self.names()
            hint = did_you_mean(name, known, " Did you mean {}?", n=3, cutoff=0.5)
            raise RegistryError(f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}.{hint} "
                                f"Known: {', '.join(known) or '(none)'}")
        return self._entries[name]

    def names(self) -> list[str]:
        """All registered names (built-in, plugin and already-imported), sorted."""
        self._load_plugins()
        return sorted(set(self._entries) | set(self._lazy))

    def name_of(self, obj: T) -> str:
        """The registered name of ``obj`` (imports nothing)."""
        for name, entry in self._entries.items():
            if entry is obj:
                return name
        raise RegistryError(f"{obj!r} is not registered in {self.kind}")

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) for every entry, importing lazy ones."""
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.names()
