"""Configuration: frozen dataclasses with a ``type`` tag, JSON round trips, validation, and :class:`Paths`.

Every component config is a frozen dataclass. Polymorphic fields (``policy.head``, ``policy.backbone`` ...)
are declared with a :class:`Choice` base class whose concrete subclasses live in a :class:`~vlaforge.registry.Registry`;
draccus reads/writes them with a ``"type"`` key, so ``--head.type=dit --head.num_steps=8`` works on the command
line and ``config.json`` in a checkpoint rebuilds the exact subclass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import draccus
from draccus.choice_types import ChoiceType

__all__ = ["FORMAT_VERSION", "Choice", "ChoiceType", "ConfigBase", "ConfigError", "Paths", "atomic_write_text",
           "parse_overrides"]

from vlaforge.registry import Registry

C = TypeVar("C", bound="ConfigBase")

FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A config field holds a value outside what it accepts."""

    def __init__(self, field: str, expected: str, actual: Any) -> None:
        self.field, self.expected, self.actual = field, expected, actual
        super().__init__(f"config field '{field}': expected {expected}, got {actual!r}")


class ConfigBase:
    """Mixin for config dataclasses: ``validate()`` runs after construction; JSON round trip."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field when a value is out of range. Override per config."""

    def check(self, ok: bool, field: str, expected: str) -> None:
        """Small helper for ``validate``: ``self.check(self.lr > 0, "lr", "> 0")``."""
        if not ok:
            raise ConfigError(field, expected, getattr(self, field.split(".")[-1], None))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict; choice-typed fields (and the object itself, if a choice) carry ``"type"``."""
        declared = _choice_root(type(self)) or type(self)
        return draccus.encode(self, declared)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types raise with the field path."""
        declared = _choice_root(cls) or cls
        try:
            return draccus.decode(declared, data)
        except ConfigError:
            raise
        except Exception as e:  # draccus raises several types; re-raise as one with a readable message
            raise ValueError(f"cannot read {cls.__name__} from {json.dumps(data)[:300]}: {e}") from e

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike) -> C:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


class Choice(ConfigBase):
    """Base of a polymorphic config family; implements draccus' ChoiceType protocol over a :class:`Registry`.

    A family base lists ``ChoiceType`` as a direct base too (draccus only treats a class as a choice type when
    it, and not just an ancestor, is one) and sets ``registry``::

        @dataclass(frozen=True)
        class HeadConfig(Choice, ChoiceType):
            registry = HEADS
    """

    registry: ClassVar[Registry]

    @classmethod
    def get_choice_class(cls, name: str) -> Any:
        return cls.registry.get(name)

    @classmethod
    def get_known_choices(cls) -> dict[str, Any]:
        return dict(cls.registry.items())

    @classmethod
    def get_choice_name(cls, subcls: type) -> str:
        try:
            return cls.registry.name_of(subcls)
        except KeyError as e:  # draccus expects ValueError for "not a concrete choice"
            raise ValueError(str(e)) from None

    @classmethod
    def default_choice_name(cls) -> str | None:
        return None

    @property
    def type(self) -> str:
        """The registered name of this config (the ``"type"`` tag)."""
        return self.registry.name_of(type(self))


def _choice_root(cls: type) -> type | None:
    """The family base of ``cls`` (the class that lists :class:`Choice` as a direct base), if any."""
    for base in cls.__mro__:
        if Choice in base.__bases__:
            return base
    return None


def parse_overrides(base: C, args: Sequence[str]) -> C:
    """Apply draccus-style ``--a.b=value`` overrides on top of an existing config.

    A changed ``--x.type=`` replaces the whole ``x`` sub-config (the preset's fields for the old type would
    not fit the new one); other fields keep the preset's values.
    """
    data = base.to_dict()
    for a in args:
        key, _, value = a.removeprefix("--").partition("=")
        if key.endswith(".type") or key == "type":
            path = key.split(".")[:-1]
            node = data
            for p in path:
                node = node.setdefault(p, {})
            if node.get("type") != value:
                node.clear()
                node["type"] = value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "base.json"
        path.write_text(json.dumps(data))
        declared = _choice_root(type(base)) or type(base)
        try:
            return draccus.parse(declared, config_path=path, args=list(args))
        except Exception as e:  # surface our own validation error instead of draccus' wrapper
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise cause from None
            raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass(frozen=True)
class Paths:
    """The one place where filesystem locations are derived.

    ``home`` defaults to ``$VLAFORGE_HOME`` or ``runs`` relative to the working directory; nothing in the
    library builds an absolute path of its own.
    """

    home: Path = dataclasses.field(default_factory=lambda: Path(os.environ.get("VLAFORGE_HOME", "runs")))

    def run(self, name: str) -> Path:
        return self.home / name

    @staticmethod
    def checkpoints(run_dir: Path) -> Path:
        return Path(run_dir) / "checkpoints"

    @classmethod
    def checkpoint(cls, run_dir: Path, step: int) -> Path:
        return cls.checkpoints(run_dir) / f"{step:07d}"

    @classmethod
    def last_checkpoint(cls, run_dir: Path) -> Path:
        return cls.checkpoints(run_dir) / "last"

    @staticmethod
    def tensorboard(run_dir: Path) -> Path:
        return Path(run_dir) / "tb"
