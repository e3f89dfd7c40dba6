"""MkDocs hooks (mkdocs.yml `hooks`): the site is built from the repository's own pages.

Besides docs/, the site holds README.md (as its home page), BENCHMARKS.md (as findings.md),
benchmarks/README.md and the benchmark reports and plans, so that each is written once and
reads the same in the repository and on the site. Their links are written for the repository
(`docs/api.md` from README.md, `../benchmarks/reports/speed.md` from docs/scale.md); before a
page is rendered, each relative link is resolved against the page's place in the repository:

- a file the site holds becomes a link to it on the site;
- any other file of the repository (a results JSON, a source file, a folder) becomes its
  repository path in code, as the site does not carry it;
- a path that does not exist is left alone, so that `mkdocs build --strict` fails on it.

Fenced code blocks are left untouched. In the API reference, Sphinx roles (:func:`x`) are
dropped from the rendered docstrings.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# Repository path -> path on the site, for the pages outside docs/.
PAGES = {"README.md": "index.md", "BENCHMARKS.md": "findings.md"}
PAGE_FOLDERS = ("benchmarks/reports", "benchmarks/plans")
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _extra_pages(root: Path) -> dict[str, str]:
    pages = {repo: site for repo, site in PAGES.items() if (root / repo).is_file()}
    if (root / "benchmarks" / "README.md").is_file():
        pages["benchmarks/README.md"] = "benchmarks/README.md"
    for folder in PAGE_FOLDERS:
        for path in sorted((root / folder).glob("*.md")):
            repo = path.relative_to(root).as_posix()
            pages[repo] = repo
    return pages


def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    for repo, site in _extra_pages(root).items():
        files.append(File.generated(config, site, abs_src_path=str(root / repo)))
    return files


def _repo_path(file: File, root: Path) -> str | None:
    """The file's path in the repository; None for a theme's file."""
    path = Path(file.abs_src_path or "").resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else None


def _rewrite(
    match: re.Match[str], page_repo: str, page_site: str, root: Path, by_repo: dict[str, str]
) -> str:
    bang, text, target = match.groups()
    if SCHEME.match(target) or target.startswith(("#", "/")):
        return match.group(0)
    path, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo), path))
    if resolved in by_repo:
        link = posixpath.relpath(by_repo[resolved], posixpath.dirname(page_site) or ".")
        return f"{bang}[{text}]({link}{'#' + anchor if anchor else ''})"
    if resolved.startswith("..") or not (root / resolved).exists():
        return match.group(0)
    shown = resolved.rstrip("/") + ("/" if (root / resolved).is_dir() else "")
    if shown.rstrip("/") in text:
        return text
    return f"{text} (`{shown}`)"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    root = _root(config)
    by_repo = {
        repo: file.src_uri
        for file in files
        if file.abs_src_path and (repo := _repo_path(file, root)) is not None
    }
    page_repo = _repo_path(page.file, root) or page.file.src_uri

    def rewrite(text: str) -> str:
        return LINK.sub(lambda m: _rewrite(m, page_repo, page.file.src_uri, root, by_repo), text)

    # Prose between fences is rewritten as a whole (a link's text may wrap onto a new line).
    out: list[str] = []
    prose: list[str] = []
    fenced = False
    for line in markdown.split("\n"):
        if FENCE.match(line) and not fenced:
            if prose:
                out.append(rewrite("\n".join(prose)))
            prose, fenced = [], True
            out.append(line)
        elif fenced:
            fenced = not FENCE.match(line)
            out.append(line)
        else:
            prose.append(line)
    if prose:
        out.append(rewrite("\n".join(prose)))
    return "\n".join(out)


# The docstrings name code with Sphinx roles (:func:`x`), which the API reference would
# print as they are: keep the code, drop the role.
ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    return ROLE.sub("", html)
