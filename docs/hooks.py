"""MkDocs hooks: the pages are the Markdown files of ``docs/``, plus two made at build time.

* ``<!-- settings-reference -->`` becomes the configuration reference generated
  from the settings models (:mod:`driftline.streams.config_reference`), so it
  cannot drift from the code;
* ``<!-- file: NAME -->`` becomes the repository file ``NAME``: the README is
  the home page, ``ARCHITECTURE.md`` the Architecture page.

The files are written for GitHub, where relative links work as they are. On
the site, a link to ``docs/PAGE.md``, to the README or to ``ARCHITECTURE.md``
becomes a link to that page (anchor kept); a link to any other repository file
(``../driftline.yaml``) becomes its plain text; links to other sites stay.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Repository files that are pages of the site, and the page each one is.
PAGES = {ROOT / "README.md": "index.md", ROOT / "ARCHITECTURE.md": "architecture.md"}
_FILE = re.compile(r"<!-- file: (.+?) -->")
_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def site_links(markdown: str, base: Path) -> str:
    """``markdown``'s relative links (relative to ``base``) as links of the site."""

    def link(match: re.Match[str]) -> str:
        label, target = match.groups()
        path, hash_, anchor = target.partition("#")
        file = (base / path).resolve()
        page = PAGES.get(file)
        if page is None and file.parent == DOCS and file.suffix == ".md":
            page = file.name
        return f"[{label}]({page}{hash_}{anchor})" if page else label

    return _LINK.sub(link, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- settings-reference -->" in markdown:
        from driftline.streams.config_reference import reference_markdown

        markdown = markdown.replace("<!-- settings-reference -->", reference_markdown())
    markdown = site_links(markdown, DOCS)
    return _FILE.sub(lambda m: site_links((ROOT / m.group(1)).read_text(), ROOT), markdown)
