"""Config files: the :class:`training.config.TrainConfig` tree as YAML, to keep with an experiment.

``byol config show --preset NAME > run.yaml`` writes one, ``byol train --config run.yaml`` reads it (over the preset,
under ``--set``), and every run saves the config it really ran as ``<run>/config.yaml`` — so the file a run leaves
can start the same run again. The YAML has the same sections and keys as ``TrainConfig.to_dict()``; a file may give
any subset of them (the rest keep the base config's values).

Reading checks every key and value against the dataclass tree's type hints, because YAML alone is too lenient for a
config: an unknown key is an error naming it (as ``--set`` does); a list where a pair is expected becomes a tuple
(so a round trip gives back an equal config); ``1e-6`` — a *string* to YAML 1.1 — is read as the number it means;
a string where a number is expected, or ``yes`` where a bool is expected, is an error naming the key.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from serving.contract.atomic import atomic_write_bytes
from training.config import TrainConfig, legacy_train

CONFIG_FILE = "config.yaml"  # what every run directory holds: the resolved config of the run

HEADER = ("# byol-embed training config (training/config.py's TrainConfig as YAML).\n"
          "# Use: byol train --config THIS_FILE --out runs/NAME [--set section.key=value ...]\n")


class ConfigFileError(ValueError):
    """A config file that cannot be read, is not YAML, or names an unknown key / a value of the wrong type."""


def to_yaml(cfg: TrainConfig, note: str = "") -> str:
    """The whole config as YAML, sections in the dataclass order, tuples written as flow lists (``[0.3, 1.0]``);
    ``note`` becomes comment lines under the header."""
    import yaml

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return _Flow(plain(v) for v in value)
        return value

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    comment = "".join(f"# {line}\n" for line in note.splitlines())
    return HEADER + comment + yaml.dump(plain(cfg.to_dict()), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                              allow_unicode=True)


class _Flow(list):
    """A sequence written inline (``crop_scale: [0.3, 1.0]``): a pair reads better on one line."""


def save_config(cfg: TrainConfig, path: str | Path, note: str = "") -> Path:
    """Write ``cfg`` as YAML, atomically (a crash never leaves half a config beside a run)."""
    return atomic_write_bytes(path, to_yaml(cfg, note).encode("utf-8"))


def read_yaml(path: str | Path) -> dict:
    """The file's mapping (empty file → ``{}``); :class:`ConfigFileError` naming the file and the YAML error."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigFileError(f"config file {path} is not valid YAML{at}: "
                              f"{getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must be a mapping of sections (encoder, heads, augment, optim, "
                              f"ema, data, train), got {type(data).__name__}")
    return data


def overlay(base: TrainConfig, data: dict, source: str = "config") -> TrainConfig:
    """``base`` with every key of ``data`` (a nested mapping like ``to_dict()``'s) checked, typed and applied."""
    merged = copy.deepcopy(base.to_dict())
    if isinstance(data, dict) and isinstance(data.get("train"), dict):  # a file written before train.precision
        data = {**data, "train": legacy_train(data["train"])}
    try:
        _apply(base, data, merged, "")
        return TrainConfig.from_dict(merged)
    except ConfigFileError:
        raise
    except (TypeError, ValueError) as exc:  # a dataclass's own validation (e.g. a probability above 1)
        raise ConfigFileError(f"{source}: {exc}") from None


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """The config a file describes, over ``base`` (default: ``TrainConfig()``, the paper's settings)."""
    data = read_yaml(path)
    try:
        return overlay(base if base is not None else TrainConfig(), data, str(path))
    except ConfigFileError as exc:
        msg = str(exc)
        raise ConfigFileError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _apply(section: Any, data: Any, out: dict, prefix: str) -> None:
    """Check ``data`` against the dataclass instance ``section`` and write typed values into ``out`` (its dict)."""
    if not isinstance(data, dict):
        raise ConfigFileError(f"config section {prefix[:-1] or '<root>'!r} must be a mapping, "
                              f"got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(type(section))
    names = [f.name for f in fields(section)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigFileError(f"unknown config key {full!r}; {prefix[:-1] or 'the top level'} has: "
                                  f"{', '.join(names)}")
        current = getattr(section, key)
        if is_dataclass(current):
            _apply(current, value, out[key], f"{full}.")
        else:
            out[key] = _coerce(value, hints[key], full)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (``float``, ``int | None``, ``tuple[float, float]``, ...) or ConfigFileError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigFileError:
                continue
        raise _wrong(value, hint, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _wrong(value, hint, key)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigFileError(f"config key {key!r} expects {len(item_types)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types, strict=True)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any or origin in (dict, list):
        return value
    raise _wrong(value, hint, key)


def _wrong(value: Any, hint: Any, key: str) -> ConfigFileError:
    name = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
    return ConfigFileError(f"config key {key!r} expects {name or hint}, got {value!r}")
