"""Configuration: frozen dataclasses with a ``type`` tag, JSON round trips, validation, and :class:`Paths`.

Every component config is a frozen dataclass. Polymorphic fields (``policy.head``, ``policy.backbone`` ...)
are declared with a :class:`Choice` base class whose concrete subclasses live in a :class:`~vlaforge.registry.Registry`;
draccus reads/writes them with a ``"type"`` key, so ``--head.type=dit --head.num_steps=8`` works on the command
line and ``config.json`` in a checkpoint rebuilds the exact subclass.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import json
import numbers
import os
import tempfile
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import draccus
from draccus.cfgparsing import parse_string
from draccus.choice_types import ChoiceType

__all__ = ["FORMAT_VERSION", "Choice", "ChoiceType", "ConfigBase", "ConfigError", "Paths", "atomic_write_text",
           "check_types", "parse_args", "parse_overrides", "read_json"]

from vlaforge.registry import Registry
from vlaforge.utils import did_you_mean

C = TypeVar("C", bound="ConfigBase")

FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A config field holds a value outside what it accepts."""

    def __init__(self, field: str, expected: str, actual: Any, *, typed: bool = False) -> None:
        self.field, self.expected, self.actual = field, expected, actual
        got = f"{type(actual).__name__} {actual!r}" if typed else repr(actual)
        super().__init__(f"config field '{field}': expected {expected}, got {got}")


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
    def from_dict(cls: type[C], data: dict[str, Any], field: str = "") -> C:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types raise with the field path (``field`` prefixes
        it: ``"policy"`` for a checkpoint's ``config.json``)."""
        declared = _choice_root(cls) or cls
        check_types(declared, data, field)
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
        data = read_json(Path(path), f"{cls.__name__} file")
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

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


def _describe(tp: Any) -> str:
    """A declared type in words: ``int``, ``list of str``, ``mapping of str to float``, ``HeadConfig``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin in (dict, collections.abc.Mapping):
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}" if args else "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__} mapping"
    return getattr(tp, "__name__", str(tp))


def _parses(kind: type, value: Any) -> bool:
    try:
        kind(value)
    except (TypeError, ValueError):
        return False
    return True


def _scalar_ok(tp: type, value: Any, cli: bool) -> bool | None:
    """Whether ``value`` is a ``tp`` for the scalar types (None: not a scalar type). On a command line (``cli``)
    YAML leaves ``1e-4`` a string and turns ``--name=2024`` into a number; draccus converts those as meant."""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int or tp is float:
        if isinstance(value, str):
            return cli and _parses(tp, value)
        return isinstance(value, numbers.Integral if tp is int else numbers.Real) and not isinstance(value, bool)
    if tp is str or tp is Path:
        if isinstance(value, str | os.PathLike):
            return True
        return cli and value is not None and not isinstance(value, list | dict)
    return None


def check_types(tp: Any, value: Any, field: str = "", *, cli: bool = False) -> None:
    """Refuse a raw JSON / command-line ``value`` that is not of the declared type ``tp`` with a
    :class:`ConfigError` naming the dotted field, the expected and the actual type.

    draccus would coerce instead: ``"cameras": "scene"`` into five one-letter cameras, ``true`` into ``1``.
    Dataclass fields are checked recursively (a choice family through its ``"type"`` tag). ``cli``: an unknown
    key is refused too, with the closest known one (draccus would print its whole usage); unknown ``type`` names are
    left to draccus, which lists the known ones.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    name = field or "<root>"
    if tp is Any or isinstance(tp, TypeVar):
        return
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            check_types(options[0], value, field, cli=cli)
            return
        for a in options:
            try:
                check_types(a, value, field, cli=cli)
                return
            except ConfigError:
                continue
        raise ConfigError(name, _describe(tp), value, typed=True)
    if origin is Literal:
        if value not in args:
            raise ConfigError(name, _describe(tp), value, typed=True)
        return
    ok = _scalar_ok(tp, value, cli)
    if ok is not None:
        if not ok:
            raise ConfigError(name, _describe(tp), value, typed=True)
        return
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        if not isinstance(value, list | tuple):  # a string is not a sequence of names
            raise ConfigError(name, _describe(tp), value, typed=True)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(name, _describe(tp), value, typed=True)
            items = list(zip(args, value, strict=True))
        else:
            items = [(args[0] if args else Any, v) for v in value]
        for i, (t, v) in enumerate(items):
            check_types(t, v, f"{name}[{i}]", cli=cli)
        return
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(name, _describe(tp), value, typed=True)
        for k, v in value.items():
            check_types(args[1] if args else Any, v, f"{field}.{k}" if field else str(k), cli=cli)
        return
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return
        if not isinstance(value, dict):
            raise ConfigError(name, _describe(tp), value, typed=True)
        _check_fields(tp, value, field, cli)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        return  # draccus names a bad member itself


def _check_fields(cls: type, data: dict[str, Any], field: str, cli: bool) -> None:
    if issubclass(cls, Choice) and isinstance(data.get("type"), str):
        try:
            cls = cls.get_choice_class(data["type"])
        except (KeyError, ValueError):
            return  # draccus reports the unknown type with the known ones
    if cli:  # draccus would print its whole usage for a misspelt option; one line names it instead
        known = [f.name for f in dataclasses.fields(cls)] + ["type"]  # "type": a choice's tag (to_dict writes it)
        for key in data:
            if key not in known:
                hint = did_you_mean(key, known)
                raise ConfigError(f"{field}.{key}" if field else key, f"a known option of {cls.__name__}{hint}",
                                  data[key])
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return
    for f in dataclasses.fields(cls):
        if f.init and f.name in data and f.name in hints:
            check_types(hints[f.name], data[f.name], f"{field}.{f.name}" if field else f.name, cli=cli)


def _override_tree(args: Sequence[str]) -> dict[str, Any]:
    """``--a.b=v`` arguments as the nested dict of values draccus reads from them (YAML-parsed)."""
    tree: dict[str, Any] = {}
    for a in args:
        key, eq, value = a.removeprefix("--").partition("=")
        if not eq or key in ("help", "config_path"):
            continue
        *parents, last = key.split(".")
        node = tree
        for p in parents:
            nxt = node.get(p)
            node = node.setdefault(p, {}) if isinstance(nxt, dict) or nxt is None else {}
        node[last] = parse_string(value)
    return tree


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _draccus_parse(cls: type[C], **kwargs: Any) -> C:
    """``draccus.parse``, surfacing a config's own validation error (one line naming the field) instead of the
    wrapper draccus raises around it ("Couldn't instantiate class ...")."""
    try:
        return draccus.parse(cls, **kwargs)
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def parse_args(cls: type[C], args: Sequence[str]) -> C:
    """``draccus.parse(cls, args=args)`` with every value type-checked first (:func:`check_types`) and a failed
    validation surfaced as its :class:`ConfigError`."""
    check_types(_choice_root(cls) or cls, _override_tree(args), cli=True)
    return _draccus_parse(cls, args=list(args))


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
    declared = _choice_root(type(base)) or type(base)
    check_types(declared, _merged(data, _override_tree(args)), cli=True)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "base.json"
        path.write_text(json.dumps(data))
        return _draccus_parse(declared, config_path=path, args=list(args))


def read_json(path: Path, what: str) -> Any:
    """The content of a JSON file; a missing, unreadable or malformed one is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} is not readable ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e.msg}; line {e.lineno}, column {e.colno})") from None


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
