"""Typed run configs: dataclasses that load from YAML and take command-line overrides.

Every field of a config dataclass becomes a ``--field-name`` flag, so ``clipforge train
--help`` lists everything a run can change, and the resolved config is written into the
run folder as YAML. A field declares its help beside it (:func:`option`). A field whose
type is itself a config dataclass is a section: in YAML a nested mapping, on the command
line ``--PREFIX.NAME`` (``--loss.distill_weight 0.3``), with the plain ``--name`` flag
and a top-level YAML key kept as aliases. :func:`parse_value` is the one converter from
text or YAML values to field types, for every config.

A numeric field declares its range beside it (``option(2e-3, "peak learning rate",
check=positive)``, the ranges of :mod:`clipforge.ranges`); :func:`check_ranges` refuses a
config with a value outside one, in one line naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from clipforge.errors import ClipforgeError
from clipforge.ranges import Range, flag_name

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None,
           prefix: str | None = None, check: Range | None = None) -> Any:  # fmt: skip
    """A dataclass field with its help text, for a numeric field its range ``check``
    (``None`` stays allowed for an optional field) and, for a section, its flag ``prefix``."""
    meta: dict[str, Any] = {"help": help}
    if prefix:
        meta["prefix"] = prefix
    if check is not None:
        meta["check"] = check
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections(cls: type) -> dict[str, tuple[type, str]]:
    """Fields of ``cls`` that are config sections: name -> (section class, flag prefix)."""
    types_ = _field_types(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = (tp, f.metadata.get("prefix", f.name))
    return out


def help_of(cls: type, name: str) -> str:
    """The help text a field of ``cls`` declares."""
    f = next(x for x in dataclasses.fields(cls) if x.name == name)
    return str(f.metadata.get("help", ""))


def range_of(cls: type, name: str) -> Range | None:
    """The range field ``name`` of ``cls`` declares (None: not a numeric field)."""
    f = next(x for x in dataclasses.fields(cls) if x.name == name)
    return f.metadata.get("check")


def check_field(cls: type, name: str, value: Any) -> None:
    """Refuse ``value`` for field ``name`` of ``cls`` unless its declared range holds it
    (for code that takes the value without a config, e.g. an objective's constructor)."""
    rng = range_of(cls, name)
    if rng is not None and value is not None:
        rng.check(value, flag_name(name))


def check_ranges(cfg: Any) -> None:
    """Refuse the first field of ``cfg`` (its sections included) outside its range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value)
        else:
            check_field(type(cfg), f.name, value)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def parse_value(tp: Any, raw: Any, name: str) -> Any:
    """Convert ``raw`` (a string from the command line or a YAML value) to the field type."""
    base, optional = _base_type(tp)
    if dataclasses.is_dataclass(base) and isinstance(base, type):
        if isinstance(raw, base):
            return raw
        if isinstance(raw, dict):
            return from_dict(base, raw, name)
        raise ClipforgeError(f"config section {name!r} must be a mapping, got {raw!r}")
    if raw is None or (optional and isinstance(raw, str) and raw.lower() in ("none", "null")):
        if optional:
            return None
        raise ClipforgeError(f"config field {name!r} cannot be empty")
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if base is float:
            return float(raw)
        if base is str:
            return str(raw)
        if typing.get_origin(base) is dict or base is dict:
            if isinstance(raw, dict):
                return dict(raw)
            return parse_kv(str(raw), name)
        if typing.get_origin(base) is tuple or typing.get_origin(base) is list:
            if isinstance(raw, (list, tuple)):
                return type(raw)(raw) if typing.get_origin(base) is list else tuple(raw)
            (elem,) = {a for a in typing.get_args(base) if a is not Ellipsis}
            return tuple(elem(x) for x in str(raw).split(","))
    except (TypeError, ValueError):
        raise ClipforgeError(f"config field {name!r}: cannot read {raw!r} as {tp}") from None
    return raw


def parse_kv(raw: str, name: str) -> dict[str, Any]:
    """``"vision.width=256,text.layers=2"`` -> dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    if not raw.strip():
        return out
    # Commas inside brackets belong to a list value: count_weights=[0.2,0.8],group_prob=0.5
    for part in re.split(r",(?![^\[]*\])", raw):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ClipforgeError(f"config field {name!r}: expected key=value pairs, got {part!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name.

    A section's fields may also come as top-level keys (``distill_weight``) or dotted
    keys (``loss.distill_weight``); they update the section's mapping.
    """
    types_ = _field_types(cls)
    data = dict(data)
    for name, (sub, prefix) in _sections(cls).items():
        given = data.pop(name, None) or {}
        if not isinstance(given, dict):
            raise ClipforgeError(f"{source}: config section {name!r} must be a mapping")
        section = dict(given)
        for key in _field_types(sub):
            for alias in (key, f"{prefix}.{key}"):
                if alias in data and alias not in types_:
                    section[key] = data.pop(alias)
        data[name] = section
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ClipforgeError(
            f"{source}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(types_))})"
        )
    fields_ = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: _read_field(fields_[k], types_[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _read_field(f: dataclasses.Field, tp: Any, raw: Any) -> Any:
    """A field's value from text or YAML. A numeric field is read by its range, so text
    that is no number gets the same refusal as a number out of range."""
    rng: Range | None = f.metadata.get("check")
    _, optional = _base_type(tp)
    empty = raw is None or (optional and isinstance(raw, str) and raw.lower() in ("none", "null"))
    if rng is None or empty:
        return parse_value(tp, raw, f.name)
    return rng.parse(raw, flag_name(f.name))


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ClipforgeError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ClipforgeError(f"{where}: malformed YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClipforgeError(f"{p}: expected a mapping of config fields at the top level")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain mappings and lists (sections nested), as YAML writes it."""
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One ``--field-name`` flag per dataclass field, help from its metadata; defaults stay
    unset to detect overrides. A section's fields get ``--PREFIX.NAME`` and ``--name``."""
    types_ = _field_types(cls)
    sections = _sections(cls)
    for f in dataclasses.fields(cls):
        name = f.name
        if name in sections:
            sub, sub_prefix = sections[name]
            group = parser.add_argument_group(f"{sub_prefix} options", help_of(cls, name))
            add_arguments(group, sub, sub_prefix)  # type: ignore[arg-type]
            continue
        default = f.default
        if default is dataclasses.MISSING:
            factory = f.default_factory
            default = factory() if factory is not dataclasses.MISSING else "(required)"
        base, _ = _base_type(types_[name])
        metavar = getattr(base, "__name__", "VALUE").upper()
        rng = f.metadata.get("check")
        allowed = f"; {rng.describe()}" if rng is not None else ""
        flags = ["--" + name.replace("_", "-")]
        if prefix:
            flags.insert(0, f"--{prefix}.{name}")
        parser.add_argument(
            *flags,
            dest=f"{prefix}.{name}" if prefix else name,
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=f"{f.metadata.get('help', '')} (default: {default}{allowed})",
        )


def add_number(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    check: Range,
    default: int | float,
    help: str,
) -> None:
    """A numeric command-line argument read and checked by its range ``check``; the help
    names the default and the range."""
    parser.add_argument(
        flag,
        type=check.reader(flag),
        default=default,
        metavar="INT" if check.integer else "FLOAT",
        help=f"{help} (default: {default}; {check.describe()})",
    )


def resolve(cls: type[C], yaml_path: str | None, overrides: dict[str, Any]) -> C:
    """Defaults <- YAML file <- command-line overrides."""
    data: dict[str, Any] = {}
    if yaml_path:
        data.update(load_yaml(yaml_path))
    data.update(overrides)
    return from_dict(cls, data, source=yaml_path or "command line")
