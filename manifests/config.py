"""Dataclass configs from YAML files and ``dotted.key=value`` overrides, with clear errors.

Every stage and the trainer configure themselves through this module; the configs they
ran with are stamped into the manifests they write. Every command takes its config the
same way: ``--config FILE.yaml`` and any number of ``--set key=value``
(:func:`add_config_arguments`, :func:`config_from_arguments`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import operator
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's fields."""


def bounded(default: Any, *, at_least: float | None = None, at_most: float | None = None,
            above: float | None = None) -> Any:  # fmt: skip
    """A dataclass field whose value, when a config is loaded, must lie in a range."""
    bounds = {"at_least": at_least, "at_most": at_most, "above": above}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


_BOUNDS = {"at_least": ("at least", operator.ge), "at_most": ("at most", operator.le),
           "above": ("above", operator.gt)}  # fmt: skip


def _check_bounds(value: Any, bounds: dict[str, float | None], where: str) -> None:
    limits = {k: b for k, b in bounds.items() if b is not None}
    if value is None or all(_BOUNDS[k][1](value, b) for k, b in limits.items()):
        return
    wanted = " and ".join(f"{_BOUNDS[k][0]} {b}" for k, b in limits.items())
    raise ConfigError(f"{where}: expected {wanted}, found {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from nested dicts; unknown keys are an error naming the key,
    a value outside its field's bounds (:func:`bounded`) one naming the value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = from_dict(kind, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _check_type(value, kind, f"{where}.{name}")
        if "bounds" in fields[name].metadata:
            _check_bounds(kwargs[name], fields[name].metadata["bounds"], f"{where}.{name}")
    return cls(**kwargs)


def _check_type(value: Any, kind: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):  # e.g. the items of a list[SomeConfig]
        return from_dict(kind, value, where)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {kind}")
    if kind is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, found {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        key_kind, value_kind = typing.get_args(kind) or (Any, Any)
        return {_check_type(k, key_kind, where): _check_type(v, value_kind, f"{where}.{k}")
                for k, v in value.items()}  # fmt: skip
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        (item,) = typing.get_args(kind) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(kind)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ConfigError(f"{where}: expected {len(items)} values, found {value!r}")
        return tuple(
            _check_type(v, t, f"{where}[{i}]")
            for i, (v, t) in enumerate(zip(value, items, strict=True))
        )
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        return _yaml11_float(value, where)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, found {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config; ``inherit: FILE`` (relative to this file) reads FILE first and lays
    this file's keys over it, nested mappings key by key."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    parent = data.pop("inherit", None) if isinstance(data, dict) else None
    return _laid_over(load_yaml(Path(path).parent / parent), data) if parent else data


def _laid_over(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _laid_over(base[key], value) if nested else value
    return merged


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (values parsed as YAML scalars) in a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """The config of a YAML file (or the defaults) with ``key=value`` overrides applied; an
    error names the file, or the override that made a valid file invalid."""
    file_data = load_yaml(path) if path else {}
    where = str(path or cls.__name__)
    try:
        return from_dict(cls, apply_overrides(copy.deepcopy(file_data), overrides or []), where)
    except ConfigError:
        if not overrides:
            raise
        from_dict(cls, copy.deepcopy(file_data), where)  # the file's own error comes first
        _blame_override(cls, file_data, overrides)
        raise


def _blame_override(cls: type, file_data: dict[str, Any], overrides: list[str]) -> None:
    """Raise the error of the first override that makes the config invalid, named."""
    data = copy.deepcopy(file_data)
    for item in overrides:
        apply_overrides(data, [item])
        try:
            from_dict(cls, copy.deepcopy(data), cls.__name__)
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {exc}") from None


def add_config_arguments(
    parser: argparse.ArgumentParser,
    what: str,
    required: bool = False,
    shorthands: dict[str, str] | None = None,
) -> None:
    """``--config YAML`` (``what`` it holds), repeatable ``--set KEY=VALUE`` overrides, and
    ``shorthands``: flags (``{"max_side": "process.max_side"}`` is ``--max-side V``) that
    each stand for ``--set KEY=V``."""
    parser.add_argument("--config", metavar="YAML", required=required, help=what)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE",
                        help="override any config key, e.g. a.b=1 (repeatable)")  # fmt: skip
    for flag, key in (shorthands or {}).items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, metavar="V",
                            help=f"= --set {key}=V")  # fmt: skip
    parser.set_defaults(config_shorthands=shorthands or {})


def configure_logging(level: int) -> None:
    """Every command's log format; Python warnings go to the log too, so that they print
    above progress bars as log lines do."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)


def describe(doc: str | None) -> str:
    """A command's ``--help`` description from its module's docstring: the first paragraph
    that is not the usage line (``CLI: ...``, which argparse prints itself), in one line."""
    paragraphs = [p for p in (doc or "").strip().split("\n\n") if not p.startswith("CLI:")]
    return " ".join(paragraphs[0].split()) if paragraphs else ""


def parse_with_quick(
    p: argparse.ArgumentParser, quick: dict[str, Any], argv: list[str] | None = None
) -> argparse.Namespace:
    """A benchmark's arguments, with ``--quick``: the ``quick`` defaults (tiny sizes, a
    smoke run in seconds that the test suite makes, so a benchmark that breaks fails CI);
    flags given explicitly still win."""
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: a smoke run in seconds (the test suite runs it)")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**quick)
        args = p.parse_args(argv)
    return args


def config_from_arguments(cls: type[T], args: argparse.Namespace, overrides: list[str] = ()) -> T:
    """The config that :func:`add_config_arguments`' arguments give: the YAML file, then
    the shorthand flags and ``overrides`` (a command's other flags), then ``--set``."""
    shorthands = [f"{key}={getattr(args, flag)}" for flag, key in args.config_shorthands.items()
                  if getattr(args, flag) is not None]  # fmt: skip
    return load_config(cls, args.config, [*shorthands, *overrides, *args.overrides])


def _yaml11_float(value: str, where: str) -> float:
    """PyYAML follows YAML 1.1, which reads ``1e-9`` (no dot) as a string; accept it."""
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected float, found {value!r}") from None
