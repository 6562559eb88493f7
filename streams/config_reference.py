"""The configuration reference, generated from the settings models (for the docs site).

``docs/hooks.py`` puts :func:`reference_markdown` into the configuration page
at build time, so the reference cannot drift from the code: every key, its
type, default, environment variable and description come from
:mod:`driftline.streams.settings`.
"""

from __future__ import annotations

import enum
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from driftline.streams.settings import ENV_PREFIX, SECRET_KEYS, Settings, SourceSettings


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return " \\| ".join(repr(m.value) for m in annotation)
        return getattr(annotation, "__name__", str(annotation)).replace("SecretStr", "secret")
    args = [a for a in get_args(annotation) if a is not type(None)]
    optional = len(args) < len(get_args(annotation))
    if str(origin).endswith("Literal"):
        text = " \\| ".join(f"`{a}`" for a in get_args(annotation))
    elif origin in (tuple, list):
        text = f"list of {_type_name(args[0])}" if args else "list"
    elif origin is dict:
        text = "mapping"
    else:
        text = " or ".join(_type_name(a) for a in args)
    return f"{text} (optional)" if optional else text


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined:
        return "required" if info.default_factory is None else "(computed)"
    if info.default is None:
        return "none"
    if isinstance(info.default, BaseModel):
        return "(section)"
    return f"`{info.default!r}`"


def _rows(section: str | None, model: type[BaseModel], *, nested: bool = False) -> list[str]:
    """One row per key; ``nested``: model-typed keys are rows too (else sections of their own)."""
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not nested:
            continue  # a section: listed on its own
        key = f"{section}.{name}" if section else name
        env = f"`{ENV_PREFIX}{(section + '__') if section else ''}{name}`".upper()
        secret = section is not None and (section, name) in SECRET_KEYS
        description = (info.description or "").replace("|", "\\|")
        if secret:
            description = "**secret: from the environment only.** " + description
        rows.append(
            f"| `{key}` | {_type_name(annotation)} | {_default(info)} | {env} | {description} |"
        )
    return rows


HEADER = "| key | type | default | environment variable | description |\n|---|---|---|---|---|"


def reference_markdown() -> str:
    """Markdown tables: the top level, every section, and one source."""
    out = ["### Top level", "", HEADER, *_rows(None, Settings), ""]
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += [f"### `{name}`", "", (annotation.__doc__ or "").strip(), "", HEADER]
            out += [*_rows(name, annotation), ""]
    out += [
        "### A source (`sources[]`)",
        "",
        "Sources are a list, so their keys have no environment variables.",
        "",
        "| key | type | default | description |\n|---|---|---|---|",
    ]
    for row in _rows("sources[]", SourceSettings, nested=True):
        cells = row.split(" | ")
        out.append(" | ".join(cells[:3] + cells[4:]))
    return "\n".join(out).rstrip() + "\n"
