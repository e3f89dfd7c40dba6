"""BENCHMARKS.md is a summary and benchmarks/reports/ holds the studies (issue 31): nothing is lost.

Every committed file under ``benchmarks/results/`` is cited, by its file name or a relative
path, by some report in ``benchmarks/reports/`` or by BENCHMARKS.md, and every relative link
of those pages points to a file that exists (and, into a markdown page, to a heading it has).
Reads text only: no torch, no benchmark run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "BENCHMARKS.md"
REPORTS = ROOT / "benchmarks" / "reports"
RESULTS = ROOT / "benchmarks" / "results"

# [text](target) and [text](target "title"); the text may wrap over lines
_LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*#*$")


def _pages() -> list[Path]:
    return [SUMMARY, *sorted(REPORTS.glob("*.md"))]


def _committed_results() -> list[str]:
    """The files of benchmarks/results/ that git tracks (the committed ones)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "benchmarks/results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed results files cannot be listed")
    return sorted(p for p in out.split("\0") if p)


def uncited(results: list[str], texts: list[str]) -> list[str]:
    """The results files (paths relative to the repository) that no text names.

    A file counts as cited where a text holds its file name (``quality_synth-lus.json``), which
    covers its relative paths (``../results/quality_synth-lus.json``) too.
    """
    return [path for path in results if not any(Path(path).name in text for text in texts)]


def _strip_code(text: str) -> str:
    """The text without fenced code blocks (a command is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    found, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else _HEADING.match(line)
        if match:
            found.add(anchor(match.group(1)))
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` whose file (or heading, into a .md page) is missing."""
    broken = []
    for target in _LINK.findall(_strip_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors_of(resolved):
            broken.append(f"{target} (no such heading)")
    return broken


def test_every_committed_results_file_is_cited_by_a_report_or_the_summary() -> None:
    results = _committed_results()
    assert results, "benchmarks/results/ holds no committed file"
    texts = [page.read_text(encoding="utf-8") for page in _pages()]
    missing = uncited(results, texts)
    assert not missing, (
        f"{len(missing)} committed results file(s) cited by no report in benchmarks/reports/ "
        f"nor by BENCHMARKS.md (name each in the report of the run that wrote it): {missing}"
    )


def test_every_relative_link_of_the_summary_and_the_reports_resolves() -> None:
    problems = {
        str(page.relative_to(ROOT)): bad for page in _pages() if (bad := broken_links(page))
    }
    assert not problems, f"links to missing files or headings: {problems}"


def test_the_summary_is_one_page_that_links_every_report() -> None:
    summary = SUMMARY.read_text(encoding="utf-8")
    assert len(summary.splitlines()) <= 300, "BENCHMARKS.md is meant to be one page of findings"
    assert summary.lstrip().startswith("# Benchmarks")
    first_section = re.search(r"^## (.+)$", summary, flags=re.M)
    assert first_section and first_section.group(1).startswith("Finer than the score?")
    linked = {Path(t.partition("#")[0]).name for t in _LINK.findall(summary)}
    reports = {page.name for page in REPORTS.glob("*.md")}
    assert reports, "benchmarks/reports/ holds no report"
    assert not reports - linked, f"reports BENCHMARKS.md does not link: {sorted(reports - linked)}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """An uncited results file and a link to a missing file or heading are caught."""
    assert uncited(["benchmarks/results/a.json", "benchmarks/results/b.md"], ["see a.json"]) == [
        "benchmarks/results/b.md"
    ]
    (tmp_path / "there.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading) [web](https://example.org/x)\n"
        "[gone](missing.json) [bad anchor](there.md#no-heading)\n"
        "```bash\n[not a link](in/code.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.json (no such file)",
        "there.md#no-heading (no such heading)",
    ]
