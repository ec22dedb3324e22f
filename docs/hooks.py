"""mkdocs hooks: the site's home page is the README, so the two never differ.

``docs/index.md`` is a placeholder; at build time its content is README.md, with links made
to work from the site: ``docs/x.md`` becomes ``x.md`` (a page of the site); links to other
files of the repository (``examples/``, ``deploy/``) point into the repository when
``repo_url`` is set in mkdocs.yml, and otherwise keep their text (which names the path)
without a link, rather than a link that leads nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# [text](target#anchor) whose target is relative (not a URL, not a bare #anchor).
_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)([^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def relink(match: re.Match[str]) -> str:
        text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        if target.startswith("docs/"):
            return f"[{text}]({target.removeprefix('docs/')}{anchor})"
        if repo_url:
            return f"[{text}]({repo_url}/blob/HEAD/{target}{anchor})"
        return text

    return _LINK.sub(relink, readme)
