"""YAML files -> nested dataclasses, validated (the config mechanism; wdl/config.py has the sections).

- `extends: <preset name or path>` at the top of a file starts from another file (deep merge, the child wins);
- `key.path=value` overrides, each value parsed with YAML's scalar rules (`sft.lr=2e-5`, `data.sources=[a,b]`);
- shared sections (`train:`) give defaults to several sections;
- errors are `ValueError`s naming where the value came from and its key path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

PRESETS_DIR = Path(__file__).with_name("presets")
INT64_LIMIT = 2**63  # integers go to numpy / torch as int64


# ------------------------------------------------------------------------------------- section validation
def check(cond: bool, key: str, message: str) -> None:
    """A section's validation in `__post_init__`: `key: message` is the error (the loader adds file and path)."""
    if not cond:
        raise ValueError(f"{key}: {message}")


def _is_choice(value: Any, choices: tuple) -> bool:
    # True is not 1: a bool is a choice only where the Literal lists bools
    return value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices))


def _choice_message(choices: tuple, value: Any) -> str:
    return f"must be one of {', '.join(repr(a) for a in choices)}, got {value!r}"


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, typing.get_args(hints[f.name])) for f in dataclasses.fields(cls)
                 if typing.get_origin(hints[f.name]) is Literal)


def check_choices(section: Any, prefix: str = "") -> None:
    """Every `Literal` field of a section dataclass holds one of its choices (sections call it first thing in
    `__post_init__`, so a section built in Python is checked like one loaded from YAML)."""
    for name, choices in _literal_fields(type(section)):
        value = getattr(section, name)
        if not _is_choice(value, choices):
            raise ValueError(f"{prefix}{name}: {_choice_message(choices, value)}")


# --------------------------------------------------------------------------------------------- raw YAML
def preset_names() -> list[str]:
    """Names accepted wherever a config is expected (files in wdl/presets/ not starting with '_')."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def resolve_source(source: str | Path, *, relative_to: Path | None = None) -> Path:
    """A config argument -> a YAML file: an existing path, else a preset name."""
    p = Path(source)
    if relative_to is not None and not p.is_absolute():
        candidate = relative_to / p
        if candidate.is_file():
            return candidate
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{source}.yaml"
    if preset.is_file() and "/" not in str(source):
        return preset
    raise ValueError(
        f"config {str(source)!r}: no such file and no such preset; presets are {', '.join(preset_names())}"
    )


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping of sections, got {type(data).__name__}")
    return data


class _Origins:
    """Where each key path got its value (a file or a command-line override), for error messages."""

    def __init__(self, default: str):
        self.default = default
        self._by_path: dict[str, tuple[str, str]] = {}

    def record(self, data: Any, label: str, prefix: str = "") -> None:
        if prefix:
            self._by_path[prefix] = (label, prefix)
        if isinstance(data, dict):
            for k, v in data.items():
                self.record(v, label, f"{prefix}.{k}" if prefix else str(k))

    def alias(self, src_prefix: str, dst_prefix: str) -> None:
        """Values copied from `src_prefix` to `dst_prefix` (the shared train section) keep their origin."""
        for path, origin in list(self._by_path.items()):
            if path == src_prefix or path.startswith(src_prefix + "."):
                new = dst_prefix + path[len(src_prefix) :]
                self._by_path.setdefault(new, origin)

    def lookup(self, path: str) -> tuple[str, str]:
        probe = path
        while probe:  # the path itself or its nearest recorded ancestor (a list item's: the list's)
            if probe in self._by_path:
                label, original = self._by_path[probe]
                return label, original + path[len(probe) :]
            probe = re.sub(r"\[\d+\]$", "", probe) if probe.endswith("]") else probe.rpartition(".")[0]
        for p, (label, original) in self._by_path.items():  # a key set below it
            if p.startswith(path + "."):
                return label, original[: len(original) - (len(p) - len(path))]
        return self.default, path


def deep_merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_with_extends(path: Path, origins: _Origins, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ValueError(f"{path}: 'extends' forms a cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    merged: dict = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise ValueError(f"{path}: extends: expected a preset name or a file path, got {parent!r}")
        merged = _load_with_extends(resolve_source(parent, relative_to=path.parent), origins, (*chain, path))
    origins.record(data, _display(path))
    return deep_merge(merged, data)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed with YAML scalar/flow rules)."""
    m = _OVERRIDE.match(text)
    if m is None:
        raise ValueError(f"override {text!r}: expected key.path=value, e.g. sft.lr=2e-5")
    try:
        value = yaml.safe_load(m.group(2)) if m.group(2).strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return m.group(1).split("."), value


