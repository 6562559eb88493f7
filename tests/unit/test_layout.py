"""The package layout and its import rule, read from the source (no imports run).

* one import name: every module imports the project as ``driftline.*``, never
  by a top-level folder name (``features``, ``streams`` ...), which a user
  project may have too and which the wheel does not install;
* the pure packages (``schemas``, ``features``, ``drift``) import no Kafka,
  Redis, Faust, Prometheus or HTTP library and none of the adapters or programs;
* the adapters (``sinks``) never import the programs (``streams``);
* every package ships ``py.typed``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "features", "drift", "sinks", "streams")
PURE = ("schemas", "features", "drift")
IO_LIBRARIES = {"faust", "mode", "aiokafka", "redis", "prometheus_client", "aiohttp", "kafka"}


def modules_of(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports are inside its package)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


ALL_FILES = [p for folder in (*PACKAGES, "tests", "bench", "ops") for p in modules_of(folder)]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_project_is_imported_as_driftline_only(path: Path) -> None:
    bare = {n for n in imported(path) if n.split(".")[0] in PACKAGES}
    assert not bare, f"{path.relative_to(ROOT)} imports {sorted(bare)}: use driftline.<package>"


@pytest.mark.parametrize(
    "path", [p for f in PURE for p in modules_of(f)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_pure_packages_import_no_io_and_no_adapters(path: Path) -> None:
    names = imported(path)
    io = {n for n in names if n.split(".")[0] in IO_LIBRARIES}
    inner = {n for n in names if n.startswith(("driftline.sinks", "driftline.streams"))}
    assert not io and not inner, f"{path.relative_to(ROOT)} imports {sorted(io | inner)}"


@pytest.mark.parametrize("path", modules_of("sinks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_do_not_import_the_programs(path: Path) -> None:
    inner = {n for n in imported(path) if n.startswith("driftline.streams")}
    assert not inner, f"{path.relative_to(ROOT)} imports {sorted(inner)}"


def test_driftline_links_every_package_and_each_is_typed() -> None:
    for name in PACKAGES:
        link = ROOT / "driftline" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), name
        assert (ROOT / name / "__init__.py").is_file(), name
        assert (ROOT / name / "py.typed").is_file(), name
    assert (ROOT / "driftline" / "py.typed").is_file()


def test_every_error_derives_from_the_one_root() -> None:
    import importlib
    import inspect
    import pkgutil

    import driftline
    from driftline.errors import DriftlineError

    loose = []
    for info in pkgutil.walk_packages(driftline.__path__, "driftline."):
        if info.name.endswith(".__main__"):
            continue  # runs the command on import
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
                and not issubclass(obj, DriftlineError)
            ):
                loose.append(f"{module.__name__}.{name}")
    assert not loose, f"errors outside the DriftlineError tree: {loose}"


#: Which driftline packages each pure package may import (ARCHITECTURE.md's table).
MAY_IMPORT = {
    "schemas": {"driftline.errors", "driftline.schemas"},
    "features": {"driftline.errors", "driftline.schemas", "driftline.features"},
    "drift": {"driftline.errors", "driftline.schemas", "driftline.features", "driftline.drift"},
}


@pytest.mark.parametrize(
    "path", [p for f in PURE for p in modules_of(f)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_pure_packages_import_only_what_the_architecture_allows(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    allowed = MAY_IMPORT[package]
    ours = {n for n in imported(path) if n == "driftline" or n.startswith("driftline.")}
    extra = {n for n in ours if not any(n == a or n.startswith(a + ".") for a in allowed)}
    assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)} (see ARCHITECTURE.md)"


#: Repository files that are pages of the docs site (``docs/hooks.py`` puts them in).
SITE_PAGES = {"README.md": "index.md", "ARCHITECTURE.md": "architecture.md"}
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|mailto:)([^)\s]+)\)")


def section(path: Path, title: str) -> str:
    text = path.read_text()
    marker = f"\n## {title}\n"
    assert marker in text, f"{path.relative_to(ROOT)} has no section '## {title}'"
    return text.split(marker, 1)[1].split("\n## ", 1)[0]


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``."""
    headings = re.findall(r"^#{1,6} (.+)$", prose(path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def nav_pages() -> list[tuple[str, str]]:
    """(title, file) of every page in mkdocs.yml's navigation, in order."""

    def walk(items: list[Any]) -> list[tuple[str, str]]:
        pages = []
        for item in items:
            ((title, value),) = item.items()
            pages += walk(value) if isinstance(value, list) else [(title, value)]
        return pages

    return walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_the_readme_contents_list_every_page_of_the_site() -> None:
    pages = nav_pages()
    assert {f for _, f in pages} == {p.name for p in (ROOT / "docs").glob("*.md")}, (
        "every docs/*.md is a page of mkdocs.yml's nav, and every page is a file"
    )
    contents = section(ROOT / "README.md", "Contents")
    listed = []
    for line in contents.splitlines():
        entry = re.match(r"\s*- \[([^\]]+)\]\(([^)#]+)", line)
        if entry:
            title, target = entry.groups()
            listed.append((title, SITE_PAGES.get(target, target.removeprefix("docs/"))))
    assert listed == [p for p in pages if p[1] != "index.md"]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_of_the_readme_and_the_docs_resolve(path: Path) -> None:
    broken = []
    for label, target in LINK.findall(prose(path.read_text())):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"[{label}]({target}): no such file")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
            broken.append(f"[{label}]({target}): no such heading")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def test_the_readme_commands_table_names_every_command() -> None:
    from importlib.metadata import entry_points

    import click

    (script,) = entry_points(group="console_scripts", name="driftline")
    cli = script.load()
    names = []
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            names += [f"{name} {sub}" for sub in command.commands]
        else:
            names.append(name)
    table = section(ROOT / "README.md", "Commands")
    missing = [n for n in names if f"| `driftline {n}" not in table]
    assert not missing, f"README's commands table lacks {missing}"


def test_the_configuration_reference_lists_every_key_and_flags_secrets() -> None:
    from pydantic import BaseModel

    from driftline.streams.config_reference import reference_markdown
    from driftline.streams.settings import SECRET_KEYS, Settings, SourceSettings

    text = reference_markdown()
    for name, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key in model.model_fields:
                assert f"| `{name}.{key}` |" in text, f"{name}.{key}"
                assert f"DRIFTLINE_{name}__{key}".upper() in text
        else:
            assert f"| `{name}` |" in text
    for key in SourceSettings.model_fields:
        assert f"| `sources[].{key}` |" in text
    for section, key in SECRET_KEYS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{section}.{key}` |"))
        assert "environment only" in row
