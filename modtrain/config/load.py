"""YAML config files and dotted command-line overrides into a validated `Config`."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from modtrain.config.schema import Config, choice_error
from modtrain.errors import ModtrainError, shown


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors and aliases: nested aliases ("billion laughs") expand to
    exponentially large values, and configs need neither."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors (&name) and aliases (*name) are not allowed in "
                "configs; write the values out", event.start_mark)
        return super().compose_node(parent, index)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], key + "."))
    return keys


def _unknown_key_error(key: str) -> ModtrainError:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = (f"; did you mean '{close[0]}'?" if close
            else "; see docs/configuration.md for valid keys")
    return ModtrainError(f"unknown config key {shown(key)}{hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a field's type, converting int -> float where YAML loses it."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ModtrainError as e:
                errors.append(str(e))
        raise ModtrainError(errors[0])
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ModtrainError(choice_error(key, value, allowed))
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ModtrainError(f"config key '{key}' expects a list, got {shown(value)}")
        return [_coerce(v, item, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ModtrainError(
            f"config key '{key}' expects {hint.__name__}, got {shown(value)} "
            f"({type(value).__name__})"
        )
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key_error(key)
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ModtrainError(f"config key '{key}' is a section; give it a mapping")
            kwargs[name] = _build(hint, value, key + ".")
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ModtrainError(f"override {shown(override)} is not of the form section.key=value")
    key, raw = override.split("=", 1)
    if key not in _all_keys(Config):
        raise _unknown_key_error(key)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ModtrainError(f"config key '{key}' cannot be set: its parent is not a section")
    try:
        node[parts[-1]] = _safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ModtrainError(
            f"override {shown(override)} has a value that is not valid YAML "
            f"({_yaml_problem(e)}); quote the value or fix its syntax"
        ) from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or "syntax error"
    return " ".join(str(problem).split())


def read_yaml(path: Path) -> Any:
    """The file's YAML; a syntax error is one line naming the file, line and column."""
    try:
        return _safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        opened = (f" ({' '.join(context.split())} started at line {start.line + 1}, column "
                  f"{start.column + 1})" if context and start and start is not mark else "")
        raise ModtrainError(
            f"{where}: invalid YAML, {_yaml_problem(e)}{opened}; fix the file there "
            "(line:column)"
        ) from None
    except UnicodeDecodeError:
        raise ModtrainError(f"config file {path} is not UTF-8 text; pass a YAML file") from None
    except OSError as e:
        raise ModtrainError(f"config file {path} cannot be read ({e.strerror or e})") from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load YAML (or defaults when `path` is None), apply `a.b=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ModtrainError(
                f"config file {path} does not exist; pass a YAML file from configs/"
            )
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ModtrainError(f"config file {path} must hold a mapping of sections")
        data = loaded
    for override in overrides:
        _apply_override(data, override)
    config = _build(Config, data, "")
    config.validate()
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> Config:
    config = _build(Config, data, "")
    config.validate()
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    tmp.replace(path)