def apply_overrides(raw: dict, overrides: Iterable[str], origins: _Origins | None = None) -> dict:
    raw = dict(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = {}
                if origins is not None:  # a section the override creates: its errors are the override's
                    origins.record(None, f"override {text!r}", ".".join(keys[: i + 1]))
            elif not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {'.'.join(keys[: i + 1])} is not a section")
            node[k] = child = dict(child)
            node = child
        node[keys[-1]] = value
        if origins is not None:
            origins.record(value, f"override {text!r}", ".".join(keys))
    return raw


# -------------------------------------------------------------------------------- dataclass construction
class _BuildError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _BuildError(path, "must not be null")
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(arm, value, path)
            except _BuildError as e:
                errors.append(e.message)
        raise _BuildError(path, " or ".join(dict.fromkeys(errors)))
    if origin is Literal:
        if _is_choice(value, args):
            return value
        raise _BuildError(path, _choice_message(args, value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _BuildError(path, f"expected a section (mapping), got {value!r}")
        return build(tp, value, path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _BuildError(path, f"expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _BuildError(path, f"expected a list of {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _BuildError(path, f"expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{path}.{k}"): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _BuildError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT64_LIMIT <= value < INT64_LIMIT:
                raise _BuildError(path, f"must be an integer below 2**63 in magnitude, got {value}")
            return value
        raise _BuildError(path, f"expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 2**1023 else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise _BuildError(path, f"expected a number, got {value!r}")
        if not math.isfinite(number):  # .inf, .nan, 1e999: never a meaningful setting
            raise _BuildError(path, f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _BuildError(path, f"expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _BuildError(path, f"expected {_type_name(tp)}, got {value!r}")


def build(cls: type, data: Mapping, path: str = "", *, also_valid: Iterable[str] = ()) -> Any:
    """Build dataclass `cls` from plain values, recursively; unknown/missing keys and bad types raise.
    `also_valid`: more names a key may have been meant as (the shared sections), for the did-you-mean."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), [*fields, *also_valid], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise _BuildError(sub, f"unknown key{hint}")
        kwargs[key] = _convert(hints[key], value, sub)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _BuildError(f"{path}.{missing[0]}" if path else missing[0], "required key is missing")
    try:
        return cls(**kwargs)
    except _BuildError:
        raise
    except (ValueError, TypeError) as e:
        raise _attribute(e, path, list(fields)) from None


def _attribute(e: Exception, path: str, field_names: list[str]) -> _BuildError:
    """Turn a section's own validation message ("lr: must be > 0") into one with the full key path."""
    msg = str(e)
    for name in sorted(field_names, key=len, reverse=True):
        m = re.match(rf"^(?:\w+\.)?{re.escape(name)}\b[:\s]\s*(.*)$", msg, re.S)
        if m:
            return _BuildError(f"{path}.{name}" if path else name, m.group(1))
    return _BuildError(path, msg)


def to_dict(cfg: Any) -> dict:
    """A config dataclass -> plain dict (tuples as lists), the form written to config.yaml."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, p))
        else:
            out[p] = v
    return out


def diff(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """(key path, old value, new value) for every leaf that differs."""
    a, b = flatten(old), flatten(new)
    missing = object()
    rows = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            rows.append((k, None if va is missing else va, None if vb is missing else vb))
    return rows


def load(
    cls: type,
    source: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    default: str = "tiny",
    shared_sections: Mapping[str, Iterable[str]] | None = None,
) -> Any:
    """Load `cls` from a YAML file or preset name (`default` when None) plus `key=value` overrides.

    `shared_sections` maps a section of defaults to the sections that inherit them (for the pipeline:
    `{"train": TRAIN_PHASES}`); the shared section itself is consumed here.
    """
    path = resolve_source(default if source is None else source)
    origins = _Origins(_display(path))
    raw = _load_with_extends(path, origins)
    raw = apply_overrides(raw, overrides, origins)
    for shared, targets in (shared_sections or {}).items():
        common = raw.pop(shared, None)
        if common is None:
            continue
        if not isinstance(common, dict):
            label, original = origins.lookup(shared)
            raise ValueError(f"{label}: {original}: expected a section (mapping), got {common!r}")
        for t in targets:
            own = raw.get(t) or {}
            if not isinstance(own, dict):
                continue  # reported by build() with the right path
            raw[t] = deep_merge(common, own)
            origins.alias(shared, t)
    try:
        return build(cls, raw, also_valid=tuple(shared_sections or ()))
    except _BuildError as e:
        label, original = origins.lookup(e.path)
        where = f"{label}: {original}: " if original else f"{label}: "  # a check across sections has no key path
        raise ValueError(f"{where}{e.message}") from None
