"""Typed stage configs: dataclass defaults < a YAML file < command-line flags.

Every stage takes one config dataclass. :func:`load_config` builds it from a YAML mapping and
``key=value`` overrides, rejecting unknown keys and wrong types; a YAML file may start from another
in its folder (``extends: NAME``, :func:`read_settings`), so a preset repeats no key of its base.
:func:`add_config_arguments` and :func:`config_from_args` give each field a ``--field-name`` flag
on the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A stage config is malformed or inconsistent."""


def registered(group: str, name: str, builtins: dict, what: str):
    """``builtins[name]``, or the object an installed package registers as ``name`` under the entry-point
    group ``group``. A setting only chooses among these names: it never names a module to import.
    """
    from importlib.metadata import entry_points

    if name in builtins:
        return builtins[name]
    points = {point.name: point for point in entry_points(group=group)}
    if name not in points:
        raise ConfigError(f"unknown {what} {name!r}: {' or '.join(map(repr, builtins))} or one registered under "
                          f"the entry-point group {group!r} ({sorted(points) or 'none installed'})")
    return points[name].load()


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _base_type(annotation) -> tuple[type, bool]:
    """``(type, optional)`` of an annotation such as ``int``, ``str | None`` or ``float``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _coerce(name: str, value, annotation):
    kind, optional = _base_type(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():  # JSON/protobuf numbers (KFP dicts)
        return int(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from None
    if kind is str and isinstance(value, (str, Path, int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def check_fields(cls, values: dict) -> dict:
    """``values`` coerced to the field types of ``cls``; an unknown key or a wrong type is a :class:`ConfigError`."""
    fields = _field_types(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(fields)}")
    return {name: _coerce(name, value, fields[name]) for name, value in values.items()}


EXTENDS = "extends"  # the key of a settings file naming the file of its folder it starts from
_SETTINGS_NAME = re.compile(r"([a-z][a-z0-9_-]*/)?[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)?")  # [FOLDER/]NAME


def read_settings(path: str | Path) -> dict:
    """The YAML mapping of settings at ``path``.

    ``extends: NAME`` starts it from ``NAME.yaml`` in the same folder, ``extends: FOLDER/NAME`` from
    one in a sibling folder (that file's settings, then this one's on top; chains allowed): a base
    preset holds what its variants share. A name that is no such file, a circle of files, or a file
    that is not a mapping is a :class:`ConfigError`.
    """
    chain: dict[Path, dict] = {}  # file -> its own settings, from ``path`` to the last base
    path = Path(path)
    while True:
        if path in chain:
            raise ConfigError(f"settings extend each other in a circle: {' -> '.join(p.name for p in [*chain, path])}")
        loaded = chain[path] = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of config fields")
        base = loaded.get(EXTENDS)
        if base is None:
            break
        named = isinstance(base, str) and _SETTINGS_NAME.fullmatch(base)
        folder = path.parent.parent if named and "/" in base else path.parent
        if not named or not (folder / f"{base}.yaml").is_file():
            raise ConfigError(f"{path}: {EXTENDS}: {base!r} names no settings file of {folder}")
        path = folder / f"{base}.yaml"
    values: dict = {}
    for own in reversed(chain.values()):
        values |= {key: value for key, value in own.items() if key != EXTENDS}
    return values


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None):
    """Build ``cls`` from its defaults, the settings file at ``path`` (:func:`read_settings`) and
    ``overrides`` (in that order).
    """
    values = read_settings(path) if path is not None else {}
    values.update(overrides or {})
    coerced = check_fields(cls, values)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in coerced and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{cls.__name__} needs {', '.join(missing)}")
    return cls(**coerced)


def dump_config(config, path: str | Path) -> None:
    """Write a config as YAML (loadable by :func:`load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """``--config FILE`` plus one ``--field-name`` flag per field (unset flags keep YAML/defaults)."""
    parser.add_argument("--config", type=Path, default=None, help="YAML file with config fields")
    for field in dataclasses.fields(cls):
        kind, _ = _base_type(_field_types(cls)[field.name])
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else "required"
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=argparse.SUPPRESS,
            metavar=kind.__name__.upper(),
            help=f"{help_text} (default: {default})".strip(),
        )


def config_from_args(cls, args: argparse.Namespace):
    """The config named by ``--config`` with the flags given on the command line applied."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return load_config(cls, args.config, overrides)


URI_KINDS = ("model", "data", "named_data", "output")


def help_field(default=dataclasses.MISSING, help: str = "", uri: str | None = None, **kwargs):
    """A dataclass field with a help string shown by the CLI.

    ``uri`` marks a location the stage runner resolves (local path or ``s3://``): ``model`` and
    ``data`` inputs (``data`` is logged as an MLflow dataset), ``named_data`` (``NAME=URI,…``) and
    the ``output`` directory.
    """
    if uri is not None and uri not in URI_KINDS:
        raise ValueError(f"uri must be one of {URI_KINDS}, got {uri!r}")
    return dataclasses.field(default=default, metadata={"help": help, "uri": uri}, **kwargs)


def parse_named(text: str, field: str) -> dict[str, str]:
    """``NAME=URI[,NAME=URI…]`` → ``{name: uri}``; a malformed entry is a :class:`ConfigError`."""
    parsed = {}
    for part in text.split(","):
        name, sep, uri = part.partition("=")
        if not sep or not name.strip() or not uri.strip():
            raise ConfigError(f"{field} must be NAME=PATH[,NAME=PATH…], got {part!r}")
        parsed[name.strip()] = uri.strip()
    return parsed


def uri_fields(config, kind: str) -> list[str]:
    """Names of the fields of ``config`` marked with ``uri=kind``."""
    return [f.name for f in dataclasses.fields(config) if f.metadata.get("uri") == kind]


@dataclass(kw_only=True)
class GPUPlacement:
    """Where GPU work lands on the cluster: the accelerator's resource name, the node selector and the
    tolerated taints. One declaration for the pipelines' GPU steps and the KServe predictor.
    """

    accelerator: str = help_field("nvidia.com/gpu", "resource name of the GPUs")
    node_selector: str = help_field("nvidia.com/gpu.present=true", "LABEL=VALUE[,…] ('' for none)")
    tolerations: str = help_field("nvidia.com/gpu", "taint keys tolerated (Exists, NoSchedule), comma-separated")

    def selector(self) -> dict[str, str]:
        """The node selector as a mapping; a malformed entry is a :class:`ConfigError`."""
        pairs = [part.partition("=") for part in self.node_selector.split(",") if part.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise ConfigError(f"node_selector must be LABEL=VALUE[,…], got {self.node_selector!r}")
        return {key.strip(): value.strip() for key, _, value in pairs}

    def toleration_keys(self) -> list[str]:
        """The tolerated taint keys, from the comma-separated ``tolerations``."""
        return [key.strip() for key in self.tolerations.split(",") if key.strip()]
