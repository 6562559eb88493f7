"""The config file as a person writes it: read strictly, and told exactly what is wrong.

* YAML is read with a ``SafeLoader`` that refuses a key given twice in one
  mapping; secrets written into the file are refused (they come from the
  environment only, :data:`~driftline.streams.settings.SECRET_KEYS`); contract
  paths are made relative to the file, not to the working directory.
* A validation error becomes one line per problem naming the key path
  (``sources[0](transactions).schema``), a did-you-mean for an unknown key, and
  the wrong value, never a secret and never a credential inside a URL.

:func:`driftline.streams.settings.load_settings` is the one caller.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from driftline.errors import redact
from driftline.streams.errors import ConfigError
from driftline.streams.settings import (
    ENV_PREFIX,
    SECRET_KEYS,
    DriftSettings,
    KafkaSettings,
    MetricsSettings,
    OfflineSettings,
    RedisSettings,
    SchemaRegistrySettings,
    ServeSettings,
    Settings,
    SourceSettings,
    WorkerSettings,
)

__all__ = ["format_validation_error", "read_config_file"]


def _format_loc(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
            parts.append(f"[{item}]" + (f"({name})" if name else ""))
        else:
            parts.append(("." if parts else "") + str(item))
        node = node[item] if _has(node, item) else None
    return "".join(parts) or "(top level)"


def _has(node: Any, item: int | str) -> bool:
    if isinstance(node, dict):
        return item in node
    return isinstance(node, list) and isinstance(item, int) and item < len(node)


_FIELDS_BY_SECTION: dict[str, type[BaseModel]] = {
    "kafka": KafkaSettings,
    "redis": RedisSettings,
    "metrics": MetricsSettings,
    "worker": WorkerSettings,
    "schema_registry": SchemaRegistrySettings,
    "drift": DriftSettings,
    "serve": ServeSettings,
    "offline": OfflineSettings,
}


def _suggest(loc: tuple[int | str, ...]) -> str:
    """'did you mean ...' for an unknown key."""
    key = str(loc[-1])
    if len(loc) == 1:
        known = list(Settings.model_fields)
    elif len(loc) == 2 and str(loc[0]) in _FIELDS_BY_SECTION:
        known = list(_FIELDS_BY_SECTION[str(loc[0])].model_fields)
    elif loc[0] == "sources":
        known = [f.alias or n for n, f in SourceSettings.model_fields.items()]
    else:
        return ""
    close = difflib.get_close_matches(key, known, n=1)
    return (
        f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(known))})"
    )


def format_validation_error(exc: ValidationError, origin: str, data: Mapping[str, Any]) -> str:
    lines = [f"{origin}: invalid configuration"]
    errors = exc.errors()
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(
            len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc
            for other in errors
        ):
            continue  # "at least 1 item, not 0" only because an item failed: said above
        where = _format_loc(loc, data)
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key{_suggest(loc)}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        got = (
            ""
            if err["type"] == "missing" or isinstance(shown, dict) or _is_secret(loc)
            else f" (got {shown!r})"
        )
        # a value is shown to say what was wrong, but never a credential inside it
        lines.append(redact(f"  {where}: {message}{got}"))
    lines.append(
        f"  (values may also come from {ENV_PREFIX}<SECTION>__<KEY> environment variables)"
    )
    return "\n".join(lines)


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    """A secret setting (``SecretStr``): its value is never shown, not even a wrong one."""
    return len(loc) >= 2 and (str(loc[0]), str(loc[1])) in SECRET_KEYS


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make contract paths relative to the config file, not to the working directory."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(base / value)
        return value

    for source in data.get("sources") or []:
        if not isinstance(source, dict):
            continue
        if "schema" in source:
            source["schema"] = fix(source["schema"])
        ids = source.get("schema_ids")
        if isinstance(ids, dict):
            source["schema_ids"] = {k: fix(v) for k, v in ids.items()}


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping repeats a key (PyYAML's own loaders keep the last value silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    Two ``port:`` lines in one section are a mistake whichever was meant; the
    silent last-one-wins rule would run with a value nobody sees in review.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: the base class reports it
            if key in seen:
                first = seen[key].start_mark
                raise _DuplicateKeyError(
                    problem=f"key {key!r} is given twice (first on line {first.line + 1}); "
                    "keep one",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        what = "" if isinstance(exc, _DuplicateKeyError) else "not valid YAML: "
        raise ConfigError(f"{path}{where}: {what}{problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    for section, key in sorted(SECRET_KEYS):
        block = data.get(section)
        if isinstance(block, dict) and key in block:
            raise ConfigError(
                f"{path}: {section}.{key}: secrets are read from the environment only; "
                f"remove it from the file and set {ENV_PREFIX}{section.upper()}__{key.upper()}"
            )
    _resolve_paths(data, path.resolve().parent)
    return data
