"""MkDocs hooks: pages made from the code and from the README, so neither can drift.

* ``<!-- settings-reference -->`` becomes the configuration reference generated
  from the settings models (:mod:`driftline.streams.config_reference`);
* ``<!-- readme: Title -->`` becomes the README's section ``## Title``;
* ``<!-- file: NAME -->`` becomes the repository file ``NAME`` (e.g. ARCHITECTURE.md).

Links from README text to repository files (not pages of this site) become
plain text; links to other sites stay.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_README = re.compile(r"<!-- readme: (.+?) -->")
_FILE = re.compile(r"<!-- file: (.+?) -->")
_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)")


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    marker = f"\n## {title}\n"
    if marker not in text:
        raise ValueError(f"README.md has no section '## {title}'")
    body = text.split(marker, 1)[1].split("\n## ", 1)[0]
    return _LINK.sub(r"\1", body)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- settings-reference -->" in markdown:
        from driftline.streams.config_reference import reference_markdown

        markdown = markdown.replace("<!-- settings-reference -->", reference_markdown())
    markdown = _README.sub(lambda m: readme_section(m.group(1)), markdown)
    return _FILE.sub(lambda m: _LINK.sub(r"\1", (ROOT / m.group(1)).read_text()), markdown)
